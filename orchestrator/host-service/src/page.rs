//! The web page a person uses (one static file, no build step) and the desktop viewer it embeds.

use axum::http::header;
use axum::response::IntoResponse;

/// The page: sign up / sign in, providers and linked accounts, a login with its desktop and
/// timeline, a prompt box per linked provider.
pub const INDEX_HTML: &str = include_str!("page/index.html");

/// Security headers of both pages: no framing by other origins, no inline content from elsewhere.
const HEADERS: [(header::HeaderName, &str); 3] = [
    (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

/// `GET /`.
pub async fn index() -> impl IntoResponse {
    (HEADERS, axum::response::Html(INDEX_HTML))
}

/// `GET /viewer`: the orchestrator's desktop viewer.
pub async fn viewer() -> impl IntoResponse {
    (
        HEADERS,
        axum::response::Html(orchestrator::desktop::VIEWER_HTML),
    )
}
