//! A minimal QMP (QEMU Machine Protocol) client: the monitor the host stops, saves, restores and
//! resumes a VM through.
//!
//! QEMU connects to a socket the host listens on (as it does for the serial console), so a QEMU
//! running as an unprivileged account needs no directory it can write. Replies are read in order;
//! asynchronous events seen meanwhile are queued for [`Qmp::event`].

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;

/// Name of the monitor socket in a VM's directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// Longest line QEMU's monitor is believed to send; longer ones are refused, not buffered.
const MAX_LINE: u64 = 1 << 20;
/// Most events kept while waiting for a reply.
const MAX_QUEUED_EVENTS: usize = 256;

/// Why a monitor exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed.
    #[error("QMP {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// QEMU closed the monitor (it exited).
    #[error("QMP: QEMU closed its monitor")]
    Closed,
    /// QEMU did not connect or answer in time.
    #[error("QMP: no answer within {0:?}")]
    Timeout(Duration),
    /// Something that is not QMP.
    #[error("QMP: {0}")]
    Protocol(String),
    /// A command failed.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// The host's end of a VM's monitor, listening until QEMU connects.
#[derive(Debug)]
pub struct QmpListener {
    listener: UnixListener,
}

impl QmpListener {
    /// Listens at `path` (before QEMU starts: QEMU connects at launch).
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            listener: UnixListener::bind(path)?,
        })
    }

    /// Waits up to `timeout` for QEMU, reads its greeting and enters command mode.
    pub async fn accept(self, timeout: Duration) -> Result<Qmp, QmpError> {
        let (stream, _) = tokio::time::timeout(timeout, self.listener.accept())
            .await
            .map_err(|_| QmpError::Timeout(timeout))?
            .map_err(|source| QmpError::Io {
                what: "accept",
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer: write,
            events: VecDeque::new(),
        };
        let greeting = tokio::time::timeout(timeout, qmp.line())
            .await
            .map_err(|_| QmpError::Timeout(timeout))??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "unexpected greeting {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }
}

fn request_line(command: &str, arguments: Option<Value>) -> String {
    let mut request = json!({ "execute": command });
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let mut line = request.to_string();
    line.push('\n');
    line
}

/// A connected monitor in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: VecDeque<Value>,
}

impl Qmp {
    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let line = request_line(command, arguments);
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| QmpError::Io {
                what: "write",
                source,
            })?;
        self.reply(command).await
    }

    /// Hands QEMU the open file `fd` under `name` (`getfd`), for a later command to use as
    /// `fd:<name>`: QEMU then never opens a path itself, so a QEMU running as an unprivileged
    /// account needs no access to where the file lives.
    pub async fn send_fd(
        &mut self,
        name: &str,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), QmpError> {
        use std::os::fd::AsRawFd;
        let line = request_line("getfd", Some(json!({ "fdname": name })));
        let socket: &tokio::net::UnixStream = self.writer.as_ref();
        let fds = [fd.as_raw_fd()];
        loop {
            socket.writable().await.map_err(|source| QmpError::Io {
                what: "wait to write",
                source,
            })?;
            let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(line.as_bytes())];
                let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                nix::sys::socket::sendmsg::<()>(
                    socket.as_raw_fd(),
                    &iov,
                    &cmsg,
                    nix::sys::socket::MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                Ok(n) if n == line.len() => break,
                Ok(n) => {
                    return Err(QmpError::Protocol(format!(
                        "getfd: only {n} of {} bytes sent",
                        line.len()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(source) => {
                    return Err(QmpError::Io {
                        what: "send a file",
                        source,
                    })
                }
            }
        }
        self.reply("getfd").await.map(|_| ())
    }

    async fn reply(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let mut reply = self.line().await?;
            if let Some(value) = reply.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = reply.get("error") {
                let text = |k: &str| {
                    error
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            self.queue(reply);
        }
    }

    /// Waits for the next event named `name` whose `data` satisfies `matches` (events seen while
    /// waiting for replies count), up to `timeout`.
    pub async fn event(
        &mut self,
        name: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value, QmpError> {
        let is_it = |e: &Value| {
            e.get("event").and_then(Value::as_str) == Some(name)
                && matches(e.get("data").unwrap_or(&Value::Null))
        };
        if let Some(at) = self.events.iter().position(is_it) {
            return Ok(self.events.remove(at).unwrap_or_default());
        }
        tokio::time::timeout(timeout, async {
            loop {
                let event = self.line().await?;
                if is_it(&event) {
                    return Ok(event);
                }
                self.queue(event);
            }
        })
        .await
        .map_err(|_| QmpError::Timeout(timeout))?
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let status = self.execute("query-status", None).await?;
        status
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol(format!("query-status answered {status}")))
    }

    fn queue(&mut self, event: Value) {
        if self.events.len() == MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    async fn line(&mut self) -> Result<Value, QmpError> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|source| QmpError::Io {
                what: "read",
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        if buf.last() != Some(&b'\n') {
            return Err(QmpError::Protocol(format!(
                "a line longer than {MAX_LINE} bytes"
            )));
        }
        serde_json::from_slice(&buf).map_err(|e| QmpError::Protocol(format!("not JSON: {e}")))
    }
}
