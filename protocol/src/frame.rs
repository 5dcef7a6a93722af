//! Framing of streaming call bodies.
//!
//! A streaming body is a sequence of frames: a 5-byte header (`kind: u8`, `len: u32` big endian)
//! followed by `len` payload bytes. Byte streams (process output, PTY bytes) travel raw, so the
//! framing costs 5 bytes per chunk and no encoding; control messages travel as JSON payloads.
//!
//! The decoder checks a frame's declared length against its limit as soon as the header is in, so an
//! oversized frame is refused before its payload is buffered.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::ErrorBody;

/// Size of a frame header.
pub const HEADER_LEN: usize = 5;

/// Default largest payload of one frame.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON control message whose type is given by the call.
    Message = 1,
    /// Bytes a process wrote to its standard output (or a PTY's output).
    Stdout = 2,
    /// Bytes a process wrote to its standard error.
    Stderr = 3,
    /// Bytes for a process's standard input (or a PTY's input).
    Stdin = 4,
    /// A JSON [`ErrorBody`]: the stream ends in error.
    Error = 5,
}

impl TryFrom<u8> for FrameKind {
    type Error = FrameError;

    fn try_from(value: u8) -> Result<Self, FrameError> {
        Ok(match value {
            1 => FrameKind::Message,
            2 => FrameKind::Stdout,
            3 => FrameKind::Stderr,
            4 => FrameKind::Stdin,
            5 => FrameKind::Error,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// One frame of a streaming body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Payload type.
    pub kind: FrameKind,
    /// Payload bytes.
    pub payload: Bytes,
}

impl Frame {
    /// A raw byte frame.
    pub fn data(kind: FrameKind, payload: impl Into<Bytes>) -> Self {
        Self {
            kind,
            payload: payload.into(),
        }
    }

    /// A JSON control message frame.
    pub fn message<T: Serialize>(value: &T) -> Result<Self, FrameError> {
        let payload = serde_json::to_vec(value).map_err(FrameError::Encode)?;
        Ok(Self::data(FrameKind::Message, payload))
    }

    /// An error frame.
    pub fn error(body: &ErrorBody) -> Self {
        // Serializing a struct of a string and a unit enum cannot fail.
        let payload = serde_json::to_vec(body).unwrap_or_default();
        Self::data(FrameKind::Error, payload)
    }

    /// Parses a JSON payload (of a `Message` or `Error` frame).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.payload).map_err(FrameError::Decode)
    }

    /// Encodes the frame (header and payload) into one buffer.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_header(&mut buf);
        buf.extend_from_slice(&self.payload);
        buf.freeze()
    }

    /// Writes only the 5-byte header, for callers that send the payload as its own buffer
    /// (avoids copying large byte chunks).
    pub fn encode_header(&self, buf: &mut BytesMut) {
        buf.put_u8(self.kind as u8);
        // Payloads are bounded by the decoder's limit, far below 4 GiB.
        buf.put_u32(u32::try_from(self.payload.len()).unwrap_or(u32::MAX));
    }
}

/// A frame header's kind and payload length, refused when the length is over `max`. For callers
/// that read one frame off a byte stream and then use the stream raw (an egress tunnel's opening).
pub fn decode_header(
    header: [u8; HEADER_LEN],
    max: usize,
) -> Result<(FrameKind, usize), FrameError> {
    let kind = FrameKind::try_from(header[0])?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok((kind, len))
}

/// Why a stream of frames could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header names a frame kind this build does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The header declares a payload larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared payload length.
        len: usize,
        /// The decoder's limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
    /// A JSON payload did not parse as the expected message.
    #[error("malformed message: {0}")]
    Decode(serde_json::Error),
    /// A message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(serde_json::Error),
}

impl FrameError {
    /// The wire error for this decoding failure.
    pub fn to_error_body(&self) -> ErrorBody {
        use crate::ErrorCode;
        let code = match self {
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            FrameError::Encode(_) => ErrorCode::Internal,
            _ => ErrorCode::BadRequest,
        };
        ErrorBody::new(code, self.to_string())
    }
}

/// Incremental decoder: feed it body chunks as they arrive, take complete frames out.
///
/// Chunks are kept as they came (no copy): a payload that lies within one chunk is a slice of it,
/// and only a payload split across chunks is gathered into a fresh buffer.
#[derive(Debug)]
pub struct FrameDecoder {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    max_frame: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder refusing payloads over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            buffered: 0,
            max_frame,
        }
    }

    /// Appends a received chunk without copying it.
    ///
    /// Validates any header that becomes complete so an oversized or unknown frame is refused before
    /// its payload accumulates.
    pub fn push(&mut self, chunk: Bytes) -> Result<(), FrameError> {
        if !chunk.is_empty() {
            self.buffered += chunk.len();
            self.chunks.push_back(chunk);
        }
        self.peek_header().map(|_| ())
    }

    /// Appends received bytes (copied; [`FrameDecoder::push`] takes a chunk as it is).
    pub fn extend(&mut self, chunk: &[u8]) -> Result<(), FrameError> {
        self.push(Bytes::copy_from_slice(chunk))
    }

    fn peek_header(&self) -> Result<Option<(FrameKind, usize)>, FrameError> {
        if self.buffered < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = (HEADER_LEN - filled).min(chunk.len());
            header[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == HEADER_LEN {
                break;
            }
        }
        decode_header(header, self.max_frame).map(Some)
    }

    /// Drops the first `n` buffered bytes (`n <= buffered`).
    fn skip(&mut self, mut n: usize) {
        self.buffered -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }

    /// Removes the first `n` buffered bytes (`n <= buffered`), as one `Bytes`: a slice of the
    /// front chunk when it holds them all.
    fn take(&mut self, n: usize) -> Bytes {
        self.buffered -= n;
        if let Some(front) = self.chunks.front_mut() {
            if front.len() >= n {
                let taken = front.split_to(n);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                return taken;
            }
        }
        let mut gathered = BytesMut::with_capacity(n);
        while gathered.len() < n {
            let Some(mut chunk) = self.chunks.pop_front() else {
                break;
            };
            let want = n - gathered.len();
            if chunk.len() > want {
                gathered.extend_from_slice(&chunk.split_to(want));
                self.chunks.push_front(chunk);
            } else {
                gathered.extend_from_slice(&chunk);
            }
        }
        gathered.freeze()
    }

    /// Takes the next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some((kind, len)) = self.peek_header()? else {
            return Ok(None);
        };
        if self.buffered < HEADER_LEN + len {
            return Ok(None);
        }
        self.skip(HEADER_LEN);
        let payload = self.take(len);
        // Validate the following header early too.
        self.peek_header()?;
        Ok(Some(Frame { kind, payload }))
    }

    /// Call at end of stream: errors if a partial frame is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffered == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buffered))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::data(FrameKind::Stdout, &b"hello"[..]),
            Frame::data(FrameKind::Stderr, Bytes::new()),
            Frame::message(&serde_json::json!({"exit": 3})).expect("encode"),
            Frame::data(FrameKind::Stdin, vec![7u8; 70_000]),
        ]
    }

    proptest! {
        /// Any chunking of the encoded stream decodes to the same frames.
        #[test]
        fn any_chunking_round_trips(cuts in proptest::collection::vec(1usize..9000, 0..40)) {
            let wire: Vec<u8> = frames().iter().flat_map(|f| f.encode().to_vec()).collect();
            let mut dec = FrameDecoder::default();
            let mut out = Vec::new();
            let mut rest = &wire[..];
            for cut in cuts {
                let n = cut.min(rest.len());
                dec.extend(&rest[..n]).expect("valid stream");
                rest = &rest[n..];
                while let Some(f) = dec.next_frame().expect("valid stream") { out.push(f); }
            }
            dec.extend(rest).expect("valid stream");
            while let Some(f) = dec.next_frame().expect("valid stream") { out.push(f); }
            dec.finish().expect("no leftovers");
            prop_assert_eq!(out, frames());
        }
    }

    /// A payload that arrives within one chunk is that chunk's memory, not a copy.
    #[test]
    fn a_payload_within_one_chunk_is_not_copied() {
        let payload = Bytes::from(vec![5u8; 100_000]);
        let mut header = BytesMut::new();
        Frame::data(FrameKind::Stdout, payload.clone()).encode_header(&mut header);
        let mut dec = FrameDecoder::default();
        dec.push(header.freeze()).expect("header");
        dec.push(payload.clone()).expect("payload");
        let frame = dec.next_frame().expect("valid").expect("a frame");
        assert_eq!(frame.payload.as_ptr(), payload.as_ptr());
        assert_eq!(frame.payload.len(), payload.len());
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let mut dec = FrameDecoder::new(1024);
        let mut header = BytesMut::new();
        Frame::data(FrameKind::Stdin, vec![0u8; 2048]).encode_header(&mut header);
        let err = dec.extend(&header).expect_err("must refuse");
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len: 2048,
                max: 1024
            }
        ));
    }

    #[test]
    fn unknown_kind_and_truncation_are_errors() {
        let mut dec = FrameDecoder::default();
        assert!(matches!(
            dec.extend(&[99, 0, 0, 0, 1, 0]),
            Err(FrameError::UnknownKind(99))
        ));
        let mut dec = FrameDecoder::default();
        dec.extend(&[2, 0, 0, 0, 4, 1]).expect("partial is fine");
        assert!(dec.next_frame().expect("partial").is_none());
        assert!(matches!(dec.finish(), Err(FrameError::Truncated(6))));
    }
}
