//! The user's key and zero-knowledge delivery (the `sealing = "user"` mode).
//!
//! The page makes the user's key pair with WebCrypto and registers only the public half here.
//! Credentials captured in a login VM are sealed there to that key; the page moves each one into
//! the user's CLI VM by opening it and re-sealing it to the VM's key: `GET .../delivery` gives it
//! what it needs, `POST .../delivery` hands back the re-sealed envelope, which the service relays
//! to the VM. No route ever takes or returns a private key or an opened credential.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use orchestrator::login::{Delivery, PendingDelivery, Sealing};
use protocol::sealed::PublicKey;
use serde::{Deserialize, Serialize};

use crate::accounts::known_provider;
use crate::app::{ApiJson, AppState};
use crate::auth::AuthUser;
use crate::error::ApiError;

/// The user's key as the service knows it.
#[derive(Debug, Serialize)]
pub struct UserKeyInfo {
    /// How this service seals credentials (`host` or `user`).
    sealing: Sealing,
    /// The registered public key (base64 of the 65-byte P-256 point), if any.
    public_key: Option<PublicKey>,
    /// Its short fingerprint, to compare with the page's key.
    fingerprint: Option<String>,
}

/// Body of `PUT /v1/keys/user`.
#[derive(Debug, Deserialize)]
pub struct SetUserKey {
    public_key: String,
}

fn info(sealing: Sealing, key: Option<PublicKey>) -> UserKeyInfo {
    UserKeyInfo {
        sealing,
        fingerprint: key.as_ref().map(PublicKey::fingerprint),
        public_key: key,
    }
}

/// `GET /v1/keys/user`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
) -> Result<Json<UserKeyInfo>, ApiError> {
    let key = state.login.user_key(&user.id).await?;
    Ok(Json(info(state.login.sealing(), key)))
}

/// `PUT /v1/keys/user`: registers (or replaces) the user's public key.
pub async fn put(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<SetUserKey>,
) -> Result<Json<UserKeyInfo>, ApiError> {
    let key = PublicKey::from_base64(&body.public_key)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_key", e.to_string()))?;
    state.login.set_user_key(&user.id, &key).await?;
    Ok(Json(info(state.login.sealing(), Some(key))))
}

/// `GET /v1/accounts/{provider}/delivery`: the stored envelope and the CLI VM's key, when a
/// user-sealed credential waits to be delivered.
pub async fn pending(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(provider): Path<String>,
) -> Result<Json<PendingDelivery>, ApiError> {
    known_provider(&state, &provider)?;
    state
        .login
        .pending_delivery(&user.id, &provider)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("delivery"))
}

/// Answer of a delivery.
#[derive(Debug, Serialize)]
pub struct Delivered {
    delivered: i64,
}

/// `POST /v1/accounts/{provider}/delivery`: the credential re-sealed to the CLI VM's key.
pub async fn deliver(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(provider): Path<String>,
    ApiJson(body): ApiJson<Delivery>,
) -> Result<Json<Delivered>, ApiError> {
    known_provider(&state, &provider)?;
    state.login.deliver(&user.id, &provider, &body).await?;
    Ok(Json(Delivered {
        delivered: body.version,
    }))
}
