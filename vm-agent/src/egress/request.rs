//! A proxy client's request head: `CONNECT host:port`, or a plain HTTP request in absolute form.

use protocol::egress::{
    join_target, plain_request, read_head, split_target, HeadError, PlainRequestError, TunnelKind,
    TunnelOpen, MAX_OPEN_BYTES,
};
use tokio::io::AsyncBufRead;

/// Why a client's request was refused before anything left the VM. Each maps to the HTTP
/// status the client is answered with.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Reading the head failed or the client left.
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
    /// The head is not HTTP.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The head is larger than [`MAX_OPEN_BYTES`].
    #[error("request head over {MAX_OPEN_BYTES} bytes")]
    TooLarge,
    /// The request is not for a proxy (origin form) or names a bad target.
    #[error("not a proxy request: {0}")]
    NotProxy(String),
    /// A plain request the proxy does not carry (its method, its shape).
    #[error(transparent)]
    Plain(#[from] PlainRequestError),
}

impl RequestError {
    /// The status the client is answered with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::TooLarge => 431,
            RequestError::Plain(PlainRequestError::Method(_)) => 405,
            _ => 400,
        }
    }
}

/// Reads a request head (up to its blank line, never more) and turns it into the tunnel's opening.
/// Bytes the client sent past the head (a request body, pipelined data) stay in the reader.
pub async fn read<R: AsyncBufRead + Unpin>(client: &mut R) -> Result<TunnelOpen, RequestError> {
    let head = read_head(client, MAX_OPEN_BYTES)
        .await
        .map_err(|e| match e {
            HeadError::Io(e) => RequestError::Io(e),
            HeadError::Closed => RequestError::Malformed(e.to_string()),
            HeadError::TooLarge(_) => RequestError::TooLarge,
        })?;
    parse(&head)
}

fn parse(head: &[u8]) -> Result<TunnelOpen, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    let complete = matches!(req.parse(head), Ok(httparse::Status::Complete(_)));
    if complete
        && req
            .method
            .is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"))
    {
        let target = req.path.unwrap_or_default();
        let (host, port) =
            split_target(target).map_err(|e| RequestError::NotProxy(e.to_string()))?;
        return Ok(TunnelOpen {
            target: join_target(&host, port),
            kind: TunnelKind::Connect,
            head: None,
        });
    }
    let plain = plain_request(head)?;
    Ok(TunnelOpen {
        target: join_target(&plain.host, plain.port),
        kind: TunnelKind::Http,
        head: Some(plain.head),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse_all(bytes: &[u8]) -> Result<TunnelOpen, RequestError> {
        let mut stream = bytes;
        read(&mut stream).await
    }

    #[tokio::test]
    async fn connect_names_its_target() {
        let open = parse_all(b"CONNECT Api.Example.test:443 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(open.kind, TunnelKind::Connect);
        assert_eq!(open.target, "api.example.test:443");
        assert_eq!(open.head, None);
    }

    #[tokio::test]
    async fn a_plain_request_loses_its_proxy_headers_and_keeps_the_rest() {
        let open = parse_all(
            b"GET http://example.test/a?b HTTP/1.1\r\nHost: example.test\r\n\
              Proxy-Authorization: Basic Z3Vlc3Q6Z3Vlc3M=\r\nProxy-Connection: keep-alive\r\n\
              Accept: */*\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(open.kind, TunnelKind::Http);
        assert_eq!(open.target, "example.test:80");
        assert_eq!(
            open.head.as_deref(),
            Some(
                "GET http://example.test/a?b HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\
                 Connection: close\r\n\r\n"
            )
        );
        let open = parse_all(b"GET http://[::1]:8080/ HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(open.target, "[::1]:8080");
    }

    #[tokio::test]
    async fn what_is_not_a_proxy_request_is_refused_with_its_status() {
        for (bytes, status) in [
            (&b"GET /index.html HTTP/1.1\r\n\r\n"[..], 400),
            (b"GET https://example.test/ HTTP/1.1\r\n\r\n", 400),
            (b"GET http://user@example.test/ HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT example.test HTTP/1.1\r\n\r\n", 400),
            (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
            (b"CONNECT a.test:443 HTTP/1.1\r\n", 400),
            (b"TRACE http://a.test/ HTTP/1.1\r\n\r\n", 405),
        ] {
            let err = parse_all(bytes).await.unwrap_err();
            assert_eq!(err.status(), status, "{err}");
        }
        let huge = [
            b"GET http://a.test/ HTTP/1.1\r\nX: ".as_slice(),
            &[b'a'; 70_000],
        ]
        .concat();
        assert_eq!(parse_all(&huge).await.unwrap_err().status(), 431);
    }
}
