//! Every error a route answers: an HTTP status and a JSON body `{code, message}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orchestrator::login::LoginError;

/// An error answer. `code` is stable (clients branch on it), `message` is for people and never
/// holds a secret.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is not what the route takes.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404: no such thing for this user (also what another user's things look like).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    /// 401: no valid session token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sign in first (Authorization: Bearer <token>)",
        )
    }

    /// 500 for a failure of ours; the detail goes to the log, not to the client.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the service failed; see its log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        use LoginError as L;
        let (status, code) = match &e {
            L::UnknownProvider(_) => (StatusCode::NOT_FOUND, "unknown_provider"),
            L::UnknownMode { .. } => (StatusCode::BAD_REQUEST, "unknown_mode"),
            L::InvalidUser => (StatusCode::BAD_REQUEST, "bad_request"),
            L::UnknownSession(_) | L::OtherHost { .. } => (StatusCode::NOT_FOUND, "not_found"),
            L::NotAwaitingUser { .. } => (StatusCode::CONFLICT, "not_awaiting_code"),
            L::InputClosed(_) => (StatusCode::CONFLICT, "login_ended"),
            L::NoDesktop(_) => (StatusCode::CONFLICT, "no_desktop"),
            L::NoUserKey => (StatusCode::CONFLICT, "no_user_key"),
            L::Refused(_) => (StatusCode::CONFLICT, "refused"),
            // Host detail (QEMU's output, paths, sockets) goes to the log, not to the client.
            L::Backend(_) => {
                tracing::warn!(error = %e, "a VM could not be created");
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "vm_failed",
                    "the VM could not be started; try again later",
                );
            }
            L::Transport(_) | L::Gateway(_) => {
                tracing::warn!(error = %e, "a VM could not be reached or served");
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "vm_unreachable",
                    "the VM could not be reached; try again later",
                );
            }
            L::Agent(_) => (StatusCode::BAD_GATEWAY, "vm_unreachable"),
            L::Egress(_) => (StatusCode::SERVICE_UNAVAILABLE, "egress_failed"),
            L::Store(_) | L::Vault(_) | L::Failed(_) => return ApiError::internal(&e),
        };
        // The library's messages name ids and states, never secrets.
        ApiError::new(status, code, e.to_string())
    }
}

impl From<crate::users::UsersError> for ApiError {
    fn from(e: crate::users::UsersError) -> Self {
        ApiError::internal(&e)
    }
}
