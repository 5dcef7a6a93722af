//! Credential delivery (host-sealed mode): a captured credential is sealed into the store as its
//! next version and pushed into the user's CLI VM, which is then followed for refreshes
//! ([`super::chain`]); pushes that failed are retried later (with back-off) or by [`push_pending`].
//! In the user-sealed mode the host cannot open what it stores: [`super::handover`] delivers.

use std::sync::Arc;
use std::time::Duration;

use protocol::creds::{CredentialFile, CredentialMeta, CredsPutRequest, CredsScope};
use tracing::warn;

use super::account::CliAgent;
use super::flow::{record_created, serve_cli_egress, FlowError};
use super::provider::ProviderLogin;
use super::{Inner, LoginError};
use crate::client::AgentClient;
use crate::store::{AuditEvent, NewVersion};
use crate::vault::{CredentialPlaintext, RecordContext, Scheme};
use crate::vm::{VmHandle, VmKind};

/// Seals and stores the next version of the user's credential (with its expiry and scopes, read
/// from the file as the provider rules say); returns the version. `from_vm` names the CLI VM a
/// refresh came from.
pub(super) async fn store_sealed(
    inner: &Inner,
    user: &str,
    provider: &ProviderLogin,
    plaintext: &CredentialPlaintext,
    from_vm: Option<&str>,
) -> Result<i64, FlowError> {
    let meta = serde_json::from_slice::<serde_json::Value>(plaintext.expose())
        .map(|json| CredentialMeta {
            expires_at_ms: provider.credential.expiry_ms(&json),
            scopes: provider.credential.granted_scopes(&json),
        })
        .unwrap_or_default();
    let provider = provider.name.as_str();
    for _ in 0..16 {
        let current = inner
            .store
            .credential(user, provider)
            .await?
            .map_or(0, |c| c.version);
        let version = current + 1;
        let envelope = inner.vault.seal(
            &RecordContext {
                user_id: user,
                provider,
                version,
            },
            plaintext,
        )?;
        let new = NewVersion {
            version,
            envelope: &envelope,
            meta: &meta,
            from_vm,
        };
        if inner.store.put_credential(user, provider, new).await? {
            let event = match from_vm {
                None => AuditEvent::CredentialCaptured {
                    provider: provider.to_owned(),
                    version,
                },
                Some(vm_id) => AuditEvent::CredentialRefreshed {
                    provider: provider.to_owned(),
                    version,
                    vm_id: vm_id.to_owned(),
                },
            };
            inner.store.audit(Some(user), &event).await?;
            return Ok(version);
        }
    }
    Err(FlowError::Login(
        "credential version kept changing under us".into(),
    ))
}

/// Writes the credential into the user's CLI VM (0600, atomic), records the push, and follows the
/// VM's file for refreshes from then on.
pub(super) async fn push(
    inner: &Arc<Inner>,
    user: &str,
    provider: &ProviderLogin,
    version: i64,
    plaintext: &CredentialPlaintext,
) -> Result<(), FlowError> {
    let cli = connect_cli(inner, user).await?;
    super::chain::check_holder(inner, user, &provider.name, &cli.vm_id).await?;
    // The follower would take this write for a refresh: it restarts after it.
    inner.followers.stop(user, &provider.name);
    let client = &cli.client;
    let scope = CredsScope {
        provider: provider.name.clone(),
        home: Some(cli.guest_home.clone()),
        ..Default::default()
    };
    client
        .creds_put(&CredsPutRequest {
            scope,
            files: vec![CredentialFile {
                path: provider.credential_file.clone(),
                content: plaintext.expose().to_vec(),
            }],
        })
        .await?;
    pushed(inner, user, &provider.name, version, &cli).await
}

/// Records that `version` reached the user's CLI VM (which now holds the token chain) and
/// follows it there.
pub(super) async fn pushed(
    inner: &Arc<Inner>,
    user: &str,
    provider: &str,
    version: i64,
    cli: &CliAgent,
) -> Result<(), FlowError> {
    inner
        .store
        .mark_credential_pushed(user, provider, version, &cli.vm_id)
        .await?;
    inner
        .store
        .audit(
            Some(user),
            &AuditEvent::CredentialPushed {
                provider: provider.to_owned(),
                version,
            },
        )
        .await?;
    super::chain::follow(inner, user, provider, cli, version).await?;
    Ok(())
}

/// Makes sure the user's CLI VM runs: recorded when this call created it, its hello waited for,
/// the user's egress port assigned and the VM's egress served by the gateway.
pub(super) async fn ensure_cli(inner: &Inner, user: &str) -> Result<VmHandle, FlowError> {
    let cli = inner.backend.ensure_cli_vm(user).await?;
    if cli.created {
        record_created(inner, user, &cli, VmKind::Cli, None).await?;
        if let Some(hello) = &cli.hello {
            hello.wait(inner.config.hello_timeout).await?;
        }
    }
    inner.egress.assign(user).await?;
    serve_cli_egress(inner, user, &cli)?;
    Ok(cli)
}

/// [`ensure_cli`], then connects to the VM's agent.
pub(super) async fn connect_cli(inner: &Inner, user: &str) -> Result<CliAgent, FlowError> {
    let cli = ensure_cli(inner, user).await?;
    let client = AgentClient::connect_with_retry(&*cli.connector, inner.config.hello_timeout)
        .await?
        .with_deadline(inner.config.call_timeout);
    Ok(CliAgent {
        client,
        vm_id: cli.id,
        guest_home: cli.guest_home,
    })
}

/// Opens the stored record and pushes it (host-sealed records only: a user-sealed one waits for
/// the user's page).
async fn push_stored(
    inner: &Arc<Inner>,
    user: &str,
    provider_name: &str,
) -> Result<bool, FlowError> {
    let Some(provider) = inner
        .config
        .providers
        .iter()
        .find(|p| p.name == provider_name)
    else {
        return Ok(false);
    };
    let Some(record) = inner.store.credential(user, provider_name).await? else {
        return Ok(false);
    };
    if !record.push_pending() || record.envelope.scheme != Scheme::HostAes256Gcm {
        return Ok(false);
    }
    let ctx = RecordContext {
        user_id: user,
        provider: provider_name,
        version: record.version,
    };
    let plaintext = inner.vault.open(&ctx, &record.envelope)?;
    push(inner, user, provider, record.version, &plaintext).await?;
    Ok(true)
}

/// Pushes every stored credential whose latest version has not reached its CLI VM. Users are
/// worked in parallel, each user's records in order: one CLI VM that never answers costs its own
/// user the call deadline and nobody else anything.
pub(crate) async fn push_pending(inner: &Arc<Inner>) -> Result<usize, LoginError> {
    let mut by_user: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for record in inner.store.credentials_pending_push().await? {
        by_user
            .entry(record.user_id)
            .or_default()
            .push(record.provider);
    }
    let mut users = tokio::task::JoinSet::new();
    for (user, providers) in by_user {
        let inner = inner.clone();
        users.spawn(async move {
            let mut pushed = 0;
            for provider in providers {
                match push_stored(&inner, &user, &provider).await {
                    Ok(true) => pushed += 1,
                    Ok(false) => {}
                    Err(e) => warn!(%provider, error = %e, "push retry failed"),
                }
            }
            pushed
        });
    }
    let mut pushed = 0;
    while let Some(done) = users.join_next().await {
        match done {
            Ok(n) => pushed += n,
            Err(e) => warn!(error = %e, "a user's pushes ended abnormally"),
        }
    }
    Ok(pushed)
}

/// Pushes the stored credential again later, backing off, until it lands or the attempts run out.
pub(super) fn retry_later(inner: &Arc<Inner>, user: String, provider: String) {
    let weak = Arc::downgrade(inner);
    let mut delay = inner.config.push_retry_delay;
    let attempts = inner.config.push_retries;
    tokio::spawn(async move {
        for _ in 0..attempts {
            tokio::time::sleep(delay).await;
            let Some(inner) = weak.upgrade() else { return };
            match push_stored(&inner, &user, &provider).await {
                Ok(_) => return,
                Err(e) => warn!(%provider, error = %e, "push retry failed"),
            }
            delay = (delay * 2).min(Duration::from_secs(300));
        }
    });
}
