//! `exec`: run a process with the configured environment, stream its output, feed its input.
//!
//! The process runs in its own process group; when the call ends (process exited and output
//! drained, or the caller went away) the whole group is killed so nothing it started is left behind.

use std::process::Stdio;
use std::sync::Arc;

use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use protocol::body::{ChannelBody, FrameReader, FrameSender};
use protocol::frame::{Frame, FrameKind, DEFAULT_MAX_FRAME};
use protocol::messages::{Exec, ExecEvent, ExecRequest, ExitStatus};
use protocol::{ErrorBody, ErrorCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tracing::{debug, warn};

use crate::rpc::body::{error, open_stream, ResponseBody};
use crate::state::Agent;

/// Read size for process output: large reads mean fewer frames, but each frame is a fresh
/// allocation and musl's allocator serves blocks over ~128 KiB with mmap (page faults on every
/// frame), so stay just under that.
const READ_CHUNK: usize = 120 * 1024;
/// Size asked for the output pipes of a process.
const PIPE_BYTES: i32 = 1024 * 1024;
/// Frames buffered per call before the producer waits for the client.
const CHANNEL_DEPTH: usize = 16;

/// Serves one `exec` call.
pub async fn serve(agent: Arc<Agent>, req: Request<Incoming>) -> Response<ResponseBody> {
    let (request, reader) = match open_stream::<Exec>(req, DEFAULT_MAX_FRAME).await {
        Ok(opened) => opened,
        Err(e) => return error(&e),
    };
    let child = match spawn(&agent, &request) {
        Ok(child) => child,
        Err(e) => return error(&e),
    };
    let (tx, body) = ChannelBody::channel(CHANNEL_DEPTH);
    tokio::spawn(async move {
        let _running = agent.track_process();
        run(child, reader, tx).await;
    });
    Response::builder()
        .status(StatusCode::OK)
        .body(body.boxed())
        .unwrap_or_else(|_| error(&ErrorBody::new(ErrorCode::Internal, "response")))
}

fn spawn(agent: &Agent, request: &ExecRequest) -> Result<Child, ErrorBody> {
    let Some((program, args)) = request.argv.split_first() else {
        return Err(ErrorBody::new(ErrorCode::BadRequest, "argv is empty"));
    };
    let run_as = agent
        .users()
        .resolve(request.user.as_deref())
        .map_err(|e| e.to_error_body())?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(agent.process_env(&request.env, run_as.as_ref()))
        .stdin(if request.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &request.cwd {
        cmd.current_dir(cwd);
    }
    // std drops the supplementary groups, then the group, then the user, all before it enters
    // `cwd`: the program never enters a directory its user could not.
    if let Some(user) = run_as.as_ref().filter(|u| u.needs_switch()) {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd.spawn().map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorCode::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorCode::Forbidden,
            _ => ErrorCode::Io,
        };
        ErrorBody::new(code, format!("cannot start {program:?}: {e}"))
    })
}

async fn run(mut child: Child, mut reader: FrameReader<Incoming>, tx: FrameSender) {
    let pid = child.id();
    if let Some(pid) = pid {
        if tx.send_message(&ExecEvent::Started { pid }).await.is_err() {
            kill_group(pid);
            return;
        }
    }
    if let Some(out) = child.stdout.as_ref() {
        widen_pipe(out);
    }
    if let Some(err) = child.stderr.as_ref() {
        widen_pipe(err);
    }
    let stdout = child
        .stdout
        .take()
        .map(|s| pump(s, FrameKind::Stdout, tx.clone()));
    let stderr = child
        .stderr
        .take()
        .map(|s| pump(s, FrameKind::Stderr, tx.clone()));
    let stdin = child.stdin.take();
    let work = async {
        let feed = feed_stdin(&mut reader, stdin);
        let outputs = async {
            if let Some(f) = stdout {
                f.await;
            }
            if let Some(f) = stderr {
                f.await;
            }
        };
        let (feed_result, ()) = tokio::join!(feed, outputs);
        (feed_result, child.wait().await)
    };
    tokio::select! {
        (feed_result, status) = work => {
            if let Some(pid) = pid { kill_group(pid); }
            if let Err(e) = feed_result {
                let _ = tx.send(Frame::error(&e)).await;
                return;
            }
            match status {
                Ok(status) => {
                    let _ = tx.send_message(&ExecEvent::Exited(exit_status(status))).await;
                }
                Err(e) => {
                    let _ = tx.send(Frame::error(&ErrorBody::new(ErrorCode::Io, e.to_string()))).await;
                }
            }
        }
        () = tx.closed() => {
            debug!(?pid, "caller went away, killing the process group");
            if let Some(pid) = pid { kill_group(pid); }
        }
    }
}

/// Copies the caller's stdin frames into the process. A malformed frame ends the call with an
/// error (the process is killed), the connection stays up.
async fn feed_stdin(
    reader: &mut FrameReader<Incoming>,
    mut stdin: Option<ChildStdin>,
) -> Result<(), ErrorBody> {
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(protocol::body::ReadError::Frame(e)) => {
                let body = e.to_error_body();
                warn!(error = %body, "bad frame from caller");
                return Err(body);
            }
            // The caller reset its half of the stream: treat as end of input; `tx.closed()` tells
            // us if the whole call is gone.
            Err(protocol::body::ReadError::Body(_)) => return Ok(()),
        };
        match frame.kind {
            FrameKind::Stdin => {
                if let Some(pipe) = stdin.as_mut() {
                    if pipe.write_all(&frame.payload).await.is_err() {
                        // The process closed its stdin; drop further input.
                        stdin = None;
                    }
                }
            }
            other => {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("unexpected {other:?} frame on exec input"),
                ));
            }
        }
    }
}

/// Sends what the process writes as frames. Each read lands in a buffer that becomes the frame's
/// payload as it is (no copy); see [`Buffers`] for where the next read goes.
async fn pump<R: AsyncRead + Unpin>(mut pipe: R, kind: FrameKind, tx: FrameSender) {
    let mut buffers = Buffers::default();
    loop {
        let buf = buffers.next();
        match pipe.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let frame = Frame::data(kind, buf.split().freeze());
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The read buffers of one output stream. A frame's payload is a frozen piece of one of them;
/// once the client has taken the frame (the piece is dropped), the buffer is reused as it is, so
/// a long stream reads into memory that is already mapped instead of faulting in (and zeroing)
/// fresh pages for every frame. At most one buffer per frame in flight, plus two.
#[derive(Debug, Default)]
struct Buffers {
    ring: Vec<BytesMut>,
    next: usize,
}

impl Buffers {
    const MAX: usize = CHANNEL_DEPTH + 2;

    /// An empty buffer with room for a read: a free one of the ring, else a new one while the
    /// ring may grow, else whatever the next one can give (a fresh allocation if need be).
    fn next(&mut self) -> &mut BytesMut {
        let n = self.ring.len();
        let free = (0..n)
            .map(|i| (self.next + i) % n)
            .find(|&i| self.ring[i].try_reclaim(READ_CHUNK));
        let i = match free {
            Some(i) => i,
            None if n < Self::MAX => {
                self.ring.push(BytesMut::with_capacity(READ_CHUNK));
                n
            }
            None => {
                let i = self.next % n;
                self.ring[i].reserve(READ_CHUNK);
                i
            }
        };
        self.next = i + 1;
        &mut self.ring[i]
    }
}

/// Producers often write in small pieces (8 KiB for coreutils). A wider pipe lets those pile up
/// while a frame is in flight, so each read carries more and per-frame costs shrink.
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    use nix::fcntl::{fcntl, FcntlArg};
    // Best effort: above /proc/sys/fs/pipe-max-size the kernel refuses and the default stays.
    let _ = fcntl(pipe.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // ESRCH (group already gone) is the normal case.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus {
        code: status.code(),
        signal: status.signal(),
    }
}
