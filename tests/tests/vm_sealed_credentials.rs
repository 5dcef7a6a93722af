//! Zero-knowledge credentials in real microVMs over real virtio-vsock (QEMU, TCG here): the login
//! runs in a browser VM of the test image (the fake CLIs: no provider is reachable here), whose
//! agent seals the capture to the user's key; the test plays the user's page (opens the envelope
//! with the user's key, re-seals it to the CLI VM's key); the CLI VM runs the golden CLI image,
//! whose real `claude auth status` and `codex login status` accept the delivered files. A refresh
//! written in the CLI VM (as the CLIs write: a temporary file renamed over the old one) comes back
//! sealed to the user as version 2.

use std::sync::Arc;
use std::time::Duration;

use orchestrator::egress::{EgressPorts, PortRange};
use orchestrator::login::{LoginConfig, LoginEventKind, LoginService, Sealing};
use orchestrator::vault::RecordContext;
use orchestrator::vm::{QemuVmBackend, VmBackend};
use orchestrator::AgentClient;
use protocol::sealed::{KeyPair, SealContext, Sealed};
use test_kit::browser_vm::GUEST_HOME;

const USER: &str = "alice";

/// Runs `argv` in the guest: exit code and stdout + stderr.
async fn run(client: &AgentClient, argv: &[&str]) -> (i32, String) {
    let out = client.exec_collect(argv, None).await.expect("exec");
    (
        out.status.shell_code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The stored envelope of `provider`, as the page receives it.
async fn stored_envelope(store: &orchestrator::store::Store, provider: &str) -> (i64, Sealed) {
    let record = store
        .credential(USER, provider)
        .await
        .expect("get")
        .expect("stored");
    let sealed = record.envelope.user_sealed().expect("user-sealed");
    (record.version, sealed)
}

/// A whole login of `provider`, the "user" pasting the code as soon as the URL shows.
async fn link(service: &LoginService, provider: &str) {
    let id = service.start(USER, provider).await.expect("start");
    let mut events = service.subscribe(&id).await.expect("subscribe");
    let mut last = None;
    while let Some(ev) = events.next().await {
        match ev.kind {
            LoginEventKind::AuthUrl { .. } => service
                .submit_code(&id, "fake-auth-code-0001")
                .await
                .expect("submit code"),
            LoginEventKind::State { state, reason } => last = Some((state, reason)),
            _ => {}
        }
    }
    let (state, reason) = last.expect("a state");
    assert_eq!(state.as_str(), "completed", "{provider}: {reason:?}");
}

/// What the user's page does: opens the pending envelope with the user's key and re-seals it to
/// the CLI VM's key; the service hands it to the VM.
async fn deliver_as_the_page(service: &LoginService, user_key: &KeyPair, provider: &str) {
    let pending = service
        .pending_delivery(USER, provider)
        .await
        .expect("pending")
        .expect("something to deliver");
    let delivery =
        test_kit::login::reseal_as_the_page(user_key, &pending).expect("the user's key opens it");
    service
        .deliver(USER, provider, &delivery)
        .await
        .expect("the CLI VM takes it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_sealed_logins_log_the_real_clis_in_and_a_refresh_comes_back_as_version_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = test_kit::login::sqlite_store(dir.path(), "host-vm-test").await;
    let vault = test_kit::login::fake_vault();
    let backend = Arc::new(QemuVmBackend::with_images(
        test_kit::vm::launcher(),
        test_kit::vm::cli_launcher(),
        dir.path().join("disks"),
        GUEST_HOME,
    ));
    let config = LoginConfig {
        sealing: Sealing::User,
        timeout: Duration::from_secs(300),
        hello_timeout: Duration::from_secs(180),
        ..LoginConfig::default()
    };
    let service = LoginService::new(
        backend.clone(),
        store.clone(),
        vault.clone(),
        EgressPorts::new(store.clone(), PortRange::default()),
        config,
    );
    let user_key = KeyPair::generate().expect("the user's key");
    service
        .set_user_key(USER, user_key.public())
        .await
        .expect("register the user's key");

    for provider in ["claude_code", "codex"] {
        link(&service, provider).await;
        // The host holds what it cannot open.
        let record = store.credential(USER, provider).await.unwrap().unwrap();
        assert!(
            vault
                .open(
                    &RecordContext {
                        user_id: USER,
                        provider,
                        version: record.version,
                    },
                    &record.envelope,
                )
                .is_err(),
            "the host's vault cannot open a user-sealed {provider} credential"
        );
        deliver_as_the_page(&service, &user_key, provider).await;
    }

    // The real CLIs in the CLI VM say logged in.
    let cli = backend.ensure_cli_vm(USER).await.expect("the CLI VM");
    assert!(
        !cli.created,
        "the CLI VM of the deliveries is still running"
    );
    let client = AgentClient::connect_with_retry(&*cli.connector, Duration::from_secs(30))
        .await
        .expect("connect");
    let (code, out) = run(&client, &["claude", "auth", "status"]).await;
    assert_eq!(code, 0, "claude auth status: {out}");
    let (code, out) = run(&client, &["codex", "login", "status"]).await;
    assert_eq!(code, 0, "codex login status: {out}");
    assert!(out.contains("Logged in using ChatGPT"), "{out}");

    // The CLI refreshes its tokens in the CLI VM: the new file comes back sealed, as version 2.
    let refreshed = r#"{"claudeAiOauth":{"accessToken":"fake-refreshed-access-token-0002","refreshToken":"fake-refreshed-refresh-token-0002","expiresAt":4102444800000,"scopes":["user:inference","user:profile"],"subscriptionType":"max"}}"#;
    let file = format!("{GUEST_HOME}/.claude/.credentials.json");
    let (code, out) = run(
        &client,
        &[
            "sh",
            "-c",
            r#"umask 077 && printf %s "$1" > "$2.tmp" && mv "$2.tmp" "$2""#,
            "refresh",
            refreshed,
            &file,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (version, envelope) = loop {
        let (version, envelope) = stored_envelope(&store, "claude_code").await;
        if version == 2 {
            break (version, envelope);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no version 2 stored (still {version})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ctx = |version| SealContext {
        user: USER,
        provider: "claude_code",
        version,
    };
    let opened = user_key
        .open(&ctx(version), &envelope)
        .expect("version 2 opens with the user's key");
    assert_eq!(opened.as_slice(), refreshed.as_bytes());
    assert!(
        user_key.open(&ctx(1), &envelope).is_err(),
        "only as version 2"
    );
    assert!(
        KeyPair::generate()
            .unwrap()
            .open(&ctx(version), &envelope)
            .is_err(),
        "only with the user's key"
    );
    let audit = store.audit_log(Some(USER)).await.expect("audit");
    assert!(
        audit
            .iter()
            .any(|e| e.event == "credential_refreshed" && e.detail.starts_with("version=2")),
        "{audit:?}"
    );
    let text = format!("{audit:?}");
    assert!(!text.contains("fake-refresh") && !text.contains("fake-access"));
    let (code, out) = run(&client, &["claude", "auth", "status"]).await;
    assert_eq!(code, 0, "still logged in after the refresh: {out}");
    drop(client);

    service.destroy_vm(USER, &cli.id).await.expect("destroy");
    assert!(backend.vm_ids().is_empty(), "{:?}", backend.vm_ids());
    assert!(store.active_vms(None).await.expect("vms").is_empty());
}
