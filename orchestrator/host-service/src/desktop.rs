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
/// Outstanding tickets kept at most (older ones are dropped first).
const MAX_TICKETS: usize = 4096;
/// Largest offer accepted.
const MAX_OFFER: usize = 64 * 1024;

/// Outstanding tickets: ticket → (session id, when issued).
#[derive(Debug, Default)]
pub struct Desktops {
    tickets: Mutex<HashMap<String, (String, Instant)>>,
}

impl Desktops {
    fn issue(&self, session: &str) -> Result<String, ApiError> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(&e))?;
        let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        tickets.retain(|_, (_, at)| at.elapsed() < TICKET_LIFETIME);
        if tickets.len() >= MAX_TICKETS {
            if let Some(oldest) = tickets
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(t, _)| t.clone())
            {
                tickets.remove(&oldest);
            }
        }
        tickets.insert(ticket.clone(), (session.to_owned(), Instant::now()));
        Ok(ticket)
    }

    fn redeem(&self, ticket: &str) -> Option<String> {
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        let (session, at) = tickets.remove(ticket)?;
        (at.elapsed() < TICKET_LIFETIME).then_some(session)
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
    let offer = DesktopOffer {
        sdp: sdp.to_owned(),
        display: state.config.desktop_display.clone(),
        video: Default::default(),
        ice: state.config.desktop_ice.clone(),
    };
    let mut viewer = state.login.desktop(&session, &offer).await?;
    let answer = viewer
        .answer_with_candidates()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "desktop_failed", e.to_string()))?
        .to_owned();
    // The viewer watches while this session lives: until the agent ends it (the VM goes).
    tokio::spawn(async move { while let Ok(Some(_)) = viewer.next_event().await {} });
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/sdp")],
        answer,
    ))
}
