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
