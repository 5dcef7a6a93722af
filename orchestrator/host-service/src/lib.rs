//! The example host service: the orchestrator library embedded as a deployment would embed it.
//!
//! - [`app`]: shared state, the route table (one table drives the router and the OpenAPI
//!   document), JSON bodies whose errors are `{code, message}`.
//! - [`auth`]: sign-up, sign-in (Argon2id), bearer tokens; [`users`]: the service's own tables.
//! - [`accounts`]: providers, linked accounts, login sessions and their events (SSE), revoke,
//!   egress rotation; [`desktop`]: the login VM's desktop (WHEP-style signalling relay).
//! - [`jobs`]: prompts in the user's CLI VM with streamed output.
//! - [`keys`]: the user's public key and zero-knowledge delivery into the CLI VM.
//! - [`config`]: the TOML file and environment; [`page`]: the web page.
//!
//! Every route but sign-up, sign-in, the document and the ticketed desktop signalling needs the
//! user's token, and no route shows or drives another user's sessions, desktops, accounts or jobs.

pub mod accounts;
pub mod app;
pub mod auth;
pub mod config;
pub mod desktop;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod openapi;
pub mod page;
pub mod ratelimit;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use app::{router, AppState, ServiceConfig, API};
pub use config::FileConfig;

/// Serves the service on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Events and streamed output are small writes that must leave at once.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// [`serve`] until `shutdown` completes, then gives open connections `grace` to finish: event
/// and output streams would otherwise hold a graceful stop for as long as they last.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    tokio::select! {
        ended = &mut server => return ended.map_err(std::io::Error::other)?,
        () = shutdown => {}
    }
    let _ = stop.send(());
    match tokio::time::timeout(grace, &mut server).await {
        Ok(ended) => ended.map_err(std::io::Error::other)?,
        Err(_) => {
            server.abort();
            Ok(())
        }
    }
}
