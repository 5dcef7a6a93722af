//! A tap on every byte between the host and the VMs' agents, and a scan for secrets in what was
//! tapped (or in any other bytes: logs, the store's files, HTTP bodies).
//!
//! [`TapBackend`] wraps a [`VmBackend`]: every stream its VMs' connectors open is copied, both
//! directions, into one [`Tap`]. [`token_forms`] lists the encodings a token can travel in, and
//! [`find_token`] looks for any of them.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine;
use futures_util::future::BoxFuture;
use orchestrator::transport::{AgentStream, Connector, TransportError};
use orchestrator::vm::{BackendError, CleanupReport, VmBackend, VmHandle, VmSpec};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Everything tapped, in order, both directions of every stream.
#[derive(Debug, Clone, Default)]
pub struct Tap(Arc<Mutex<Vec<u8>>>);

impl Tap {
    /// A copy of what was tapped so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
    }
}

/// A [`VmBackend`] whose VMs' agent streams all pass through a [`Tap`].
#[derive(Debug)]
pub struct TapBackend<B> {
    inner: Arc<B>,
    tap: Tap,
}

impl<B: VmBackend> TapBackend<B> {
    /// Wraps `inner`; what its VMs' agents send and receive lands in the returned tap.
    pub fn new(inner: Arc<B>) -> (Arc<Self>, Tap) {
        let tap = Tap::default();
        (
            Arc::new(Self {
                inner,
                tap: tap.clone(),
            }),
            tap,
        )
    }

    fn tapped(&self, mut handle: VmHandle) -> VmHandle {
        handle.connector = Arc::new(TapConnector {
            inner: handle.connector,
            tap: self.tap.clone(),
        });
        handle
    }
}

impl<B: VmBackend> VmBackend for TapBackend<B> {
    fn create_vm(&self, spec: VmSpec) -> BoxFuture<'_, Result<VmHandle, BackendError>> {
        Box::pin(async move { Ok(self.tapped(self.inner.create_vm(spec).await?)) })
    }

    fn ensure_cli_vm<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<VmHandle, BackendError>> {
        Box::pin(async move { Ok(self.tapped(self.inner.ensure_cli_vm(user_id).await?)) })
    }

    fn destroy_vm<'a>(
        &'a self,
        vm_id: &'a str,
    ) -> BoxFuture<'a, Result<CleanupReport, BackendError>> {
        self.inner.destroy_vm(vm_id)
    }
}

#[derive(Debug)]
struct TapConnector {
    inner: Arc<dyn Connector>,
    tap: Tap,
}

impl Connector for TapConnector {
    fn connect(&self) -> BoxFuture<'_, Result<AgentStream, TransportError>> {
        Box::pin(async move {
            let stream = self.inner.connect().await?;
            let tapped: AgentStream = Box::pin(TapStream {
                inner: stream,
                tap: self.tap.clone(),
            });
            Ok(tapped)
        })
    }
}

struct TapStream {
    inner: AgentStream,
    tap: Tap,
}

impl AsyncRead for TapStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.inner.as_mut().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.tap.record(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for TapStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = self.inner.as_mut().poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.tap.record(&data[..n]);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

/// A loopback TCP proxy in front of `target` (`host:port`) copying every byte both ways into a
/// [`Tap`]: the HTTP traffic of a service as its clients and it exchange it. Returns the
/// proxy's `http://` base URL.
pub async fn tcp_tap(target: String) -> io::Result<(String, Tap)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let tap = Tap::default();
    let recording = tap.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (target, tap) = (target.clone(), recording.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let mut client = TapStream {
                    inner: Box::pin(client),
                    tap: tap.clone(),
                };
                let mut server = server;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    Ok((base, tap))
}

/// Every log line of this test process, at trace level: the process's global `tracing`
/// subscriber writes into the returned buffer (installed by the first call; a test binary that
/// wants its logs scanned calls this before anything logs).
pub fn trace_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        log
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The forms `token` can travel in: raw, JSON-escaped, percent-encoded, and base64 / base64url
/// of it at each of the three alignments it can have inside a longer encoded text (the middle
/// part that does not depend on its neighbours).
pub fn token_forms(token: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![
        token.as_bytes().to_vec(),
        serde_json::to_string(token)
            .map(|s| s.trim_matches('"').as_bytes().to_vec())
            .unwrap_or_default(),
        token
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
            .into_bytes(),
    ];
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for shift in 0..3usize {
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(token.as_bytes());
            let text = engine.encode(&shifted);
            // Characters covering the padding bytes, or the token's last partial group, depend
            // on what surrounds the token: only the middle is certain.
            let start = (shift * 4).div_ceil(3);
            let end = (shifted.len() / 3) * 4;
            if end > start + 8 {
                forms.push(text.as_bytes()[start..end].to_vec());
            }
        }
    }
    forms.retain(|f| !f.is_empty());
    forms.dedup();
    forms
}

/// The first form of any of `tokens` found in `haystack`, as `(token index, form)`.
pub fn find_token(haystack: &[u8], tokens: &[String]) -> Option<(usize, String)> {
    for (i, token) in tokens.iter().enumerate() {
        for form in token_forms(token) {
            if haystack.windows(form.len()).any(|w| w == form.as_slice()) {
                return Some((i, String::from_utf8_lossy(&form).into_owned()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_is_found_inside_longer_encoded_text() {
        let token = "fake-access/token+0001";
        let tokens = [token.to_owned()];
        let file = format!(r#"{{"claudeAiOauth":{{"accessToken":"{token}"}}}}"#);
        for prefix in ["", "x", "xy"] {
            let wrapped = format!("{prefix}{file}");
            let b64 = base64::engine::general_purpose::STANDARD.encode(&wrapped);
            assert!(find_token(b64.as_bytes(), &tokens).is_some(), "{prefix:?}");
            let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&wrapped);
            assert!(find_token(url.as_bytes(), &tokens).is_some(), "{prefix:?}");
        }
        assert!(find_token(b"...fake-access%2Ftoken%2B0001...", &tokens).is_some());
        assert!(find_token(br#"{"a":"fake-access/token+0001"}"#, &tokens).is_some());
        assert!(find_token(b"nothing of it here", &tokens).is_none());
    }
}
