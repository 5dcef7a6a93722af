//! Typed calls to an agent over one multiplexed HTTP/2 connection.
//!
//! An [`AgentClient`] is cheap to clone; clones share the connection, and calls made concurrently
//! run concurrently, each on its own HTTP/2 stream.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use protocol::body::{ChannelBody, FrameReader, FrameSender, ReadError};
use protocol::frame::{Frame, FrameKind, DEFAULT_MAX_FRAME};
use protocol::messages::{
    Configure, ConfigureRequest, ConfigureResponse, Empty, Exec, ExecEvent, ExecRequest,
    ExitStatus, GetHello, Health, HealthResponse, ReadFile, ReadFileRequest, ReadFileResponse,
    Stats, StatsResponse, WriteFile, WriteFileRequest, WriteFileResponse,
};
use protocol::{
    ErrorBody, Hello, Streaming, Unary, MAX_BODY_BYTES, PROTOCOL_HEADER, PROTOCOL_VERSION,
};
use tracing::debug;

use protocol::http2 as http2_settings;

use crate::transport::{AgentStream, Connector, TransportError};

/// Body of every request.
pub type RequestBody = BoxBody<Bytes, Infallible>;

/// Frames of input buffered per streaming call before the sender waits.
const INPUT_DEPTH: usize = 16;

/// The most of an error answer's body the host reads: an error is a code and a sentence, and a
/// guest must not make the host hold megabytes of it.
pub const MAX_ERROR_BODY: usize = 16 * 1024;

/// The most of an agent's error message the host keeps (it reaches logs and users).
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// The most [`StreamCall::collect_exec`] keeps of each output stream: collecting is for short
/// commands; a longer output is streamed, not collected.
pub const MAX_COLLECTED_OUTPUT: usize = 64 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No stream to the agent.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// HTTP/2 failed (connection lost, stream reset).
    #[error("http/2: {0}")]
    Http(#[from] hyper::Error),
    /// The agent answered with an error.
    #[error("agent refused: {0}")]
    Agent(ErrorBody),
    /// The agent's answer is not what the call expects (wrong event, missing exit status).
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// A request or answer is not the JSON its type says.
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A stream's frames are malformed.
    #[error("malformed frame: {0}")]
    Frame(#[from] protocol::frame::FrameError),
    /// The answer's body could not be read whole (too large, connection lost).
    #[error("reading the answer: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The request could not be built.
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    /// A streaming call's input side is closed (the call ended).
    #[error("the call has ended")]
    Closed,
    /// A deadline passed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A collected output grew past what the host keeps.
    #[error("the process wrote more than {0} bytes to one stream; not collected")]
    OutputTooLarge(usize),
}

/// A connection to one agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    send: http2::SendRequest<RequestBody>,
    deadline: Option<Duration>,
}

impl AgentClient {
    /// Opens a stream with `connector` and starts HTTP/2 on it.
    pub async fn connect(connector: &dyn Connector) -> Result<Self, ClientError> {
        Self::over(connector.connect().await?).await
    }

    /// Retries [`Self::connect`] until it succeeds or `timeout` passes: right after a hello the guest
    /// may still be finishing its listener setup, and a hybrid-vsock VMM resets early connections.
    pub async fn connect_with_retry(
        connector: &dyn Connector,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        loop {
            match Self::connect(connector).await {
                Ok(client) => return Ok(client),
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    debug!(error = %e, "connect failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts HTTP/2 over an already open stream.
    pub async fn over(stream: AgentStream) -> Result<Self, ClientError> {
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(http2_settings::STREAM_WINDOW)
            .initial_connection_window_size(http2_settings::CONNECTION_WINDOW)
            .max_frame_size(http2_settings::MAX_FRAME)
            .max_header_list_size(http2_settings::MAX_HEADER_LIST)
            .max_send_buf_size(http2_settings::MAX_SEND_BUFFER)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "agent connection ended");
            }
        });
        Ok(Self {
            send,
            deadline: None,
        })
    }

    /// This client with a deadline on every call: a unary call's whole answer, a streaming
    /// call's acceptance. A guest that takes the call and never answers then costs the caller
    /// `deadline`, not forever. Clones made from it keep it; the connection is shared.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Runs `work` within this client's deadline, if it has one.
    async fn within<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        match self.deadline {
            Some(d) => tokio::time::timeout(d, work)
                .await
                .map_err(|_| ClientError::Timeout(d))?,
            None => work.await,
        }
    }

    /// Whether the connection is still usable.
    pub fn is_open(&self) -> bool {
        !self.send.is_closed()
    }

    /// Sends a raw request. For tests of malformed input and for calls this crate does not wrap.
    pub async fn send_raw(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut send = self.send.clone();
        send.ready().await?;
        Ok(send.send_request(request).await?)
    }

    fn request(path: String, body: RequestBody) -> Result<Request<RequestBody>, ClientError> {
        Request::post(path)
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(ClientError::Request)
    }

    /// Makes a unary call.
    pub async fn call<M: Unary>(&self, req: &M::Request) -> Result<M::Response, ClientError> {
        let bytes = serde_json::to_vec(req)?;
        let request = Self::request(M::path(), Full::new(Bytes::from(bytes)).boxed())?;
        self.within(async {
            let response = self.send_raw(request).await?;
            let status = response.status();
            if status != StatusCode::OK {
                let body = read_body(response.into_body(), MAX_ERROR_BODY).await?;
                return Err(agent_error(status, &body));
            }
            let body = read_body(response.into_body(), MAX_BODY_BYTES).await?;
            Ok(serde_json::from_slice(&body)?)
        })
        .await
    }

    /// Opens a streaming call: sends the opening message, returns the call's two halves once the
    /// agent has accepted it.
    pub async fn open<M: Streaming>(&self, req: &M::Request) -> Result<StreamCall<M>, ClientError> {
        let (input, body) = ChannelBody::channel(INPUT_DEPTH);
        let opening = Frame::message(req)?;
        input.send(opening).await.map_err(|_| ClientError::Closed)?;
        let request = Self::request(M::path(), body.boxed())?;
        let response = self
            .within(async {
                let response = self.send_raw(request).await?;
                let status = response.status();
                if status != StatusCode::OK {
                    let body = read_body(response.into_body(), MAX_ERROR_BODY).await?;
                    return Err(agent_error(status, &body));
                }
                Ok(response)
            })
            .await?;
        Ok(StreamCall {
            input: Some(input),
            output: FrameReader::new(response.into_body(), DEFAULT_MAX_FRAME),
            _method: std::marker::PhantomData,
        })
    }

    /// The agent's greeting.
    pub async fn hello(&self) -> Result<Hello, ClientError> {
        self.call::<GetHello>(&Empty {}).await
    }

    /// Liveness.
    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        self.call::<Health>(&Empty {}).await
    }

    /// Asks an agent that is the VM's init to power the VM off; answered before the VM goes away.
    pub async fn poweroff(&self) -> Result<protocol::power::PoweroffResponse, ClientError> {
        self.call::<protocol::power::Poweroff>(&Empty {}).await
    }

    /// Resource usage.
    pub async fn stats(&self) -> Result<StatsResponse, ClientError> {
        self.call::<Stats>(&Empty {}).await
    }

    /// Sets the environment of everything the agent spawns from now on.
    pub async fn configure(
        &self,
        req: &ConfigureRequest,
    ) -> Result<ConfigureResponse, ClientError> {
        self.call::<Configure>(req).await
    }

    /// Reads a whole file.
    pub async fn read_file(&self, path: &str) -> Result<ReadFileResponse, ClientError> {
        self.call::<ReadFile>(&ReadFileRequest { path: path.into() })
            .await
    }

    /// Writes a whole file atomically.
    pub async fn write_file(
        &self,
        req: &WriteFileRequest,
    ) -> Result<WriteFileResponse, ClientError> {
        self.call::<WriteFile>(req).await
    }

    /// Starts a process; stream its output with [`StreamCall::next`].
    pub async fn exec(&self, req: &ExecRequest) -> Result<StreamCall<Exec>, ClientError> {
        self.open::<Exec>(req).await
    }

    /// Starts (or attaches to) a PTY session; stream it with [`StreamCall::next`], send keys as
    /// `Stdin` frames and controls with [`crate::pty::control`].
    pub async fn pty(
        &self,
        req: &protocol::pty::PtyRequest,
    ) -> Result<StreamCall<protocol::pty::Pty>, ClientError> {
        self.open::<protocol::pty::Pty>(req).await
    }

    /// Runs a process to completion, feeding it `stdin`, and collects its output.
    pub async fn exec_collect(
        &self,
        argv: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<ExecOutput, ClientError> {
        let req = ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: stdin.is_some(),
            ..Default::default()
        };
        let mut call = self.exec(&req).await?;
        if let Some(input) = stdin {
            for chunk in input.chunks(64 * 1024) {
                call.send(FrameKind::Stdin, Bytes::copy_from_slice(chunk))
                    .await?;
            }
        }
        call.close_input();
        call.collect_exec().await
    }
}

/// Everything a finished process produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

/// One item of a streaming call's output.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem<E> {
    /// A control message.
    Event(E),
    /// A byte chunk (`Stdout`, `Stderr`, ...).
    Data(FrameKind, Bytes),
}

/// An open streaming call.
#[derive(Debug)]
pub struct StreamCall<M: Streaming> {
    input: Option<FrameSender>,
    output: FrameReader<Incoming>,
    _method: std::marker::PhantomData<M>,
}

impl<M: Streaming> StreamCall<M> {
    /// Sends a byte frame (e.g. `Stdin`).
    pub async fn send(&self, kind: FrameKind, bytes: Bytes) -> Result<(), ClientError> {
        let input = self.input.as_ref().ok_or(ClientError::Closed)?;
        input
            .send(Frame::data(kind, bytes))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Sends a raw, already encoded frame; lets tests send malformed input.
    pub async fn send_frame(&self, frame: Frame) -> Result<(), ClientError> {
        let input = self.input.as_ref().ok_or(ClientError::Closed)?;
        input.send(frame).await.map_err(|_| ClientError::Closed)
    }

    /// A sender for input frames that can live on another task.
    pub fn input(&self) -> Option<FrameSender> {
        self.input.clone()
    }

    /// Ends the input side (for exec: closes the process's stdin).
    pub fn close_input(&mut self) {
        self.input = None;
    }

    /// The next output item, `None` at the end of the call. An error frame becomes
    /// [`ClientError::Agent`].
    pub async fn next(&mut self) -> Result<Option<StreamItem<M::Event>>, ClientError> {
        let frame = match self.output.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(ReadError::Frame(e)) => return Err(ClientError::Frame(e)),
            Err(ReadError::Body(e)) => return Err(ClientError::Http(e)),
        };
        match frame.kind {
            FrameKind::Message => Ok(Some(StreamItem::Event(frame.json()?))),
            FrameKind::Error => Err(ClientError::Agent(frame.json()?)),
            kind => Ok(Some(StreamItem::Data(kind, frame.payload))),
        }
    }
}

impl StreamCall<Exec> {
    /// Reads the call to its end, collecting output and the exit status.
    pub async fn collect_exec(mut self) -> Result<ExecOutput, ClientError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut status = None;
        let keep = |into: &mut Vec<u8>, b: &[u8]| {
            if into.len() + b.len() > MAX_COLLECTED_OUTPUT {
                return Err(ClientError::OutputTooLarge(MAX_COLLECTED_OUTPUT));
            }
            into.extend_from_slice(b);
            Ok(())
        };
        while let Some(item) = self.next().await? {
            match item {
                StreamItem::Data(FrameKind::Stdout, b) => keep(&mut stdout, &b)?,
                StreamItem::Data(FrameKind::Stderr, b) => keep(&mut stderr, &b)?,
                StreamItem::Event(ExecEvent::Exited(s)) => status = Some(s),
                _ => {}
            }
        }
        let status =
            status.ok_or_else(|| ClientError::Decode("exec ended without exit status".into()))?;
        Ok(ExecOutput {
            stdout,
            stderr,
            status,
        })
    }
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ClientError> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(ClientError::Body)
}

fn agent_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(mut err) => {
            if err.message.len() > MAX_ERROR_MESSAGE {
                let mut end = MAX_ERROR_MESSAGE;
                while !err.message.is_char_boundary(end) {
                    end -= 1;
                }
                err.message.truncate(end);
                err.message.push_str("… (cut)");
            }
            ClientError::Agent(err)
        }
        Err(_) => ClientError::Decode(format!(
            "status {status} with body {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_long_error_message_is_cut_on_a_character_boundary() {
        let long = ErrorBody::new(protocol::ErrorCode::Io, "ü".repeat(MAX_ERROR_MESSAGE));
        let body = serde_json::to_vec(&long).unwrap();
        let ClientError::Agent(err) = agent_error(StatusCode::INTERNAL_SERVER_ERROR, &body) else {
            panic!("an agent error");
        };
        assert!(err.message.len() <= MAX_ERROR_MESSAGE + "… (cut)".len());
        assert!(err.message.ends_with("… (cut)"));
        let short = ErrorBody::new(protocol::ErrorCode::Io, "disk full");
        let body = serde_json::to_vec(&short).unwrap();
        let ClientError::Agent(err) = agent_error(StatusCode::INTERNAL_SERVER_ERROR, &body) else {
            panic!("an agent error");
        };
        assert_eq!(err.message, "disk full");
    }
}
