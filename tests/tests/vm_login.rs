//! The product's whole flow in real microVMs: a browser VM and a CLI VM (QEMU, the test image with
//! the static agent as PID 1 and the fake CLIs), reached over real virtio-vsock through
//! `vhost-device-vsock`. The login runs on a PTY in the browser VM, its URL reaches the host, the
//! "user" completes it, the credential is captured, stored sealed, pushed into the running CLI VM,
//! and the CLI there is logged in; then both VMs are destroyed with zero traces: no process, no
//! file, no active store row. Every host log line (trace level), both VMs' serial consoles, the
//! store's file and the audit rows hold no token, proxy password or vault key in any form.

use std::sync::Arc;
use std::time::Duration;

use orchestrator::egress::{EgressPorts, PortRange, ProxyConfig};
use orchestrator::login::{LoginConfig, LoginEventKind, LoginService};
use orchestrator::vault::RecordContext;
use orchestrator::vm::{QemuVmBackend, VmBackend};
use orchestrator::AgentClient;
use protocol::Secret;

/// Runs a shell script in the VM: exit code and stdout (+ stderr).
async fn sh(client: &AgentClient, script: &str) -> (i32, String) {
    let out = client
        .exec_collect(&["sh", "-c", script], None)
        .await
        .expect("exec");
    (
        out.status.shell_code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
            + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_a_browser_vm_lands_in_the_running_cli_vm_and_leaves_no_traces() {
    let trace_lines = test_kit::tap::trace_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = test_kit::login::sqlite_store(dir.path(), "host-vm-test").await;
    // Obviously fake, and not all zeros, so its raw bytes cannot match by chance.
    const VAULT_KEY: &[u8; 32] = b"fake-vault-key-0002-not-a-secret";
    const VAULT_KEY_B64: &str = "ZmFrZS12YXVsdC1rZXktMDAwMi1ub3QtYS1zZWNyZXQ=";
    let vault = Arc::new(orchestrator::vault::Vault::new(
        orchestrator::vault::Keyring::from_spec(&format!("scan:{VAULT_KEY_B64}"), "scan")
            .expect("keyring"),
    ));
    let backend = Arc::new(QemuVmBackend::new(
        test_kit::vm::launcher(),
        test_kit::vm::GUEST_HOME,
    ));
    let config = LoginConfig {
        timeout: Duration::from_secs(240),
        hello_timeout: Duration::from_secs(60),
        proxy: Some(ProxyConfig {
            host: "proxy.example.test".into(),
            username: "fake-proxy-user".into(),
            password: Secret::new("fake-proxy-pass".into()),
        }),
        ..LoginConfig::default()
    };
    let service = LoginService::new(
        backend.clone(),
        store.clone(),
        vault.clone(),
        EgressPorts::new(store.clone(), PortRange::default()),
        config,
    );

    let id = service.start("alice", "codex").await.expect("start");
    let mut events = service.subscribe(&id).await.expect("subscribe");
    let mut states = Vec::new();
    let mut url = None;
    let mut browser_pids = Vec::new();
    let mut browser_dir: Option<std::path::PathBuf> = None;
    // The browser VM's console, read while it exists (its directory goes with it): the last
    // read holds the capture and everything before.
    let mut browser_serial = String::new();
    while let Some(ev) = events.next().await {
        if let Some(dir) = &browser_dir {
            let tail = orchestrator::vm::serial::tail(dir, 4 * 1024 * 1024);
            if !tail.is_empty() {
                browser_serial = tail;
            }
        }
        match ev.kind {
            LoginEventKind::AuthUrl { url: u, .. } => {
                // The user's browser would open this; the user logs in and pastes the code.
                let browser = backend
                    .vm_ids()
                    .into_iter()
                    .find(|v| v.contains("-browser-"))
                    .expect("browser VM runs");
                browser_pids = backend.pids(&browser);
                browser_dir = backend.dir(&browser);
                url = Some(u);
                service
                    .submit_code(&id, "fake-auth-code-0001")
                    .await
                    .expect("submit code");
            }
            LoginEventKind::State { state, reason } => {
                assert!(reason.is_none(), "{state}: {reason:?}");
                states.push(state);
            }
            LoginEventKind::DeviceCode { url, code } => {
                panic!("a browser login reported a device code: {url} {code}")
            }
            LoginEventKind::Progress { .. } => {}
        }
    }
    assert_eq!(states, test_kit::login::HAPPY_PATH);
    let url = url.expect("the URL reached the host");
    assert!(
        url.starts_with("https://auth.openai.com/oauth/authorize?") && url.contains("client_id="),
        "{url}"
    );

    // Stored sealed on the host.
    let record = store
        .credential("alice", "codex")
        .await
        .expect("get")
        .expect("stored");
    assert!(!record.push_pending(), "pushed");
    let opened = vault
        .open(
            &RecordContext {
                user_id: "alice",
                provider: "codex",
                version: record.version,
            },
            &record.envelope,
        )
        .expect("open");
    let needle = b"fake-refresh-token-0001";
    assert!(opened.expose().windows(needle.len()).any(|w| w == needle));
    assert!(!record
        .envelope
        .ciphertext
        .windows(needle.len())
        .any(|w| w == needle));

    // The running CLI VM has it, and its CLI is logged in.
    let cli = backend.ensure_cli_vm("alice").await.expect("CLI VM");
    assert!(!cli.created, "the CLI VM of the flow is still running");
    let client = AgentClient::connect(&*cli.connector)
        .await
        .expect("connect");
    // The pushed file is the unprivileged user's, whose CLI reads it.
    let (code, out) = sh(
        &client,
        &format!(
            "stat -c '%a %U' {}/.codex/auth.json",
            test_kit::vm::GUEST_HOME
        ),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "600 user"));
    let (code, out) = sh(&client, "codex login status").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Logged in"), "{out}");
    drop(client);

    // The browser VM is gone without a trace.
    assert!(!browser_pids.is_empty());
    for pid in &browser_pids {
        assert!(
            !test_kit::process_alive(*pid as i32),
            "browser VM process {pid} left"
        );
    }
    let browser_dir = browser_dir.expect("browser VM dir");
    assert!(!browser_dir.exists(), "{} left", browser_dir.display());

    // Destroying the CLI VM leaves nothing either, and the audit says what went.
    let cli_pids = backend.pids(&cli.id);
    let cli_dir = backend.dir(&cli.id).expect("CLI VM dir");
    let serial = orchestrator::vm::serial::tail(&cli_dir, 4 * 1024 * 1024);
    assert!(!serial.is_empty(), "the CLI VM's console was kept");
    let report = service.destroy_vm("alice", &cli.id).await.expect("destroy");
    assert!(report.removed.iter().any(|r| r.starts_with("process ")));
    for pid in cli_pids {
        assert!(
            !test_kit::process_alive(pid as i32),
            "CLI VM process {pid} left"
        );
    }
    assert!(!cli_dir.exists());
    assert!(backend.vm_ids().is_empty());
    assert!(store.active_vms(None).await.expect("vms").is_empty());
    assert!(store.active_sessions().await.expect("sessions").is_empty());
    let log = store.audit_log(Some("alice")).await.expect("audit");
    let destroyed = log.iter().filter(|e| e.event == "vm_destroyed").count();
    assert_eq!(destroyed, 2, "{log:?}");
    let text = format!("{log:?}");
    assert!(!text.contains("fake-refresh-token") && !text.contains("fake-proxy-pass"));

    // The secret scan: tokens of the pushed file, the proxy password, the vault key.
    let secrets: Vec<String> = [
        "fake-refresh-token-0001",
        "fake-access-token-0001",
        "fake-proxy-pass",
        VAULT_KEY_B64,
    ]
    .map(String::from)
    .to_vec();
    let audit_rows: Vec<String> = store
        .audit_log(None)
        .await
        .expect("audit")
        .iter()
        .map(|e| format!("{} {} {}", e.event, e.subject, e.detail))
        .collect();
    assert!(
        !browser_serial.is_empty(),
        "the browser VM's console was read"
    );
    let mut scanned = vec![
        ("host log", trace_lines.lock().unwrap().clone()),
        ("CLI VM console", serial.into_bytes()),
        ("browser VM console", browser_serial.into_bytes()),
        ("audit rows", audit_rows.join("\n").into_bytes()),
    ];
    for entry in std::fs::read_dir(dir.path()).expect("store dir") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().contains("store.db") {
            scanned.push(("store file", std::fs::read(&path).expect("store file")));
        }
    }
    assert!(
        String::from_utf8_lossy(&scanned[0].1).contains("TRACE"),
        "the host log is at trace level"
    );
    for (what, bytes) in &scanned {
        if let Some((i, form)) = test_kit::tap::find_token(bytes, &secrets) {
            panic!("secret {i} found in the {what} as {form:?}");
        }
        assert!(
            !bytes.windows(VAULT_KEY.len()).any(|w| w == VAULT_KEY),
            "the vault key's bytes are in the {what}"
        );
    }
}
