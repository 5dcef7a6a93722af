//! The browser shim's line to its agent. A CLI on one of the agent's terminals runs `$BROWSER` or
//! `xdg-open` (the agent binary under another name), which hands the URL to the agent over a Unix
//! socket as one JSON line and reads one line back: `ok`, or `error: <why>`. The caller is a
//! program of the guest user, so the agent reads at most [`MAX_LINE`] bytes and trusts nothing in
//! the line but its shape (who is calling, it asks the kernel).

use serde::{Deserialize, Serialize};

/// Longest request line the agent reads, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// What the shim asks the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRequest {
    /// The terminal session the calling program runs in (from its environment).
    pub session: String,
    /// The URL the program wants opened.
    pub url: String,
    /// The name the shim was run as (`xdg-open`, `vm-agent-browser`), for logs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub via: String,
}

/// Why a request line is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShimRequestError {
    /// Longer than [`MAX_LINE`].
    #[error("the request is longer than {MAX_LINE} bytes")]
    TooLong,
    /// Not one JSON value.
    #[error("not a JSON line")]
    NotJson,
    /// JSON, but without a session and a URL as strings.
    #[error("session and url required")]
    Missing,
}

impl ShimRequest {
    /// The request in `line` (its newline, if any, included).
    pub fn parse(line: &[u8]) -> Result<ShimRequest, ShimRequestError> {
        if line.len() > MAX_LINE {
            return Err(ShimRequestError::TooLong);
        }
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|_| ShimRequestError::NotJson)?;
        serde_json::from_value(value).map_err(|_| ShimRequestError::Missing)
    }

    /// The request as the line the shim writes (JSON and a newline).
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_from_its_line() {
        let req = ShimRequest {
            session: "s1".into(),
            url: "https://example.test/?a=\"b\"\n".into(),
            via: "xdg-open".into(),
        };
        assert_eq!(ShimRequest::parse(req.to_line().as_bytes()), Ok(req));
    }

    #[test]
    fn bad_lines_are_refused_with_their_reason() {
        assert_eq!(
            ShimRequest::parse(b"nope\n"),
            Err(ShimRequestError::NotJson)
        );
        assert_eq!(
            ShimRequest::parse(br#"{"session":"s1"}"#),
            Err(ShimRequestError::Missing)
        );
        assert_eq!(
            ShimRequest::parse(br#"{"session":1,"url":"https://x"}"#),
            Err(ShimRequestError::Missing)
        );
        let long = format!(r#"{{"session":"s","url":"{}"}}"#, "a".repeat(MAX_LINE));
        assert_eq!(
            ShimRequest::parse(long.as_bytes()),
            Err(ShimRequestError::TooLong)
        );
    }
}
