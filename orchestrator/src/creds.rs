//! Credential calls on an [`AgentClient`]: watch a provider's credential files in the VM, push
//! captured ones into a running VM, wipe them.

use protocol::creds::{
    CapturedCredential, CredsEvent, CredsPut, CredsPutRequest, CredsPutResponse, CredsScope,
    CredsWatch, CredsWatchRequest, CredsWipe, CredsWipeResponse,
};

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

    /// The next capture; `None` when the agent ended the watch.
    pub async fn next_capture(&mut self) -> Result<Option<CapturedCredential>, ClientError> {
        loop {
            match self.call.next().await? {
                Some(StreamItem::Event(CredsEvent::Captured(c))) => return Ok(Some(c)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}
