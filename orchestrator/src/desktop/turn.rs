//! Short-lived TURN credentials, the "TURN REST API" scheme coturn checks with `use-auth-secret`:
//! the user name is `<expiry, Unix seconds>:<label>`, the password base64(HMAC-SHA1(secret, user
//! name)). Each viewer session's agent gets its own, valid for minutes; the shared secret never
//! leaves the host, and no long-term password is handed to every VM.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use protocol::desktop::IceServer;
use protocol::secret::Secret;

/// A TURN server that takes REST-style credentials, and the secret it shares with the host.
#[derive(Clone)]
pub struct TurnRest {
    urls: Vec<String>,
    secret: Secret<String>,
    ttl: Duration,
}

impl std::fmt::Debug for TurnRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRest")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TurnRest {
    /// The server at `urls` (`turn:host:port`...), sharing `secret` (coturn's
    /// `static-auth-secret`); credentials last `ttl`.
    pub fn new(urls: Vec<String>, secret: Secret<String>, ttl: Duration) -> Self {
        Self { urls, secret, ttl }
    }

    /// The server with credentials for `label` (a session id: it shows in the TURN server's log),
    /// valid from `now` for the configured time.
    pub fn server(&self, label: &str, now: SystemTime) -> IceServer {
        let expiry = now
            .checked_add(self.ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        // A `:` in the label would split the user name differently on the server.
        let username = format!("{expiry}:{}", label.replace(':', "_"));
        let credential = sign(self.secret.expose().as_bytes(), username.as_bytes());
        IceServer {
            urls: self.urls.clone(),
            username: Some(username),
            credential: credential.map(Secret::new),
        }
    }
}

/// base64(HMAC-SHA1(key, message)). HMAC takes keys of any length, so this is always `Some`.
fn sign(key: &[u8], message: &[u8]) -> Option<String> {
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).ok()?;
    mac.update(message);
    Some(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        let turn = TurnRest::new(
            vec!["turn:127.0.0.1:3478".into()],
            Secret::new("Jefe".into()),
            Duration::from_secs(600),
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let server = turn.server("s:1", now);
        assert_eq!(server.username.as_deref(), Some("1600:s_1"));
        // HMAC-SHA1("Jefe", "1600:s_1"), computed independently (Python's hmac module).
        assert_eq!(
            server.credential.unwrap().expose(),
            "H0KTrGOp+4VnuhtriO+kn31EDQ4="
        );
        assert!(!format!("{turn:?}").contains("Jefe"));
    }
}
