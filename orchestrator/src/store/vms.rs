//! Rows of `vms`: every VM a host created, until it is destroyed.

use super::{now_ms, with_pool, Store, StoreError};
use crate::vm::VmKind;

/// Reads a kind as the store wrote it ([`VmKind::as_str`]).
fn parse_kind(s: &str) -> Result<VmKind, StoreError> {
    match s {
        "browser" => Ok(VmKind::Browser),
        "cli" => Ok(VmKind::Cli),
        other => Err(StoreError::Corrupt(format!("unknown vm kind {other:?}"))),
    }
}

/// A recorded VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    /// VM id (the backend's).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Purpose.
    pub kind: VmKind,
    /// `active` or `destroyed`.
    pub state: String,
    /// The login session that created it, for browser VMs.
    pub session_id: Option<String>,
    /// Host running it.
    pub host_id: String,
    /// Created, Unix ms.
    pub created_at_ms: i64,
    /// Destroyed, Unix ms.
    pub destroyed_at_ms: Option<i64>,
}

type Row = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<i64>,
);

fn from_row(r: Row) -> Result<VmRow, StoreError> {
    Ok(VmRow {
        id: r.0,
        user_id: r.1,
        kind: parse_kind(&r.2)?,
        state: r.3,
        session_id: r.4,
        host_id: r.5,
        created_at_ms: r.6,
        destroyed_at_ms: r.7,
    })
}

impl Store {
    /// Records a VM that was just created.
    pub async fn record_vm_created(
        &self,
        id: &str,
        user: &str,
        kind: VmKind,
        session_id: Option<&str>,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO vms (id, user_id, kind, state, session_id, host_id, created_at_ms)
                 VALUES ($1, $2, $3, 'active', $4, $5, $6)",
            )
            .bind(id)
            .bind(user)
            .bind(kind.as_str())
            .bind(session_id)
            .bind(&self.host_id)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Marks a VM destroyed. Returns `false` if it was not active.
    pub async fn record_vm_destroyed(&self, id: &str) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool| {
            sqlx::query("UPDATE vms SET state = 'destroyed', destroyed_at_ms = $2 WHERE id = $1 AND state = 'active'")
                .bind(id)
                .bind(now_ms())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// A VM by id.
    pub async fn vm(&self, id: &str) -> Result<Option<VmRow>, StoreError> {
        let row: Option<Row> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, user_id, kind, state, session_id, host_id, created_at_ms, destroyed_at_ms
                 FROM vms WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        row.map(from_row).transpose()
    }

    /// Active VMs of `user` (all users when `None`).
    pub async fn active_vms(&self, user: Option<&str>) -> Result<Vec<VmRow>, StoreError> {
        let rows: Vec<Row> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, user_id, kind, state, session_id, host_id, created_at_ms, destroyed_at_ms
                 FROM vms WHERE state = 'active' AND ($1 IS NULL OR user_id = $1) ORDER BY created_at_ms",
            )
            .bind(user)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(from_row).collect()
    }
}
