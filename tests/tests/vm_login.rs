//! The product's whole flow in real microVMs: a browser VM and a CLI VM (QEMU, the test image with
//! the static agent as PID 1 and the fake CLIs), reached over real virtio-vsock through
//! `vhost-device-vsock`. The login runs on a PTY in the browser VM, its URL reaches the host, the
//! "user" completes it, the credential is captured, stored sealed, pushed into the running CLI VM,
//! and the CLI there is logged in; then both VMs are destroyed with zero traces: no process, no
//! file, no active store row.

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
    let dir = tempfile::tempdir().expect("tempdir");
    let store = test_kit::login::sqlite_store(dir.path(), "host-vm-test").await;
    let vault = test_kit::login::fake_vault();
    let backend = Arc::new(QemuVmBackend::new(test_kit::vm::launcher(), "/root"));
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
    let mut browser_dir = None;
    while let Some(ev) = events.next().await {
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
    let (code, out) = sh(&client, "stat -c %a /root/.codex/auth.json").await;
    assert_eq!((code, out.as_str()), (0, "600"));
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
}
