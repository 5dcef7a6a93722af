//! The service's shared state and its routes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::routing::get;
use axum::Router;
use orchestrator::login::LoginService;
use protocol::desktop::IceSettings;

use crate::error::ApiError;
use crate::jobs::Jobs;
use crate::ratelimit::RateLimiter;
use crate::users::Users;
use crate::{accounts, auth, desktop, jobs, keys, openapi, page};

/// What the routes need to know besides the library.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// How long a sign-in token is valid.
    pub token_lifetime: Duration,
    /// Sign-up and sign-in attempts per client address per minute.
    pub auth_per_minute: u32,
    /// Link starts per user per minute (each may boot a VM).
    pub link_per_minute: u32,
    /// Environment added to every job (a deployment's API base URL, say; never a secret).
    pub job_env: BTreeMap<String, String>,
    /// A job's time limit when the request names none, and the most it may name.
    pub job_timeout: Duration,
    /// Display of the browser VMs' desktop (`None`: the agent's default).
    pub desktop_display: Option<String>,
    /// How the browser VMs' agents reach a viewer (their ICE settings).
    pub desktop_ice: IceSettings,
    /// A TURN server taking short-lived credentials: each viewer session's agent gets its own
    /// (added to `desktop_ice`'s servers), never a long-term password shared by every VM.
    pub desktop_turn: Option<orchestrator::desktop::TurnRest>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            token_lifetime: Duration::from_secs(30 * 24 * 3600),
            auth_per_minute: 20,
            link_per_minute: 10,
            job_env: BTreeMap::new(),
            job_timeout: Duration::from_secs(600),
            desktop_display: None,
            desktop_ice: IceSettings::default(),
            desktop_turn: None,
        }
    }
}

/// Everything a request handler reaches.
pub struct AppState {
    /// The orchestrator.
    pub login: LoginService,
    /// Users and tokens.
    pub users: Users,
    /// Running and finished jobs.
    pub jobs: Jobs,
    /// Desktop viewer tickets and viewers.
    pub desktops: desktop::Desktops,
    /// Limits on sign-up and sign-in.
    pub auth_limit: RateLimiter,
    /// Limits on link starts.
    pub link_limit: RateLimiter,
    /// Verified against when an email is unknown.
    pub dummy_hash: String,
    /// Tokens looked up lately.
    pub tokens: auth::TokenCache,
    /// Argon2 jobs that may run at once.
    pub hashing: tokio::sync::Semaphore,
    /// Settings.
    pub config: ServiceConfig,
}

impl AppState {
    /// State around a login service and the users' tables.
    pub fn new(login: LoginService, users: Users, config: ServiceConfig) -> anyhow::Result<Self> {
        Ok(Self {
            login,
            users,
            jobs: Jobs::default(),
            desktops: desktop::Desktops::default(),
            auth_limit: RateLimiter::new(config.auth_per_minute, Duration::from_secs(60)),
            link_limit: RateLimiter::new(config.link_per_minute, Duration::from_secs(60)),
            dummy_hash: auth::dummy_hash().map_err(|e| anyhow::anyhow!("argon2: {e}"))?,
            tokens: auth::TokenCache::default(),
            hashing: auth::hash_permits(),
            config,
        })
    }
}

impl std::fmt::Debug for AppState {
    /// Settings and the library only: users, tokens and jobs' output stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("login", &self.login)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// JSON bodies whose rejection is an [`ApiError`] (`{code, message}`) like every other error.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            // Malformed, mistyped or of the wrong shape: all one thing to a client.
            Err(rejection) => Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "bad_json",
                rejection.body_text(),
            )),
        }
    }
}

/// One route of the API: method, path, the handler, and its summary for the OpenAPI document.
macro_rules! api {
    ($( $method:ident $path:literal => $handler:path, $summary:literal; )*) => {
        /// The `/v1` API as `(method, path, summary)`: the router is built from this table and the
        /// OpenAPI document describes it, so the two cannot drift apart.
        pub const API: &[(&str, &str, &str)] = &[ $( (stringify!($method), $path, $summary), )* ];

        fn api_routes(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
            router $( .route($path, axum::routing::$method($handler)) )*
        }
    };
}

api! {
    post "/v1/auth/register" => auth::register, "Sign up: {email, password} -> {user, token}";
    post "/v1/auth/login" => auth::login, "Sign in: {email, password} -> {user, token}";
    get "/v1/auth/me" => auth::me, "The signed-in user";
    get "/v1/providers" => accounts::providers, "Providers that can be linked";
    get "/v1/accounts" => accounts::list, "Linked accounts: provider, status, scopes, egress_port, expires_at, last_used";
    post "/v1/accounts/{provider}/link/start" => accounts::link_start, "Start linking (or get the running login): {mode?} -> {login_session_id}";
    get "/v1/accounts/{provider}/link/{session}/events" => accounts::link_events, "The login's events (server-sent events: state, URL, progress, failure reason)";
    post "/v1/accounts/{provider}/link/{session}/code" => accounts::link_code, "Paste the code the provider showed: {code}";
    post "/v1/accounts/{provider}/link/{session}/cancel" => accounts::link_cancel, "Cancel the login";
    post "/v1/accounts/{provider}/link/{session}/desktop" => desktop::ticket, "A one-time signalling URL for the login VM's desktop";
    post "/v1/desktop/{ticket}" => desktop::offer, "WebRTC signalling: SDP offer in (application/sdp), answer out";
    get "/v1/keys/user" => keys::get, "The user's public key and how the service seals credentials: {sealing, public_key, fingerprint}";
    put "/v1/keys/user" => keys::put, "Register the user's public key (base64 P-256 point): {public_key}";
    get "/v1/accounts/{provider}/delivery" => keys::pending, "A user-sealed credential waiting for the page: {version, sealed, vm_id, vm_key}";
    post "/v1/accounts/{provider}/delivery" => keys::deliver, "The credential re-sealed to the CLI VM's key: {version, vm_id, sealed}";
    post "/v1/accounts/{provider}/revoke" => accounts::revoke, "Delete the stored credential and wipe it in the CLI VM";
    post "/v1/accounts/{provider}/rotate-egress" => accounts::rotate_egress, "A new egress port: -> {new_port}";
    post "/v1/jobs" => jobs::create, "Run a prompt in the CLI VM: {provider, prompt | argv, timeout_s?}";
    get "/v1/jobs/{id}" => jobs::get, "A job's state";
    delete "/v1/jobs/{id}" => jobs::kill, "Kill a job";
    get "/v1/jobs/{id}/stream" => jobs::stream, "A job's output (server-sent events: output..., end)";
    get "/v1/openapi.json" => openapi::document, "This document";
}

/// Every route of the service: the API, the page and its viewer, and `/hello` (a route that does
/// nothing, the baseline of `cargo xtask bench service`). Unknown paths answer `{code: no_route}`.
pub fn router(state: Arc<AppState>) -> Router {
    api_routes(Router::new())
        .route("/", get(page::index))
        .route("/viewer", get(page::viewer))
        .route("/hpke.js", get(page::hpke_js))
        .route("/hello", get(|| async { "hello" }))
        // The page has no icon; answering keeps browsers' consoles free of a 404.
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "no_route",
                "no such route",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(state)
}
