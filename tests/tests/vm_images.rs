//! The golden images in real microVMs (QEMU, TCG here): Debian 12 root disks built by
//! `cargo xtask image cli|browser`, each VM on its own copy-on-write overlay of the read-only
//! golden image, the agent baked into the image and started by the boot initramfs.

use std::time::{Duration, Instant};

use orchestrator::vm::{QemuLauncher, QemuVmBackend, VmBackend, VmHandle};
use orchestrator::AgentClient;
use protocol::messages::Empty;
use protocol::pty::{PtyRequest, PtySpawn};
use serde_json::json;
use test_kit::desktop::chromium::Chromium;
use test_kit::desktop::relay::Relay;

/// Runs `argv` in the guest; returns (exit code, stdout + stderr).
async fn run(client: &AgentClient, argv: &[&str]) -> (i32, String) {
    let out = client
        .exec_collect(argv, None)
        .await
        .expect("exec in the guest");
    (
        out.status.shell_code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A user's CLI VM, through the backend a host service uses: a credential pushed by the
/// orchestrator makes the real `claude auth status` and `codex login status` say logged in; the VM
/// is stopped and started again from its disk, and the files and logins are still there;
/// destroying it removes its disk; the golden image is never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_credentials_log_the_real_clis_in_and_survive_a_restart() {
    let launcher = test_kit::vm::cli_launcher();
    let golden = launcher
        .config()
        .root_image
        .clone()
        .expect("a golden image");
    let golden_before = std::fs::metadata(&golden)
        .expect("golden")
        .modified()
        .expect("mtime");
    let disks = tempfile::tempdir().expect("tempdir");
    let backend = QemuVmBackend::with_images(launcher.clone(), launcher, disks.path(), GUEST_HOME);
    let connect = |handle: &VmHandle| {
        let connector = handle.connector.clone();
        async move {
            AgentClient::connect_with_retry(&*connector, Duration::from_secs(30))
                .await
                .expect("connect")
        }
    };

    let handle = backend
        .ensure_cli_vm("alice")
        .await
        .expect("the CLI VM boots");
    let client = connect(&handle).await;
    for (cli, version) in [
        ("claude", "2.1.332"),
        ("codex", "0.171.0"),
        ("gemini", "0.61.0"),
    ] {
        let (code, out) = run(&client, &[cli, "--version"]).await;
        assert_eq!(code, 0, "{cli} --version: {out}");
        assert!(out.contains(version), "{cli}: {out}");
    }
    let (code, out) = run(&client, &["claude", "auth", "status"]).await;
    assert_eq!(code, 1, "not logged in before the push: {out}");
    for (provider, path, content) in [
        (
            "claude_code",
            ".claude/.credentials.json",
            test_kit::credentials::claude(),
        ),
        ("codex", ".codex/auth.json", test_kit::credentials::codex()),
    ] {
        test_kit::credentials::push(&client, provider, path, content).await;
    }
    let logged_in = |client: AgentClient| async move {
        let (code, out) = run(&client, &["claude", "auth", "status"]).await;
        assert_eq!(code, 0, "claude auth status: {out}");
        let (code, out) = run(&client, &["codex", "login", "status"]).await;
        assert_eq!(code, 0, "codex login status: {out}");
        assert!(out.contains("Logged in using ChatGPT"), "{out}");
    };
    logged_in(client.clone()).await;

    // Stopped (its file system synced by a clean power-off first) and started again.
    client.poweroff().await.expect("poweroff");
    drop(client);
    let stopped = backend.stop_vm(&handle.id).await.expect("stop");
    assert!(
        !stopped.removed.iter().any(|r| r.starts_with("disk ")),
        "{stopped:?}"
    );
    let again = backend
        .ensure_cli_vm("alice")
        .await
        .expect("the CLI VM boots again");
    assert!(again.created && again.id != handle.id);
    let client = connect(&again).await;
    logged_in(client.clone()).await;
    drop(client);

    let destroyed = backend.destroy_vm(&again.id).await.expect("destroy");
    assert!(
        destroyed.removed.iter().any(|r| r.starts_with("disk ")),
        "the disk is removed with the VM: {destroyed:?}"
    );
    let left: Vec<_> = std::fs::read_dir(disks.path()).expect("disks").collect();
    assert!(left.is_empty(), "nothing left of the CLI VM: {left:?}");
    let golden_after = std::fs::metadata(&golden)
        .expect("golden")
        .modified()
        .expect("mtime");
    assert_eq!(
        golden_before, golden_after,
        "the golden image is never written"
    );
}

/// Egress in a real CLI VM over real vsock: `curl` in the guest, pointed by the agent at its
/// loopback proxy, reaches the HTTPS origin through the host's gateway and the user's squid port
/// (squid logs the CONNECT on that port with the configured user); a destination off the VM's
/// list is refused; and the proxy password is in no guest environment, command line or file, nor
/// in the VM's console log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_in_the_cli_vm_leaves_through_its_users_port_and_the_vm_never_sees_the_password() {
    let rig = EgressRig::start(2).await;
    let port = rig.ports.assign("alice").await.expect("port");
    let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
    let mut events = gateway.subscribe();
    let vm = test_kit::vm::cli_launcher()
        .create("egress")
        .await
        .expect("the CLI VM boots");
    let _binding = gateway
        .serve_vm(
            &vm.connector()
                .host_listener_path(protocol::egress::DEFAULT_EGRESS_PORT),
            EgressVm {
                user: "alice".into(),
                vm_id: vm.name().into(),
                allow: rig.only_origin(),
            },
        )
        .expect("serve the VM's egress");
    let client = AgentClient::connect_with_retry(&vm.connector(), Duration::from_secs(30))
        .await
        .expect("connect");
    let cert = std::fs::read(rig.origin.cert_path()).expect("cert");
    client
        .write_file(&protocol::messages::WriteFileRequest {
            path: "/tmp/origin.pem".into(),
            content: cert,
            mode: Some(0o644),
            create_dirs: false,
        })
        .await
        .expect("the origin's certificate into the VM");

    let (code, out) = run(
        &client,
        &[
            "curl",
            "-sS",
            "--cacert",
            "/tmp/origin.pem",
            &rig.origin.url("/"),
        ],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "hello from the origin\n"));
    let line = format!("{port} {PROXY_USER} CONNECT {} 200", rig.origin.target());
    let log = rig.squid.wait_for_log(&line).await;
    assert!(log.contains(&line), "squid did not log {line:?}:\n{log}");

    let (code, out) = run(&client, &["curl", "-sS", "https://elsewhere.test/"]).await;
    assert_ne!(code, 0);
    assert!(out.contains("403"), "{out}");
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event")
        .expect("event");
    assert_eq!(
        (event.status, event.target.as_str()),
        (403, "elsewhere.test:443")
    );

    // The guest's every environment and command line, and its configuration and home files.
    let (_, seen) = run(
        &client,
        &[
            "sh",
            "-c",
            "cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline; \
             grep -rl fake-egress /etc /root /home /tmp /run /var/log 2>/dev/null; env",
        ],
    )
    .await;
    assert!(seen.contains("HTTPS_PROXY=http://127.0.0.1:3128"), "{seen}");
    assert!(!seen.contains(PROXY_PASSWORD), "the password is in the VM");
    assert!(!vm.serial_log().contains(PROXY_PASSWORD));
    drop(client);
    vm.destroy().await.expect("destroy");
}

use orchestrator::egress::{EgressLimits, EgressVm};
use test_kit::browser_vm::{browser_ready, navigated, start_login, GUEST_HOME};
use test_kit::egress::{EgressRig, PROXY_PASSWORD, PROXY_USER};

/// The browser VM: X, a window manager, the terminal on the left showing the agent's login
/// session, Chromium on the right. For each real CLI, the login runs in the VM, its URL reaches
/// the host and Chromium opens it (the tab's URL, read through the agent's browser concern) and
/// asks for the page through the VM's egress: the host's gateway and the user's squid port (the
/// page itself does not load: its local stand-in's certificate is not trusted, rightly); a URL
/// that is not the provider's is not
/// opened; a Chromium that crashes is reported and started again; and a frame of the streamed
/// desktop shows the terminal and Chromium's window.
#[test]
fn the_browser_vm_opens_each_real_clis_login_url_in_chromium_beside_its_terminal() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (port, _) = test_kit::ports::free_udp_range(1);
    let mut config = test_kit::vm::config(test_kit::vm::browser_assets());
    config.memory_mib = 1024;
    config.vcpus = 2;
    config.network = Some(test_kit::vm::udp_from_loopback(port));
    let vm = rt
        .block_on(QemuLauncher::new(config).create("browser-vm"))
        .expect("the browser VM boots and its agent says hello");
    let client = rt
        .block_on(AgentClient::connect_with_retry(
            &vm.connector(),
            Duration::from_secs(30),
        ))
        .expect("connect");
    assert!(
        vm.hello().capabilities.iter().any(|c| c == "desktop"),
        "the browser VM's agent offers its desktop: {:?}",
        vm.hello()
    );
    let first = rt.block_on(browser_ready(&client));
    assert_eq!(first.starts, 1, "{first:?}");
    // Chromium's way out: the host's gateway to the user's squid port, the providers' hosts
    // only, each resolved by squid to a local origin.
    let rig = rt.block_on(EgressRig::for_logins());
    let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
    let socket = vm
        .connector()
        .host_listener_path(protocol::egress::DEFAULT_EGRESS_PORT);
    let (user_port, _egress) =
        rt.block_on(rig.serve_login_vm(&gateway, &socket, "alice", vm.name()));

    // One login after the other, each ended before the next as a person retrying would: the
    // terminal moves to the next session, and its answers to the CLI's terminal queries must not
    // reach the CLI as keys (gemini's took the digits of one as a pick of "Use Gemini API Key").
    for provider in ["claude_code", "codex", "gemini_cli"] {
        let (urls, call) = rt.block_on(start_login(&client, provider));
        let opened = rt.block_on(navigated(&client, &urls));
        assert_eq!(opened.provider, provider);
        eprintln!(
            "{provider}: {} URL(s), opened in Chromium {} ms after the CLI handed it over",
            urls.len(),
            opened.navigated_ms.unwrap_or(0) - opened.requested_ms
        );
        drop(call);
    }
    // Each provider's login host (claude's full link is on claude.com, its short one on claude.ai).
    for hosts in [
        &["claude.com", "claude.ai"][..],
        &["auth.openai.com"],
        &["accounts.google.com"],
    ] {
        let lines: Vec<String> = hosts
            .iter()
            .map(|h| format!("{user_port} {PROXY_USER} CONNECT {h}:443 200"))
            .collect();
        let log = rt.block_on(rig.squid.wait_for_log(&lines[0]));
        assert!(
            lines.iter().any(|l| log.contains(l)),
            "Chromium did not ask for {hosts:?} through the user's port:\n{log}"
        );
    }

    // A URL the provider's rules do not know is never opened, even when handed to the browser.
    let mut spawn = PtySpawn::new([
        "sh",
        "-c",
        "\"$BROWSER\" 'https://example.com/oauth/authorize?client_id=x&state=y'; sleep 30",
    ]);
    spawn.provider = Some("claude_code".into());
    let call = rt
        .block_on(client.pty(&PtyRequest::Spawn(spawn)))
        .expect("spawn");
    std::thread::sleep(Duration::from_secs(3));
    let state = rt.block_on(browser_ready(&client));
    assert!(
        state.opened.iter().all(|o| !o.url.contains("example.com")),
        "{state:?}"
    );
    drop(call);

    // A Chromium that crashes is counted and started again.
    let pid = state.pid.expect("Chromium's pid");
    let out = rt
        .block_on(client.exec_collect(&["kill", "-9", &pid.to_string()], None))
        .expect("kill");
    assert_eq!(out.status.shell_code(), 0);
    let deadline = Instant::now() + Duration::from_secs(180);
    let restarted = loop {
        let state = rt
            .block_on(client.call::<protocol::browser::Browser>(&Empty {}))
            .expect("state");
        if state.ready && state.starts == 2 {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium not restarted: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(restarted.crashes.len(), 1, "{restarted:?}");
    assert_ne!(restarted.pid, Some(pid));

    // A frame of the desktop, streamed to a browser on the host: the terminal (its background)
    // on the left, Chromium's page on the right, the bare root window below the terminal.
    let relay = rt.block_on(Relay::through_user_network(client.clone(), None, port));
    let mut viewer = Chromium::launch();
    viewer.set_viewport(1280, 800);
    viewer.watch(
        &format!("http://{}/?resize=0", relay.addr),
        Duration::from_secs(180),
    );
    assert_eq!(
        viewer.eval("[viewer.video.videoWidth, viewer.video.videoHeight]"),
        json!([1280, 800]),
        "the video has the VM's screen size"
    );
    viewer.wait_colour(300, 380, 0x202830, 24); // the terminal
    viewer.wait_colour(300, 700, 0x000000, 24); // the root window under it
    let page = viewer.wait_colour(960, 500, 0xffffff, 40); // Chromium's (error) page
    eprintln!("Chromium's page at (960, 500): {page:?}");

    drop(viewer);
    drop(relay);
    drop(client);
    rt.block_on(vm.destroy()).expect("destroy");
}
