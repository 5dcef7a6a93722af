//! The host service as tests, `cargo xtask demo --check` and `cargo xtask bench service` use it:
//! a rig that serves it on loopback over any [`VmBackend`], a stand-in of the providers' API for
//! prompts, and a small HTTP client that speaks the service's REST and SSE.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use host_service::config::{build, EgressSection, FileConfig, StoreSection};
use host_service::{AppState, ServiceConfig};
use orchestrator::vm::VmBackend;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The host service on a loopback port.
pub struct ServiceRig {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The routes' state (the login service inside).
    pub state: Arc<AppState>,
    server: JoinHandle<std::io::Result<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for ServiceRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRig")
            .field("base", &self.base)
            .finish()
    }
}

/// A local backend (agents as processes, see [`crate::local_backend`]) whose CLIs are the fake
/// ones, under `dir`.
pub fn fake_cli_backend(
    dir: &Path,
) -> std::io::Result<Arc<crate::local_backend::LocalAgentBackend>> {
    fake_cli_backend_with(
        dir,
        &crate::workspace_bin("vm-agent"),
        &crate::workspace_bin("fake-cli"),
    )
}

/// [`fake_cli_backend`] with these `vm-agent` and `fake-cli` binaries (a benchmark's release
/// builds).
pub fn fake_cli_backend_with(
    dir: &Path,
    agent_bin: &Path,
    fake_cli: &Path,
) -> std::io::Result<Arc<crate::local_backend::LocalAgentBackend>> {
    let bin = crate::fake_clis::install(
        &dir.join("bin"),
        fake_cli,
        &crate::fake_clis::fixtures_root(),
    )?;
    Ok(Arc::new(crate::local_backend::LocalAgentBackend::new(
        crate::local_backend::LocalOptions {
            agent_bin: agent_bin.to_path_buf(),
            root: dir.join("vms"),
            path_prepend: vec![bin],
            env: Vec::new(),
            agent_start_gate: None,
        },
    )))
}

/// The Claude Code access token in a local VM's credential file, if there is one.
pub fn claude_token(backend: &crate::local_backend::LocalAgentBackend, vm: &str) -> Option<String> {
    let home = backend.home_of(vm)?;
    let bytes = std::fs::read(home.join(".claude/.credentials.json")).ok()?;
    let json: Value = serde_json::from_slice(&bytes).ok()?;
    json["claudeAiOauth"]["accessToken"]
        .as_str()
        .map(str::to_owned)
}

/// A [`Verifier`] accepting exactly the Claude Code tokens now in the backend's VMs' credential
/// files: what was captured and pushed into a CLI VM.
pub fn tokens_in_vms(backend: Arc<crate::local_backend::LocalAgentBackend>) -> Verifier {
    Arc::new(move |token| {
        backend
            .vm_ids()
            .iter()
            .any(|vm| claude_token(&backend, vm).as_deref() == Some(token))
    })
}

/// A file configuration with an SQLite store at `db`, no upstream proxy and `job_env`.
pub fn file_config(db: &Path, job_env: &[(&str, &str)]) -> FileConfig {
    FileConfig {
        listen: "127.0.0.1:0".into(),
        host_id: "host-test".into(),
        pool_size: 0,
        login_minutes: 5,
        hello_timeout_s: 120,
        sealing: Default::default(),
        job_env: job_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        store: StoreSection {
            sqlite: Some(db.to_path_buf()),
            postgres: false,
        },
        egress: EgressSection::default(),
        vm: None,
    }
}

impl ServiceRig {
    /// Serves the service described by `file` over `backend` on a free loopback port.
    pub async fn start(
        file: &FileConfig,
        backend: Arc<dyn VmBackend>,
        service: ServiceConfig,
    ) -> anyhow::Result<Self> {
        Self::start_with_vault(file, backend, crate::login::fake_vault(), service).await
    }

    /// [`ServiceRig::start`] with the vault `vault` (as `HOST_SERVICE_VAULT_KEY` would give).
    pub async fn start_with_vault(
        file: &FileConfig,
        backend: Arc<dyn VmBackend>,
        vault: Arc<orchestrator::vault::Vault>,
        service: ServiceConfig,
    ) -> anyhow::Result<Self> {
        let state = build(file, backend, vault, service).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(host_service::serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            base: format!("http://{addr}"),
            state,
            server,
            stop: Some(stop),
        })
    }

    /// A client of this service, signed out.
    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }

    /// Stops serving (open streams are cut).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.abort();
        let _ = (&mut self.server).await;
    }
}

/// What a request got: status and JSON body (`Value::Null` when empty or not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON.
    pub json: Value,
}

impl Reply {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or("")
    }
}

/// A user's client of the service's API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// The bearer token, once signed in.
    pub token: Option<String>,
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `event:` name.
    pub event: String,
    /// `data:` as JSON.
    pub data: Value,
}

impl Client {
    /// A client of the service at `base`.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap_or_default(),
            token: None,
        }
    }

    /// A request to `path` with the token (if any).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(r: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let res = r.send().await?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await?;
        Ok(Reply {
            status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        Self::send(self.request(reqwest::Method::GET, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        Self::send(self.request(reqwest::Method::POST, path).json(&body)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        Self::send(self.request(reqwest::Method::PUT, path).json(&body)).await
    }

    /// `POST path` with raw bytes.
    pub async fn post_raw(&self, path: &str, body: &'static str) -> anyhow::Result<Reply> {
        Self::send(
            self.request(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        Self::send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// Signs up (`register`) and keeps the token.
    pub async fn register(&mut self, email: &str, password: &str) -> anyhow::Result<Reply> {
        let r = self
            .post(
                "/v1/auth/register",
                json!({"email": email, "password": password}),
            )
            .await?;
        if let Some(t) = r.json["token"].as_str() {
            self.token = Some(t.to_owned());
        }
        Ok(r)
    }

    /// Reads a server-sent event stream until `stop` says so for an event or the stream ends;
    /// returns the events read.
    pub async fn sse_until(
        &self,
        path: &str,
        timeout: Duration,
        mut stop: impl FnMut(&SseEvent) -> bool,
    ) -> anyhow::Result<Vec<SseEvent>> {
        let res = self.request(reqwest::Method::GET, path).send().await?;
        anyhow::ensure!(
            res.status().is_success(),
            "{path}: {} {}",
            res.status(),
            res.text().await.unwrap_or_default()
        );
        let mut body = res.bytes_stream();
        let mut buf = Vec::new();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(at) = buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buf.drain(..at + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let mut event = "message".to_owned();
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let ev = SseEvent {
                    event,
                    data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                };
                let done = stop(&ev);
                events.push(ev);
                if done {
                    return Ok(events);
                }
            }
            match tokio::time::timeout_at(deadline, body.next()).await {
                Err(_) => anyhow::bail!("{path}: no end within {timeout:?}; got {events:?}"),
                Ok(None) => return Ok(events),
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk?),
            }
        }
    }
}

/// Decides whether a bearer token is a captured credential's.
pub type Verifier = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A stand-in of a provider's API (the real ones cannot be reached from here): `POST` with
/// `Authorization: Bearer <token>`; a token it was told to accept (or its verifier accepts) gets
/// `200` and a canned answer streamed in pieces, any other gets `401`. It records every request's
/// token and prompt.
#[derive(Clone)]
pub struct StandinApi {
    /// `http://127.0.0.1:PORT/v1/prompt`.
    pub url: String,
    accepted: Arc<Mutex<HashSet<String>>>,
    /// `(token, prompt)` of every request, in order.
    pub seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl std::fmt::Debug for StandinApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinApi")
            .field("url", &self.url)
            .finish()
    }
}

/// The canned answer's pieces (the stream sends them with a pause between).
pub const STANDIN_ANSWER: [&str; 4] = ["The answer ", "to your prompt ", "is 42", ".\n"];

impl StandinApi {
    /// Starts it on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_verifying(Arc::new(|_| false)).await
    }

    /// [`StandinApi::start`], also accepting every token `verify` accepts when it arrives.
    pub async fn start_verifying(verify: Verifier) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let api = Self {
            url: format!("http://{addr}/v1/prompt"),
            accepted: Arc::default(),
            seen: Arc::default(),
        };
        let (accepted, seen) = (api.accepted.clone(), api.seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_one(
                    stream,
                    accepted.clone(),
                    verify.clone(),
                    seen.clone(),
                ));
            }
        });
        Ok(api)
    }

    /// Accepts `token` from now on.
    pub fn accept(&self, token: &str) {
        self.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_owned());
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    accepted: Arc<Mutex<HashSet<String>>>,
    verify: Verifier,
    seen: Arc<Mutex<Vec<(String, String)>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap_or(0).min(1 << 20);
    while buf.len() < head_end + len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let prompt = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    let token = header("authorization")
        .strip_prefix("Bearer ")
        .unwrap_or_default()
        .to_owned();
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((token.clone(), prompt));
    let ok = accepted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&token)
        || verify(&token);
    if !ok {
        let _ = stream
            .write_all(
                b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\ninvalid bearer token",
            )
            .await;
        return;
    }
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        .await;
    for piece in STANDIN_ANSWER {
        if stream.write_all(piece.as_bytes()).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
