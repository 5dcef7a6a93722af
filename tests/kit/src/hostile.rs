//! A hostile agent: what a compromised guest could answer the host, for tests and benches that
//! check the host stays up, bounded and honest whatever a VM sends.
//!
//! [`HostileBackend`] wraps a [`VmBackend`]: its VMs are real (a real agent process, its hello,
//! its teardown), but the host's calls reach an in-process fake agent speaking the real wire
//! protocol (HTTP/2, the real message types) and misbehaving as its [`Attack`] says.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use orchestrator::transport::{AgentStream, Connector, TransportError};
use orchestrator::vm::{BackendError, CleanupReport, VmBackend, VmHandle, VmKind, VmSpec};
use protocol::body::ChannelBody;
use protocol::creds::CredsEvent;
use protocol::frame::Frame;
use protocol::messages::{ConfigureResponse, WriteFileResponse};
use protocol::pty::{PtyEvent, UrlSource};
use protocol::{ErrorBody, ErrorCode};

/// How a hostile agent misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attack {
    /// The login reports `count` different login URLs of `bytes` bytes each, as fast as the host
    /// takes them. With `valid`, each one matches the provider's rules (a real prefix and every
    /// required parameter, padded); without, each is junk.
    UrlFlood {
        /// How many.
        count: usize,
        /// Size of each.
        bytes: usize,
        /// Whether they pass the provider's URL rules.
        valid: bool,
    },
    /// Accepts every call but never answers `creds_put` (nor any credential call).
    StallCredentials,
    /// Answers a desktop offer, then trickles `count` candidates.
    CandidateFlood {
        /// How many.
        count: usize,
    },
    /// Reports a codex credential capture it made up: `content` at `path` (relative to the VM's
    /// home), either before any login URL or shortly after a valid one.
    ForgedCapture {
        /// Whether the capture comes before the login shows a URL.
        before_url: bool,
        /// Where it claims the file was, relative to the home.
        path: String,
        /// What it claims the file held.
        content: Vec<u8>,
    },
}

/// Serves one stream as a hostile agent of a VM whose guest home is `home`.
async fn serve(stream: tokio::io::DuplexStream, attack: Attack, home: String) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let attack = attack.clone();
        let home = home.clone();
        async move { Ok::<_, Infallible>(answer(req, attack, home).await) }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

type Body = BoxBody<Bytes, Infallible>;

fn json(value: serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    Response::new(Full::new(Bytes::from(bytes)).boxed())
}

fn refuse(message: &str) -> Response<Body> {
    let body = ErrorBody::new(ErrorCode::UnknownMethod, message);
    let mut response = json(serde_json::to_value(body).unwrap_or_default());
    *response.status_mut() = hyper::StatusCode::NOT_FOUND;
    response
}

/// A streaming answer whose frames `feed` sends.
fn stream<F, Fut>(feed: F) -> Response<Body>
where
    F: FnOnce(protocol::body::FrameSender) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, body) = ChannelBody::channel(4);
    tokio::spawn(feed(tx));
    Response::new(body.boxed())
}

/// A URL of `bytes` bytes; the `i`-th of a flood (each differs).
fn flood_url(i: usize, bytes: usize, valid: bool) -> String {
    let head = if valid {
        format!("https://auth.openai.com/oauth/authorize?response_type=code&client_id=hostile-{i}&code_challenge=c&state=s&pad=")
    } else {
        format!("https://hostile.example/{i}?pad=")
    };
    let pad = bytes.saturating_sub(head.len());
    head + &"p".repeat(pad)
}

/// The made-up capture of a [`Attack::ForgedCapture`].
fn forged(home: &str, path: &str, content: &[u8]) -> CredsEvent {
    CredsEvent::Captured(protocol::creds::CapturedCredential {
        provider: "codex".into(),
        path: format!("{}/{path}", home.trim_end_matches('/')),
        content: content.to_vec(),
        sha256: String::new(),
        mtime_ms: 0,
    })
}

async fn answer(req: Request<Incoming>, attack: Attack, home: String) -> Response<Body> {
    let method = req.uri().path().trim_start_matches("/v1/").to_owned();
    // The request is read whole (unary) or left open (streams): either way nothing is kept.
    let stalls = attack == Attack::StallCredentials && method.starts_with("creds_");
    if stalls {
        std::future::pending::<()>().await;
    }
    match method.as_str() {
        "configure" => json(
            serde_json::to_value(ConfigureResponse {
                env_keys: Vec::new(),
                session_id: None,
            })
            .unwrap_or_default(),
        ),
        "write_file" => {
            let _ = req.into_body().collect().await;
            json(serde_json::to_value(WriteFileResponse { bytes: 0 }).unwrap_or_default())
        }
        "creds_watch" => stream(move |tx| async move {
            let _ = tx
                .send_message(&CredsEvent::Watching { paths: Vec::new() })
                .await;
            if let Attack::ForgedCapture {
                before_url,
                path,
                content,
            } = &attack
            {
                if !before_url {
                    // After the login's URL (sent as the terminal starts) has been shown.
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                let _ = tx.send_message(&forged(&home, path, content)).await;
            }
            // Holds the call open until the host drops it.
            tx.closed().await;
        }),
        "pty" => stream(move |tx| async move {
            let _ = tx
                .send_message(&PtyEvent::Started {
                    session: "hostile".into(),
                    pid: 1,
                })
                .await;
            if let Attack::ForgedCapture {
                before_url: false, ..
            } = &attack
            {
                let url = flood_url(0, 0, true);
                let _ = tx
                    .send_message(&PtyEvent::Url {
                        url,
                        provider: "codex".into(),
                        source: UrlSource::Browser,
                    })
                    .await;
            }
            if let Attack::UrlFlood {
                count,
                bytes,
                valid,
            } = attack
            {
                let event = |i| {
                    Frame::message(&PtyEvent::Url {
                        url: flood_url(i, bytes, valid),
                        provider: "codex".into(),
                        source: UrlSource::Screen,
                    })
                };
                // Large URLs are one frame sent again and again (its bytes shared, not copied):
                // what the host holds is then the host's doing, not this agent's.
                let shared = if bytes > 64 * 1024 {
                    event(0).ok()
                } else {
                    None
                };
                for i in 0..count {
                    let frame = match &shared {
                        Some(frame) => frame.clone(),
                        None => match event(i) {
                            Ok(frame) => frame,
                            Err(_) => return,
                        },
                    };
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
            tx.closed().await;
        }),
        "desktop" => stream(move |tx| async move {
            let _ = tx
                .send_message(&protocol::desktop::DesktopEvent::Answer {
                    sdp: "v=0\r\n".into(),
                })
                .await;
            if let Attack::CandidateFlood { count } = attack {
                for i in 0..count {
                    let candidate = format!(
                        "candidate:{i} 1 udp 2130706431 10.0.{}.{} 40000 typ host",
                        (i / 250) % 250,
                        i % 250
                    );
                    let event = protocol::desktop::DesktopEvent::Candidate { candidate };
                    if tx.send_message(&event).await.is_err() {
                        return;
                    }
                }
            }
            tx.closed().await;
        }),
        other => refuse(&format!("the hostile agent does not do {other}")),
    }
}

#[derive(Debug)]
struct HostileConnector {
    attack: Attack,
    home: String,
}

impl Connector for HostileConnector {
    fn connect(&self) -> BoxFuture<'_, Result<AgentStream, TransportError>> {
        Box::pin(async move {
            let (host, guest) = tokio::io::duplex(256 * 1024);
            tokio::spawn(serve(guest, self.attack.clone(), self.home.clone()));
            let stream: AgentStream = Box::pin(host);
            Ok(stream)
        })
    }
}

/// A connector to a hostile agent of a VM whose guest home is the images' (`GUEST_HOME`), for
/// driving it directly.
pub fn connector(attack: Attack) -> Arc<dyn Connector> {
    Arc::new(HostileConnector {
        attack,
        home: crate::vm::GUEST_HOME.into(),
    })
}

/// A [`VmBackend`] whose browser VMs (and the CLI VMs of chosen users) answer as hostile agents.
#[derive(Debug)]
pub struct HostileBackend<B> {
    inner: Arc<B>,
    browser: Option<Attack>,
    cli: Mutex<HashMap<String, Attack>>,
}

impl<B: VmBackend> HostileBackend<B> {
    /// Wraps `inner`; browser VMs misbehave as `browser` says (`None`: they are honest).
    pub fn new(inner: Arc<B>, browser: Option<Attack>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            browser,
            cli: Mutex::new(HashMap::new()),
        })
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }

    /// Makes `user`'s CLI VM misbehave as `attack` says.
    pub fn hostile_cli(&self, user: &str, attack: Attack) {
        self.cli
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), attack);
    }

    fn turned(mut handle: VmHandle, attack: Option<Attack>) -> VmHandle {
        if let Some(attack) = attack {
            handle.connector = Arc::new(HostileConnector {
                attack,
                home: handle.guest_home.clone(),
            });
        }
        handle
    }
}

impl<B: VmBackend> VmBackend for HostileBackend<B> {
    fn create_vm(&self, spec: VmSpec) -> BoxFuture<'_, Result<VmHandle, BackendError>> {
        Box::pin(async move {
            let attack = match spec.kind {
                VmKind::Browser => self.browser.clone(),
                VmKind::Cli => None,
            };
            Ok(Self::turned(self.inner.create_vm(spec).await?, attack))
        })
    }

    fn ensure_cli_vm<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<VmHandle, BackendError>> {
        Box::pin(async move {
            let attack = self
                .cli
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(user_id)
                .cloned();
            Ok(Self::turned(
                self.inner.ensure_cli_vm(user_id).await?,
                attack,
            ))
        })
    }

    fn destroy_vm<'a>(
        &'a self,
        vm_id: &'a str,
    ) -> BoxFuture<'a, Result<CleanupReport, BackendError>> {
        self.inner.destroy_vm(vm_id)
    }
}
