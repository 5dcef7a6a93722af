//! HTTP body adapters for frame streams, shared by both ends.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame as HttpFrame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::frame::{Frame, FrameDecoder, FrameError, HEADER_LEN};

/// A body fed from a channel of frames; the body ends when every sender is dropped. The channel's
/// bound gives back-pressure down to HTTP/2 flow control.
///
/// A frame's header and payload leave as two data chunks so large payloads are never copied.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Frame>,
    pending: Option<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it, buffering at most `depth` frames.
    pub fn channel(depth: usize) -> (FrameSender, ChannelBody) {
        let (tx, rx) = mpsc::channel(depth);
        (FrameSender { tx }, ChannelBody { rx, pending: None })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<HttpFrame<Bytes>, Infallible>>> {
        if let Some(payload) = self.pending.take() {
            return Poll::Ready(Some(Ok(HttpFrame::data(payload))));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                let mut header = BytesMut::with_capacity(HEADER_LEN);
                frame.encode_header(&mut header);
                if !frame.payload.is_empty() {
                    self.pending = Some(frame.payload);
                }
                Poll::Ready(Some(Ok(HttpFrame::data(header.freeze()))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Sends frames into a [`ChannelBody`].
#[derive(Debug, Clone)]
pub struct FrameSender {
    tx: mpsc::Sender<Frame>,
}

/// The receiving body is gone (peer closed the stream).
#[derive(Debug, thiserror::Error)]
#[error("stream closed by peer")]
pub struct StreamClosed;

impl FrameSender {
    /// Sends one frame; waits while the peer is not reading (flow control).
    pub async fn send(&self, frame: Frame) -> Result<(), StreamClosed> {
        self.tx.send(frame).await.map_err(|_| StreamClosed)
    }

    /// Sends a JSON message frame.
    pub async fn send_message<T: serde::Serialize>(&self, value: &T) -> Result<(), StreamClosed> {
        match Frame::message(value) {
            Ok(frame) => self.send(frame).await,
            Err(e) => self.send(Frame::error(&e.to_error_body())).await,
        }
    }

    /// Resolves when the receiving body has been dropped.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Reads frames out of any HTTP body.
#[derive(Debug)]
pub struct FrameReader<B> {
    body: B,
    decoder: FrameDecoder,
    done: bool,
}

/// Why reading frames failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// The bytes are not a valid frame stream.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The body itself failed (connection reset, stream reset).
    #[error("body: {0}")]
    Body(E),
}

impl<B> FrameReader<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// Reads frames of at most `max_frame` payload bytes from `body`.
    pub fn new(body: B, max_frame: usize) -> Self {
        Self {
            body,
            decoder: FrameDecoder::new(max_frame),
            done: false,
        }
    }

    /// The next frame, or `None` at a clean end of the body.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError<B::Error>> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            if self.done {
                self.decoder.finish()?;
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(data)?;
                    }
                }
                Some(Err(e)) => return Err(ReadError::Body(e)),
                None => self.done = true,
            }
        }
    }
}
