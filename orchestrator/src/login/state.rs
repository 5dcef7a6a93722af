//! The auth-session states and which moves between them are allowed.

use std::fmt;
use std::str::FromStr;

/// Where a login session is.
///
/// `Pending → VmCreated → Ready → AwaitingUserAuth → Authenticating → Completed`, or from any
/// non-terminal state to `Failed`, `Timeout` or `Cancelled` (with a reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Accepted; making sure the CLI VM exists and creating the browser VM.
    Pending,
    /// The browser VM exists; waiting for its agent to say hello.
    VmCreated,
    /// The agent answered and is configured; the provider's login is starting.
    Ready,
    /// The login URL is known; waiting for the user to log in.
    AwaitingUserAuth,
    /// The credential file appeared; capturing, storing and pushing it.
    Authenticating,
    /// Credentials stored (and pushed or queued for push); browser VM gone.
    Completed,
    /// Something broke; see the reason.
    Failed,
    /// The user did not finish in time.
    Timeout,
    /// Cancelled by request.
    Cancelled,
}

impl SessionState {
    /// Every state, in flow order.
    pub const ALL: [SessionState; 9] = [
        SessionState::Pending,
        SessionState::VmCreated,
        SessionState::Ready,
        SessionState::AwaitingUserAuth,
        SessionState::Authenticating,
        SessionState::Completed,
        SessionState::Failed,
        SessionState::Timeout,
        SessionState::Cancelled,
    ];

    /// Stable name (store and wire).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Pending => "pending",
            SessionState::VmCreated => "vm_created",
            SessionState::Ready => "ready",
            SessionState::AwaitingUserAuth => "awaiting_user_auth",
            SessionState::Authenticating => "authenticating",
            SessionState::Completed => "completed",
            SessionState::Failed => "failed",
            SessionState::Timeout => "timeout",
            SessionState::Cancelled => "cancelled",
        }
    }

    /// Whether the session is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SessionState::Completed
                | SessionState::Failed
                | SessionState::Timeout
                | SessionState::Cancelled
        )
    }

    /// Position along the happy path (terminal failures have none).
    fn step(self) -> Option<u8> {
        match self {
            SessionState::Pending => Some(0),
            SessionState::VmCreated => Some(1),
            SessionState::Ready => Some(2),
            SessionState::AwaitingUserAuth => Some(3),
            SessionState::Authenticating => Some(4),
            SessionState::Completed => Some(5),
            _ => None,
        }
    }

    /// Whether moving from `self` to `next` is allowed: one step forward along the happy path, or
    /// from any live state to a failure state.
    pub fn can_move_to(self, next: SessionState) -> bool {
        if self.is_terminal() {
            return false;
        }
        match (self.step(), next.step()) {
            (Some(a), Some(b)) => b == a + 1,
            (_, None) => true,
            _ => false,
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`SessionState::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown session state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for SessionState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_moves_one_step_at_a_time_and_failures_from_anywhere() {
        use SessionState::*;
        let path = [
            Pending,
            VmCreated,
            Ready,
            AwaitingUserAuth,
            Authenticating,
            Completed,
        ];
        for w in path.windows(2) {
            assert!(w[0].can_move_to(w[1]), "{} -> {}", w[0], w[1]);
            assert!(!w[1].can_move_to(w[0]), "{} -> {}", w[1], w[0]);
        }
        assert!(!Pending.can_move_to(Ready));
        for live in &path[..5] {
            for end in [Failed, Timeout, Cancelled] {
                assert!(live.can_move_to(end));
            }
        }
        for end in [Completed, Failed, Timeout, Cancelled] {
            for next in SessionState::ALL {
                assert!(!end.can_move_to(next), "{end} is final");
            }
        }
        for s in SessionState::ALL {
            assert_eq!(s.as_str().parse::<SessionState>().expect("parse"), s);
        }
        assert!("bogus".parse::<SessionState>().is_err());
    }
}
