//! Request and response types of the foundation calls.

use serde::{Deserialize, Serialize};

use crate::hello::Hello;
use crate::method::{Method, Streaming, Unary};
use crate::secret::EnvVars;

/// Serde adapter: bytes as standard base64 strings inside JSON.
pub mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes bytes as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Deserializes base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// `hello`: the same greeting the agent sends when it dials the host, on demand.
#[derive(Debug)]
pub struct GetHello;
impl Method for GetHello {
    const NAME: &'static str = "hello";
}
impl Unary for GetHello {
    type Request = Empty;
    type Response = Hello;
}

/// A request without parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `health`: is the agent serving.
#[derive(Debug)]
pub struct Health;
impl Method for Health {
    const NAME: &'static str = "health";
}
impl Unary for Health {
    type Request = Empty;
    type Response = HealthResponse;
}

/// Answer to [`Health`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// Always `"ok"` when the agent answers at all.
    pub status: String,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
}

/// `stats`: resource usage of the agent and the guest.
#[derive(Debug)]
pub struct Stats;
impl Method for Stats {
    const NAME: &'static str = "stats";
}
impl Unary for Stats {
    type Request = Empty;
    type Response = StatsResponse;
}

/// Answer to [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsResponse {
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
    /// Resident set size of the agent process, KiB.
    pub agent_rss_kb: u64,
    /// Guest load averages over 1, 5 and 15 minutes.
    pub load_avg: [f64; 3],
    /// Guest memory total and available, KiB.
    pub mem_total_kb: u64,
    /// Guest memory available, KiB.
    pub mem_available_kb: u64,
    /// Processes the agent is currently running (exec and PTY sessions).
    pub running_processes: u32,
    /// Displays being streamed right now; none while nobody watches (nothing is captured then).
    #[serde(default)]
    pub desktops: Vec<crate::desktop::DesktopStats>,
}

/// `configure`: environment for everything the agent spawns from now on (proxy variables, session
/// id, ...). Replaces editing `/etc/environment` in the image.
#[derive(Debug)]
pub struct Configure;
impl Method for Configure {
    const NAME: &'static str = "configure";
}
impl Unary for Configure {
    type Request = ConfigureRequest;
    type Response = ConfigureResponse;
}

/// Request of [`Configure`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigureRequest {
    /// Variables to set (added to, or replacing, the configured environment).
    #[serde(default)]
    pub env: EnvVars,
    /// Variable names to remove.
    #[serde(default)]
    pub unset: Vec<String>,
    /// Replace the whole configured environment instead of merging.
    #[serde(default)]
    pub replace: bool,
    /// Login session this VM serves, for logs and spawned processes (`AGENT_SESSION_ID`).
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Answer to [`Configure`]: names only, values may be secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigureResponse {
    /// Names of all configured variables after the change.
    pub env_keys: Vec<String>,
    /// Current session id.
    pub session_id: Option<String>,
}

/// `exec`: run a process, stream its output, feed its input.
///
/// Request body: an [`ExecRequest`] message frame, then `Stdin` frames; the end of the request body
/// closes the process's stdin. Response body: an [`ExecEvent::Started`] message, `Stdout`/`Stderr`
/// frames, then an [`ExecEvent::Exited`] message (or an `Error` frame). Dropping the call kills the
/// process group.
#[derive(Debug)]
pub struct Exec;
impl Method for Exec {
    const NAME: &'static str = "exec";
}
impl Streaming for Exec {
    type Request = ExecRequest;
    type Event = ExecEvent;
}

/// Opening message of [`Exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Variables added on top of the configured environment for this process only.
    #[serde(default)]
    pub env: EnvVars,
    /// Working directory (default: the agent's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Whether the caller will send stdin; otherwise stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// The guest user the process runs as (see [`crate::pty::PtySpawn::user`]).
    #[serde(default)]
    pub user: Option<String>,
}

/// Control messages of an [`Exec`] response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The process is running.
    Started {
        /// Its process id in the guest.
        pid: u32,
    },
    /// The process ended; all its output has been sent.
    Exited(ExitStatus),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// A shell-style status: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 255,
        }
    }
}

/// `read_file`: read a whole file from the guest.
#[derive(Debug)]
pub struct ReadFile;
impl Method for ReadFile {
    const NAME: &'static str = "read_file";
}
impl Unary for ReadFile {
    type Request = ReadFileRequest;
    type Response = ReadFileResponse;
}

/// Request of [`ReadFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFileRequest {
    /// Absolute path in the guest.
    pub path: String,
}

/// Answer to [`ReadFile`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFileResponse {
    /// File content.
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

impl std::fmt::Debug for ReadFileResponse {
    // File contents may be credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFileResponse")
            .field("len", &self.content.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// `write_file`: write a whole file in the guest (atomically: temp file and rename).
#[derive(Debug)]
pub struct WriteFile;
impl Method for WriteFile {
    const NAME: &'static str = "write_file";
}
impl Unary for WriteFile {
    type Request = WriteFileRequest;
    type Response = WriteFileResponse;
}

/// Request of [`WriteFile`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFileRequest {
    /// Absolute path in the guest.
    pub path: String,
    /// New content.
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
    /// Permission bits (default 0644).
    #[serde(default)]
    pub mode: Option<u32>,
    /// Create missing parent directories (mode 0755).
    #[serde(default)]
    pub create_dirs: bool,
}

impl std::fmt::Debug for WriteFileRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFileRequest")
            .field("path", &self.path)
            .field("len", &self.content.len())
            .field("mode", &self.mode)
            .field("create_dirs", &self.create_dirs)
            .finish()
    }
}

/// Answer to [`WriteFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFileResponse {
    /// Bytes written.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored() {
        let req: ExecRequest =
            serde_json::from_str(r#"{"argv":["true"],"future_field":{"x":1}}"#).expect("parse");
        assert_eq!(req.argv, vec!["true".to_string()]);
        assert!(!req.stdin);
    }

    #[test]
    fn exec_events_are_tagged() {
        let json = serde_json::to_string(&ExecEvent::Exited(ExitStatus {
            code: Some(3),
            signal: None,
        }))
        .expect("serialize");
        assert_eq!(json, r#"{"event":"exited","code":3,"signal":null}"#);
    }

    #[test]
    fn file_contents_stay_out_of_debug() {
        let req = WriteFileRequest {
            path: "/x".into(),
            content: b"fake-secret-token".to_vec(),
            mode: None,
            create_dirs: false,
        };
        assert!(!format!("{req:?}").contains("fake-secret"));
    }
}
