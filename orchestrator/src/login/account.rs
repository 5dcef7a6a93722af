//! What a host service does with a user's linked accounts besides linking them: list them, revoke
//! one, reach the user's CLI VM (to run a prompt there), move the user's egress port, and watch a
//! running login's desktop.

use protocol::creds::CredsScope;
use protocol::desktop::DesktopOffer;
use serde::Serialize;

use super::deliver::connect_cli;
use super::state::SessionState;
use super::{LoginError, LoginService};
use crate::client::AgentClient;
use crate::desktop::DesktopSession;
use crate::store::AuditEvent;
use crate::vault::{RecordContext, Scheme};

/// A provider account the user has linked: what the store holds for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkedAccount {
    /// Provider id.
    pub provider: String,
    /// Version of the stored credential (goes up with every capture).
    pub version: i64,
    /// When it was captured, Unix ms.
    pub captured_at_ms: i64,
    /// Whether that version has reached the user's CLI VM.
    pub pushed: bool,
    /// When the token expires, Unix ms, where the credential file says.
    pub expires_at_ms: Option<i64>,
    /// Scopes the credential file says were granted.
    pub scopes: Vec<String>,
    /// Who can open the stored copy.
    pub sealing: super::Sealing,
}

/// Who a session belongs to and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// The user it links for.
    pub user: String,
    /// Provider id.
    pub provider: String,
    /// Current state.
    pub state: SessionState,
}

/// The user's CLI VM, connected.
#[derive(Debug, Clone)]
pub struct CliAgent {
    /// The VM's agent.
    pub client: AgentClient,
    /// The backend's id of the VM.
    pub vm_id: String,
    /// Home of the guest user the CLIs run as.
    pub guest_home: String,
}

/// What [`LoginService::revoke`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Revoked {
    /// Whether a stored credential was deleted.
    pub stored: bool,
    /// Files wiped in the CLI VM.
    pub wiped: Vec<String>,
}

/// What [`LoginService::recover`] closed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Recovered {
    /// Sessions of this host that were still active, now `failed`.
    pub sessions: Vec<String>,
    /// Browser VMs of this host still recorded active, destroyed (or recorded gone).
    pub vms: Vec<String>,
    /// What VMs of a crashed predecessor left on this machine, removed by the backend.
    pub swept: Vec<String>,
}

/// The reason given to sessions a restart interrupted.
pub const RESTART_REASON: &str = "the service restarted during the login";

impl LoginService {
    /// Closes what a previous run of this host left active (call once at start, before any
    /// login): its sessions end `failed` with [`RESTART_REASON`] (audited), and its browser VMs are
    /// destroyed through the backend (a backend that no longer knows one has nothing left of it;
    /// the row is closed either way). CLI VMs are the users' and stay. Then the backend sweeps
    /// what VMs of a crashed predecessor left on the machine (audited).
    pub async fn recover(&self) -> Result<Recovered, LoginError> {
        let store = &self.inner.store;
        let host = store.host_id().to_owned();
        let mut out = Recovered::default();
        for row in store.active_sessions().await? {
            if row.host_id != host || self.inner.sessions().contains_key(&row.id) {
                continue;
            }
            if store
                .set_session_state(&row.id, SessionState::Failed.as_str(), Some(RESTART_REASON))
                .await?
            {
                let ended = AuditEvent::SessionEnded {
                    session_id: row.id.clone(),
                    state: SessionState::Failed.as_str().into(),
                    reason: Some(RESTART_REASON.into()),
                };
                store.audit(Some(&row.user_id), &ended).await?;
                out.sessions.push(row.id);
            }
        }
        for vm in store.active_vms(None).await? {
            if vm.host_id != host || vm.kind != crate::vm::VmKind::Browser {
                continue;
            }
            let removed = match self.inner.backend.destroy_vm(&vm.id).await {
                Ok(report) => report.removed,
                Err(crate::vm::BackendError::UnknownVm(_)) => Vec::new(),
                Err(e) => {
                    tracing::warn!(vm = %vm.id, error = %e, "destroying a VM left by the previous run failed");
                    continue;
                }
            };
            store.record_vm_destroyed(&vm.id).await?;
            store
                .audit(
                    Some(&vm.user_id),
                    &AuditEvent::VmDestroyed {
                        vm_id: vm.id.clone(),
                        removed,
                    },
                )
                .await?;
            out.vms.push(vm.id);
        }
        out.swept = self.inner.backend.sweep().await?;
        if !out.swept.is_empty() {
            store
                .audit(
                    None,
                    &AuditEvent::VmSwept {
                        removed: out.swept.clone(),
                    },
                )
                .await?;
        }
        if !out.sessions.is_empty() || !out.vms.is_empty() {
            tracing::info!(
                sessions = out.sessions.len(),
                vms = out.vms.len(),
                "closed what the previous run left"
            );
        }
        Ok(out)
    }

    /// The providers this service can link.
    pub fn providers(&self) -> &[super::ProviderLogin] {
        &self.inner.config.providers
    }

    /// The recipe of provider `name`, if this service can link it.
    pub fn provider(&self, name: &str) -> Option<&super::ProviderLogin> {
        self.inner.config.providers.iter().find(|p| p.name == name)
    }

    /// The user's linked accounts, one per provider with a stored credential, with the expiry
    /// and scopes recorded at capture (nothing is opened).
    pub async fn accounts(&self, user: &str) -> Result<Vec<LinkedAccount>, LoginError> {
        let mut out = Vec::new();
        for provider in &self.inner.config.providers {
            let Some(record) = self.inner.store.credential(user, &provider.name).await? else {
                continue;
            };
            out.push(LinkedAccount {
                provider: provider.name.clone(),
                version: record.version,
                captured_at_ms: record.captured_at_ms,
                pushed: !record.push_pending(),
                expires_at_ms: record.meta.expires_at_ms,
                scopes: record.meta.scopes,
                sealing: match record.envelope.scheme {
                    Scheme::HostAes256Gcm => super::Sealing::Host,
                    Scheme::UserSealed => super::Sealing::User,
                },
            });
        }
        Ok(out)
    }

    /// Moves every host-sealed credential still under a retired key to the vault's active key
    /// (same version, fresh nonce; audited); returns how many moved. Run it after adding a new
    /// active key, before removing the old one from the configuration.
    pub async fn reseal_retired(&self) -> Result<usize, LoginError> {
        let inner = &self.inner;
        let mut moved = 0;
        for record in inner
            .store
            .credentials_not_under(inner.vault.active_key())
            .await?
        {
            let ctx = RecordContext {
                user_id: &record.user_id,
                provider: &record.provider,
                version: record.version,
            };
            let Some(envelope) = inner.vault.reseal(&ctx, &record.envelope)? else {
                continue;
            };
            if inner
                .store
                .reseal_credential(&record.user_id, &record.provider, record.version, &envelope)
                .await?
            {
                let event = AuditEvent::CredentialResealed {
                    provider: record.provider.clone(),
                    version: record.version,
                    key_id: envelope.key_id.to_string(),
                };
                inner.store.audit(Some(&record.user_id), &event).await?;
                moved += 1;
            }
        }
        if moved > 0 {
            tracing::info!(moved, key = %inner.vault.active_key(), "credentials resealed");
        }
        Ok(moved)
    }

    /// Unlinks `provider` for `user`: deletes the stored credential and wipes the provider's
    /// credential files in the user's CLI VM (both audited).
    pub async fn revoke(&self, user: &str, provider: &str) -> Result<Revoked, LoginError> {
        if self.provider(provider).is_none() {
            return Err(LoginError::UnknownProvider(provider.to_owned()));
        }
        self.inner.followers.stop(user, provider);
        let stored = self.inner.store.delete_credential(user, provider).await?;
        // Recorded before the VM is touched: the store forgot it even if the wipe then fails.
        self.inner
            .store
            .audit(
                Some(user),
                &AuditEvent::CredentialRevoked {
                    provider: provider.to_owned(),
                    existed: stored,
                },
            )
            .await?;
        let cli = self.cli_agent(user).await?;
        let wiped = cli
            .client
            .creds_wipe(&CredsScope {
                provider: provider.to_owned(),
                home: Some(cli.guest_home.clone()),
                ..Default::default()
            })
            .await?;
        self.inner
            .store
            .audit(
                Some(user),
                &AuditEvent::CredentialWiped {
                    provider: provider.to_owned(),
                    vm_id: cli.vm_id.clone(),
                },
            )
            .await?;
        tracing::info!(
            provider,
            stored,
            files = wiped.removed.len(),
            "account revoked"
        );
        Ok(Revoked {
            stored,
            wiped: wiped.removed,
        })
    }

    /// The user's CLI VM, started if it is not running, with its egress served, and its agent
    /// connected: where a host runs the user's prompts.
    pub async fn cli_agent(&self, user: &str) -> Result<CliAgent, LoginError> {
        if user.trim().is_empty() {
            return Err(LoginError::InvalidUser);
        }
        let cli = connect_cli(&self.inner, user).await?;
        super::chain::ensure_following(&self.inner, user, &cli).await?;
        Ok(cli)
    }

    /// Gives the user a new egress port; tunnels still open on the old one are closed.
    pub async fn rotate_egress(&self, user: &str) -> Result<u16, LoginError> {
        let port = match &self.inner.gateway {
            Some(gateway) => gateway.rotate(user).await?,
            None => self.inner.egress.rotate(user).await?,
        };
        Ok(port)
    }

    /// The user's egress port, if one is assigned.
    pub async fn egress_port(&self, user: &str) -> Result<Option<u16>, LoginError> {
        Ok(self.inner.egress.port_of(user).await?)
    }

    /// Who a session of this host belongs to and its state; `None` when this host does not know
    /// it (never started here, or forgotten after its retention time).
    pub fn session_info(&self, session_id: &str) -> Option<SessionInfo> {
        let sessions = self.inner.sessions();
        let s = sessions.get(session_id)?;
        Some(SessionInfo {
            id: s.id.clone(),
            user: s.user.clone(),
            provider: s.provider.name.clone(),
            state: s.state(),
        })
    }

    /// Opens a viewer on the desktop of the session's browser VM (the WebRTC offer in, the
    /// agent's answer in the returned session). Only while the browser VM is up.
    ///
    /// When the backend gave the VM a media forward of its own ([`crate::vm::VmHandle::desktop`]),
    /// its addresses and port replace the offer's (the offer's STUN/TURN servers stay), and the
    /// VM's private addresses are kept out of the answer: they mean nothing to a viewer.
    pub async fn desktop(
        &self,
        session_id: &str,
        offer: &DesktopOffer,
    ) -> Result<DesktopSession, LoginError> {
        let session = self.inner.sessions().get(session_id).cloned();
        let Some(session) = session else {
            return Err(self.not_here(session_id).await);
        };
        let agent = session
            .agent()
            .ok_or_else(|| LoginError::NoDesktop(session_id.to_owned()))?;
        let Some(own) = agent.desktop else {
            return Ok(DesktopSession::open(&agent.client, offer).await?);
        };
        let hidden = own.bind.clone();
        let offer = DesktopOffer {
            ice: protocol::desktop::IceSettings {
                servers: offer.ice.servers.clone(),
                ..own
            },
            ..offer.clone()
        };
        let mut viewer = DesktopSession::open(&agent.client, &offer).await?;
        viewer.hide_addresses(hidden);
        Ok(viewer)
    }
}
