//! The login flow end to end: real `vm-agent` processes (one per "VM", each with its own HOME) on
//! Unix sockets, the fake provider CLIs replaying real recorded logins on real PTYs, a real SQLite
//! store, the real vault. Each test also checks that nothing the flow started is left behind.

use std::sync::Arc;
use std::time::Duration;

use orchestrator::egress::{EgressPorts, PortRange, ProxyConfig};
use orchestrator::login::{LoginConfig, LoginEventKind, LoginService, SessionState};
use orchestrator::store::Store;
use orchestrator::vault::{RecordContext, Vault};
use orchestrator::vm::VmKind;
use protocol::Secret;
use test_kit::local_backend::{marked_processes, LocalAgentBackend, LocalOptions};
use test_kit::{fake_clis, workspace_bin};

/// What the user "pastes" after logging in.
const FAKE_CODE: &str = "fake-auth-code-0001";

struct Harness {
    backend: Arc<LocalAgentBackend>,
    service: LoginService,
    store: Store,
    vault: Arc<Vault>,
    dir: tempfile::TempDir,
}

async fn harness_with(timeout: Duration, env: &[(&str, &str)], gate: Option<&str>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = test_kit::login::sqlite_store(dir.path(), "host-test").await;
    let vault = test_kit::login::fake_vault();
    let egress = EgressPorts::new(store.clone(), PortRange::default());
    let bin = fake_clis::install(
        &dir.path().join("bin"),
        &workspace_bin("fake-cli"),
        &fake_clis::fixtures_root(),
    )
    .expect("fake CLIs");
    let backend = Arc::new(LocalAgentBackend::new(LocalOptions {
        agent_bin: workspace_bin("vm-agent"),
        root: dir.path().join("vms"),
        path_prepend: vec![bin],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        agent_start_gate: gate.map(|g| dir.path().join(g)),
    }));
    let config = LoginConfig {
        timeout,
        proxy: Some(ProxyConfig {
            host: "proxy.example.test".into(),
            username: "fake-proxy-user".into(),
            password: Secret::new("fake-proxy-pass".into()),
        }),
        // Tests retry pushes explicitly.
        push_retry_delay: Duration::from_secs(3600),
        ..LoginConfig::default()
    };
    let service = LoginService::new(
        backend.clone(),
        store.clone(),
        vault.clone(),
        egress,
        config,
    );
    Harness {
        backend,
        service,
        store,
        vault,
        dir,
    }
}

async fn harness() -> Harness {
    harness_with(Duration::from_secs(60), &[], None).await
}

impl Harness {
    /// The browser VM of the running session (the only non-CLI VM).
    fn browser_vm(&self) -> String {
        self.backend
            .vm_ids()
            .into_iter()
            .find(|id| id.contains("-browser-"))
            .expect("a browser VM runs")
    }

    /// Acts as the user: logged in at the provider, pastes the code into the CLI.
    async fn complete_login(&self, id: &str) {
        self.service
            .submit_code(id, FAKE_CODE)
            .await
            .expect("submit code");
    }

    /// Waits for the first event of the session matching `pred`.
    async fn wait_event(&self, id: &str, pred: impl Fn(&LoginEventKind) -> bool) -> LoginEventKind {
        let mut events = self.service.subscribe(id).await.expect("subscribe");
        while let Some(ev) = events.next().await {
            if pred(&ev.kind) {
                return ev.kind;
            }
        }
        panic!("session ended without the expected event");
    }

    async fn wait_state(&self, id: &str, state: SessionState) {
        self.wait_event(
            id,
            |k| matches!(k, LoginEventKind::State { state: s, .. } if *s == state),
        )
        .await;
    }

    /// Nothing of the session is left: no browser VM, none of its processes, sockets or files, no
    /// active store rows, and the audit log says what was destroyed.
    async fn assert_nothing_left(&self, user: &str) {
        let log = self.store.audit_log(Some(user)).await.expect("audit");
        let created: Vec<&str> = log
            .iter()
            .filter(|e| e.event == "vm_created" && e.detail == "kind=browser")
            .map(|e| e.subject.as_str())
            .collect();
        for vm in &created {
            assert!(marked_processes(vm).is_empty(), "processes of {vm} left");
            assert!(
                !self.dir.path().join("vms").join(vm).exists(),
                "files of {vm} left"
            );
            let destroyed = log
                .iter()
                .find(|e| e.event == "vm_destroyed" && e.subject == *vm);
            let destroyed = destroyed.unwrap_or_else(|| panic!("no vm_destroyed audit for {vm}"));
            assert!(destroyed.detail.contains("process"), "{}", destroyed.detail);
        }
        assert!(
            self.backend.vm_ids().iter().all(|id| id.contains("-cli-")),
            "{:?}",
            self.backend.vm_ids()
        );
        assert!(self
            .store
            .active_sessions()
            .await
            .expect("sessions")
            .is_empty());
        for vm in self.store.active_vms(None).await.expect("vms") {
            assert_eq!(vm.kind, VmKind::Cli, "{vm:?}");
        }
    }
}

async fn happy_path(provider: &str, url_prefix: &str, credential_file: &str) {
    let token = "fake-refresh-token-0001";
    let h = harness().await;
    let id = h.service.start("alice", provider).await.expect("start");
    assert_eq!(
        h.service
            .start("alice", provider)
            .await
            .expect("second start"),
        id,
        "one active session"
    );

    let url = match h
        .wait_event(&id, |k| matches!(k, LoginEventKind::AuthUrl { .. }))
        .await
    {
        LoginEventKind::AuthUrl { url, .. } => url,
        other => panic!("not a URL: {other:?}"),
    };
    assert!(url.starts_with(url_prefix), "{url}");
    assert!(
        url.contains("client_id=") && url.contains("state="),
        "{url}"
    );
    assert!(
        !url.contains('\u{1b}') && !url.contains(' '),
        "a clean URL: {url:?}"
    );

    // The login ran with the agent's egress proxy (no credentials in the VM) and the session id.
    let browser = h.browser_vm();
    let env = std::fs::read_to_string(
        h.backend
            .home_of(&browser)
            .expect("home")
            .join(".fake-login-env"),
    )
    .expect("fake CLI wrote its env");
    let proxy = env
        .lines()
        .find_map(|l| l.strip_prefix("HTTPS_PROXY="))
        .expect("HTTPS_PROXY set");
    assert!(
        proxy.starts_with("http://127.0.0.1:") && !proxy.contains('@'),
        "{proxy}"
    );
    assert!(!env.contains("fake-proxy-pass"), "{env}");
    assert!(env.lines().any(|l| l == "NO_PROXY=localhost,127.0.0.1,::1"));
    assert!(env.lines().any(|l| l == format!("AGENT_SESSION_ID={id}")));

    // Typing into a session that is not waiting for the user is refused.
    assert!(h
        .service
        .submit_code("no-such-session", FAKE_CODE)
        .await
        .is_err());
    h.complete_login(&id).await;
    let (state, reason) = h.service.wait(&id).await.expect("wait");
    assert_eq!((state, reason), (SessionState::Completed, None));
    let err = h
        .service
        .submit_code(&id, FAKE_CODE)
        .await
        .expect_err("over");
    assert!(err.to_string().contains("completed"), "{err}");

    // Stored sealed: opens to the CLI's file, the token is not in the ciphertext.
    let record = h
        .store
        .credential("alice", provider)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(record.version, 1);
    assert!(!record.push_pending());
    let needle = token.as_bytes();
    assert!(!record
        .envelope
        .ciphertext
        .windows(needle.len())
        .any(|w| w == needle));
    let ctx = RecordContext {
        user_id: "alice",
        provider,
        version: 1,
    };
    let opened = h.vault.open(&ctx, &record.envelope).expect("open");
    assert!(String::from_utf8_lossy(opened.expose()).contains(token));

    // Pushed into the CLI VM, 0600.
    let cli = h.backend.cli_vm_of("alice").expect("CLI VM");
    let pushed = h.backend.home_of(&cli).expect("home").join(credential_file);
    assert_eq!(
        std::fs::read(&pushed).expect("pushed file"),
        opened.expose()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&pushed)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Every state in order, replayed to a late subscriber.
    let mut replay = h.service.subscribe(&id).await.expect("subscribe late");
    let mut states = Vec::new();
    while let Some(ev) = replay.next().await {
        if let LoginEventKind::State { state, .. } = ev.kind {
            states.push(state);
        }
    }
    assert_eq!(states, test_kit::login::HAPPY_PATH);

    let events: Vec<String> = h
        .store
        .audit_log(Some("alice"))
        .await
        .expect("audit")
        .into_iter()
        .map(|e| e.event)
        .collect();
    for expected in [
        "credential_captured",
        "credential_pushed",
        "credential_wiped",
        "vm_destroyed",
        "session_ended",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} missing from {events:?}"
        );
    }
    let audit_text = format!("{:?}", h.store.audit_log(None).await.expect("audit"));
    assert!(!audit_text.contains("fake-access-token") && !audit_text.contains("fake-proxy-pass"));
    h.assert_nothing_left("alice").await;
    // A new session for the same provider may start now.
    let again = h
        .service
        .start("alice", provider)
        .await
        .expect("start again");
    assert_ne!(again, id);
    h.service.cancel(&again).await.expect("cancel");
    h.service.wait(&again).await.expect("wait");
}

#[tokio::test]
async fn claude_code_login_completes_and_lands_in_the_cli_vm() {
    happy_path(
        "claude_code",
        "https://claude.com/cai/oauth/authorize?",
        ".claude/.credentials.json",
    )
    .await;
}

#[tokio::test]
async fn codex_login_completes_and_lands_in_the_cli_vm() {
    happy_path(
        "codex",
        "https://auth.openai.com/oauth/authorize?",
        ".codex/auth.json",
    )
    .await;
}

#[tokio::test]
async fn gemini_cli_login_completes_and_lands_in_the_cli_vm() {
    happy_path(
        "gemini_cli",
        "https://accounts.google.com/o/oauth2/",
        ".gemini/oauth_creds.json",
    )
    .await;
}

#[tokio::test]
async fn a_user_who_never_logs_in_times_out_and_nothing_is_left() {
    let h = harness_with(Duration::from_secs(3), &[], None).await;
    let id = h.service.start("bob", "codex").await.expect("start");
    let (state, reason) = h.service.wait(&id).await.expect("wait");
    assert_eq!(state, SessionState::Timeout);
    assert!(reason.expect("reason").contains("not completed within"));
    assert!(h
        .store
        .credential("bob", "codex")
        .await
        .expect("get")
        .is_none());
    h.assert_nothing_left("bob").await;
}

async fn cancel_at(state: SessionState) {
    let h = match state {
        SessionState::VmCreated => {
            harness_with(Duration::from_secs(60), &[], Some("agent-gate")).await
        }
        SessionState::Ready => {
            harness_with(Duration::from_secs(60), &[("FAKE_LOGIN_HOLD", "1")], None).await
        }
        _ => harness().await,
    };
    if state == SessionState::Pending {
        h.backend.create_gate.close();
    }
    let id = h
        .service
        .start("carol", "claude_code")
        .await
        .expect("start");
    match state {
        SessionState::Pending => {
            h.wait_event(
                &id,
                |k| matches!(k, LoginEventKind::Progress { step, .. } if step == "cli_vm"),
            )
            .await;
        }
        SessionState::Authenticating => {
            h.wait_state(&id, SessionState::AwaitingUserAuth).await;
            h.backend.cli_gate.close();
            h.complete_login(&id).await;
            h.wait_state(&id, SessionState::Authenticating).await;
        }
        other => h.wait_state(&id, other).await,
    }
    assert!(h.service.cancel(&id).await.expect("cancel"));
    // Held steps may go on now; the cancel must still win and clean up.
    h.backend.create_gate.open();
    h.backend.cli_gate.open();
    std::fs::write(h.dir.path().join("agent-gate"), b"").expect("gate");
    let (end, reason) = h.service.wait(&id).await.expect("wait");
    assert_eq!(
        (end, reason.as_deref()),
        (SessionState::Cancelled, Some("cancelled by request")),
        "at {state}"
    );
    assert!(
        !h.service.cancel(&id).await.expect("cancel again"),
        "already over"
    );
    h.assert_nothing_left("carol").await;
}

#[tokio::test]
async fn cancel_while_pending_cleans_up() {
    cancel_at(SessionState::Pending).await;
}

#[tokio::test]
async fn cancel_while_vm_created_cleans_up() {
    cancel_at(SessionState::VmCreated).await;
}

#[tokio::test]
async fn cancel_while_ready_cleans_up() {
    cancel_at(SessionState::Ready).await;
}

#[tokio::test]
async fn cancel_while_awaiting_user_auth_cleans_up() {
    cancel_at(SessionState::AwaitingUserAuth).await;
}

#[tokio::test]
async fn cancel_while_authenticating_cleans_up() {
    cancel_at(SessionState::Authenticating).await;
}

#[tokio::test]
async fn an_agent_killed_mid_flow_fails_the_session_and_leaks_nothing() {
    let h = harness().await;
    let id = h.service.start("dave", "codex").await.expect("start");
    h.wait_state(&id, SessionState::AwaitingUserAuth).await;
    let browser = h.browser_vm();
    assert!(
        marked_processes(&browser).len() >= 2,
        "agent and the fake CLI run"
    );
    assert!(h.backend.kill_agent(&browser));
    let (state, reason) = h.service.wait(&id).await.expect("wait");
    assert_eq!(state, SessionState::Failed);
    assert!(
        reason.expect("reason").contains("agent"),
        "reason names the agent"
    );
    h.assert_nothing_left("dave").await;
}

#[tokio::test]
async fn a_failed_push_keeps_the_ciphertext_and_is_retried() {
    let h = harness().await;
    let id = h.service.start("erin", "codex").await.expect("start");
    h.wait_state(&id, SessionState::AwaitingUserAuth).await;
    // A file where the CLI VM needs a directory: the push into it fails for real.
    let cli = h.backend.cli_vm_of("erin").expect("CLI VM");
    let blocker = h.backend.home_of(&cli).expect("home").join(".codex");
    std::fs::write(&blocker, b"not a directory").expect("blocker");
    h.complete_login(&id).await;
    assert_eq!(
        h.service.wait(&id).await.expect("wait").0,
        SessionState::Completed
    );
    let record = h
        .store
        .credential("erin", "codex")
        .await
        .expect("get")
        .expect("stored");
    assert!(record.push_pending());
    let events: Vec<String> = h
        .store
        .audit_log(Some("erin"))
        .await
        .expect("audit")
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert!(
        events.iter().any(|e| e == "credential_push_failed"),
        "{events:?}"
    );
    assert_eq!(
        h.service.push_pending().await.expect("retry"),
        0,
        "still blocked"
    );

    std::fs::remove_file(&blocker).expect("unblock");
    assert_eq!(h.service.push_pending().await.expect("retry"), 1);
    let pushed = std::fs::read(blocker.join("auth.json")).expect("pushed");
    assert!(String::from_utf8_lossy(&pushed).contains("fake-refresh-token-0001"));
    assert!(!h
        .store
        .credential("erin", "codex")
        .await
        .expect("get")
        .expect("stored")
        .push_pending());
    h.assert_nothing_left("erin").await;
}

/// One token chain, one live copy: a second host on the same store (its own backend, so the user
/// has a second CLI VM there) completes a login of the same provider, but its CLI VM does not
/// receive the chain while the first CLI VM lives and refreshes it; once that VM is destroyed,
/// the pending push goes through.
#[tokio::test]
async fn a_second_cli_vm_never_receives_a_chain_another_live_vm_holds() {
    let h = harness().await;
    let id = h.service.start("fay", "codex").await.expect("start");
    h.wait_state(&id, SessionState::AwaitingUserAuth).await;
    h.complete_login(&id).await;
    assert_eq!(
        h.service.wait(&id).await.expect("wait").0,
        SessionState::Completed
    );
    let first_vm = h.backend.cli_vm_of("fay").expect("CLI VM on host 1");

    let store2 = test_kit::login::sqlite_store(h.dir.path(), "host-2").await;
    let backend2 = Arc::new(LocalAgentBackend::new(LocalOptions {
        agent_bin: workspace_bin("vm-agent"),
        root: h.dir.path().join("vms-host-2"),
        path_prepend: vec![h.dir.path().join("bin")],
        env: Vec::new(),
        agent_start_gate: None,
    }));
    let service2 = LoginService::new(
        backend2.clone(),
        store2.clone(),
        h.vault.clone(),
        EgressPorts::new(store2.clone(), PortRange::default()),
        LoginConfig {
            push_retry_delay: Duration::from_secs(3600),
            ..LoginConfig::default()
        },
    );
    let id = service2
        .start("fay", "codex")
        .await
        .expect("start on host 2");
    let mut events = service2.subscribe(&id).await.expect("subscribe");
    while let Some(ev) = events.next().await {
        if matches!(ev.kind, LoginEventKind::AuthUrl { .. }) {
            service2
                .submit_code(&id, FAKE_CODE)
                .await
                .expect("submit code");
        }
    }
    assert_eq!(
        service2.wait(&id).await.expect("wait").0,
        SessionState::Completed
    );
    let second_vm = backend2.cli_vm_of("fay").expect("CLI VM on host 2");
    let second_file = backend2
        .home_of(&second_vm)
        .expect("home")
        .join(".codex/auth.json");
    assert!(!second_file.exists(), "the second CLI VM got the chain");
    let record = h.store.credential("fay", "codex").await.unwrap().unwrap();
    assert!(record.push_pending());
    assert_eq!(record.holder_vm.as_deref(), Some(first_vm.as_str()));
    let audit = h.store.audit_log(Some("fay")).await.expect("audit");
    assert!(
        audit.iter().any(|e| e.event == "credential_push_failed"
            && e.detail
                .contains(&format!("CLI VM {first_vm} holds this codex login"))),
        "{audit:?}"
    );
    assert_eq!(service2.push_pending().await.expect("retry"), 0);
    assert!(!second_file.exists());

    // The first CLI VM is gone: the chain moves to the second.
    h.service
        .destroy_vm("fay", &first_vm)
        .await
        .expect("destroy");
    assert_eq!(service2.push_pending().await.expect("retry"), 1);
    assert!(std::fs::read_to_string(&second_file)
        .expect("pushed")
        .contains("fake-refresh-token-0001"));
    let record = h.store.credential("fay", "codex").await.unwrap().unwrap();
    assert_eq!(record.holder_vm.as_deref(), Some(second_vm.as_str()));
    service2
        .destroy_vm("fay", &second_vm)
        .await
        .expect("destroy on host 2");
}

#[tokio::test]
async fn unknown_provider_and_session_are_clear_errors() {
    let h = harness().await;
    let err = h
        .service
        .start("frank", "nope")
        .await
        .expect_err("unknown provider");
    assert!(err.to_string().contains("unknown provider"), "{err}");
    assert!(h.service.subscribe("no-such-session").await.is_err());
    assert!(h.service.cancel("no-such-session").await.is_err());
}

/// A tunnel the login VM asks for and the gateway refuses (a destination off the provider's list)
/// shows in the session's own events, so the person linking sees why a page does not load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tunnel_of_the_login_vm_shows_in_the_sessions_events() {
    use protocol::egress::{read_message, write_message, TunnelKind, TunnelOpen, TunnelReply};
    let h = harness_with(Duration::from_secs(60), &[("FAKE_LOGIN_HOLD", "1")], None).await;
    let id = h.service.start("dana", "claude_code").await.expect("start");
    h.wait_state(&id, SessionState::Ready).await;
    let cli = h.backend.cli_vm_of("dana").expect("CLI VM");
    let browser = h
        .backend
        .vm_ids()
        .into_iter()
        .find(|v| *v != cli)
        .expect("browser VM");
    // What the VM's agent sends for a CONNECT (a guest may send it without the agent, too).
    let socket = h.dir.path().join("vms").join(&browser).join("egress.sock");
    let mut tunnel = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("gateway socket");
    let open = TunnelOpen {
        target: "exfiltrate.example:443".into(),
        kind: TunnelKind::Connect,
        head: None,
    };
    write_message(&mut tunnel, &open).await.expect("open");
    let reply: TunnelReply = read_message(&mut tunnel).await.expect("reply");
    assert_eq!(reply.status, 403, "{reply:?}");
    let detail = h
        .wait_event(
            &id,
            |k| matches!(k, LoginEventKind::Progress { step, .. } if step == "egress_refused"),
        )
        .await;
    let text = format!("{detail:?}");
    assert!(
        text.contains("exfiltrate.example:443") && text.contains("403"),
        "{text}"
    );
    assert!(h.service.cancel(&id).await.expect("cancel"));
    h.service.wait(&id).await.expect("wait");
}
