//! The VM's way out: a forward proxy on the VM's loopback whose every connection is a tunnel to
//! the host ([`protocol::egress`]).
//!
//! Programs in the VM find it through `HTTP(S)_PROXY` (set on everything the agent starts) and
//! Chromium through `--proxy-server`. The VM holds no proxy credentials and needs no network
//! card: the host decides where each tunnel goes, adds the credentials, and refuses what the VM
//! may not reach. A client's request is answered with the host's status (or the upstream's:
//! 407, 503, ...) so `curl` and the CLIs show a real proxy error.

mod request;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::HostAddr;

pub use request::RequestError;
pub use tunnel::TunnelError;

/// Tunnels open at once, at most. Each holds two descriptors (the client's and the host's); the
/// agent raises its descriptor limit at start to have room for them.
pub const MAX_TUNNELS: usize = 4096;

/// A client gets this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The host gets this long to open a tunnel (its own upstream timeout is shorter).
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The proxy address is not a loopback address: the VM's way out is for the VM only.
    #[error("egress proxy address {0} is not loopback")]
    NotLoopback(SocketAddr),
    /// Binding the proxy address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// Loopback address it listens on.
    pub listen: SocketAddr,
    /// Where each tunnel goes.
    pub host: HostAddr,
    /// Tunnels open at once, at most; more are answered 503.
    pub max_tunnels: usize,
}

/// The variables that point a program at the proxy: `HTTP_PROXY`, `HTTPS_PROXY` and their lower
/// case twins (CLIs read either), `NO_PROXY` keeping loopback direct (OAuth callbacks), and
/// `NODE_USE_ENV_PROXY` (Node.js ≥ 22.21 takes the others for its own `fetch` and `https` only with
/// it; gemini's login through the browser VM failed without it).
pub fn proxy_env(listen: SocketAddr) -> [(&'static str, String); 7] {
    let url = format!("http://{listen}");
    let direct = "localhost,127.0.0.1,::1".to_owned();
    [
        ("HTTP_PROXY", url.clone()),
        ("HTTPS_PROXY", url.clone()),
        ("http_proxy", url.clone()),
        ("https_proxy", url),
        ("NO_PROXY", direct.clone()),
        ("no_proxy", direct),
        ("NODE_USE_ENV_PROXY", "1".to_owned()),
    ]
}

/// Binds the proxy; [`Proxy::serve`] then accepts until the agent stops.
#[derive(Debug)]
pub struct Proxy {
    listener: TcpListener,
    host: HostAddr,
    slots: Arc<Semaphore>,
}

impl Proxy {
    /// Binds `config.listen`, which must be a loopback address.
    pub async fn bind(config: &EgressConfig) -> Result<Self, EgressError> {
        if !config.listen.ip().is_loopback() {
            return Err(EgressError::NotLoopback(config.listen));
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| EgressError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Self {
            listener,
            host: config.host.clone(),
            slots: Arc::new(Semaphore::new(config.max_tunnels)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts clients forever, each on its own task.
    pub async fn serve(self) {
        info!(addr = ?self.listener.local_addr().ok(), host = %self.host, "egress proxy up");
        let host = Arc::new(self.host);
        loop {
            let client = match self.listener.accept().await {
                Ok((client, _)) => client,
                // Out of descriptors and similar: the tunnels we have go on.
                Err(e) => {
                    warn!(error = %e, "egress accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = client.set_nodelay(true);
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let host = host.clone();
                    tokio::spawn(async move {
                        serve_client(client, &host).await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    // Answered without a task of its own: a flood must not make the agent hold
                    // more (a fresh connection's send buffer takes the few bytes at once).
                    debug!("egress tunnel limit reached");
                    let busy = response(503, "too many connections through the VM's proxy");
                    let _ = client.try_write(busy.as_bytes());
                }
            }
        }
    }
}

async fn serve_client(client: TcpStream, host: &HostAddr) {
    let mut client = BufReader::new(client);
    let open = match tokio::time::timeout(HEAD_TIMEOUT, request::read(&mut client)).await {
        Ok(Ok(open)) => open,
        Ok(Err(RequestError::Io(_))) => return,
        Ok(Err(e)) => {
            debug!(error = %e, "egress request refused");
            return answer(client.into_inner(), e.status(), &e.to_string()).await;
        }
        Err(_) => return answer(client.into_inner(), 408, "no request in time").await,
    };
    let kind = open.kind.clone();
    let opened = tokio::time::timeout(OPEN_TIMEOUT, tunnel::open(host, &open)).await;
    let Ok(opened) = opened else {
        warn!(target = %open.target, "the host did not open the tunnel in time");
        return answer(
            client.into_inner(),
            504,
            "the VM's way out did not answer in time",
        )
        .await;
    };
    match opened {
        Ok((mut upstream, reply)) if reply.is_open() => {
            debug!(target = %open.target, "egress tunnel open");
            if kind == protocol::egress::TunnelKind::Connect {
                let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
                if client.get_mut().write_all(established).await.is_err() {
                    return;
                }
            }
            tunnel::splice(&mut client, &mut upstream).await;
        }
        Ok((_, reply)) => answer(client.into_inner(), reply.status, &reply.reason).await,
        Err(e) => {
            warn!(target = %open.target, error = %e, "egress tunnel to the host failed");
            answer(client.into_inner(), 502, "the VM's way out is unavailable").await;
        }
    }
}

/// Answers the client with an error status and a one-line text, then closes.
async fn answer(mut client: TcpStream, status: u16, reason: &str) {
    let _ = client.write_all(response(status, reason).as_bytes()).await;
    protocol::egress::linger(&mut client).await;
}

/// An error response with a one-line text.
fn response(status: u16, reason: &str) -> String {
    let phrase = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    // The reason is from the host or the request parser: one line, no CR/LF smuggled into a head.
    let text: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect();
    let body = format!("{text}\n");
    format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Raises the soft descriptor limit to what tunnels need (the kernel's default of 1024 would
/// cap the proxy at ~500 tunnels). Best effort: a limit that cannot be raised is logged.
pub fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = (MAX_TUNNELS as u64) * 2 + 1024;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    // Root (the VM's agent) may raise the hard limit too; a local agent keeps its own hard limit.
    let raised = setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard))
        .or_else(|_| setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard));
    if let Err(e) = raised {
        warn!(error = %e, soft, hard, "cannot raise the descriptor limit");
    }
}
