//! Rows of `auth_sessions`: one per login attempt; at most one active per (user, provider).

use super::{now_ms, with_pool, Store, StoreError};

/// A session about to be recorded.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// Fresh session id.
    pub id: &'a str,
    /// Owner.
    pub user_id: &'a str,
    /// Provider being linked.
    pub provider: &'a str,
    /// Initial state name.
    pub state: &'a str,
    /// When the session times out, Unix ms.
    pub expires_at_ms: i64,
}

/// What [`Store::insert_session`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionInsert {
    /// The new session was recorded.
    Created,
    /// Another session for the same user and provider is active (on this host or another).
    Existing(SessionRow),
}

/// A recorded session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Session id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Provider.
    pub provider: String,
    /// Current state name.
    pub state: String,
    /// Why it failed, timed out or was cancelled.
    pub reason: Option<String>,
    /// The host driving it.
    pub host_id: String,
    /// Created, Unix ms.
    pub created_at_ms: i64,
    /// Last state change, Unix ms.
    pub updated_at_ms: i64,
    /// Deadline, Unix ms.
    pub expires_at_ms: i64,
}

type Row = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    i64,
    i64,
);

fn from_row(r: Row) -> SessionRow {
    SessionRow {
        id: r.0,
        user_id: r.1,
        provider: r.2,
        state: r.3,
        reason: r.4,
        host_id: r.5,
        created_at_ms: r.6,
        updated_at_ms: r.7,
        expires_at_ms: r.8,
    }
}

/// How long past its deadline an active session may stay before another host takes it for abandoned
/// (its host died without finishing it).
const ABANDONED_AFTER_MS: i64 = 60_000;

impl Store {
    /// Records a new session unless one is already active for the user and provider, in which case
    /// that one is returned. A session left active long past its deadline (its host died) is closed
    /// as `timeout` first.
    pub async fn insert_session(&self, new: &NewSession<'_>) -> Result<SessionInsert, StoreError> {
        for _ in 0..8 {
            let now = now_ms();
            let inserted: Option<(String,)> = with_pool!(self, |pool| {
                sqlx::query_as(
                    "INSERT INTO auth_sessions
                        (id, user_id, provider, state, reason, host_id, created_at_ms, updated_at_ms, expires_at_ms)
                     VALUES ($1, $2, $3, $4, NULL, $5, $6, $6, $7)
                     ON CONFLICT DO NOTHING RETURNING id",
                )
                .bind(new.id)
                .bind(new.user_id)
                .bind(new.provider)
                .bind(new.state)
                .bind(&self.host_id)
                .bind(now)
                .bind(new.expires_at_ms)
                .fetch_optional(pool)
                .await?
            });
            if inserted.is_some() {
                return Ok(SessionInsert::Created);
            }
            let Some(active) = self.active_session(new.user_id, new.provider).await? else {
                continue; // it ended between our insert and our read: try again
            };
            if active.expires_at_ms + ABANDONED_AFTER_MS < now {
                self.set_session_state(
                    &active.id,
                    "timeout",
                    Some("abandoned: its host stopped driving it"),
                )
                .await?;
                continue;
            }
            return Ok(SessionInsert::Existing(active));
        }
        Err(StoreError::Corrupt(
            "session insert kept conflicting".into(),
        ))
    }

    /// The active session of `user` for `provider`, if any.
    pub async fn active_session(
        &self,
        user: &str,
        provider: &str,
    ) -> Result<Option<SessionRow>, StoreError> {
        let row: Option<Row> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, user_id, provider, state, reason, host_id, created_at_ms, updated_at_ms, expires_at_ms
                 FROM auth_sessions
                 WHERE user_id = $1 AND provider = $2
                   AND state NOT IN ('completed', 'failed', 'timeout', 'cancelled')",
            )
            .bind(user)
            .bind(provider)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(from_row))
    }

    /// A session by id.
    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let row: Option<Row> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, user_id, provider, state, reason, host_id, created_at_ms, updated_at_ms, expires_at_ms
                 FROM auth_sessions WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(from_row))
    }

    /// Every session not yet in a terminal state (all hosts).
    pub async fn active_sessions(&self) -> Result<Vec<SessionRow>, StoreError> {
        let rows: Vec<Row> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, user_id, provider, state, reason, host_id, created_at_ms, updated_at_ms, expires_at_ms
                 FROM auth_sessions
                 WHERE state NOT IN ('completed', 'failed', 'timeout', 'cancelled') ORDER BY created_at_ms",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Moves an active session to `state`. Returns `false` when the session is unknown or already
    /// over (a terminal state is final).
    pub async fn set_session_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE auth_sessions SET state = $2, reason = $3, updated_at_ms = $4
                 WHERE id = $1 AND state NOT IN ('completed', 'failed', 'timeout', 'cancelled')",
            )
            .bind(id)
            .bind(state)
            .bind(reason)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }
}
