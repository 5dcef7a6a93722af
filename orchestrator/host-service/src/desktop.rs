//! The login VM's desktop in the page: WHEP-style signalling relayed to the browser VM's agent.
//!
//! The page embeds the orchestrator's viewer (`/viewer`), which `POST`s its SDP offer to a
//! same-origin URL and expects the answer SDP. That viewer sends no bearer token, so the page first
//! asks for a ticket with its token (`POST .../link/{session}/desktop`): an unguessable one-time
//! path, valid for a minute, bound to the user's session. The viewer watches for as long as the
//! login's browser VM is up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use protocol::desktop::DesktopOffer;

use crate::accounts::owned_session;
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::ApiError;

const TICKET_LIFETIME: Duration = Duration::from_secs(60);
/// Largest offer accepted.
const MAX_OFFER: usize = 64 * 1024;

/// One outstanding ticket and one live viewer per login session: a new ticket replaces the
/// session's previous one, a new viewer ends the previous one (a reload, another tab), so neither
/// grows with what a client asks.
#[derive(Debug, Default)]
pub struct Desktops {
    /// Session id → (ticket, when issued).
    tickets: Mutex<HashMap<String, (String, Instant)>>,
    /// Session id → the task holding its viewer.
    viewers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

impl Desktops {
    fn issue(&self, session: &str) -> Result<String, ApiError> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(&e))?;
        let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        tickets.retain(|_, (_, at)| at.elapsed() < TICKET_LIFETIME);
        tickets.insert(session.to_owned(), (ticket.clone(), Instant::now()));
        Ok(ticket)
    }

    /// The session a live ticket is for; the ticket is used up.
    fn redeem(&self, ticket: &str) -> Option<String> {
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        let session = tickets
            .iter()
            .find(|(_, (t, at))| t == ticket && at.elapsed() < TICKET_LIFETIME)
            .map(|(s, _)| s.clone())?;
        tickets.remove(&session);
        Some(session)
    }

    fn watching(&self, session: String, viewer: tokio::task::AbortHandle) {
        let mut viewers = self.viewers.lock().unwrap_or_else(|p| p.into_inner());
        viewers.retain(|_, v| !v.is_finished());
        if let Some(previous) = viewers.insert(session, viewer) {
            previous.abort();
        }
    }
}

/// `POST /v1/accounts/{provider}/link/{session}/desktop` → `{signal_url, viewer_url}`.
pub async fn ticket(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path((provider, session)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    owned_session(&state, &user.id, &provider, &session)?;
    let ticket = state.desktops.issue(&session)?;
    let signal = format!("/v1/desktop/{ticket}");
    Ok(Json(serde_json::json!({
        "signal_url": signal,
        "viewer_url": format!("/viewer?signal={signal}"),
    })))
}

/// `POST /v1/desktop/{ticket}` (body: SDP offer, `application/sdp`) → the answer SDP.
pub async fn offer(
    State(state): State<Arc<AppState>>,
    Path(ticket): Path<String>,
    body: bytes::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let session = state.desktops.redeem(&ticket).ok_or_else(|| {
        ApiError::not_found("desktop ticket (they are single-use and last a minute)")
    })?;
    if body.len() > MAX_OFFER {
        return Err(ApiError::bad_request("offer too large"));
    }
    let sdp = std::str::from_utf8(&body)
        .ok()
        .filter(|s| s.starts_with("v=0"))
        .ok_or_else(|| ApiError::bad_request("body: an SDP offer"))?;
    let mut ice = state.config.desktop_ice.clone();
    if let Some(turn) = &state.config.desktop_turn {
        ice.servers
            .push(turn.server(&session, std::time::SystemTime::now()));
    }
    let offer = DesktopOffer {
        sdp: sdp.to_owned(),
        display: state.config.desktop_display.clone(),
        video: Default::default(),
        ice,
    };
    let mut viewer = state.login.desktop(&session, &offer).await?;
    let answer = viewer
        .answer_with_candidates()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "desktop_failed", e.to_string()))?
        .to_owned();
    // The viewer watches while this session lives: until the agent ends it (the VM goes) or
    // the next viewer of the login replaces it.
    let task = tokio::spawn(async move { while let Ok(Some(_)) = viewer.next_event().await {} });
    state.desktops.watching(session, task.abort_handle());
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/sdp")],
        answer,
    ))
}
