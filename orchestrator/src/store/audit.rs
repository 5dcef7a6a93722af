//! Rows of `audit_log`: what was created, removed, captured, pushed and wiped. Never a secret.

use std::fmt::Write as _;

use super::{now_us, with_pool, Store, StoreError};

/// Something worth a permanent record. Holds ids, names and counts only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEvent {
    /// A VM was created.
    VmCreated {
        /// VM id.
        vm_id: String,
        /// `browser` or `cli`.
        kind: String,
    },
    /// A VM was destroyed; `removed` lists what the backend removed (process, socket, disk, ...).
    VmDestroyed {
        /// VM id.
        vm_id: String,
        /// Items removed, as the backend reported them.
        removed: Vec<String>,
    },
    /// At start, what VMs of a crashed predecessor left was removed.
    VmSwept {
        /// What was removed (VM directories).
        removed: Vec<String>,
    },
    /// A credential was captured and stored sealed.
    CredentialCaptured {
        /// Provider.
        provider: String,
        /// Record version.
        version: i64,
    },
    /// A credential reached the user's CLI VM.
    CredentialPushed {
        /// Provider.
        provider: String,
        /// Record version.
        version: i64,
    },
    /// The user's CLI VM refreshed a credential; its new file is stored as the next version.
    CredentialRefreshed {
        /// Provider.
        provider: String,
        /// Record version stored.
        version: i64,
        /// The CLI VM it came from.
        vm_id: String,
    },
    /// A credential was moved from a retired host key to the active one.
    CredentialResealed {
        /// Provider.
        provider: String,
        /// Record version.
        version: i64,
        /// The key it is sealed with now.
        key_id: String,
    },
    /// Pushing a credential failed; it stays stored and the push is retried.
    CredentialPushFailed {
        /// Provider.
        provider: String,
        /// Record version.
        version: i64,
        /// Why (no secret).
        reason: String,
    },
    /// The user unlinked a provider: its stored credential was deleted (`existed`: there was one).
    CredentialRevoked {
        /// Provider.
        provider: String,
        /// Whether a stored record was deleted.
        existed: bool,
    },
    /// Credential files were wiped from a VM.
    CredentialWiped {
        /// Provider.
        provider: String,
        /// VM wiped.
        vm_id: String,
    },
    /// A login session ended.
    SessionEnded {
        /// Session id.
        session_id: String,
        /// Final state.
        state: String,
        /// Reason, if not completed.
        reason: Option<String>,
    },
    /// An egress port changed hands.
    EgressPort {
        /// `assigned`, `released` or `rotated`.
        action: String,
        /// Port now held (or released).
        port: u16,
    },
    /// A VM's egress tunnel was refused (allow-list) or failed upstream.
    EgressRefused {
        /// VM id.
        vm_id: String,
        /// `host:port` it asked for.
        target: String,
        /// Status the VM's client got.
        status: u16,
        /// Why (never a credential).
        reason: String,
    },
}

impl AuditEvent {
    fn parts(&self) -> (&'static str, String, String) {
        match self {
            AuditEvent::VmCreated { vm_id, kind } => {
                ("vm_created", vm_id.clone(), format!("kind={kind}"))
            }
            AuditEvent::VmDestroyed { vm_id, removed } => (
                "vm_destroyed",
                vm_id.clone(),
                format!("removed={}", removed.join(",")),
            ),
            AuditEvent::VmSwept { removed } => (
                "vm_swept",
                String::new(),
                format!("removed={}", removed.join(",")),
            ),
            AuditEvent::CredentialCaptured { provider, version } => (
                "credential_captured",
                provider.clone(),
                format!("version={version}"),
            ),
            AuditEvent::CredentialPushed { provider, version } => (
                "credential_pushed",
                provider.clone(),
                format!("version={version}"),
            ),
            AuditEvent::CredentialRefreshed {
                provider,
                version,
                vm_id,
            } => (
                "credential_refreshed",
                provider.clone(),
                format!("version={version} vm={vm_id}"),
            ),
            AuditEvent::CredentialResealed {
                provider,
                version,
                key_id,
            } => (
                "credential_resealed",
                provider.clone(),
                format!("version={version} key={key_id}"),
            ),
            AuditEvent::CredentialPushFailed {
                provider,
                version,
                reason,
            } => (
                "credential_push_failed",
                provider.clone(),
                format!("version={version} reason={reason}"),
            ),
            AuditEvent::CredentialRevoked { provider, existed } => (
                "credential_revoked",
                provider.clone(),
                format!("stored_record_deleted={existed}"),
            ),
            AuditEvent::CredentialWiped { provider, vm_id } => {
                ("credential_wiped", provider.clone(), format!("vm={vm_id}"))
            }
            AuditEvent::SessionEnded {
                session_id,
                state,
                reason,
            } => {
                let mut d = format!("state={state}");
                if let Some(r) = reason {
                    let _ = write!(d, " reason={r}");
                }
                ("session_ended", session_id.clone(), d)
            }
            AuditEvent::EgressPort { action, port } => {
                ("egress_port", port.to_string(), format!("action={action}"))
            }
            AuditEvent::EgressRefused {
                vm_id,
                target,
                status,
                reason,
            } => (
                "egress_refused",
                target.clone(),
                format!("vm={vm_id} status={status} reason={reason}"),
            ),
        }
    }
}

/// One recorded audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When, Unix microseconds.
    pub at_us: i64,
    /// Host that recorded it.
    pub host_id: String,
    /// User concerned, if any.
    pub user_id: Option<String>,
    /// Event name (`vm_created`, `credential_pushed`, ...).
    pub event: String,
    /// What it is about (VM id, provider, session id, port).
    pub subject: String,
    /// Details (`key=value` words).
    pub detail: String,
}

type Row = (
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

impl Store {
    /// Appends an event to the audit log.
    pub async fn audit(&self, user: Option<&str>, event: &AuditEvent) -> Result<(), StoreError> {
        let (name, subject, detail) = event.parts();
        let id = uuid::Uuid::new_v4().to_string();
        let at_us = i64::try_from(now_us()).unwrap_or(i64::MAX);
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO audit_log (id, at_us, host_id, user_id, event, subject, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&id)
            .bind(at_us)
            .bind(&self.host_id)
            .bind(user)
            .bind(name)
            .bind(&subject)
            .bind(&detail)
            .execute(pool)
            .await?
            .rows_affected()
        });
        tracing::info!(event = name, %subject, %detail, "audit");
        Ok(())
    }

    /// The audit log of `user` (everyone when `None`), oldest first.
    pub async fn audit_log(&self, user: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<Row> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT at_us, host_id, user_id, event, subject, detail FROM audit_log
                 WHERE ($1 IS NULL OR user_id = $1) ORDER BY at_us, id",
            )
            .bind(user)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(at_us, host_id, user_id, event, subject, detail)| AuditEntry {
                    at_us,
                    host_id,
                    user_id,
                    event,
                    subject: subject.unwrap_or_default(),
                    detail: detail.unwrap_or_default(),
                },
            )
            .collect())
    }
}
