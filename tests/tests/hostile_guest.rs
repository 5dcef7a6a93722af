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
    rig_with(browser, Duration::from_secs(30)).await
}

async fn rig_with(browser: Option<Attack>, call_timeout: Duration) -> Rig {
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
            call_timeout,
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
        if let LoginEventKind::AuthUrl { .. } = ev.kind {
            // The user logs in at the provider and pastes the code (an honest browser VM's
            // fake CLI takes it; a hostile one ignores it).
            let _ = rig.service.submit_code(&id, "fake-auth-code-0001").await;
        }
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

/// A CLI VM that takes the push and never answers costs its own user the call deadline and
/// nobody else anything: the other user's pending push lands while the stalled one still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_vm_that_never_answers_a_push_costs_only_its_own_user() {
    const DEADLINE: Duration = Duration::from_secs(4);
    let rig = rig_with(None, DEADLINE).await;
    rig.backend.hostile_cli("mallory", Attack::StallCredentials);
    let started = std::time::Instant::now();
    let (events, state, reason) = login(&rig, "mallory").await;
    assert_eq!(state, SessionState::Completed, "{reason:?}: {events:?}");
    assert!(
        started.elapsed() < DEADLINE * 3,
        "the login's push gave up at its deadline: {:?}",
        started.elapsed()
    );

    // Erin's push fails for an ordinary reason (a file where her CLI VM needs a directory).
    let (_, state, _) = login(&rig, "erin").await;
    assert_eq!(state, SessionState::Completed);
    let erin_vm = rig
        .backend
        .inner()
        .cli_vm_of("erin")
        .expect("erin's CLI VM");
    let codex_dir = rig
        .backend
        .inner()
        .home_of(&erin_vm)
        .unwrap()
        .join(".codex");
    std::fs::remove_dir_all(&codex_dir).unwrap();
    std::fs::write(&codex_dir, b"not a directory").unwrap();
    // A new version makes her record pending again: log in once more.
    let (_, state, _) = login(&rig, "erin").await;
    assert_eq!(state, SessionState::Completed);
    std::fs::remove_file(&codex_dir).unwrap();

    let service = rig.service.clone();
    let retry = tokio::spawn(async move { service.push_pending().await });
    let t = std::time::Instant::now();
    let erin_file = codex_dir.join("auth.json");
    while !erin_file.exists() {
        assert!(
            t.elapsed() < DEADLINE / 2,
            "erin's push waited on mallory's stalled CLI VM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!retry.is_finished(), "mallory's push is still waiting");
    let pushed = retry.await.unwrap().expect("push_pending");
    assert_eq!(pushed, 1, "erin's landed, mallory's timed out");
    assert!(
        t.elapsed() < DEADLINE + Duration::from_secs(2),
        "mallory's push gave up at its deadline: {:?}",
        t.elapsed()
    );
}

/// A credential the login VM made up is never stored nor pushed: one written before any login URL
/// (a login the user never did: account fixation), one from another path, one of the wrong
/// shape, one too large. Each ends the login with its reason; the store and the CLI VM stay
/// empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_captures_are_refused_and_nothing_reaches_the_cli_vm() {
    let good = test_kit::credentials::codex().into_bytes();
    let cases = [
        (
            "before any URL",
            Attack::ForgedCapture {
                before_url: true,
                path: ".codex/auth.json".into(),
                content: good.clone(),
            },
            "before showing a login URL",
        ),
        (
            "another path",
            Attack::ForgedCapture {
                before_url: false,
                path: ".ssh/authorized_keys".into(),
                content: good.clone(),
            },
            "not from",
        ),
        (
            "the wrong shape",
            Attack::ForgedCapture {
                before_url: false,
                path: ".codex/auth.json".into(),
                content: br#"{"tokens":{}}"#.to_vec(),
            },
            "not a complete codex credential",
        ),
        (
            "too large",
            Attack::ForgedCapture {
                before_url: false,
                path: ".codex/auth.json".into(),
                content: vec![b' '; protocol::creds::MAX_CREDENTIAL_BYTES + 1],
            },
            "the limit is",
        ),
    ];
    for (what, attack, says) in cases {
        let rig = rig(Some(attack)).await;
        let (_, state, reason) = login(&rig, "fay").await;
        assert_eq!(state, SessionState::Failed, "{what}: {reason:?}");
        let reason = reason.unwrap_or_default();
        assert!(reason.contains(says), "{what}: {reason}");
        assert!(!reason.contains("fake-"), "{what}: no content in reasons");
        let stored = rig.service.accounts("fay").await.expect("accounts");
        assert!(stored.is_empty(), "{what}: stored {stored:?}");
        let cli = rig.backend.inner().cli_vm_of("fay").expect("CLI VM");
        let file = rig
            .backend
            .inner()
            .home_of(&cli)
            .unwrap()
            .join(".codex/auth.json");
        assert!(!file.exists(), "{what}: pushed into the CLI VM");
        nothing_left(&rig).await;
    }
}

/// A desktop agent trickling candidates without end is cut off at the session's bound, whether
/// the host gathers them into the answer or relays them one by one.
#[tokio::test]
async fn a_desktop_that_floods_candidates_is_cut_off() {
    use orchestrator::desktop::{DesktopSession, MAX_CANDIDATES};
    let offer = protocol::desktop::DesktopOffer {
        sdp: "v=0\r\n".into(),
        display: None,
        video: Default::default(),
        ice: Default::default(),
    };
    let connector = test_kit::hostile::connector(Attack::CandidateFlood { count: 100_000 });
    let client = orchestrator::AgentClient::connect(&*connector)
        .await
        .unwrap();
    let mut session = DesktopSession::open(&client, &offer).await.expect("answer");
    let err = session.answer_with_candidates().await.expect_err("cut off");
    assert!(
        err.to_string()
            .contains(&format!("more than {MAX_CANDIDATES} candidates")),
        "{err}"
    );
    let mut session = DesktopSession::open(&client, &offer).await.expect("answer");
    let mut relayed = 0;
    let err = loop {
        match session.next_event().await {
            Ok(Some(_)) => relayed += 1,
            Ok(None) => panic!("the flood ended by itself"),
            Err(e) => break e,
        }
    };
    assert_eq!(relayed, MAX_CANDIDATES);
    assert!(err.to_string().contains("candidates"), "{err}");
}
