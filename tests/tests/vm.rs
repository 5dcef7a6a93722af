//! The product in a real microVM: QEMU (TCG where there is no real KVM), Debian's guest kernel,
//! the static agent as PID 1, and the host reaching it over virtio-vsock through
//! `vhost-device-vsock`. No mock anywhere: this is the test that proves the transport.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use orchestrator::client::StreamItem;
use orchestrator::vm::QemuVm;
use orchestrator::{AgentClient, ClientError};
use protocol::frame::FrameKind;
use protocol::messages::WriteFileRequest;
use protocol::pty::{PtyEvent, PtyRequest, PtySpawn};
use protocol::ErrorCode;
use test_kit::process_alive;
use test_kit::vm::GUEST_HOME;

async fn sh(client: &AgentClient, script: &str) -> String {
    let out = client
        .exec_collect(&["sh", "-c", script], None)
        .await
        .expect("exec in the guest");
    assert_eq!(
        out.status.shell_code(),
        0,
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Listening TCP sockets and bound UDP sockets of the guest, as `proto:port`, read from
/// `/proc/net/{tcp,tcp6,udp,udp6}`.
async fn listening_sockets(client: &AgentClient) -> Vec<String> {
    let mut found = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let table = sh(client, &format!("cat /proc/net/{proto}")).await;
        let mut lines = table.lines();
        let header = lines.next().unwrap_or_default();
        assert!(
            header.trim_start().starts_with("sl"),
            "/proc/net/{proto}: {table}"
        );
        for line in lines {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            // TCP state 0A is LISTEN; any UDP socket in the table is bound and receiving.
            if proto.starts_with("tcp") && *state != "0A" {
                continue;
            }
            let (addr, port) = local.rsplit_once(':').unwrap_or_default();
            let port = u16::from_str_radix(port, 16).unwrap_or(0);
            // IPv4 addresses are printed as one little-endian hex word; IPv6 ones stay hex.
            let addr = match u32::from_str_radix(addr, 16) {
                Ok(v4) if addr.len() == 8 => std::net::Ipv4Addr::from(v4.swap_bytes()).to_string(),
                _ => addr.to_owned(),
            };
            found.push(format!("{proto}:{addr}:{port}"));
        }
    }
    found.sort();
    found
}

/// Destroys `vm` and checks the "zero traces" promise: both processes gone, the directory and
/// every socket in it removed, and the report lists them.
async fn destroy_without_traces(vm: QemuVm) {
    let dir = vm.dir().to_path_buf();
    let pids = vm.pids();
    let report = vm.destroy().await.expect("destroy");
    assert!(!dir.exists(), "{} left behind", dir.display());
    for pid in pids {
        assert!(!process_alive(pid as i32), "process {pid} left running");
    }
    // The backend unlinks its own sockets when QEMU goes away, racing the kill; the logs are ours.
    for name in ["serial.log", "qemu.log"] {
        assert!(
            report.removed.contains(&dir.join(name)),
            "{name} not in the destroy report: {:?}",
            report.removed
        );
    }
    assert_eq!(report.removed.last(), Some(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_vm_serves_the_agent_over_vsock_and_leaves_no_traces() {
    let vm = test_kit::vm::launcher()
        .create("test-serve")
        .await
        .expect("VM boots and its agent says hello");
    let hello = vm.hello().clone();
    assert_eq!(hello.listen_port, Some(protocol::DEFAULT_AGENT_PORT));
    assert!(hello.capabilities.iter().any(|c| c == "exec"), "{hello:?}");

    let client = AgentClient::connect(&vm.connector())
        .await
        .expect("connect through hybrid vsock");
    // It is the guest we talk to: the agent is its PID 1 and the boot id is the guest's.
    assert_eq!(sh(&client, "cat /proc/1/cmdline").await, "/init\0");
    assert_eq!(
        sh(&client, "cat /proc/sys/kernel/random/boot_id")
            .await
            .trim(),
        hello.boot_id
    );

    // No network listener but the egress proxy, on the VM's own loopback: the host reaches the
    // agent over vsock only.
    assert_eq!(
        listening_sockets(&client).await,
        vec!["tcp:127.0.0.1:3128".to_string()]
    );
    // The check sees a listener when there is one (busybox httpd daemonizes).
    sh(&client, "httpd -p 0.0.0.0:7777 -h /tmp").await;
    assert_eq!(
        listening_sockets(&client).await,
        vec![
            "tcp:0.0.0.0:7777".to_string(),
            "tcp:127.0.0.1:3128".to_string()
        ]
    );
    sh(&client, "killall httpd").await;

    // A file pushed from the host is there, with its mode, for guest processes too, and belongs
    // to the user whose home it is in (the programs run as that user, not as root).
    let content = br#"{"fake_token":"fake-access-token-0001"}"#.to_vec();
    let pushed = format!("{GUEST_HOME}/.fake-cli/credentials.json");
    client
        .write_file(&WriteFileRequest {
            path: pushed.clone(),
            content: content.clone(),
            mode: Some(0o600),
            create_dirs: true,
        })
        .await
        .expect("write a file in the guest");
    let back = client.read_file(&pushed).await.expect("read it back");
    assert_eq!(back.content, content);
    assert_eq!(back.mode & 0o777, 0o600);
    assert_eq!(
        sh(
            &client,
            &format!("stat -c '%a %U %G' {pushed} {GUEST_HOME}/.fake-cli")
        )
        .await,
        "600 user user\n700 user user\n"
    );

    drop(client);
    destroy_without_traces(vm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poweroff_stops_the_guest_cleanly() {
    let mut vm = test_kit::vm::launcher()
        .create("test-poweroff")
        .await
        .expect("VM boots and its agent says hello");
    let client = AgentClient::connect(&vm.connector())
        .await
        .expect("connect");
    // An orphan the init must reap (its parent shell exits at once).
    sh(&client, "sleep 1000 >/dev/null 2>&1 &").await;
    client.poweroff().await.expect("poweroff answered");
    let status = vm
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("QEMU exits after the guest powers off");
    assert!(status.success(), "QEMU exit status {status}");
    let serial = vm.serial_log();
    assert!(serial.contains("reboot: Power down"), "{serial}");
    destroy_without_traces(vm).await;
}

#[tokio::test]
async fn an_agent_that_is_not_the_vms_init_refuses_to_power_off() {
    let agent = test_kit::AgentProcess::start().await;
    let client = agent.client().await;
    match client.poweroff().await {
        Err(ClientError::Agent(body)) => assert_eq!(body.code, ErrorCode::Forbidden, "{body:?}"),
        other => panic!("expected a forbidden error, got {other:?}"),
    }
    assert!(process_alive(agent.pid() as i32));
    client.health().await.expect("agent still serving");
}

/// The URLs a login of `case` must report: the one a person copies and the one handed to the
/// browser (the same for codex and gemini; claude's browser variant differs in `redirect_uri`).
fn urls_of(case: &str) -> BTreeSet<String> {
    let meta = test_kit::fake_clis::recording(case);
    let mut urls = BTreeSet::new();
    urls.insert(
        meta["expected_urls"][0]["url"]
            .as_str()
            .expect("url")
            .to_owned(),
    );
    if let Some(url) = meta["browser_calls"][0]["argv"][0].as_str() {
        urls.insert(url.to_owned());
    }
    urls
}

/// Runs a provider's login argv in a guest PTY, as the login flow does: waits for its URL events,
/// pastes a code once the CLI waits for it, and returns the URLs reported and the exit code.
async fn login_in_guest(
    client: &AgentClient,
    argv: &[&str],
    provider: &str,
    (cols, rows): (u16, u16),
    case: &str,
) -> (BTreeSet<String>, i32) {
    let mut spawn = PtySpawn::new(argv.iter().copied());
    spawn.provider = Some(provider.into());
    spawn.cols = cols;
    spawn.rows = rows;
    let mut call = client
        .pty(&PtyRequest::Spawn(spawn))
        .await
        .expect("pty spawn in the guest");
    let (expected, replayed) = (urls_of(case), test_kit::fake_clis::replay_len(case));
    let (mut urls, mut output, mut pasted) = (BTreeSet::new(), Vec::new(), false);
    loop {
        let item = tokio::time::timeout(Duration::from_secs(90), call.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{argv:?} stalled; urls {urls:?}; output: {}",
                    String::from_utf8_lossy(&output)
                )
            })
            .expect("pty stream");
        match item {
            None => panic!("{argv:?}: stream ended without an exit event"),
            Some(StreamItem::Data(_, b)) => output.extend_from_slice(&b),
            Some(StreamItem::Event(PtyEvent::Url {
                url, provider: p, ..
            })) => {
                assert_eq!(p, provider, "{url}");
                urls.insert(url);
            }
            Some(StreamItem::Event(PtyEvent::Exited(status))) => {
                return (urls, status.shell_code());
            }
            Some(StreamItem::Event(_)) => {}
        }
        let waiting = output.len() >= replayed;
        if !pasted && waiting && urls == expected {
            pasted = true;
            call.send(FrameKind::Stdin, Bytes::from_static(b"fake-code-0001\r"))
                .await
                .expect("paste the code");
        }
    }
}

/// One provider's login as the image's fake CLIs run it.
struct GuestLogin {
    /// The login argv of the agent's providers.toml.
    argv: &'static [&'static str],
    provider: &'static str,
    /// Terminal size; the wrapper picks the recording of that size.
    size: (u16, u16),
    /// The recording the wrapper replays at that size.
    case: &'static str,
    /// Where the fake CLI writes the credentials, under the guest user's home.
    cred: &'static str,
    /// The command that says whether the CLI is logged in.
    status: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_cli_logins_work_in_a_real_vm() {
    let vm = test_kit::vm::launcher()
        .create("test-fake-clis")
        .await
        .expect("VM boots and its agent says hello");
    let client = AgentClient::connect(&vm.connector())
        .await
        .expect("connect");
    let logins = [
        GuestLogin {
            argv: &["codex", "login"],
            provider: "codex",
            size: (80, 24),
            case: "codex/login-80x24",
            cred: ".codex/auth.json",
            status: "codex login status",
        },
        GuestLogin {
            argv: &["claude", "auth", "login"],
            provider: "claude_code",
            size: (100, 30),
            // The default mode prints the full link (CLAUDE_CODE_FULL_SIGN_IN_LINK, added by the
            // agent), which the fake claude replays from its recording.
            case: "claude_code/auth-login-full-100x30",
            cred: ".claude/.credentials.json",
            status: "claude auth status",
        },
        GuestLogin {
            argv: &["gemini"],
            provider: "gemini_cli",
            size: (80, 24),
            case: "gemini_cli/display-80x24",
            cred: ".gemini/oauth_creds.json",
            status: "gemini --fake-status",
        },
    ];
    for GuestLogin {
        argv,
        provider,
        size,
        case,
        cred,
        status,
    } in logins
    {
        let before = client
            .exec_collect(&["sh", "-c", status], None)
            .await
            .expect("status before login");
        assert_eq!(before.status.shell_code(), 1, "{status} before login");
        assert_eq!(String::from_utf8_lossy(&before.stdout), "Not logged in\n");

        let (urls, code) = login_in_guest(&client, argv, provider, size, case).await;
        assert_eq!(code, 0, "{argv:?} exit code");
        assert_eq!(urls, urls_of(case), "{argv:?}");

        // The CLI ran as the unprivileged user: its file is that user's.
        let cred = format!("{GUEST_HOME}/{cred}");
        assert_eq!(
            sh(&client, &format!("stat -c %U {cred}")).await,
            "user\n",
            "{cred}"
        );
        let file = client.read_file(&cred).await.expect("credential file");
        assert_eq!(file.mode & 0o777, 0o600, "{cred}");
        assert!(
            String::from_utf8_lossy(&file.content).contains("fake-access-token-0001"),
            "{cred}"
        );
        assert_eq!(
            sh(&client, status).await,
            format!("Logged in ({cred})\n"),
            "{status}"
        );
    }
    drop(client);
    destroy_without_traces(vm).await;
}

/// A host that crashed left VM directories (its QEMUs died with it): the next run's `recover`
/// sweeps the ones whose owner is gone, audits it, and leaves another live host's alone.
#[tokio::test]
async fn recover_sweeps_what_a_crashed_host_left_and_audits_it() {
    use orchestrator::egress::{EgressPorts, PortRange};
    use orchestrator::login::{LoginConfig, LoginService};
    use orchestrator::vm::{QemuConfig, QemuLauncher, QemuVmBackend};
    let run = tempfile::tempdir().unwrap();
    // A crashed host's VM: its owner process (a child that exited) is gone.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let left = run.path().join("vmCrash1");
    std::fs::create_dir(&left).unwrap();
    std::fs::write(left.join("owner"), format!("{gone} 42")).unwrap();
    std::fs::write(left.join("serial.log"), b"boot messages").unwrap();
    // Another live host's VM directory (this process, as it stamps them): kept.
    let mut config = QemuConfig::new("/nonexistent/vhost", "/k", "/i");
    config.run_dir = run.path().to_path_buf();
    let launcher = QemuLauncher::new(config);
    let live = run.path().join("vmLive01");
    std::fs::create_dir(&live).unwrap();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let started = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_owned();
    std::fs::write(
        live.join("owner"),
        format!("{} {started}", std::process::id()),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = test_kit::login::sqlite_store(dir.path(), "sweep-test").await;
    let service = LoginService::new(
        std::sync::Arc::new(QemuVmBackend::new(launcher, GUEST_HOME)),
        store.clone(),
        test_kit::login::fake_vault(),
        EgressPorts::new(store.clone(), PortRange::default()),
        LoginConfig::default(),
    );
    let recovered = service.recover().await.expect("recover");
    assert_eq!(recovered.swept, [left.display().to_string()]);
    assert!(!left.exists());
    assert!(live.exists(), "a live host's VM was swept");
    let audit = store.audit_log(None).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.event == "vm_swept" && e.detail.contains("vmCrash1")),
        "{audit:?}"
    );
}

/// QEMU runs as a dedicated unprivileged account from its first instruction (no capabilities,
/// in a directory it may pass through but not read), and QEMU and the vsock backend still die
/// with the host process that started them when it is killed outright and no cleanup runs; the
/// next host's sweep removes the directory it left.
#[test]
fn vm_processes_run_unprivileged_and_die_with_a_killed_host() {
    use std::io::BufRead;
    use std::os::unix::fs::MetadataExt;

    /// Kills the holder if the test fails before it does.
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let files = tempfile::tempdir().expect("a directory for the VM account's files");
    let mut holder = Holder(
        std::process::Command::new(test_kit::agent::workspace_bin("vm-holder"))
            .arg(files.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start vm-holder"),
    );
    let mut line = String::new();
    std::io::BufReader::new(holder.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the holder's line");
    let (pids, dir) = line
        .trim()
        .strip_prefix("pids ")
        .and_then(|rest| rest.split_once(" dir "))
        .unwrap_or_else(|| panic!("the holder said {line:?}"));
    let pids: Vec<i32> = pids.split(' ').map(|p| p.parse().expect("pid")).collect();
    let dir = std::path::PathBuf::from(dir);
    assert_eq!(pids.len(), 2, "QEMU and the backend: {pids:?}");

    let account = nix::unistd::User::from_name(test_kit::vm::VM_USER)
        .expect("passwd")
        .expect("the VM account");
    let vm_user = account.uid.as_raw().to_string();
    let vm_gid = account.gid.as_raw().to_string();
    let qemu = pids[0];
    {
        let pid = qemu;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {status}"))
                .trim()
                .to_owned()
        };
        assert!(
            field("Uid:").split_whitespace().all(|u| u == vm_user),
            "QEMU runs as {}",
            field("Uid:")
        );
        assert!(
            field("Gid:").split_whitespace().all(|g| g == vm_gid),
            "{status}"
        );
        assert_eq!(field("Groups:"), vm_gid, "its own group only");
        assert_eq!(
            field("CapEff:"),
            "0000000000000000",
            "QEMU has capabilities"
        );
    }
    // The directory stays root's: QEMU's account passes through it to its sockets only (the
    // backend's socket is gone once QEMU is connected).
    let meta = std::fs::metadata(&dir).expect("the VM's directory");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o711));
    for (name, theirs) in [
        ("serial.sock", true),
        ("serial.log", false),
        ("owner", false),
    ] {
        let owner = std::fs::symlink_metadata(dir.join(name)).expect(name).uid();
        assert_eq!(
            owner.to_string() == vm_user,
            theirs,
            "{name} owned by {owner}"
        );
    }

    holder.0.kill().expect("kill the holder");
    holder.0.wait().expect("reap the holder");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|pid| process_alive(*pid)) {
        assert!(
            std::time::Instant::now() < deadline,
            "VM processes outlived their host: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dir.exists(), "nothing cleaned up after the killed host");
    let swept = test_kit::vm::launcher().sweep_orphans();
    assert!(swept.contains(&dir), "{swept:?}");
    assert!(!dir.exists());
}
