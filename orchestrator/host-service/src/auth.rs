//! Sign-up, sign-in and the bearer token every other route needs.
//!
//! Passwords are hashed with Argon2id (default parameters, on a blocking thread: a hash takes tens
//! of milliseconds by design). Tokens are 256 random bits, handed out once and stored as digests.

use std::net::SocketAddr;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::{ApiJson, AppState};
use crate::error::ApiError;
use crate::users::User;

/// Longest accepted password (hashing cost grows with it).
const MAX_PASSWORD: usize = 1024;
const MIN_PASSWORD: usize = 8;

/// Body of register and login.
#[derive(Deserialize)]
pub struct Credentials {
    email: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// Answer of register and login.
#[derive(Serialize)]
pub struct SignedIn {
    user: User,
    /// The bearer token; shown once.
    token: String,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Argon2id hashes running at once at most (each takes ~19 MiB and a core for tens of ms): a
/// flood of sign-ins queues instead of exhausting memory.
const HASHES_AT_ONCE: usize = 2;

/// Runs an Argon2 job on a blocking thread, at most [`HASHES_AT_ONCE`] at a time.
async fn hashing<T: Send + 'static>(
    state: &AppState,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = state
        .hashing
        .acquire()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| ApiError::internal(&e))
}

/// A semaphore of [`HASHES_AT_ONCE`] permits, for [`AppState`].
pub fn hash_permits() -> tokio::sync::Semaphore {
    tokio::sync::Semaphore::new(HASHES_AT_ONCE)
}

/// The signed-in user of a request (from `Authorization: Bearer <token>`).
#[derive(Debug, Clone)]
pub struct AuthUser(pub User);

impl FromRequestParts<Arc<AppState>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(ApiError::unauthorized)?;
        let digest = digest(token);
        if let Some(user) = state.tokens.get(&digest) {
            return Ok(AuthUser(user));
        }
        match state.users.by_token(&digest).await? {
            Some(user) => {
                state.tokens.put(digest, user.clone());
                Ok(AuthUser(user))
            }
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// Tokens seen valid lately, so most requests skip the database: an entry lives
/// [`TokenCache::TTL`] (tokens live for days; none is revoked before it expires).
#[derive(Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (User, std::time::Instant)>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("TokenCache").field("entries", &n).finish()
    }
}

impl TokenCache {
    /// How long a lookup is trusted.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(30);
    /// Entries kept at most (all are dropped when it is full: a flood of tokens costs lookups,
    /// not memory).
    const MAX: usize = 10_000;

    fn get(&self, digest: &str) -> Option<User> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(digest)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(u, _)| u.clone())
    }

    fn put(&self, digest: String, user: User) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::MAX {
            entries.clear();
        }
        entries.insert(digest, (user, std::time::Instant::now()));
    }
}

fn digest(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(&e))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn check(c: &Credentials) -> Result<String, ApiError> {
    let email = c.email.trim().to_ascii_lowercase();
    let valid = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && b.contains('.') && !b.starts_with('.'))
        && !email.chars().any(char::is_whitespace);
    if !valid {
        return Err(ApiError::bad_request("email: not an email address"));
    }
    if c.password.chars().count() < MIN_PASSWORD || c.password.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "password: {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )));
    }
    Ok(email)
}

fn limited(state: &AppState, addr: &SocketAddr) -> Result<(), ApiError> {
    state
        .auth_limit
        .hit(&addr.ip().to_string())
        .map_err(|wait| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many attempts; try again in {} s",
                    wait.as_secs().max(1)
                ),
            )
        })
}

async fn sign_in(state: &AppState, user: User) -> Result<SignedIn, ApiError> {
    let token = new_token()?;
    state
        .users
        .add_token(&user.id, &digest(&token), state.config.token_lifetime)
        .await?;
    Ok(SignedIn { user, token })
}

/// `POST /v1/auth/register`.
pub async fn register(
    State(state): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<SignedIn>), ApiError> {
    limited(&state, &addr)?;
    let email = check(&body)?;
    let password = body.password;
    let hash = hashing(&state, move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await?
    .map_err(|e| ApiError::internal(&e))?;
    let Some(user) = state.users.create(&email, &hash).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "email_taken",
            "an account with this email exists; sign in instead",
        ));
    };
    tracing::info!(user = %user.id, "user registered");
    Ok((StatusCode::CREATED, Json(sign_in(&state, user).await?)))
}

/// `POST /v1/auth/login`.
pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<SignedIn>, ApiError> {
    limited(&state, &addr)?;
    if body.password.len() > MAX_PASSWORD {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_credentials",
            "wrong email or password",
        ));
    }
    let email = body.email.trim().to_ascii_lowercase();
    let found = state.users.by_email(&email).await?;
    // An unknown email costs a hash too, so timing does not tell which emails exist.
    let stored = found
        .as_ref()
        .map(|(_, h)| h.clone())
        .unwrap_or_else(|| state.dummy_hash.clone());
    let password = body.password;
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?;
    match found {
        Some((user, _)) if ok => Ok(Json(sign_in(&state, user).await?)),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_credentials",
            "wrong email or password",
        )),
    }
}

/// `GET /v1/auth/me`.
pub async fn me(AuthUser(user): AuthUser) -> Json<User> {
    Json(user)
}

/// A hash of a random password, verified against when the email is unknown.
pub fn dummy_hash() -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
        .map(|h| h.to_string())
}
