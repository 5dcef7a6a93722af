//! The user-sealed mode ([`Sealing::User`]): the host stores and relays envelopes it cannot open.
//!
//! The user's page holds the private key. A login's browser VM seals the captured file to the
//! user's public key; the host stores that envelope. To reach the CLI VM, the page fetches the
//! envelope and the CLI VM's public key ([`LoginService::pending_delivery`]), opens the envelope,
//! re-seals the file to the VM's key and hands that back ([`LoginService::deliver`]); the VM's
//! agent opens it and writes the file. Refreshes come back sealed to the user ([`super::chain`]).

use protocol::creds::{CredsPutSealedRequest, CredsScope, SealedCapture};
use protocol::sealed::{PublicKey, Sealed};
use serde::{Deserialize, Serialize};

use super::chain::{check_holder, user_envelope, user_key};
use super::deliver::{connect_cli, pushed};
use super::flow::FlowError;
use super::{Inner, LoginError, LoginService, Sealing};
use crate::store::{AuditEvent, NewVersion};

/// What the user's page needs to move a stored credential into their CLI VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDelivery {
    /// Provider id.
    pub provider: String,
    /// The user it belongs to (bound into both envelopes).
    pub user: String,
    /// The stored version (bound into both envelopes).
    pub version: i64,
    /// The stored envelope, sealed to the user's key.
    pub sealed: Sealed,
    /// The CLI VM to deliver to.
    pub vm_id: String,
    /// That VM's public key, to re-seal to.
    pub vm_key: PublicKey,
}

/// The page's answer: the credential re-sealed to the CLI VM's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The version it re-sealed (must still be the stored one).
    pub version: i64,
    /// The CLI VM it sealed for (must still be the user's CLI VM).
    pub vm_id: String,
    /// The file, sealed to that VM's key.
    pub sealed: Sealed,
}

/// Stores a capture sealed in the browser VM to the user's key, as its version.
pub(super) async fn store_capture(
    inner: &Inner,
    user: &str,
    key: &PublicKey,
    capture: &SealedCapture,
) -> Result<i64, FlowError> {
    let envelope = user_envelope(key, capture)?;
    let new = NewVersion {
        version: capture.version,
        envelope: &envelope,
        meta: &capture.meta,
        from_vm: None,
    };
    if !inner
        .store
        .put_credential(user, &capture.provider, new)
        .await?
    {
        return Err(FlowError::Login(
            "another version of this credential was stored during the login; link again".into(),
        ));
    }
    inner
        .store
        .audit(
            Some(user),
            &AuditEvent::CredentialCaptured {
                provider: capture.provider.clone(),
                version: capture.version,
            },
        )
        .await?;
    Ok(capture.version)
}

impl LoginService {
    /// How this service seals credentials.
    pub fn sealing(&self) -> Sealing {
        self.inner.config.sealing
    }

    /// Registers `user`'s public key (replacing an earlier one: credentials sealed to the old key
    /// then open only with the old private key).
    pub async fn set_user_key(&self, user: &str, key: &PublicKey) -> Result<(), LoginError> {
        if user.trim().is_empty() {
            return Err(LoginError::InvalidUser);
        }
        self.inner
            .store
            .set_user_key(user, &key.to_base64())
            .await?;
        tracing::info!(key = %key.fingerprint(), "user key registered");
        Ok(())
    }

    /// `user`'s registered public key.
    pub async fn user_key(&self, user: &str) -> Result<Option<PublicKey>, LoginError> {
        Ok(user_key(&self.inner, user).await?)
    }

    /// The user-sealed credential of `provider` waiting for the user's page to deliver it into
    /// the CLI VM (started if it is not running); `None` when there is nothing to deliver.
    pub async fn pending_delivery(
        &self,
        user: &str,
        provider: &str,
    ) -> Result<Option<PendingDelivery>, LoginError> {
        let Some(record) = self.inner.store.credential(user, provider).await? else {
            return Ok(None);
        };
        let Some(sealed) = record.envelope.user_sealed() else {
            return Ok(None);
        };
        if !record.push_pending() {
            return Ok(None);
        }
        let cli = connect_cli(&self.inner, user).await?;
        let vm_key = cli.client.creds_key().await?;
        Ok(Some(PendingDelivery {
            provider: provider.to_owned(),
            user: user.to_owned(),
            version: record.version,
            sealed,
            vm_id: cli.vm_id,
            vm_key,
        }))
    }

    /// Writes a credential the user's page re-sealed to the CLI VM's key. Refused when the
    /// version is not the stored one (stale or replayed), when the CLI VM changed since the page
    /// asked, or when the VM's agent cannot open it (another VM's key, another user, provider or
    /// version, tampered): nothing is written then.
    pub async fn deliver(
        &self,
        user: &str,
        provider: &str,
        delivery: &Delivery,
    ) -> Result<(), LoginError> {
        let inner = &self.inner;
        let recipe = self
            .provider(provider)
            .ok_or_else(|| LoginError::UnknownProvider(provider.to_owned()))?;
        let record = inner
            .store
            .credential(user, provider)
            .await?
            .ok_or_else(|| LoginError::Refused(format!("no stored {provider} credential")))?;
        if record.version != delivery.version {
            return Err(LoginError::Refused(format!(
                "version {} is not the stored version {}",
                delivery.version, record.version
            )));
        }
        let cli = connect_cli(inner, user).await?;
        if cli.vm_id != delivery.vm_id {
            return Err(LoginError::Refused(format!(
                "the CLI VM is now {}, not {}: fetch the delivery again",
                cli.vm_id, delivery.vm_id
            )));
        }
        check_holder(inner, user, provider, &cli.vm_id)
            .await
            .map_err(|e| LoginError::Refused(e.to_string()))?;
        inner.followers.stop(user, provider);
        cli.client
            .creds_put_sealed(&CredsPutSealedRequest {
                scope: CredsScope {
                    provider: provider.to_owned(),
                    home: Some(cli.guest_home.clone()),
                    ..Default::default()
                },
                path: recipe.credential_file.clone(),
                owner: user.to_owned(),
                version: delivery.version,
                sealed: delivery.sealed.clone(),
            })
            .await
            .map_err(|e| match e {
                crate::client::ClientError::Agent(body) => {
                    LoginError::Refused(format!("the CLI VM refused it: {}", body.message))
                }
                other => other.into(),
            })?;
        pushed(inner, user, provider, delivery.version, &cli).await?;
        Ok(())
    }
}
