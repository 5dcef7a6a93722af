//! Maps `POST /v1/<method>` to its handler. New calls register here.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method as HttpMethod, Request, Response};
use hyper::body::Incoming;
use protocol::creds::{CredsKey, CredsPut, CredsPutSealed, CredsWatch, CredsWipe};
use protocol::messages::{
    Configure, ConfigureResponse, Exec, GetHello, Health, HealthResponse, ReadFile, Stats,
    StatsResponse, WriteFile,
};
use protocol::power::Poweroff;
use protocol::{ErrorBody, ErrorCode, Method, PROTOCOL_HEADER, PROTOCOL_VERSION};
use tracing::debug;

use super::body::{error, unary, ResponseBody};
use crate::state::Agent;
use crate::{creds, exec, files, pty, system};

/// Entry point of every request.
pub async fn route(
    agent: Arc<Agent>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    req.extensions_mut().insert(agent.body_budget().clone());
    if let Err(e) = check_version(&req) {
        return Ok(error(&e));
    }
    if req.method() != HttpMethod::POST {
        return Ok(error(&ErrorBody::new(
            ErrorCode::BadRequest,
            format!("calls are POST, got {}", req.method()),
        )));
    }
    let Some(name) = req.uri().path().strip_prefix("/v1/").map(str::to_owned) else {
        return Ok(error(&unknown(req.uri().path())));
    };
    debug!(method = %name, "call");
    let response = match name.as_str() {
        n if n == GetHello::NAME => {
            unary::<GetHello, _, _>(req, |_| async { Ok(agent.hello()) }).await
        }
        n if n == Health::NAME => {
            unary::<Health, _, _>(req, |_| async {
                Ok(HealthResponse {
                    status: "ok".into(),
                    uptime_ms: agent.uptime_ms(),
                })
            })
            .await
        }
        n if n == Stats::NAME => {
            unary::<Stats, _, _>(req, |_| async {
                let (mem_total_kb, mem_available_kb) = system::meminfo_kb();
                Ok(StatsResponse {
                    uptime_ms: agent.uptime_ms(),
                    agent_rss_kb: system::self_rss_kb(),
                    load_avg: system::load_avg(),
                    mem_total_kb,
                    mem_available_kb,
                    running_processes: agent.running_processes(),
                    desktops: agent.desktop_stats(),
                })
            })
            .await
        }
        n if n == Configure::NAME => {
            unary::<Configure, _, _>(req, |request| async {
                let configured = agent.configure(request);
                Ok(ConfigureResponse {
                    env_keys: configured.env.0.keys().cloned().collect(),
                    session_id: configured.session_id,
                })
            })
            .await
        }
        n if n == ReadFile::NAME => unary::<ReadFile, _, _>(req, files::read).await,
        n if n == WriteFile::NAME => unary::<WriteFile, _, _>(req, files::write).await,
        n if n == Exec::NAME => exec::serve(agent.clone(), req).await,
        n if n == protocol::pty::Pty::NAME => pty::serve::serve(agent.clone(), req).await,
        n if n == CredsWatch::NAME => creds::serve_watch(agent.clone(), req).await,
        n if n == CredsPut::NAME => {
            unary::<CredsPut, _, _>(req, |r| creds::put(agent.clone(), r)).await
        }
        n if n == CredsPutSealed::NAME => {
            unary::<CredsPutSealed, _, _>(req, |r| creds::put_sealed(agent.clone(), r)).await
        }
        n if n == CredsKey::NAME => {
            unary::<CredsKey, _, _>(req, |_| creds::key(agent.clone())).await
        }
        n if n == CredsWipe::NAME => {
            unary::<CredsWipe, _, _>(req, |r| creds::wipe(agent.clone(), r)).await
        }
        n if n == Poweroff::NAME => {
            unary::<Poweroff, _, _>(req, |_| crate::init::serve_poweroff(&agent)).await
        }
        n if n == protocol::restore::Restored::NAME => {
            unary::<protocol::restore::Restored, _, _>(req, |r| crate::restore::serve(&agent, r))
                .await
        }
        n if n == protocol::desktop::Desktop::NAME => desktop(&agent, req).await,
        n if n == protocol::browser::BrowserWatch::NAME => browser_watch(&agent, req).await,
        n if n == protocol::browser::Browser::NAME => {
            unary::<protocol::browser::Browser, _, _>(req, |_| async {
                agent.browser_state().await.ok_or_else(no_browser)
            })
            .await
        }
        _ => error(&unknown(&name)),
    };
    Ok(response)
}

/// The `browser_watch` call, when the agent drives a browser.
#[cfg(feature = "desktop")]
async fn browser_watch(agent: &Agent, req: Request<Incoming>) -> Response<ResponseBody> {
    match agent.browser() {
        Some(browser) => crate::browser::serve_watch(browser, req).await,
        None => error(&no_browser()),
    }
}

/// Without the desktop feature there is no browser.
#[cfg(not(feature = "desktop"))]
async fn browser_watch(_agent: &Agent, _req: Request<Incoming>) -> Response<ResponseBody> {
    error(&no_browser())
}

fn no_browser() -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, "this agent drives no browser")
}

/// The `desktop` call: opened here, served by the desktop crate when the agent has it.
#[cfg(feature = "desktop")]
async fn desktop(agent: &Agent, req: Request<Incoming>) -> Response<ResponseBody> {
    use http_body_util::BodyExt;
    let opened = super::body::open_stream::<protocol::desktop::Desktop>(
        req,
        agent_desktop::serve::MAX_SIGNAL_FRAME,
    )
    .await;
    let served = match opened {
        Ok((offer, reader)) => agent_desktop::serve::serve(agent.desktops(), offer, reader).await,
        Err(e) => Err(e),
    };
    match served {
        Ok(body) => Response::new(body.boxed()),
        Err(e) => error(&e),
    }
}

/// Without the desktop feature the call is refused, saying why.
#[cfg(not(feature = "desktop"))]
async fn desktop(_agent: &Agent, _req: Request<Incoming>) -> Response<ResponseBody> {
    error(&ErrorBody::new(
        ErrorCode::UnknownMethod,
        "this agent was built without its desktop (the CLI VM's agent)",
    ))
}

fn unknown(name: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::UnknownMethod, format!("unknown method {name:?}"))
}

fn check_version(req: &Request<Incoming>) -> Result<(), ErrorBody> {
    let theirs = req
        .headers()
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    match theirs {
        Some(v) if v == PROTOCOL_VERSION => Ok(()),
        Some(v) => Err(ErrorBody::new(
            ErrorCode::VersionMismatch,
            format!("caller speaks protocol {v}, this agent speaks {PROTOCOL_VERSION}"),
        )),
        None => Err(ErrorBody::new(
            ErrorCode::VersionMismatch,
            format!("missing {PROTOCOL_HEADER} header (this agent speaks {PROTOCOL_VERSION})"),
        )),
    }
}
