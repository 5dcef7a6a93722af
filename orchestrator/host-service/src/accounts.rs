//! Providers, linked accounts and login sessions: start, events (SSE), pasted code, cancel,
//! revoke, egress rotation.
//!
//! Every route checks that what it names belongs to the signed-in user; another user's session
//! looks exactly like one that does not exist (404).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::Stream;
use orchestrator::login::{SessionInfo, SessionState};
use serde::{Deserialize, Serialize};

use crate::app::{ApiJson, AppState};
use crate::auth::AuthUser;
use crate::error::ApiError;

/// One provider the service can link.
#[derive(Debug, Serialize)]
pub struct ProviderInfo {
    id: String,
    /// Login modes, the default first.
    modes: Vec<String>,
    /// Whether prompts can run for it (`POST /v1/jobs`).
    prompts: bool,
}

/// `GET /v1/providers`.
pub async fn providers(
    State(state): State<Arc<AppState>>,
    AuthUser(_): AuthUser,
) -> Json<Vec<ProviderInfo>> {
    Json(
        state
            .login
            .providers()
            .iter()
            .map(|p| ProviderInfo {
                id: p.name.clone(),
                modes: p.modes.iter().map(|m| m.id.clone()).collect(),
                prompts: !p.prompt_argv.is_empty(),
            })
            .collect(),
    )
}

/// One linked account.
#[derive(Debug, Serialize)]
pub struct Account {
    provider: String,
    /// `linked` (in the CLI VM), `pending_push` (stored, not yet in the CLI VM) or `expired`.
    status: &'static str,
    scopes: Vec<String>,
    egress_port: Option<u16>,
    /// Unix ms, where the credential says.
    expires_at: Option<i64>,
    /// Unix ms of the last job.
    last_used: Option<i64>,
    /// Stored credential version.
    version: i64,
    /// Who can open the stored copy: `host` or `user`.
    sealing: orchestrator::login::Sealing,
}

/// `GET /v1/accounts`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
) -> Result<Json<Vec<Account>>, ApiError> {
    let port = state.login.egress_port(&user.id).await?;
    let now = crate::users::now_ms();
    let mut out = Vec::new();
    for a in state.login.accounts(&user.id).await? {
        let status = match (a.expires_at_ms, a.pushed) {
            (Some(t), _) if t <= now => "expired",
            (_, true) => "linked",
            (_, false) => "pending_push",
        };
        out.push(Account {
            last_used: state.users.last_used(&user.id, &a.provider).await?,
            provider: a.provider,
            status,
            scopes: a.scopes,
            egress_port: port,
            expires_at: a.expires_at_ms,
            version: a.version,
            sealing: a.sealing,
        });
    }
    Ok(Json(out))
}

/// Body of link start (optional).
#[derive(Debug, Default, Deserialize)]
pub struct LinkStart {
    /// A login mode of the provider (default: its first).
    #[serde(default)]
    mode: Option<String>,
}

/// Answer of link start.
#[derive(Debug, Serialize)]
pub struct LinkStarted {
    login_session_id: String,
    provider: String,
    state: SessionState,
    /// Where the session's events stream (SSE).
    events: String,
}

/// `POST /v1/accounts/{provider}/link/start`: a new login session, or the running one.
pub async fn link_start(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(provider): Path<String>,
    body: bytes::Bytes,
) -> Result<(StatusCode, Json<LinkStarted>), ApiError> {
    // The body is optional: empty means the default mode.
    let mode = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<LinkStart>(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("body: {e}")))?
            .mode
    };
    known_provider(&state, &provider)?;
    state.link_limit.hit(&user.id).map_err(|wait| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many logins started; try again in {} s",
                wait.as_secs().max(1)
            ),
        )
    })?;
    let id = state
        .login
        .start_in_mode(&user.id, &provider, mode.as_deref())
        .await?;
    let session_state = state.login.state(&id).await?;
    Ok((
        StatusCode::CREATED,
        Json(LinkStarted {
            events: format!("/v1/accounts/{provider}/link/{id}/events"),
            login_session_id: id,
            provider,
            state: session_state,
        }),
    ))
}

/// The recipe of `name`, or the `unknown_provider` error (404).
pub(crate) fn known_provider<'a>(
    state: &'a AppState,
    name: &str,
) -> Result<&'a orchestrator::login::ProviderLogin, ApiError> {
    state
        .login
        .provider(name)
        .ok_or_else(|| orchestrator::login::LoginError::UnknownProvider(name.to_owned()).into())
}

/// The session, if it is the user's and the provider's.
pub(crate) fn owned_session(
    state: &AppState,
    user: &str,
    provider: &str,
    session: &str,
) -> Result<SessionInfo, ApiError> {
    state
        .login
        .session_info(session)
        .filter(|s| s.user == user && s.provider == provider)
        .ok_or_else(|| ApiError::not_found("login session"))
}

/// `GET /v1/accounts/{provider}/link/{session}/events`: every event from the first, then live,
/// as `event: login` with the event's JSON; the stream ends with the session.
pub async fn link_events(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path((provider, session)): Path<(String, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    owned_session(&state, &user.id, &provider, &session)?;
    let events = state.login.subscribe(&session).await?;
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        let ev = events.next().await?;
        let data = serde_json::to_string(&ev).unwrap_or_else(|_| "{}".into());
        Some((
            Ok(Event::default()
                .event("login")
                .id(ev.seq.to_string())
                .data(data)),
            events,
        ))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Body of the code route.
#[derive(Deserialize)]
pub struct Code {
    code: String,
}

impl std::fmt::Debug for Code {
    /// The code is the user's secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Code").finish_non_exhaustive()
    }
}

/// `POST /v1/accounts/{provider}/link/{session}/code`: the code the provider showed the user.
pub async fn link_code(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path((provider, session)): Path<(String, String)>,
    ApiJson(body): ApiJson<Code>,
) -> Result<StatusCode, ApiError> {
    owned_session(&state, &user.id, &provider, &session)?;
    let code = body.code.trim();
    if code.is_empty() || code.len() > 4096 || code.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "code: one line of at most 4096 characters",
        ));
    }
    state.login.submit_code(&session, code).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/accounts/{provider}/link/{session}/cancel`.
pub async fn link_cancel(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path((provider, session)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    owned_session(&state, &user.id, &provider, &session)?;
    let cancelled = state.login.cancel(&session).await?;
    Ok(Json(serde_json::json!({ "cancelled": cancelled })))
}

/// `POST /v1/accounts/{provider}/revoke`: the stored credential is deleted and the CLI VM's copy
/// wiped.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(provider): Path<String>,
) -> Result<Json<orchestrator::login::Revoked>, ApiError> {
    Ok(Json(state.login.revoke(&user.id, &provider).await?))
}

/// `POST /v1/accounts/{provider}/rotate-egress`: a new egress port for the user (all providers
/// share it); tunnels on the old port are closed.
pub async fn rotate_egress(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(provider): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_provider(&state, &provider)?;
    let port = state.login.rotate_egress(&user.id).await?;
    Ok(Json(serde_json::json!({ "new_port": port })))
}
