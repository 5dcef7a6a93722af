//! Rows of `egress_ports`: one port per user, one user per port (both unique constraints).

use super::{now_ms, with_pool, Store, StoreError};

/// Outcome of [`Store::move_egress_port`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMove {
    /// The user now holds the new port.
    Moved,
    /// Another user took the new port first.
    PortTaken,
    /// The user no longer holds the old port (released or moved concurrently).
    UserChanged,
}

// Lowest free port in [$1, $2]: $1 itself if free, else the first port right after a taken one.
const FIRST_FREE: &str = "SELECT c FROM (
        SELECT CAST($1 AS INTEGER) AS c
            WHERE NOT EXISTS (SELECT 1 FROM egress_ports WHERE port = $1)
        UNION ALL
        SELECT e.port + 1 AS c FROM egress_ports e
            WHERE e.port >= $1 AND e.port < $2
              AND NOT EXISTS (SELECT 1 FROM egress_ports f WHERE f.port = e.port + 1)
    ) candidates ORDER BY c LIMIT 1";

impl Store {
    /// The port held by `user`, if any.
    pub async fn egress_port_of(&self, user: &str) -> Result<Option<u16>, StoreError> {
        let row: Option<(i32,)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT port FROM egress_ports WHERE user_id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await?
        });
        row.map(|(p,)| to_port(p)).transpose()
    }

    /// The lowest port in `first..=last` that nobody holds (a hint: another host may take it first).
    pub async fn first_free_egress_port(
        &self,
        first: u16,
        last: u16,
    ) -> Result<Option<u16>, StoreError> {
        let row: Option<(i32,)> = with_pool!(self, |pool| {
            sqlx::query_as(FIRST_FREE)
                .bind(i32::from(first))
                .bind(i32::from(last))
                .fetch_optional(pool)
                .await?
        });
        row.map(|(p,)| to_port(p)).transpose()
    }

    /// Gives `port` to `user` unless the user already has a port or the port is taken. Returns
    /// whether this call assigned it.
    pub async fn claim_egress_port(&self, user: &str, port: u16) -> Result<bool, StoreError> {
        let row: Option<(i32,)> = with_pool!(self, |pool| {
            sqlx::query_as(
                "INSERT INTO egress_ports (user_id, port, assigned_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING RETURNING port",
            )
            .bind(user)
            .bind(i32::from(port))
            .bind(now_ms())
            .fetch_optional(pool)
            .await?
        });
        Ok(row.is_some())
    }

    /// Frees the user's port for reuse; returns the port released.
    pub async fn release_egress_port(&self, user: &str) -> Result<Option<u16>, StoreError> {
        let row: Option<(i32,)> = with_pool!(self, |pool| {
            sqlx::query_as("DELETE FROM egress_ports WHERE user_id = $1 RETURNING port")
                .bind(user)
                .fetch_optional(pool)
                .await?
        });
        row.map(|(p,)| to_port(p)).transpose()
    }

    /// Moves `user` from port `from` to port `to` in one statement.
    pub async fn move_egress_port(
        &self,
        user: &str,
        from: u16,
        to: u16,
    ) -> Result<PortMove, StoreError> {
        let result = with_pool!(self, |pool| {
            sqlx::query("UPDATE egress_ports SET port = $3, assigned_at_ms = $4 WHERE user_id = $1 AND port = $2")
                .bind(user)
                .bind(i32::from(from))
                .bind(i32::from(to))
                .bind(now_ms())
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        });
        match result {
            Ok(1) => Ok(PortMove::Moved),
            Ok(_) => Ok(PortMove::UserChanged),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(PortMove::PortTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// Every assignment, ordered by port (for audits and tests).
    pub async fn egress_assignments(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let rows: Vec<(String, i32)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT user_id, port FROM egress_ports ORDER BY port")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(u, p)| Ok((u, to_port(p)?)))
            .collect()
    }
}

fn to_port(p: i32) -> Result<u16, StoreError> {
    u16::try_from(p).map_err(|_| StoreError::Corrupt(format!("egress port {p} out of range")))
}
