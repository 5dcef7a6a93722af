//! One live copy of each token chain, and its refreshes coming home.
//!
//! The CLIs rotate their refresh tokens in the CLI VM: once a credential is pushed there, that VM's
//! copy is the live one and the stored copy goes stale unless it follows. So after every push the
//! host watches the provider's credential file in that VM ([`follow`]); each new file the CLI
//! writes arrives as the next version (sealed in the VM to the user's key in the user-sealed mode,
//! sealed by the host's vault otherwise) and is stored with the VM as its holder. Versions only go
//! up: a refresh that does not follow the stored version is refused.
//!
//! Two copies of one chain refreshing independently break the login (both CLIs' users report it):
//! a chain held by one CLI VM is never pushed into another while the holder is alive
//! ([`check_holder`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use protocol::creds::{CredsScope, CredsWatchRequest, SealTo, SealedCapture};
use protocol::sealed::PublicKey;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::account::CliAgent;
use super::flow::FlowError;
use super::{Inner, Sealing};
use crate::store::{AuditEvent, NewVersion};
use crate::vault::{CredentialPlaintext, Envelope, KeyId, Scheme};
use crate::vm::VmKind;

/// The running followers, by (user, provider); each is stopped when replaced, and all of them
/// when the service goes away.
#[derive(Debug, Default)]
pub(crate) struct Followers {
    tasks: Mutex<HashMap<(String, String), JoinHandle<()>>>,
}

impl Followers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops following `user`'s `provider` (before a push, a revoke).
    pub(crate) fn stop(&self, user: &str, provider: &str) {
        if let Some(task) = self.lock().remove(&(user.to_owned(), provider.to_owned())) {
            task.abort();
        }
    }

    fn is_following(&self, user: &str, provider: &str) -> bool {
        self.lock()
            .get(&(user.to_owned(), provider.to_owned()))
            .is_some_and(|t| !t.is_finished())
    }

    fn set(&self, user: &str, provider: &str, task: JoinHandle<()>) {
        if let Some(old) = self
            .lock()
            .insert((user.to_owned(), provider.to_owned()), task)
        {
            old.abort();
        }
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        for (_, task) in self.lock().drain() {
            task.abort();
        }
    }
}

/// Refuses a push of `user`'s `provider` into `vm_id` while another CLI VM that is still alive
/// holds the chain.
pub(super) async fn check_holder(
    inner: &Inner,
    user: &str,
    provider: &str,
    vm_id: &str,
) -> Result<(), FlowError> {
    let Some(record) = inner.store.credential(user, provider).await? else {
        return Ok(());
    };
    let Some(holder) = record.holder_vm.filter(|h| h != vm_id) else {
        return Ok(());
    };
    let alive = inner
        .store
        .active_vms(Some(user))
        .await?
        .iter()
        .any(|vm| vm.id == holder && vm.kind == VmKind::Cli);
    if alive {
        return Err(FlowError::Login(format!(
            "CLI VM {holder} holds this {provider} login and refreshes it; a second VM never \
             receives the same token chain"
        )));
    }
    Ok(())
}

/// Follows `provider`'s credential file in the user's CLI VM from `version` on: each refresh is
/// stored as the next version. Returns once the watch is in place (a refresh written after this
/// returns is never missed).
pub(super) async fn follow(
    inner: &Arc<Inner>,
    user: &str,
    provider: &str,
    cli: &CliAgent,
    version: i64,
) -> Result<(), FlowError> {
    let seal_to = match inner.config.sealing {
        Sealing::Host => None,
        Sealing::User => {
            let Some(key) = user_key(inner, user).await? else {
                warn!(%provider, "no user key: refreshes in the CLI VM cannot be followed");
                return Ok(());
            };
            Some(SealTo {
                recipient: key,
                user: user.to_owned(),
                first_version: version + 1,
            })
        }
    };
    let watch = cli
        .client
        .creds_watch(&CredsWatchRequest {
            scope: CredsScope {
                provider: provider.to_owned(),
                home: Some(cli.guest_home.clone()),
                ..Default::default()
            },
            include_existing: false,
            seal_to: seal_to.clone(),
        })
        .await?;
    let task = tokio::spawn(run(
        Arc::downgrade(inner),
        user.to_owned(),
        provider.to_owned(),
        cli.vm_id.clone(),
        watch,
        seal_to.map(|s| s.recipient),
    ));
    inner.followers.set(user, provider, task);
    Ok(())
}

/// Makes sure every chain the user's CLI VM holds is followed (after a restart of the service,
/// or a watch that ended with the connection).
pub(super) async fn ensure_following(
    inner: &Arc<Inner>,
    user: &str,
    cli: &CliAgent,
) -> Result<(), FlowError> {
    for provider in &inner.config.providers {
        if inner.followers.is_following(user, &provider.name) {
            continue;
        }
        let Some(record) = inner.store.credential(user, &provider.name).await? else {
            continue;
        };
        if record.holder_vm.as_deref() == Some(cli.vm_id.as_str()) && !record.push_pending() {
            follow(inner, user, &provider.name, cli, record.version).await?;
        }
    }
    Ok(())
}

/// The user's registered public key, if any.
pub(super) async fn user_key(inner: &Inner, user: &str) -> Result<Option<PublicKey>, FlowError> {
    match inner.store.user_key(user).await? {
        None => Ok(None),
        Some(text) => PublicKey::from_base64(&text)
            .map(Some)
            .map_err(|e| FlowError::Login(format!("the stored user key is unusable: {e}"))),
    }
}

/// The store's record of an envelope sealed in a VM to the user's key.
pub(super) fn user_envelope(
    key: &PublicKey,
    capture: &SealedCapture,
) -> Result<Envelope, FlowError> {
    let key_id = KeyId::new(&format!("user-{}", key.fingerprint()))
        .map_err(|e| FlowError::Login(e.to_string()))?;
    Ok(Envelope {
        scheme: Scheme::UserSealed,
        key_id,
        nonce: capture.sealed.enc.clone(),
        ciphertext: capture.sealed.ciphertext.clone(),
    })
}

async fn run(
    inner: Weak<Inner>,
    user: String,
    provider: String,
    vm_id: String,
    mut watch: crate::creds::CredsWatchCall,
    sealed_to: Option<PublicKey>,
) {
    loop {
        let stored = match &sealed_to {
            Some(key) => match watch.next_sealed().await {
                Ok(Some(capture)) => {
                    let Some(inner) = inner.upgrade() else { return };
                    store_refresh_sealed(&inner, &user, &provider, &vm_id, key, &capture).await
                }
                Ok(None) => return,
                Err(e) => {
                    warn!(%provider, error = %e, "following refreshes stopped");
                    return;
                }
            },
            None => match watch.next_capture().await {
                Ok(Some(capture)) => {
                    let Some(inner) = inner.upgrade() else { return };
                    let Some(recipe) = inner.config.providers.iter().find(|p| p.name == provider)
                    else {
                        return;
                    };
                    let plaintext = CredentialPlaintext::new(capture.content);
                    super::deliver::store_sealed(&inner, &user, recipe, &plaintext, Some(&vm_id))
                        .await
                        .map(Some)
                }
                Ok(None) => return,
                Err(e) => {
                    warn!(%provider, error = %e, "following refreshes stopped");
                    return;
                }
            },
        };
        match stored {
            Ok(Some(version)) => info!(%provider, version, "refreshed credential stored"),
            Ok(None) => {}
            Err(e) => warn!(%provider, error = %e, "storing a refreshed credential failed"),
        }
    }
}

/// Stores a refresh sealed in the VM; `None` when it does not follow the stored version (stale,
/// or the record was revoked).
async fn store_refresh_sealed(
    inner: &Inner,
    user: &str,
    provider: &str,
    vm_id: &str,
    key: &PublicKey,
    capture: &SealedCapture,
) -> Result<Option<i64>, FlowError> {
    let envelope = user_envelope(key, capture)?;
    let new = NewVersion {
        version: capture.version,
        envelope: &envelope,
        meta: &capture.meta,
        from_vm: Some(vm_id),
    };
    if !inner.store.put_credential(user, provider, new).await? {
        warn!(
            %provider,
            version = capture.version,
            "refresh refused: it does not follow the stored version"
        );
        return Ok(None);
    }
    inner
        .store
        .audit(
            Some(user),
            &AuditEvent::CredentialRefreshed {
                provider: provider.to_owned(),
                version: capture.version,
                vm_id: vm_id.to_owned(),
            },
        )
        .await?;
    Ok(Some(capture.version))
}
