//! The web page a person uses (one static file, no build step) and the desktop viewer it embeds.

use axum::http::header;
use axum::response::IntoResponse;

/// The page: sign up / sign in, providers and linked accounts, a login with its desktop and
/// timeline, a prompt box per linked provider.
pub const INDEX_HTML: &str = include_str!("page/index.html");

/// HPKE on WebCrypto (`window.hpke`): the page opens and re-seals the user's credentials with it.
pub const HPKE_JS: &str = include_str!("page/hpke.js");

/// Security headers of both pages: framed by this origin only, fetches and frames to this origin
/// only, scripts and styles only the page's own (inline, and `hpke.js` from this origin), no
/// referrer leaves.
const HEADERS: [(header::HeaderName, &str); 4] = [
    (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; img-src 'self' data: blob:; \
         media-src 'self' blob:; base-uri 'none'; form-action 'none'",
    ),
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

/// `GET /hpke.js`.
pub async fn hpke_js() -> impl IntoResponse {
    (
        HEADERS,
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        HPKE_JS,
    )
}
