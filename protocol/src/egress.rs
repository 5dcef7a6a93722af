//! Egress tunnels: how a VM's outbound connection reaches the user's upstream proxy.
//!
//! The agent serves a forward proxy on the VM's loopback. For each client connection it dials the
//! host on the egress vsock port ([`DEFAULT_EGRESS_PORT`]; a Unix socket in tests), sends one
//! [`FrameKind::Message`](crate::frame::FrameKind::Message) frame holding a [`TunnelOpen`], and
//! reads one holding a [`TunnelReply`]. When the reply is [`TunnelReply::is_open`], the connection
//! carries the client's bytes raw in both directions until either side half-closes.
//!
//! Nothing secret crosses: the host adds the upstream's credentials itself, and picks the upstream
//! port from the VM's owner, so a guest can neither read the password nor choose another port.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

use crate::frame::{decode_header, Frame, FrameError, FrameKind, HEADER_LEN};

/// Host vsock port the agent dials for each proxied connection.
pub const DEFAULT_EGRESS_PORT: u32 = 1026;

/// Largest opening message (a plain HTTP request's head is part of it).
pub const MAX_OPEN_BYTES: usize = 64 * 1024;

/// Longest host name a target may carry (DNS's limit).
const MAX_HOST_LEN: usize = 253;

/// What a proxied connection asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelKind {
    /// An HTTP `CONNECT`: a byte tunnel to `target` (TLS, usually).
    Connect,
    /// One plain HTTP request to `target`, whose head is [`TunnelOpen::head`]; the response
    /// comes back raw and the connection then ends.
    Http,
}

/// The first message on a tunnel, from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelOpen {
    /// `host:port` the client asked for (checked with [`split_target`] on both ends).
    pub target: String,
    /// Tunnel or single request.
    pub kind: TunnelKind,
    /// For [`TunnelKind::Http`]: the request head in absolute form, ending with its blank line,
    /// without any `Proxy-*` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
}

/// The host's answer to a [`TunnelOpen`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelReply {
    /// An HTTP status for the client in the VM: 200 when the tunnel is open; otherwise the
    /// upstream's own refusal (407, 503, ...) or the host's (403 not allowed, 502 upstream
    /// unreachable, 503 too many tunnels).
    pub status: u16,
    /// Why, for a person reading the client's error (never a secret).
    pub reason: String,
}

impl TunnelReply {
    /// The tunnel is open.
    pub fn open() -> Self {
        Self {
            status: 200,
            reason: "Connection established".into(),
        }
    }

    /// A refusal with `status` and `reason`.
    pub fn refused(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// Whether the tunnel is open.
    pub fn is_open(&self) -> bool {
        self.status == 200
    }
}

/// Why a target is not a `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad target {0:?}: expected host:port")]
pub struct TargetError(String);

/// Splits `host:port` (`[v6]:port` for IPv6), checking that the host is a plausible DNS name or
/// address and the port is not 0. Host names are returned in lower case.
pub fn split_target(target: &str) -> Result<(String, u16), TargetError> {
    let bad = || TargetError(target.chars().take(300).collect());
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (v6, port) = rest.split_once("]:").ok_or_else(bad)?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (v6, port)
    } else {
        target.rsplit_once(':').ok_or_else(bad)?
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.is_empty() || host.len() > MAX_HOST_LEN {
        return Err(bad());
    }
    let name_like = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !name_like && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Methods a plain request may use. Not `CONNECT` (a tunnel is its own kind) and not `TRACE`,
/// which the upstream answers by echoing the request it got: the host's credentials with it.
const PLAIN_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Most headers a request may carry.
const MAX_HEADERS: usize = 100;

/// `host:port` as a request line and an allow-list see it (`[v6]:port` for IPv6).
pub fn join_target(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Why a plain request head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlainRequestError {
    /// Not one complete HTTP request head.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Not an absolute `http://` request to a proper host.
    #[error("not a proxy request: {0}")]
    NotProxy(String),
    /// A method a plain request may not use.
    #[error("method {0} not allowed through the proxy")]
    Method(String),
}

/// A plain request, checked and rebuilt as the upstream gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainRequest {
    /// Lower-case host of its absolute URL.
    pub host: String,
    /// Its port (80 by default).
    pub port: u16,
    /// The rebuilt head: request line and headers as sent, minus `Proxy-*`, `Connection`,
    /// `Keep-Alive`, `Max-Forwards` and `Host` (set from the URL), plus `Connection: close`.
    pub head: String,
}

/// Parses `head` as exactly one absolute-form request head ending with its blank line, and
/// rebuilds it ([`PlainRequest::head`]). Both ends run it: the agent to answer its client early,
/// the host because a guest may skip the agent and send any head it likes.
pub fn plain_request(head: &[u8]) -> Result<PlainRequest, PlainRequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(httparse::Status::Complete(_)) => {
            return Err(PlainRequestError::Malformed("bytes after the head".into()))
        }
        Ok(httparse::Status::Partial) => {
            return Err(PlainRequestError::Malformed("incomplete head".into()))
        }
        Err(e) => return Err(PlainRequestError::Malformed(e.to_string())),
    }
    let method = req.method.unwrap_or_default();
    if !PLAIN_METHODS.contains(&method) {
        return Err(PlainRequestError::Method(method.chars().take(20).collect()));
    }
    let path = req.path.unwrap_or_default();
    let (host, port) = absolute_target(path)?;
    let version = if req.version == Some(0) { "1.0" } else { "1.1" };
    let mut rebuilt = format!("{method} {path} HTTP/{version}\r\n");
    let shown_host = if port == 80 {
        join_target(&host, port).trim_end_matches(":80").to_owned()
    } else {
        join_target(&host, port)
    };
    rebuilt.push_str(&format!("Host: {shown_host}\r\n"));
    for h in req.headers.iter() {
        let name = h.name;
        let dropped = name.len() >= 6 && name[..6].eq_ignore_ascii_case("proxy-")
            || ["connection", "keep-alive", "max-forwards", "host"]
                .iter()
                .any(|d| name.eq_ignore_ascii_case(d));
        if dropped {
            continue;
        }
        let value = std::str::from_utf8(h.value)
            .map_err(|_| PlainRequestError::Malformed(format!("header {name} is not UTF-8")))?;
        rebuilt.push_str(&format!("{name}: {value}\r\n"));
    }
    rebuilt.push_str("Connection: close\r\n\r\n");
    Ok(PlainRequest {
        host,
        port,
        head: rebuilt,
    })
}

/// `http://host[:port]/...` → its host and port. Only `http`: an `https://` request to a proxy
/// would mean the proxy speaks TLS to the origin, which clients do by CONNECT.
fn absolute_target(path: &str) -> Result<(String, u16), PlainRequestError> {
    let not_proxy = || PlainRequestError::NotProxy(path.chars().take(200).collect());
    let rest = path
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .and_then(|_| path.get(7..))
        .ok_or_else(not_proxy)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(not_proxy());
    }
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_owned()
    };
    split_target(&with_port).map_err(|_| not_proxy())
}

/// Closes a connection that was answered with a refusal so that the answer arrives: a socket
/// closed with unread input is reset, and the reset can overtake the answer. Reads (and drops)
/// what the peer still sends, at most 64 KiB and 1 s.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// Why an opening message could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading or writing the stream failed, or it ended early.
    #[error("tunnel i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The frame was malformed, too large or not the expected message.
    #[error("tunnel message: {0}")]
    Frame(#[from] FrameError),
    /// The frame was not a JSON message.
    #[error("tunnel message of kind {0:?}, expected a message")]
    NotAMessage(FrameKind),
}

/// Reads exactly one message frame (no byte past it: the stream is used raw afterwards).
pub async fn read_message<T, R>(stream: &mut R) -> Result<T, WireError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await?;
    let (kind, len) = decode_header(header, MAX_OPEN_BYTES)?;
    if kind != FrameKind::Message {
        return Err(WireError::NotAMessage(kind));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok(Frame::data(kind, payload).json()?)
}

/// Writes one message frame.
pub async fn write_message<T, W>(stream: &mut W, message: &T) -> Result<(), WireError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    stream.write_all(&Frame::message(message)?.encode()).await?;
    stream.flush().await?;
    Ok(())
}

/// Why an HTTP head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Reading failed.
    #[error("reading the head: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection before the head's blank line.
    #[error("connection closed inside the head")]
    Closed,
    /// The head is longer than allowed.
    #[error("head over {0} bytes")]
    TooLarge(usize),
}

/// Reads an HTTP head up to and including its blank line, never further (what follows stays in
/// the reader for the raw tunnel), and never more than `max` bytes.
pub async fn read_head<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    while !head.ends_with(b"\r\n\r\n") {
        let room = max.saturating_sub(head.len());
        if room == 0 {
            return Err(HeadError::TooLarge(max));
        }
        let limited = &mut *reader;
        if limited
            .take(room as u64)
            .read_until(b'\n', &mut head)
            .await?
            == 0
        {
            return Err(HeadError::Closed);
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_host_and_port() {
        assert_eq!(
            split_target("API.Example.test:443"),
            Ok(("api.example.test".into(), 443))
        );
        assert_eq!(split_target("[::1]:8443"), Ok(("::1".into(), 8443)));
        assert_eq!(split_target("10.0.0.1:80"), Ok(("10.0.0.1".into(), 80)));
        for bad in [
            "example.test",
            "example.test:0",
            "example.test:99999",
            ":443",
            "exa mple.test:443",
            "a/b:443",
            "[zz]:443",
            "user@host:443",
        ] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
        assert!(split_target(&format!("{}:443", "a".repeat(300))).is_err());
    }

    #[tokio::test]
    async fn a_head_is_read_to_its_blank_line_and_no_further() {
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody";
        let head = read_head(&mut input, 1024).await.unwrap();
        assert_eq!(head, b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n");
        assert_eq!(input, b"body");
        let mut cut: &[u8] = b"HTTP/1.1 200 OK\r\n";
        assert!(matches!(
            read_head(&mut cut, 1024).await,
            Err(HeadError::Closed)
        ));
        let long = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; 5000]].concat();
        let mut long: &[u8] = &long;
        assert!(matches!(
            read_head(&mut long, 1024).await,
            Err(HeadError::TooLarge(1024))
        ));
    }

    #[test]
    fn a_plain_request_is_rebuilt_without_proxy_headers_and_with_its_own_host() {
        let req = plain_request(
            b"GET http://Example.test/a?b HTTP/1.0\r\nHost: evil.test\r\n\
              Proxy-Authorization: Basic Z3Vlc3Q6Z3Vlc3M=\r\nProxy-Connection: keep-alive\r\n\
              Max-Forwards: 0\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!((req.host.as_str(), req.port), ("example.test", 80));
        assert_eq!(
            req.head,
            "GET http://Example.test/a?b HTTP/1.0\r\nHost: example.test\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n"
        );
        let v6 = plain_request(b"GET http://[::1]:8080/ HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8080));
        assert!(v6.head.contains("Host: [::1]:8080\r\n"));
    }

    #[test]
    fn heads_that_would_smuggle_are_refused() {
        for (head, why) in [
            (&b"GET /index.html HTTP/1.1\r\n\r\n"[..], "origin form"),
            (b"GET https://a.test/ HTTP/1.1\r\n\r\n", "https"),
            (b"GET http://user@a.test/ HTTP/1.1\r\n\r\n", "userinfo"),
            (
                b"TRACE http://a.test/ HTTP/1.1\r\n\r\n",
                "trace echoes credentials",
            ),
            (
                b"CONNECT a.test:443 HTTP/1.1\r\n\r\n",
                "connect is its own kind",
            ),
            (
                b"GET http://a.test/ HTTP/1.1\r\nX-Leak:\r\n",
                "no blank line",
            ),
            (
                b"GET http://a.test/ HTTP/1.1\r\n\r\nGET http://b.test/ HTTP/1.1\r\n\r\n",
                "two requests",
            ),
            (
                b"GET http://a.test/ HTTP/1.1\r\nX: a\rb\r\n\r\n",
                "bare CR in a value",
            ),
        ] {
            assert!(plain_request(head).is_err(), "{why}");
        }
    }

    #[test]
    fn replies_round_trip_and_say_whether_open() {
        let open: TunnelReply =
            serde_json::from_str(&serde_json::to_string(&TunnelReply::open()).unwrap()).unwrap();
        assert!(open.is_open());
        assert!(!TunnelReply::refused(407, "upstream wants credentials").is_open());
        let msg = TunnelOpen {
            target: "a.test:443".into(),
            kind: TunnelKind::Connect,
            head: None,
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(json, r#"{"target":"a.test:443","kind":"connect"}"#);
    }
}
