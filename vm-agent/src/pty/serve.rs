//! The `pty` call: spawn or attach, then pump output and events out and keys and controls in.

use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nix::sys::signal::Signal;
use protocol::body::{ChannelBody, FrameReader, FrameSender};
use protocol::frame::{Frame, FrameKind, DEFAULT_MAX_FRAME};
use protocol::messages::ExitStatus;
use protocol::pty::{Pty, PtyControl, PtyEvent, PtyRequest, PtySpawn};
use protocol::{ErrorBody, ErrorCode};
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, warn};

use super::device::DeviceCode;
use super::session::{Attachment, Exit, PtyError, PtySession, SessionEvent};
use super::SpawnOptions;
use crate::detect::DetectedUrl;
use crate::rpc::body::{error, open_stream, ResponseBody};
use crate::state::Agent;

/// Frames buffered per call before output waits for the client.
const CHANNEL_DEPTH: usize = 64;

impl From<PtyError> for ErrorBody {
    fn from(e: PtyError) -> ErrorBody {
        let code = match &e {
            PtyError::EmptyArgv
            | PtyError::BadSize { .. }
            | PtyError::UnknownProvider(_)
            | PtyError::UnknownMode(_) => ErrorCode::BadRequest,
            PtyError::Spawn { .. } => ErrorCode::NotFound,
            PtyError::Ended => ErrorCode::BadRequest,
            PtyError::Resize(_) | PtyError::Signal(_) => ErrorCode::Io,
        };
        ErrorBody::new(code, e.to_string())
    }
}

fn device_code_event(code: DeviceCode) -> PtyEvent {
    PtyEvent::DeviceCode {
        url: code.url,
        code: code.code,
        provider: code.provider,
    }
}

fn url_event(u: DetectedUrl) -> PtyEvent {
    PtyEvent::Url {
        url: u.url,
        provider: u.provider,
        source: u.source,
    }
}

fn exit_status(e: Exit) -> ExitStatus {
    ExitStatus {
        code: e.code,
        signal: e.signal,
    }
}

/// Parses `INT`, `SIGINT` or a number.
pub fn parse_signal(name: &str) -> Result<Signal, ErrorBody> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.trim()
        .parse::<i32>()
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .or_else(|| Signal::from_str(&full).ok())
        .ok_or_else(|| ErrorBody::new(ErrorCode::BadRequest, format!("unknown signal {name:?}")))
}

/// Serves one `pty` call.
pub async fn serve(agent: Arc<Agent>, req: Request<Incoming>) -> Response<ResponseBody> {
    let (request, reader) = match open_stream::<Pty>(req, DEFAULT_MAX_FRAME).await {
        Ok(opened) => opened,
        Err(e) => return error(&e),
    };
    let (session, first, keep, interactive) = match request {
        PtyRequest::Spawn(spawn) => match start(&agent, &spawn) {
            Ok(s) => {
                let first = PtyEvent::Started {
                    session: s.id().to_owned(),
                    pid: s.pid(),
                };
                (s, first, spawn.keep_on_detach, spawn.interactive)
            }
            Err(e) => return error(&e),
        },
        PtyRequest::Attach {
            session,
            interactive,
        } => match agent.pty().get(&session) {
            // An attached session stays when this client goes: someone kept it on purpose.
            Some(s) => (
                s,
                PtyEvent::Attached {
                    session,
                    scrollback_bytes: 0,
                },
                true,
                interactive,
            ),
            None => {
                return error(&ErrorBody::new(
                    ErrorCode::NotFound,
                    format!("no pty session {session:?}"),
                ))
            }
        },
    };
    let (tx, body) = ChannelBody::channel(CHANNEL_DEPTH);
    let attachment = session.attach(interactive);
    tokio::spawn(async move {
        let _running = agent.track_process();
        let client = Client { keep, interactive };
        run(&agent, session, attachment, first, client, reader, tx).await;
    });
    Response::builder()
        .status(StatusCode::OK)
        .body(body.boxed())
        .unwrap_or_else(|_| error(&ErrorBody::new(ErrorCode::Internal, "response")))
}

fn start(agent: &Agent, spawn: &PtySpawn) -> Result<Arc<PtySession>, ErrorBody> {
    let rules = agent.providers();
    // The login mode's environment, under what the request sets itself.
    let mut extra = spawn
        .provider
        .as_deref()
        .and_then(|p| rules.get(p))
        .and_then(|p| p.mode(spawn.mode.as_deref()))
        .map(|m| m.env.clone())
        .unwrap_or_default();
    extra.extend(spawn.env.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    let run_as = agent
        .users()
        .resolve(spawn.user.as_deref())
        .map_err(|e| e.to_error_body())?;
    let mut env = agent.process_env(&protocol::secret::EnvVars(extra), run_as.as_ref());
    agent.pty_shim_env(&mut env);
    let opts = SpawnOptions {
        argv: spawn.argv.clone(),
        env,
        cwd: spawn.cwd.as_ref().map(Into::into),
        cols: spawn.cols,
        rows: spawn.rows,
        provider: spawn.provider.clone(),
        mode: spawn.mode.clone(),
        scrollback: super::session::DEFAULT_SCROLLBACK,
        run_as,
    };
    Ok(agent.pty().spawn(opts, rules)?)
}

/// How a client's call treats its session.
#[derive(Debug, Clone, Copy)]
struct Client {
    /// The session outlives the call.
    keep: bool,
    /// A person's terminal: its answers to terminal queries are not typed into the program.
    interactive: bool,
}

async fn run(
    agent: &Agent,
    session: Arc<PtySession>,
    attachment: Attachment,
    first: PtyEvent,
    client: Client,
    mut reader: FrameReader<Incoming>,
    tx: FrameSender,
) {
    let id = session.id().to_owned();
    let Attachment {
        scrollback,
        urls,
        device_code,
        exit,
        mut events,
    } = attachment;
    let first = match first {
        PtyEvent::Attached { session, .. } => PtyEvent::Attached {
            session,
            scrollback_bytes: scrollback.len() as u64,
        },
        other => other,
    };
    let mut ok = tx.send_message(&first).await.is_ok();
    if ok && !scrollback.is_empty() {
        ok = tx
            .send(Frame::data(FrameKind::Stdout, Bytes::from(scrollback)))
            .await
            .is_ok();
    }
    for u in urls {
        ok = ok && tx.send_message(&url_event(u)).await.is_ok();
    }
    if let Some(code) = device_code {
        ok = ok && tx.send_message(&device_code_event(code)).await.is_ok();
    }
    if let Some(exit) = exit {
        let _ = tx.send_message(&PtyEvent::Exited(exit_status(exit))).await;
        agent.pty().remove(&id);
        return;
    }
    let mut input_open = true;
    while ok {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(SessionEvent::Output(bytes)) => {
                    ok = tx.send(Frame::data(FrameKind::Stdout, bytes)).await.is_ok();
                }
                Ok(SessionEvent::Url(u)) => ok = tx.send_message(&url_event(u)).await.is_ok(),
                Ok(SessionEvent::DeviceCode(code)) => {
                    ok = tx.send_message(&device_code_event(code)).await.is_ok();
                }
                Ok(SessionEvent::Exited(exit)) => {
                    let _ = tx.send_message(&PtyEvent::Exited(exit_status(exit))).await;
                    agent.pty().remove(&id);
                    return;
                }
                Err(RecvError::Lagged(n)) => {
                    warn!(session = %id, missed = n, "client too slow, pty output skipped");
                }
                Err(RecvError::Closed) => break,
            },
            frame = reader.next(), if input_open => match frame {
                Ok(Some(frame)) => {
                    if let Err(e) = handle_input(agent, &session, client, frame).await {
                        // The client's mistake, not the program's: say which frame was refused
                        // and go on.
                        warn!(session = %id, error = %e, "pty input refused");
                        ok = tx.send_message(&PtyEvent::Error(e)).await.is_ok();
                    }
                }
                // The client finished sending (or reset its half): keep streaming output.
                Ok(None) | Err(protocol::body::ReadError::Body(_)) => input_open = false,
                Err(protocol::body::ReadError::Frame(e)) => {
                    // Nothing after a broken frame can be read, but the program and its output
                    // go on until it ends or the client leaves.
                    warn!(session = %id, error = %e, "pty input unreadable, ignoring the rest");
                    ok = tx
                        .send_message(&PtyEvent::Error(e.to_error_body()))
                        .await
                        .is_ok();
                    input_open = false;
                }
            },
            () = tx.closed() => break,
        }
    }
    if !client.keep {
        debug!(session = %id, "client went away, closing the pty session");
        session.kill_all();
        agent.pty().remove(&id);
    }
}

async fn handle_input(
    agent: &Agent,
    session: &PtySession,
    client: Client,
    frame: Frame,
) -> Result<(), ErrorBody> {
    match frame.kind {
        FrameKind::Stdin if client.interactive => Ok(session.write_typed(&frame.payload).await?),
        FrameKind::Stdin => Ok(session.write(frame.payload.to_vec()).await?),
        FrameKind::Message => {
            let control: PtyControl = frame.json().map_err(|e| e.to_error_body())?;
            match control {
                PtyControl::Resize { cols, rows } => Ok(session.resize(cols, rows)?),
                PtyControl::Signal { signal } => Ok(session.signal(parse_signal(&signal)?)?),
                PtyControl::Close => {
                    session.kill_all();
                    let _ = agent;
                    Ok(())
                }
            }
        }
        other => Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("unexpected {other:?} frame on pty input"),
        )),
    }
}
