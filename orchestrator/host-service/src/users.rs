//! The service's own tables: users, their session tokens, and when each account was last used.
//! They live in the orchestrator's database (SQLite file or PostgreSQL), beside its tables.
//!
//! Tokens are stored as SHA-256 digests: a leaked table opens no session.

use std::str::FromStr;
use std::time::Duration;

use orchestrator::store::StoreConfig;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// Why a users query failed.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The database failed.
    #[error("users database: {0}")]
    Database(#[from] sqlx::Error),
    /// The configuration is unusable.
    #[error("users database configuration: {0}")]
    Config(String),
}

/// A signed-up user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    /// Stable id (the orchestrator's user id).
    pub id: String,
    /// Sign-in name.
    pub email: String,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to either backend's pool (each arm type-checked on its own).
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match &$db.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// The common subset of both dialects; idempotent, so every start runs it.
const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS svc_users (
        id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS svc_tokens (
        token_sha256 TEXT PRIMARY KEY, user_id TEXT NOT NULL, expires_at_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS svc_account_usage (
        user_id TEXT NOT NULL, provider TEXT NOT NULL, last_used_ms BIGINT NOT NULL,
        PRIMARY KEY (user_id, provider))",
];

/// Handle to the service's tables; cheap to clone.
#[derive(Debug, Clone)]
pub struct Users {
    pool: Pool,
}

impl Users {
    /// Opens the database the store uses and creates the service's tables if missing.
    pub async fn open(config: &StoreConfig) -> Result<Self, UsersError> {
        let pool = match config {
            StoreConfig::Sqlite { path } => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(10));
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .connect_with(options)
                        .await?,
                )
            }
            StoreConfig::Postgres {
                url,
                max_connections,
            } => {
                let options = PgConnectOptions::from_str(url.expose())
                    .map_err(|_| UsersError::Config("PostgreSQL URL does not parse".into()))?;
                Pool::Postgres(
                    PgPoolOptions::new()
                        .max_connections(*max_connections)
                        .connect_with(options)
                        .await?,
                )
            }
        };
        let users = Self { pool };
        for statement in SCHEMA {
            with_pool!(users, |pool| {
                sqlx::query(statement).execute(pool).await?;
            });
        }
        Ok(users)
    }

    /// Creates a user; `None` when the email is taken.
    pub async fn create(
        &self,
        email: &str,
        password_hash: &str,
    ) -> Result<Option<User>, UsersError> {
        let id = uuid::Uuid::new_v4().to_string();
        let row: Option<(String,)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "INSERT INTO svc_users (id, email, password_hash, created_at_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(&id)
            .bind(email)
            .bind(password_hash)
            .bind(now_ms())
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(id,)| User {
            id,
            email: email.to_owned(),
        }))
    }

    /// The user with this email and their password hash.
    pub async fn by_email(&self, email: &str) -> Result<Option<(User, String)>, UsersError> {
        let row: Option<(String, String, String)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT id, email, password_hash FROM svc_users WHERE email = $1")
                .bind(email)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(id, email, hash)| (User { id, email }, hash)))
    }

    /// Records a session token (its digest) valid for `lifetime`.
    pub async fn add_token(
        &self,
        user_id: &str,
        token_sha256: &str,
        lifetime: Duration,
    ) -> Result<(), UsersError> {
        let expires =
            now_ms().saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX / 2));
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO svc_tokens (token_sha256, user_id, expires_at_ms) VALUES ($1, $2, $3)",
            )
            .bind(token_sha256)
            .bind(user_id)
            .bind(expires)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The user a token digest belongs to, while it has not expired.
    pub async fn by_token(&self, token_sha256: &str) -> Result<Option<User>, UsersError> {
        let row: Option<(String, String)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT u.id, u.email FROM svc_tokens t JOIN svc_users u ON u.id = t.user_id
                 WHERE t.token_sha256 = $1 AND t.expires_at_ms > $2",
            )
            .bind(token_sha256)
            .bind(now_ms())
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(id, email)| User { id, email }))
    }

    /// Notes that `user` just used `provider` (a job ran).
    pub async fn touch(&self, user_id: &str, provider: &str) -> Result<(), UsersError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO svc_account_usage (user_id, provider, last_used_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, provider) DO UPDATE SET last_used_ms = excluded.last_used_ms",
            )
            .bind(user_id)
            .bind(provider)
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// When `user` last used `provider`, Unix ms.
    pub async fn last_used(
        &self,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<i64>, UsersError> {
        let row: Option<(i64,)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT last_used_ms FROM svc_account_usage WHERE user_id = $1 AND provider = $2",
            )
            .bind(user_id)
            .bind(provider)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(t,)| t))
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
