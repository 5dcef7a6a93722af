//! Credential calls: watch a provider's credential files, push them into a running VM, wipe them.
//!
//! Contents travel as base64 and never show in `Debug` output: they are provider tokens.

use serde::{Deserialize, Serialize};

use crate::messages::base64_bytes;
use crate::messages::Empty;
use crate::method::{Method, Streaming, Unary};
use crate::sealed::{PublicKey, Sealed};
use crate::secret::EnvVars;

/// Whose credentials a call is about. The agent resolves `user` (or, without one, its own user)
/// to a home directory; `home` overrides that (tests, images with unusual layouts). The home is the
/// only allowed root for writes and wipes, and the owner of the home owns what is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredsScope {
    /// Provider name, as in the provider rules (`claude_code`, `codex`, `gemini_cli`).
    pub provider: String,
    /// Guest user whose home holds the files.
    #[serde(default)]
    pub user: Option<String>,
    /// Home directory to use instead of the user's.
    #[serde(default)]
    pub home: Option<String>,
    /// Extra environment for resolving the provider's overrides (`CLAUDE_CONFIG_DIR`, `CODEX_HOME`,
    /// `GEMINI_CLI_HOME`), on top of what `configure` set.
    #[serde(default)]
    pub env: EnvVars,
}

/// `creds_watch`: stream a capture each time a credential file of the provider becomes complete
/// and valid with new content. The response opens with [`CredsEvent::Watching`]; the call lasts
/// until the caller drops it.
#[derive(Debug)]
pub struct CredsWatch;
impl Method for CredsWatch {
    const NAME: &'static str = "creds_watch";
}
impl Streaming for CredsWatch {
    type Request = CredsWatchRequest;
    type Event = CredsEvent;
}

/// Opening message of [`CredsWatch`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredsWatchRequest {
    /// Provider and user.
    #[serde(flatten)]
    pub scope: CredsScope,
    /// Also report files that are already complete when the watch starts (otherwise they are the
    /// baseline and only changes are reported).
    #[serde(default)]
    pub include_existing: bool,
    /// Seal every capture to this key instead of sending its bytes ([`CredsEvent::Sealed`]):
    /// the zero-knowledge mode, where the host never sees a token.
    #[serde(default)]
    pub seal_to: Option<SealTo>,
}

/// Whom captures are sealed to, and the versions they are bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealTo {
    /// The user's public key.
    pub recipient: PublicKey,
    /// The user the credential belongs to (bound into every envelope).
    pub user: String,
    /// Version of the first capture; each further capture of the watch takes the next one.
    pub first_version: i64,
}

/// Messages of a [`CredsWatch`] response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CredsEvent {
    /// The watch is in place: changes from now on are reported.
    Watching {
        /// The credential files watched.
        paths: Vec<String>,
    },
    /// A credential file was captured.
    Captured(CapturedCredential),
    /// A credential file was captured and sealed to [`CredsWatchRequest::seal_to`].
    Sealed(SealedCapture),
}

/// The largest credential file that travels (real ones are a few KiB). Both ends hold to it: the
/// agent does not read a larger file, the host does not store one; and its base64 form inside a
/// JSON event stays well under the frame limit ([`crate::frame::DEFAULT_MAX_FRAME`]).
pub const MAX_CREDENTIAL_BYTES: usize = 256 * 1024;

/// What the host may know of a credential without opening it, read in the VM from the fields the
/// provider rules name (`expires_at`, `scopes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialMeta {
    /// When the token expires, Unix ms, where the file says.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// Scopes the file says were granted.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// One complete, valid credential file, sealed in the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCapture {
    /// Provider whose file it is.
    pub provider: String,
    /// Absolute path in the guest.
    pub path: String,
    /// The version the envelope is bound to.
    pub version: i64,
    /// The file's bytes, sealed to the watch's recipient.
    pub sealed: Sealed,
    /// Expiry and scopes, in clear.
    pub meta: CredentialMeta,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
}

/// One complete, valid credential file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedCredential {
    /// Provider whose file it is.
    pub provider: String,
    /// Absolute path in the guest.
    pub path: String,
    /// The file's bytes.
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
    /// Hex sha256 of `content`.
    pub sha256: String,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
}

impl std::fmt::Debug for CapturedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedCredential")
            .field("provider", &self.provider)
            .field("path", &self.path)
            .field("content", &"[redacted]")
            .field("sha256", &self.sha256)
            .field("mtime_ms", &self.mtime_ms)
            .finish()
    }
}

/// `creds_put`: write credential files atomically (temp, fsync, rename, fsync dir), mode 0600,
/// owned by the home's owner, parents created 0700; never through a symlink, only under the home.
#[derive(Debug)]
pub struct CredsPut;
impl Method for CredsPut {
    const NAME: &'static str = "creds_put";
}
impl Unary for CredsPut {
    type Request = CredsPutRequest;
    type Response = CredsPutResponse;
}

/// Request of [`CredsPut`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredsPutRequest {
    /// Provider and user.
    #[serde(flatten)]
    pub scope: CredsScope,
    /// Files to write, in order. A file at one of the provider's credential paths must be
    /// complete (valid JSON with the required fields) or nothing is written.
    pub files: Vec<CredentialFile>,
}

/// One file to push.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialFile {
    /// Absolute, or relative to the home (`.claude/.credentials.json`, `~/.codex/auth.json`).
    pub path: String,
    /// The bytes to write.
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
}

impl std::fmt::Debug for CredentialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialFile")
            .field("path", &self.path)
            .field("content", &"[redacted]")
            .finish()
    }
}

/// Answer to [`CredsPut`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredsPutResponse {
    /// What was written, in request order.
    pub written: Vec<WrittenFile>,
}

/// One written file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenFile {
    /// Absolute path in the guest.
    pub path: String,
    /// Bytes written.
    pub len: u64,
    /// Hex sha256 of what was written.
    pub sha256: String,
    /// Directories that were created for it.
    pub created_dirs: Vec<String>,
}

/// `creds_key`: the public half of the key pair the agent made at start (memory only), for sealing
/// credentials to this VM ([`CredsPutSealed`]).
#[derive(Debug)]
pub struct CredsKey;
impl Method for CredsKey {
    const NAME: &'static str = "creds_key";
}
impl Unary for CredsKey {
    type Request = Empty;
    type Response = CredsKeyResponse;
}

/// Answer to [`CredsKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredsKeyResponse {
    /// The VM's public key.
    pub public_key: PublicKey,
}

/// `creds_put_sealed`: open a credential sealed to this VM's key ([`CredsKey`]) and write it as
/// [`CredsPut`] would. Refused, writing nothing, when it does not open for exactly this user,
/// provider and version, or when the agent already wrote a later version of the provider.
#[derive(Debug)]
pub struct CredsPutSealed;
impl Method for CredsPutSealed {
    const NAME: &'static str = "creds_put_sealed";
}
impl Unary for CredsPutSealed {
    type Request = CredsPutSealedRequest;
    type Response = CredsPutResponse;
}

/// Request of [`CredsPutSealed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredsPutSealedRequest {
    /// Provider and guest user.
    #[serde(flatten)]
    pub scope: CredsScope,
    /// Where to write it (as [`CredentialFile::path`]).
    pub path: String,
    /// The user the credential belongs to, as bound into the envelope (named apart from the
    /// scope's guest `user`).
    pub owner: String,
    /// The version, as bound into the envelope.
    pub version: i64,
    /// The file's bytes, sealed to this VM's key.
    pub sealed: Sealed,
}

/// `creds_wipe`: remove the provider's credential files and temp files left next to them.
#[derive(Debug)]
pub struct CredsWipe;
impl Method for CredsWipe {
    const NAME: &'static str = "creds_wipe";
}
impl Unary for CredsWipe {
    type Request = CredsScope;
    type Response = CredsWipeResponse;
}

/// Answer to [`CredsWipe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredsWipeResponse {
    /// Files removed (absolute paths); empty when there was nothing to remove.
    pub removed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_stay_out_of_debug_and_travel_as_base64() {
        let c = CapturedCredential {
            provider: "codex".into(),
            path: "/home/u/.codex/auth.json".into(),
            content: b"fake-refresh-token-0001".to_vec(),
            sha256: "00".into(),
            mtime_ms: 1,
        };
        assert!(!format!("{c:?}").contains("fake-refresh"));
        let f = CredentialFile {
            path: "x".into(),
            content: b"fake-refresh-token-0001".to_vec(),
        };
        assert!(!format!("{f:?}").contains("fake-refresh"));
        let json = serde_json::to_string(&CredsEvent::Captured(c)).expect("encode");
        assert!(json.contains(r#""event":"captured""#) && !json.contains("fake-refresh"));
    }

    #[test]
    fn scope_is_flattened_and_optional_fields_default() {
        let req: CredsWatchRequest =
            serde_json::from_str(r#"{"provider":"codex","future":1}"#).expect("parse");
        assert_eq!(req.scope.provider, "codex");
        assert!(req.scope.user.is_none() && !req.include_existing);
    }
}
