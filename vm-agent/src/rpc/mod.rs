//! The HTTP/2 service the host talks to.
//!
//! One connection carries many concurrent calls; each call is its own HTTP/2 stream with its own
//! flow-control window, so a flood of output on one call cannot hold up another.

pub mod body;
mod router;

use std::sync::Arc;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use protocol::http2 as settings;

use crate::state::Agent;

/// Serves one host connection until it closes.
pub async fn serve_connection<S>(stream: S, agent: Arc<Agent>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| router::route(agent.clone(), req));
    let result = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(settings::STREAM_WINDOW)
        .initial_connection_window_size(settings::CONNECTION_WINDOW)
        .max_frame_size(settings::MAX_FRAME)
        .max_header_list_size(settings::MAX_HEADER_LIST)
        .max_concurrent_streams(settings::MAX_CONCURRENT_STREAMS)
        .max_send_buf_size(settings::MAX_SEND_BUFFER)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        debug!(error = %e, "connection ended");
    }
}
