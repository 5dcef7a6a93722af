//! A hostile guest against the orchestrator: the VMs are real local agent processes, but the
//! host's calls reach `test_kit::hostile`'s fake agent, which answers as a compromised guest could
//! (the wire protocol and message types are the real ones). The host must stay up and bounded and
//! never show the user something the guest forged.

use std::sync::Arc;
use std::time::Duration;

use orchestrator::egress::{EgressPorts, PortRange};
use orchestrator::login::{
    LoginConfig, LoginEventKind, LoginService, SessionState, MAX_GUEST_EVENTS,
};
use test_kit::hostile::{Attack, HostileBackend};
use test_kit::local_backend::LocalAgentBackend;

struct Rig {
    service: LoginService,
    backend: Arc<HostileBackend<LocalAgentBackend>>,
    _dir: tempfile::TempDir,
}

async fn rig(browser: Option<Attack>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = test_kit::login::sqlite_store(dir.path(), "hostile-test").await;
    let local = test_kit::service::fake_cli_backend(dir.path()).unwrap();
    let backend = HostileBackend::new(local, browser);
    let service = LoginService::new(
        backend.clone(),
        store.clone(),
        test_kit::login::fake_vault(),
        EgressPorts::new(store, PortRange::default()),
        LoginConfig {
            timeout: Duration::from_secs(60),
            push_retry_delay: Duration::from_secs(3600),
            ..LoginConfig::default()
        },
    );
    Rig {
        service,
        backend,
        _dir: dir,
    }
}

/// Runs a codex login to its end: every event, and the final state with its reason.
async fn login(rig: &Rig, user: &str) -> (Vec<LoginEventKind>, SessionState, Option<String>) {
    let id = rig.service.start(user, "codex").await.expect("start");
    let mut events = rig.service.subscribe(&id).await.expect("subscribe");
    let mut all = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(120), events.next())
        .await
        .expect("the session ends")
    {
        all.push(ev.kind);
    }
    let (state, reason) = rig.service.wait(&id).await.expect("wait");
    (all, state, reason)
}

fn urls_shown(events: &[LoginEventKind]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            LoginEventKind::AuthUrl { url, .. } => Some(url.as_str()),
            _ => None,
        })
        .collect()
}

/// The failed login's browser VM is gone; only the user's CLI VM runs.
async fn nothing_left(rig: &Rig) {
    for vm in rig.backend.inner().vm_ids() {
        assert!(vm.contains("-cli-"), "a browser VM left: {vm}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_junk_urls_is_never_shown_and_ends_the_login() {
    let rig = rig(Some(Attack::UrlFlood {
        count: 100_000,
        bytes: 900 * 1024,
        valid: false,
    }))
    .await;
    let (events, state, reason) = login(&rig, "ada").await;
    assert_eq!(state, SessionState::Failed, "{reason:?}");
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("not this provider's login URLs"),
        "{reason}"
    );
    assert!(urls_shown(&events).is_empty(), "a junk URL was shown");
    assert!(
        !events.iter().any(|e| matches!(
            e,
            LoginEventKind::State {
                state: SessionState::AwaitingUserAuth,
                ..
            }
        )),
        "the user was never asked to act"
    );
    nothing_left(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_login_urls_is_cut_off_at_the_logs_bound() {
    let rig = rig(Some(Attack::UrlFlood {
        count: 100_000,
        bytes: 2048,
        valid: true,
    }))
    .await;
    let (events, state, reason) = login(&rig, "bob").await;
    assert_eq!(state, SessionState::Failed, "{reason:?}");
    assert!(
        reason.as_deref().unwrap_or("").contains("not a login"),
        "{reason:?}"
    );
    let shown = urls_shown(&events);
    assert!(
        !shown.is_empty() && shown.len() <= MAX_GUEST_EVENTS,
        "{} URLs shown",
        shown.len()
    );
    nothing_left(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_url_that_looks_like_a_login_url_is_refused() {
    let rig = rig(Some(Attack::UrlFlood {
        count: 100_000,
        bytes: 900 * 1024,
        valid: true,
    }))
    .await;
    let (events, state, reason) = login(&rig, "cy").await;
    assert_eq!(state, SessionState::Failed, "{reason:?}");
    assert!(urls_shown(&events).is_empty());
    nothing_left(&rig).await;
}
