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

/// How many events a guest may add to one session's log (login URLs, device codes). A real login
/// shows one or two; a guest sending more is cut off, so the log's memory stays bounded.
pub const MAX_GUEST_EVENTS: usize = 32;

/// How many bytes of guest-reported text one session's log may hold, all events together.
pub const MAX_GUEST_EVENT_BYTES: usize = 64 * 1024;

/// A guest reported more than a session's log takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the login VM reported more than {MAX_GUEST_EVENTS} login URLs or {MAX_GUEST_EVENT_BYTES} \
     bytes of them: not a login, stopped"
)]
pub struct LogFull;

/// Append-only log; every subscriber sees every event from the first one, in order.
#[derive(Debug, Clone)]
pub(crate) struct EventLog {
    inner: Arc<Mutex<Log>>,
    len: Arc<watch::Sender<usize>>,
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<LoginEvent>,
    guest_events: usize,
    guest_bytes: usize,
}

impl EventLog {
    pub(crate) fn new() -> Self {
        let (len, _) = watch::channel(0);
        Self {
            inner: Arc::new(Mutex::new(Log::default())),
            len: Arc::new(len),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event the host made and wakes subscribers.
    pub(crate) fn push(&self, kind: LoginEventKind) {
        let len = {
            let mut log = self.lock();
            append(&mut log.events, kind)
        };
        self.len.send_replace(len);
    }

    /// Appends an event whose content a guest reported, within the log's bounds: past them
    /// nothing is added and the session must end. The same URL again is not shown twice.
    pub(crate) fn push_from_guest(&self, kind: LoginEventKind) -> Result<(), LogFull> {
        let size = match &kind {
            LoginEventKind::AuthUrl { url, .. } => url.len(),
            LoginEventKind::DeviceCode { url, code } => url.len() + code.len(),
            _ => 0,
        };
        let len = {
            let mut log = self.lock();
            if log.events.iter().any(|e| e.kind == kind) {
                return Ok(());
            }
            if log.guest_events >= MAX_GUEST_EVENTS
                || log.guest_bytes + size > MAX_GUEST_EVENT_BYTES
            {
                return Err(LogFull);
            }
            log.guest_events += 1;
            log.guest_bytes += size;
            append(&mut log.events, kind)
        };
        self.len.send_replace(len);
        Ok(())
    }

    /// Everything so far.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<LoginEvent> {
        self.lock().events.clone()
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
                let log = self.log.lock();
                let events = &log.events;
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

/// Appends `kind` with its position and time; returns the new length.
fn append(events: &mut Vec<LoginEvent>, kind: LoginEventKind) -> usize {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let seq = events.len() as u64;
    events.push(LoginEvent { seq, at_ms, kind });
    events.len()
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

    #[test]
    fn a_guest_cannot_grow_the_log_past_its_bounds() {
        let log = EventLog::new();
        let url = |i: usize, pad: usize| LoginEventKind::AuthUrl {
            url: format!("https://example.test/{i}?{}", "p".repeat(pad)),
            source: UrlSource::Screen,
        };
        // The same URL again is shown once.
        log.push_from_guest(url(0, 10)).expect("first");
        log.push_from_guest(url(0, 10)).expect("again");
        assert_eq!(log.snapshot().len(), 1);
        for i in 1..MAX_GUEST_EVENTS {
            log.push_from_guest(url(i, 10)).expect("within the bounds");
        }
        assert_eq!(log.push_from_guest(url(999, 10)), Err(LogFull));
        assert_eq!(log.snapshot().len(), MAX_GUEST_EVENTS);
        // The host's own events still go in (the terminal state must).
        log.push(state(SessionState::Failed));
        assert_eq!(log.snapshot().len(), MAX_GUEST_EVENTS + 1);

        // By size: a few huge URLs fill it long before the count does.
        let log = EventLog::new();
        let big = MAX_GUEST_EVENT_BYTES / 4;
        let taken = (0..10)
            .take_while(|&i| log.push_from_guest(url(i, big)).is_ok())
            .count();
        assert_eq!(taken, 3);
        let held: usize = log
            .snapshot()
            .iter()
            .map(|e| match &e.kind {
                LoginEventKind::AuthUrl { url, .. } => url.len(),
                _ => 0,
            })
            .sum();
        assert!(held <= MAX_GUEST_EVENT_BYTES);
    }
}
