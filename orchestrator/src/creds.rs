//! Credential calls on an [`AgentClient`]: watch a provider's credential files in the VM, push
//! captured ones into a running VM, wipe them.

use protocol::creds::{
    CapturedCredential, CredsEvent, CredsKey, CredsPut, CredsPutRequest, CredsPutResponse,
    CredsPutSealed, CredsPutSealedRequest, CredsScope, CredsWatch, CredsWatchRequest, CredsWipe,
    CredsWipeResponse, SealedCapture,
};
use protocol::messages::Empty;
use protocol::sealed::PublicKey;

use crate::client::{AgentClient, ClientError, StreamCall, StreamItem};

impl AgentClient {
    /// Starts watching a provider's credential files; the first event (the watched paths) has
    /// already arrived when this returns, so any change made after it is reported.
    pub async fn creds_watch(
        &self,
        req: &CredsWatchRequest,
    ) -> Result<CredsWatchCall, ClientError> {
        let mut call = self.open::<CredsWatch>(req).await?;
        call.close_input();
        match call.next().await? {
            Some(StreamItem::Event(CredsEvent::Watching { paths })) => {
                Ok(CredsWatchCall { call, paths })
            }
            other => Err(ClientError::Decode(format!(
                "creds_watch opened with {other:?} instead of the watched paths"
            ))),
        }
    }

    /// Writes credential files into the VM atomically, owned by the user, mode 0600.
    pub async fn creds_put(&self, req: &CredsPutRequest) -> Result<CredsPutResponse, ClientError> {
        self.call::<CredsPut>(req).await
    }

    /// The public key of the VM's agent that [`AgentClient::creds_put_sealed`] envelopes are
    /// sealed to (made when the agent started; memory only).
    pub async fn creds_key(&self) -> Result<PublicKey, ClientError> {
        Ok(self.call::<CredsKey>(&Empty {}).await?.public_key)
    }

    /// Writes a credential sealed to the VM's key: the agent opens it (only for exactly the
    /// request's user, provider and version) and writes it as [`AgentClient::creds_put`] does.
    pub async fn creds_put_sealed(
        &self,
        req: &CredsPutSealedRequest,
    ) -> Result<CredsPutResponse, ClientError> {
        self.call::<CredsPutSealed>(req).await
    }

    /// Removes a provider's credential files (and temp leftovers); says what was removed.
    pub async fn creds_wipe(&self, scope: &CredsScope) -> Result<CredsWipeResponse, ClientError> {
        self.call::<CredsWipe>(scope).await
    }
}

/// An open credential watch; dropping it ends the watch in the VM.
#[derive(Debug)]
pub struct CredsWatchCall {
    call: StreamCall<CredsWatch>,
    paths: Vec<String>,
}

impl CredsWatchCall {
    /// The credential files being watched.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The next capture of a watch without `seal_to`; `None` when the agent ended the watch.
    pub async fn next_capture(&mut self) -> Result<Option<CapturedCredential>, ClientError> {
        match self.next_event().await? {
            Some(CredsEvent::Captured(c)) => Ok(Some(c)),
            Some(other) => Err(unexpected(&other)),
            None => Ok(None),
        }
    }

    /// The next capture of a watch with `seal_to`; `None` when the agent ended the watch.
    pub async fn next_sealed(&mut self) -> Result<Option<SealedCapture>, ClientError> {
        match self.next_event().await? {
            Some(CredsEvent::Sealed(c)) => Ok(Some(c)),
            Some(other) => Err(unexpected(&other)),
            None => Ok(None),
        }
    }

    async fn next_event(&mut self) -> Result<Option<CredsEvent>, ClientError> {
        loop {
            match self.call.next().await? {
                Some(StreamItem::Event(CredsEvent::Watching { .. })) => continue,
                Some(StreamItem::Event(event)) => return Ok(Some(event)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}

fn unexpected(event: &CredsEvent) -> ClientError {
    let kind = match event {
        CredsEvent::Watching { .. } => "watching",
        CredsEvent::Captured(_) => "a plain capture",
        CredsEvent::Sealed(_) => "a sealed capture",
    };
    ClientError::Decode(format!(
        "the credential watch sent {kind}, not what it was asked for"
    ))
}
