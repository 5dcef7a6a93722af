//! Request parsing and response building shared by every route.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use protocol::body::{FrameReader, ReadError};
use protocol::frame::FrameKind;
use protocol::{ErrorBody, ErrorCode, Streaming, Unary, MAX_BODY_BYTES};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Body of every response.
pub type ResponseBody = BoxBody<Bytes, Infallible>;

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(bytes) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)).boxed())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())),
        Err(e) => error(&ErrorBody::new(ErrorCode::Internal, e.to_string())),
    }
}

/// An error response; its status follows the error code.
pub fn error(body: &ErrorBody) -> Response<ResponseBody> {
    let status =
        StatusCode::from_u16(body.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, body)
}

/// How many bytes of request bodies the agent holds at once, all calls together: a few full
/// bodies. Many large calls at once are refused past it instead of exhausting a small VM.
pub const IN_FLIGHT_BODY_BYTES: usize = 3 * MAX_BODY_BYTES;

/// The agent's budget of request body bytes in flight (one per agent, found by every call in its
/// request's extensions).
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    /// A budget of [`IN_FLIGHT_BODY_BYTES`].
    pub fn new() -> Self {
        Self(Arc::new(Semaphore::new(IN_FLIGHT_BODY_BYTES)))
    }

    fn take(&self, held: &mut Option<OwnedSemaphorePermit>, n: usize) -> Result<(), ErrorBody> {
        let Ok(more) = u32::try_from(n) else {
            return Err(too_large(n as u64));
        };
        let permit = self.0.clone().try_acquire_many_owned(more).map_err(|_| {
            ErrorBody::new(
                ErrorCode::TooLarge,
                format!(
                    "the agent already holds {IN_FLIGHT_BODY_BYTES} bytes of requests; try again"
                ),
            )
        })?;
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }
}

impl Default for BodyBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads a JSON request body of at most [`MAX_BODY_BYTES`], within the agent's [`BodyBudget`]
/// (the returned permit holds its share until dropped). A declared length over the limit is
/// refused before any byte of the body is read.
pub async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<(T, Option<OwnedSemaphorePermit>), ErrorBody> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > MAX_BODY_BYTES as u64 {
            return Err(too_large(len));
        }
    }
    let budget = req.extensions().get::<BodyBudget>().cloned();
    let mut held = None;
    let mut body = Limited::new(req.into_body(), MAX_BODY_BYTES);
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(MAX_BODY_BYTES as u64 + 1)
            } else {
                ErrorBody::new(ErrorCode::BadRequest, format!("reading body: {e}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if let Some(budget) = &budget {
                budget.take(&mut held, data.len())?;
            }
            bytes.extend_from_slice(&data);
        }
    }
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("malformed request: {e}")))?;
    Ok((value, held))
}

fn too_large(len: u64) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::TooLarge,
        format!("body of {len} bytes exceeds the limit of {MAX_BODY_BYTES} bytes"),
    )
}

/// Serves a unary call: parse, run `handler`, answer with its result.
pub async fn unary<M, F, Fut>(req: Request<Incoming>, handler: F) -> Response<ResponseBody>
where
    M: Unary,
    F: FnOnce(M::Request) -> Fut,
    Fut: std::future::Future<Output = Result<M::Response, ErrorBody>>,
{
    match read_json::<M::Request>(req).await {
        // The body's share of the budget is held until the call has answered.
        Ok((request, _held)) => match handler(request).await {
            Ok(response) => json(StatusCode::OK, &response),
            Err(e) => error(&e),
        },
        Err(e) => error(&e),
    }
}

/// Opens a streaming call: reads the opening message frame as `M::Request` and returns it with the
/// reader, which then yields the call's input frames. Refuses a missing or malformed opening, or a
/// frame over `max_frame`, with the error to answer.
pub async fn open_stream<M: Streaming>(
    req: Request<Incoming>,
    max_frame: usize,
) -> Result<(M::Request, FrameReader<Incoming>), ErrorBody> {
    let mut reader = FrameReader::new(req.into_body(), max_frame);
    match reader.next().await {
        Ok(Some(frame)) if frame.kind == FrameKind::Message => frame
            .json()
            .map(|request| (request, reader))
            .map_err(|e| e.to_error_body()),
        Ok(Some(frame)) => Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!(
                "{} must open with a message frame, got {:?}",
                M::NAME,
                frame.kind
            ),
        )),
        Ok(None) => Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("empty {} request", M::NAME),
        )),
        Err(ReadError::Frame(e)) => Err(e.to_error_body()),
        Err(ReadError::Body(e)) => Err(ErrorBody::new(ErrorCode::BadRequest, e.to_string())),
    }
}
