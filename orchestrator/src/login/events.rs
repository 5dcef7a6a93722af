//! The event log of one session: append-only, replayable by subscribers that arrive late.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use protocol::pty::UrlSource;

use super::state::SessionState;

/// Something that happened in a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LoginEventKind {
    /// The session moved to `state`; `reason` explains failures, timeouts and cancellations.
    State {
        /// New state.
        state: SessionState,
        /// Why, for failure states.
        reason: Option<String>,
    },
    /// The login URL the user must open (shown in the browser VM and to the user).
    AuthUrl {
        /// The URL as the CLI produced it.
        url: String,
        /// Where the agent found it (screen, hyperlink, `$BROWSER` call).
        source: UrlSource,
    },
    /// A device-code login: the user opens `url` on any device and enters `code` there.
    DeviceCode {
        /// The verification page.
        url: String,
        /// The one-time code.
        code: String,
    },
    /// A step of the flow finished (VM ids, credential version): progress for the user interface.
    Progress {
        /// Short machine-readable step name.
        step: String,
        /// Human-readable detail, never a secret.
        detail: String,
    },
}

/// One event with its position and time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoginEvent {
    /// 0-based position in the session's log.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// What happened.
    #[serde(flatten)]
    pub kind: LoginEventKind,
}

/// Append-only log; every subscriber sees every event from the first one, in order.
#[derive(Debug, Clone)]
pub(crate) struct EventLog {
    events: Arc<Mutex<Vec<LoginEvent>>>,
    len: Arc<watch::Sender<usize>>,
}

impl EventLog {
    pub(crate) fn new() -> Self {
        let (len, _) = watch::channel(0);
        Self {
            events: Arc::new(Mutex::new(Vec::new())),
            len: Arc::new(len),
        }
    }

    /// Appends and wakes subscribers.
    pub(crate) fn push(&self, kind: LoginEventKind) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let len = {
            let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            let seq = events.len() as u64;
            events.push(LoginEvent { seq, at_ms, kind });
            events.len()
        };
        self.len.send_replace(len);
    }

    /// Everything so far.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<LoginEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A subscription starting at the first event.
    pub(crate) fn subscribe(&self) -> EventStream {
        EventStream {
            log: self.clone(),
            next: 0,
            len: self.len.subscribe(),
        }
    }
}

/// Events of one session from the first, then live, ending after the terminal state event.
#[derive(Debug)]
pub struct EventStream {
    log: EventLog,
    next: usize,
    len: watch::Receiver<usize>,
}

impl EventStream {
    /// The next event, or `None` once the session's terminal state has been delivered.
    pub async fn next(&mut self) -> Option<LoginEvent> {
        loop {
            {
                let events = self.log.events.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(ev) = events.get(self.next) {
                    self.next += 1;
                    return Some(ev.clone());
                }
                if events.last().is_some_and(is_terminal_event) {
                    return None;
                }
            }
            // Mark the current length seen, then wait for a longer one. An append between the check
            // above and here changes the value, so `changed` returns at once.
            if self.len.changed().await.is_err() {
                return None;
            }
        }
    }
}

fn is_terminal_event(ev: &LoginEvent) -> bool {
    matches!(ev.kind, LoginEventKind::State { state, .. } if state.is_terminal())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(s: SessionState) -> LoginEventKind {
        LoginEventKind::State {
            state: s,
            reason: None,
        }
    }

    #[tokio::test]
    async fn late_and_early_subscribers_see_the_same_events_in_order() {
        let log = EventLog::new();
        let mut early = log.subscribe();
        log.push(state(SessionState::Pending));
        log.push(state(SessionState::VmCreated));
        let live = tokio::spawn({
            let log = log.clone();
            async move {
                tokio::task::yield_now().await;
                log.push(LoginEventKind::AuthUrl {
                    url: "https://example.test/auth".into(),
                    source: UrlSource::Screen,
                });
                log.push(state(SessionState::Cancelled));
            }
        });
        let mut got = Vec::new();
        while let Some(ev) = early.next().await {
            got.push(ev);
        }
        live.await.expect("pusher");
        let mut late = log.subscribe();
        let mut replay = Vec::new();
        while let Some(ev) = late.next().await {
            replay.push(ev);
        }
        assert_eq!(got.len(), 4);
        assert_eq!(got, replay);
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(got, log.snapshot());
    }
}
