//! Durable state: auth sessions, sealed credentials, egress ports, VMs and the audit log.
//!
//! One [`Store`] type over two `sqlx` backends with one set of migrations:
//! - **SQLite** (a file, the embedded default for a single host);
//! - **PostgreSQL** (several hosts sharing state).
//!
//! Every query is written once in the common subset of both dialects (`$n` parameters, `ON CONFLICT`,
//! `RETURNING`, partial unique indexes) and run through a `match` on the backend, so each arm is type
//! checked against its own driver; there is no `sqlx::Any` and no per-backend SQL to drift apart.
//! Cross-host invariants (one port per user, one port per user at most, one active login per user and
//! provider) are unique constraints, so they hold whatever the hosts do concurrently.

mod audit;
mod credentials;
mod egress;
mod sessions;
#[cfg(test)]
pub(crate) mod testing;
mod vms;

pub use audit::{AuditEntry, AuditEvent};
pub use credentials::{NewVersion, StoredCredential};
pub use egress::PortMove;
pub use sessions::{NewSession, SessionInsert, SessionRow};
pub use vms::VmRow;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::secret::Secret;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::SqlSafeStr;

/// Where the store lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// An SQLite database file, created if missing (single host).
    Sqlite {
        /// Path of the database file.
        path: PathBuf,
    },
    /// A PostgreSQL database shared by several hosts.
    Postgres {
        /// Connection URL; may carry a password, so it is kept secret.
        url: Secret<String>,
        /// Largest number of pooled connections of this host.
        max_connections: u32,
    },
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed the query.
    #[error("store database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value does not decode (written by a newer build, or edited by hand).
    #[error("store row is corrupt: {0}")]
    Corrupt(String),
    /// The configuration is unusable.
    #[error("store configuration: {0}")]
    Config(String),
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool; the body is compiled once per backend.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            crate::store::Backend::Sqlite($pool) => $body,
            crate::store::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Handle to the store; cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    host_id: String,
}

impl Store {
    /// Opens (creating if needed) the store and applies pending migrations. `host_id` names this host
    /// in session, VM and audit rows.
    pub async fn open(config: &StoreConfig, host_id: &str) -> Result<Store, StoreError> {
        let backend = match config {
            StoreConfig::Sqlite { path } => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?;
                migrator().run(&pool).await?;
                Backend::Sqlite(pool)
            }
            StoreConfig::Postgres {
                url,
                max_connections,
            } => {
                let options = PgConnectOptions::from_str(url.expose())
                    .map_err(|_| StoreError::Config("PostgreSQL URL does not parse".into()))?;
                let pool = PgPoolOptions::new()
                    .max_connections(*max_connections)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?;
                // Hosts starting together serialize on the migrator's advisory lock.
                migrator().run(&pool).await?;
                Backend::Postgres(pool)
            }
        };
        Ok(Store {
            backend,
            host_id: host_id.to_owned(),
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The host id this handle writes into rows.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }
}

fn migrator() -> Migrator {
    let step = |version, name: &str, sql: &'static str| {
        Migration::new(
            version,
            name.to_owned().into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        step(1, "init", include_str!("migrations/0001_init.sql")),
        step(2, "sealed", include_str!("migrations/0002_sealed.sql")),
    ])
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    (now_us() / 1000) as i64
}

pub(crate) fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
