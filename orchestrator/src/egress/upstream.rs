//! The upstream HTTP proxy: one port per user, credentials added here and nowhere else.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use protocol::egress::read_head;
use protocol::secret::Secret;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response head the upstream may send.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Upstream egress proxy settings, from the host's configuration (never from source, never in a VM).
#[derive(Clone)]
pub struct ProxyConfig {
    /// Proxy host name or address, as the host reaches it.
    pub host: String,
    /// Basic-auth user name.
    pub username: String,
    /// Basic-auth password.
    pub password: Secret<String>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

impl ProxyConfig {
    /// The `Proxy-Authorization` header line (with its CRLF).
    fn authorization(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.username,
            self.password.expose()
        ));
        format!("Proxy-Authorization: Basic {token}\r\n")
    }
}

/// Why the upstream did not open the way.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream port could not be reached.
    #[error("upstream proxy {addr} unreachable: {source}")]
    Unreachable {
        /// `host:port` of the upstream.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream took too long.
    #[error("upstream proxy did not answer within {0:?}")]
    Timeout(Duration),
    /// The upstream answered with a refusal (407 wrong credentials, 403, 503 DNS failure...).
    #[error("upstream proxy refused: {status} {reason}")]
    Refused {
        /// Its status.
        status: u16,
        /// Its reason phrase and error detail (`X-Squid-Error`), never credentials.
        reason: String,
    },
    /// The upstream's answer was not HTTP.
    #[error("upstream proxy answered garbage: {0}")]
    Garbage(String),
}

impl UpstreamError {
    /// The status the client in the VM is answered with.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamError::Unreachable { .. } | UpstreamError::Garbage(_) => 502,
            UpstreamError::Timeout(_) => 504,
            UpstreamError::Refused { status, .. } => *status,
        }
    }
}

/// What the upstream is asked for, already checked against the VM's list.
#[derive(Debug, Clone)]
pub(crate) enum UpstreamRequest {
    /// A tunnel to this normalised `host:port`.
    Connect(String),
    /// One plain request: its head as [`protocol::egress::plain_request`] rebuilt it.
    Http(String),
}

/// Opens the way at the upstream's `port`: a `CONNECT` answered 200, or a plain request's head
/// sent on. Returns the upstream stream, buffered (a byte the upstream sent after its head must
/// not be lost).
pub(crate) async fn connect(
    proxy: &ProxyConfig,
    port: u16,
    request: &UpstreamRequest,
    timeout: Duration,
) -> Result<BufReader<TcpStream>, UpstreamError> {
    tokio::time::timeout(timeout, connect_now(proxy, port, request))
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}

async fn connect_now(
    proxy: &ProxyConfig,
    port: u16,
    request: &UpstreamRequest,
) -> Result<BufReader<TcpStream>, UpstreamError> {
    let addr = format!("{}:{port}", proxy.host);
    let unreachable = |source| UpstreamError::Unreachable {
        addr: addr.clone(),
        source,
    };
    let stream = TcpStream::connect(&addr).await.map_err(unreachable)?;
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::new(stream);
    let auth = proxy.authorization();
    let bytes = match request {
        UpstreamRequest::Connect(target) => {
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n")
        }
        // The rebuilt head ends with its blank line: the credentials go just before it.
        UpstreamRequest::Http(head) => {
            let without_end = head.strip_suffix("\r\n").unwrap_or(head);
            format!("{without_end}{auth}\r\n")
        }
    };
    stream
        .get_mut()
        .write_all(bytes.as_bytes())
        .await
        .map_err(unreachable)?;
    if let UpstreamRequest::Connect(_) = request {
        let head = read_head(&mut stream, MAX_RESPONSE_HEAD)
            .await
            .map_err(|e| UpstreamError::Garbage(e.to_string()))?;
        check_response(&head)?;
    }
    Ok(stream)
}

/// A `CONNECT` answer: 2xx opens the tunnel; anything else is the upstream's refusal.
fn check_response(head: &[u8]) -> Result<(), UpstreamError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(UpstreamError::Garbage("partial head".into())),
        Err(e) => return Err(UpstreamError::Garbage(e.to_string())),
    }
    let status = response.code.unwrap_or_default();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let mut reason = response.reason.unwrap_or_default().to_owned();
    // Squid says what went wrong (ERR_DNS_FAIL, ERR_CONNECT_FAIL, ...) in its own header.
    if let Some(detail) = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-squid-error"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
    {
        reason = format!("{reason} ({detail})");
    }
    Err(UpstreamError::Refused {
        status,
        reason: reason
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_status_and_squid_detail() {
        let err = check_response(
            b"HTTP/1.1 503 Service Unavailable\r\nX-Squid-Error: ERR_DNS_FAIL 0\r\n\r\n",
        )
        .unwrap_err();
        assert_eq!(err.status(), 503);
        assert_eq!(
            err.to_string(),
            "upstream proxy refused: 503 Service Unavailable (ERR_DNS_FAIL 0)"
        );
        assert!(check_response(b"HTTP/1.1 200 Connection established\r\n\r\n").is_ok());
        assert_eq!(
            check_response(b"SSH-2.0-x\r\n\r\n").unwrap_err().status(),
            502
        );
    }

    #[test]
    fn credentials_are_basic_and_never_shown() {
        let proxy = ProxyConfig {
            host: "proxy.test".into(),
            username: "fake-user".into(),
            password: Secret::new("fake:p@ss".into()),
        };
        assert_eq!(
            proxy.authorization(),
            "Proxy-Authorization: Basic ZmFrZS11c2VyOmZha2U6cEBzcw==\r\n"
        );
        assert!(!format!("{proxy:?}").contains("p@ss"));
    }
}
