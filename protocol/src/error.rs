//! Errors as they travel on the wire.

use serde::{Deserialize, Serialize};

/// Machine-readable error category, stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be parsed or is semantically invalid.
    BadRequest,
    /// The method is not known to this agent.
    UnknownMethod,
    /// The caller speaks another protocol version.
    VersionMismatch,
    /// A body or frame exceeded the size limit.
    TooLarge,
    /// The named object (file, session, ...) does not exist.
    NotFound,
    /// The request is valid but not allowed (path outside allowed roots, symlink, ...).
    Forbidden,
    /// An operating-system call failed.
    Io,
    /// A bug or an unexpected state in the agent.
    Internal,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// HTTP status used for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::VersionMismatch => 400,
            ErrorCode::Forbidden => 403,
            ErrorCode::UnknownMethod | ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::Io | ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }
}

/// The body of every error response, and of an error frame inside a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ErrorBody {
    /// Category.
    pub code: ErrorCode,
    /// Human-readable explanation. Never contains a secret.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
