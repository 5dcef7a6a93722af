//! Golden snapshots and paused VMs, on real microVMs: what the host's `restored` call does to a
//! VM (fresh entropy, the host's clock, a clone's new machine id, boot id and sealing key); browser
//! VMs cloned from one snapshot at once are each their own (random state, ids, clock, a real CLI's
//! PKCE challenge, opened in each Chromium, whose TLS randoms differ); a snapshot that is corrupt
//! or made by something else is refused; a restore that fails boots instead and says so; a
//! Chromium that dies is reported to a watching host and runs again; an idle CLI VM is paused, and
//! resumes with its processes and files and takes a push.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orchestrator::client::{StreamCall, StreamItem};
use orchestrator::egress::EgressLimits;
use orchestrator::vm::{
    QemuLauncher, QemuVmBackend, SnapshotError, VmBackend, VmHandle, VmKind, VmSpec, VmStart,
};
use orchestrator::AgentClient;
use protocol::browser::{BrowserEvent, BrowserWatch};
use protocol::messages::{Empty, ExecRequest};
use protocol::restore::{EntropyBytes, Restored, RestoredRequest, ENTROPY_BYTES};
use protocol::{ErrorCode, Secret};
use test_kit::browser_vm::{browser_ready, navigated, start_login};
use test_kit::egress::{EgressRig, HelloRecorder, PROXY_PASSWORD, PROXY_USER};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn host_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

async fn root_shell(client: &AgentClient, script: &str) -> String {
    let request = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        user: Some("root".into()),
        ..Default::default()
    };
    let mut call = client.exec(&request).await.expect("exec");
    call.close_input();
    let out = call.collect_exec().await.expect("output");
    assert_eq!(
        out.status.shell_code(),
        0,
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn restored(clone: bool, entropy: usize) -> RestoredRequest {
    RestoredRequest {
        entropy: Secret::new(EntropyBytes(vec![0x5a; entropy])),
        unix_time_ms: host_ms(),
        clone,
    }
}

#[test]
fn a_restored_clone_gets_the_hosts_clock_and_an_identity_of_its_own() {
    let rt = runtime();
    let vm = rt
        .block_on(test_kit::vm::launcher().create("restored"))
        .expect("boot");
    let client = rt
        .block_on(AgentClient::connect(&vm.connector()))
        .expect("connect");
    let booted = vm.hello().clone();
    assert_eq!(
        booted.machine_id.len(),
        32,
        "the agent made a machine id: {booted:?}"
    );
    assert_eq!(
        rt.block_on(root_shell(&client, "cat /etc/machine-id")),
        booted.machine_id
    );
    let key_before = rt.block_on(client.call::<protocol::creds::CredsKey>(&Default::default()));
    let key_before = key_before.expect("sealing key").public_key;

    // A clock far in the past, as a VM saved long ago wakes with.
    rt.block_on(root_shell(&client, "date -s @1000000000 >/dev/null"));
    let err = rt
        .block_on(client.call::<Restored>(&restored(true, 3)))
        .expect_err("three bytes of entropy are refused");
    assert!(
        matches!(err, orchestrator::ClientError::Agent(ref b) if b.code == ErrorCode::BadRequest),
        "{err}"
    );
    let hello = rt
        .block_on(client.call::<Restored>(&restored(true, ENTROPY_BYTES)))
        .expect("restored");
    assert_ne!(
        hello.boot_id, booted.boot_id,
        "a clone's boot id is its own"
    );
    assert_ne!(hello.machine_id, booted.machine_id, "and its machine id");
    let before_s = host_ms() / 1000;
    let seen = rt.block_on(root_shell(
        &client,
        "cat /proc/sys/kernel/random/boot_id /etc/machine-id; date +%s",
    ));
    let after_s = host_ms() / 1000;
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], hello.boot_id, "every reader sees the new boot id");
    assert_eq!(lines[1], hello.machine_id);
    // Whole seconds (busybox's date): the guest's second is the host's, give or take the one the
    // read took.
    let guest_s = lines[2].parse::<u64>().expect("seconds");
    assert!(
        (before_s.saturating_sub(1)..=after_s).contains(&guest_s),
        "the clock is the host's: guest {guest_s}, host {before_s}..{after_s}"
    );
    let key_after = rt
        .block_on(client.call::<protocol::creds::CredsKey>(&Default::default()))
        .expect("sealing key")
        .public_key;
    assert_ne!(key_after, key_before, "a clone seals to a key of its own");

    // A resumed VM (not a clone) keeps who it is.
    let again = rt
        .block_on(client.call::<Restored>(&restored(false, ENTROPY_BYTES)))
        .expect("resumed");
    assert_eq!(again.boot_id, hello.boot_id);
    assert_eq!(again.machine_id, hello.machine_id);
    drop(client);
    rt.block_on(vm.destroy()).expect("destroy");
}

fn browser_launcher() -> QemuLauncher {
    let mut config = test_kit::vm::config(test_kit::vm::browser_assets());
    config.memory_mib = 1024;
    config.vcpus = 2;
    QemuLauncher::new(config)
}

fn spec(user: &str, kind: VmKind) -> VmSpec {
    VmSpec {
        user_id: user.into(),
        kind,
        session_id: None,
    }
}

async fn shell(client: &AgentClient, script: &str) -> String {
    let out = client
        .exec_collect(&["sh", "-c", script], None)
        .await
        .expect("exec");
    assert_eq!(
        out.status.shell_code(),
        0,
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What must differ between clones, read inside one.
#[derive(Debug)]
struct Inside {
    random: String,
    machine_id: String,
    boot_id: String,
    clock_skew_ms: i128,
}

async fn inside(client: &AgentClient) -> Inside {
    let line = shell(
        client,
        "echo $(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n') \
         $(cat /etc/machine-id) $(cat /proc/sys/kernel/random/boot_id) $(date +%s%3N)",
    )
    .await;
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{line}");
    Inside {
        random: fields[0].into(),
        machine_id: fields[1].into(),
        boot_id: fields[2].into(),
        clock_skew_ms: fields[3].parse::<i128>().expect("ms") - host_ms() as i128,
    }
}

/// Kills the browser VM's Chromium (as root, as a crash would end it) while a `browser_watch`
/// call is open: the watch reports the crash, then the restart.
async fn browser_crash_is_reported_and_restarted(client: &AgentClient) {
    let mut watch = client
        .open::<BrowserWatch>(&Empty {})
        .await
        .expect("browser_watch");
    let first = next_browser_event(&mut watch).await;
    let BrowserEvent::Watching {
        ready: true,
        starts,
    } = first
    else {
        panic!("the watch opens with the browser's state: {first:?}");
    };
    let pid = browser_ready(client).await.pid.expect("a browser pid");
    root_shell(client, &format!("kill -9 {pid}")).await;
    match next_browser_event(&mut watch).await {
        BrowserEvent::Crashed(crash) => {
            assert!(crash.status.contains('9'), "killed by signal 9: {crash:?}")
        }
        other => panic!("expected the crash, got {other:?}"),
    }
    match next_browser_event(&mut watch).await {
        BrowserEvent::Started {
            pid: new,
            starts: n,
        } => {
            assert_ne!(new, pid, "a new browser process");
            assert_eq!(n, starts + 1);
        }
        other => panic!("expected the restart, got {other:?}"),
    }
    let state = browser_ready(client).await;
    assert_eq!(state.crashes.len(), 1, "{state:?}");
}

async fn next_browser_event(watch: &mut StreamCall<BrowserWatch>) -> BrowserEvent {
    let item = tokio::time::timeout(Duration::from_secs(180), watch.next())
        .await
        .expect("a browser event within 3 minutes (a cold Chromium start under emulation)")
        .expect("the watch goes on");
    match item {
        Some(StreamItem::Event(event)) => event,
        other => panic!("expected a browser event, got {other:?}"),
    }
}

fn code_challenge(url: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("code_challenge="))
        .map(str::to_owned)
}

/// The snapshot is made on the backend's first browser VM (the two creations race for it), then
/// both VMs are clones of it, restored at once.
#[test]
fn browser_vms_restored_from_one_snapshot_at_once_are_each_their_own() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot_dir = dir.path().join("browser-snapshot");
    let backend = QemuVmBackend::new(browser_launcher(), test_kit::vm::GUEST_HOME)
        .with_browser_snapshot(&snapshot_dir);
    let (a, b) = rt.block_on(async {
        tokio::join!(
            backend.create_vm(spec("alice", VmKind::Browser)),
            backend.create_vm(spec("bob", VmKind::Browser))
        )
    });
    let (a, b) = (a.expect("clone a"), b.expect("clone b"));
    assert_eq!(a.start, VmStart::Restored, "{a:?}");
    assert_eq!(b.start, VmStart::Restored, "{b:?}");
    let snapshot = rt
        .block_on(backend.browser_snapshot())
        .expect("snapshots on")
        .expect("the snapshot");
    eprintln!("snapshot: {} bytes of state", snapshot.state_bytes());

    let clients: Vec<AgentClient> = [&a, &b]
        .iter()
        .map(|vm| {
            rt.block_on(AgentClient::connect(&*vm.connector))
                .expect("connect")
        })
        .collect();
    let seen: Vec<Inside> = clients.iter().map(|c| rt.block_on(inside(c))).collect();
    eprintln!("{seen:?}");
    assert_ne!(seen[0].random, seen[1].random, "the kernels' random state");
    assert_ne!(seen[0].machine_id, seen[1].machine_id, "machine ids");
    assert_ne!(seen[0].boot_id, seen[1].boot_id, "boot ids");
    for s in &seen {
        assert_eq!(s.machine_id.len(), 32, "{s:?}");
        assert!(
            s.clock_skew_ms.abs() < 1000,
            "the clock is the host's: {s:?}"
        );
    }
    for (client, s) in clients.iter().zip(&seen) {
        let hello = rt.block_on(client.hello()).expect("hello");
        assert_eq!(
            hello.boot_id, s.boot_id,
            "the hello reports the fresh boot id"
        );
        assert_eq!(hello.machine_id, s.machine_id);
    }

    // Each clone's way out: the host's gateway to its user's squid port; squid takes claude's
    // login hosts to a recorder of TLS ClientHellos (the provider cannot be reached here).
    let claude_hosts = ["claude.com", "claude.ai"];
    let rig = rt.block_on(EgressRig::start_with(2, &claude_hosts, None));
    let hellos = HelloRecorder::start_on(443);
    let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
    let mut ports = Vec::new();
    let mut egress = Vec::new();
    for (vm, user) in [(&a, "alice"), (&b, "bob")] {
        let socket = vm.egress.as_ref().expect("an egress socket");
        let (port, binding) = rt.block_on(rig.serve_login_vm(&gateway, socket, user, &vm.id));
        ports.push(port);
        egress.push(binding);
    }

    // A real CLI's login in each: different PKCE challenges, each opened in its Chromium.
    let mut challenges = BTreeSet::new();
    let mut logins = Vec::new();
    for client in &clients {
        let state = rt.block_on(browser_ready(client));
        assert_eq!(
            state.starts, 1,
            "Chromium came up in the snapshot: {state:?}"
        );
        let (urls, call) = rt.block_on(start_login(client, "claude_code"));
        let opened = rt.block_on(navigated(client, &urls));
        challenges.insert(code_challenge(&opened.url).expect("a PKCE challenge in the URL"));
        logins.push(call);
    }
    assert_eq!(challenges.len(), 2, "each clone made its own PKCE verifier");
    // Chromium in each clone opened its TLS connection through its own user's port, and no
    // two ClientHellos carry the same random: the clones' browsers do not share the random
    // state they were saved with (every Chromium process's generator reseeded after the restore).
    for port in &ports {
        let line = format!("{port} {PROXY_USER} CONNECT claude");
        rt.block_on(rig.squid.wait_for_log(&line));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while hellos.randoms().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "ClientHellos from both clones: {:?}",
            hellos.randoms()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let randoms = hellos.randoms();
    eprintln!("ClientHello randoms: {randoms:?}");
    let distinct: BTreeSet<&String> = randoms.iter().collect();
    assert_eq!(
        distinct.len(),
        randoms.len(),
        "two TLS connections of the clones began with the same random: {randoms:?}"
    );
    drop(logins);
    drop(egress);

    // A Chromium that dies is reported to a watching host as it happens, and runs again.
    rt.block_on(browser_crash_is_reported_and_restarted(&clients[0]));
    drop(clients);

    // Destroying leaves nothing: processes gone, directories gone.
    for vm in [a, b] {
        let pids = backend.pids(&vm.id);
        let vm_dir = backend.dir(&vm.id).expect("dir");
        rt.block_on(backend.destroy_vm(&vm.id)).expect("destroy");
        assert!(!vm_dir.exists());
        for pid in pids {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} outlived its VM"
            );
        }
    }

    // A corrupt state file is refused before any VM runs from it.
    let launcher = browser_launcher();
    let copy = dir.path().join("corrupt");
    std::fs::create_dir(&copy).expect("mkdir");
    for name in ["meta.json", "disk.qcow2", "state"] {
        std::fs::copy(snapshot_dir.join(name), copy.join(name)).expect("copy");
    }
    {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::PermissionsExt;
        let state = copy.join("state");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&state)
            .expect("open");
        file.seek(SeekFrom::Start(snapshot.state_bytes() / 2))
            .expect("seek");
        file.write_all(b"corrupt").expect("write");
    }
    let err = rt
        .block_on(launcher.open_snapshot(&copy, None))
        .expect_err("a corrupt state is refused");
    assert!(matches!(err, SnapshotError::Corrupt(_)), "{err}");
    // One made by another QEMU, or for another machine, is refused, naming what differs.
    let meta = std::fs::read_to_string(snapshot_dir.join("meta.json")).expect("meta");
    let mut meta: serde_json::Value = serde_json::from_str(&meta).expect("json");
    meta["qemu_version"] = "QEMU emulator version 7.1.0".into();
    std::fs::write(copy.join("meta.json"), meta.to_string()).expect("write");
    let err = rt
        .block_on(launcher.open_snapshot(&copy, None))
        .expect_err("another QEMU's snapshot is refused");
    assert!(
        matches!(err, SnapshotError::Mismatch { what: "QEMU", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("rebuilt"), "{err}");
    let mut wider = test_kit::vm::config(test_kit::vm::browser_assets());
    wider.memory_mib = 1536;
    wider.vcpus = 2;
    let err = rt
        .block_on(QemuLauncher::new(wider).open_snapshot(&snapshot_dir, None))
        .expect_err("another machine's snapshot is refused");
    assert!(
        matches!(
            err,
            SnapshotError::Mismatch {
                what: "machine (command line)",
                ..
            }
        ),
        "{err}"
    );

    // A state written to after the snapshot was opened (same size: only its modification time
    // tells) never runs: the restore fails, the VM boots instead and says so.
    let state = snapshot_dir.join("state");
    {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&state)
            .expect("open");
        file.seek(SeekFrom::Start(snapshot.state_bytes() / 3))
            .expect("seek");
        file.write_all(&[0x5a; 4096]).expect("write");
    }
    let booted = rt
        .block_on(backend.create_vm(spec("carol", VmKind::Browser)))
        .expect("a cold boot instead");
    match &booted.start {
        VmStart::BootedAfterFailedRestore(why) => assert!(why.contains("changed"), "{why}"),
        other => panic!("expected a cold boot after a failed restore, got {other:?}"),
    }
    rt.block_on(backend.destroy_vm(&booted.id))
        .expect("destroy");
}

/// A CLI VM is paused when idle (not asked for, running nothing) and then holds no process;
/// resumed, it is the same VM to the host, has its files and its processes as they were, says
/// hello again and takes a credential push.
#[test]
fn a_paused_cli_vm_resumes_with_its_files_and_processes() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = QemuVmBackend::with_images(
        browser_launcher(),
        test_kit::vm::cli_launcher(),
        dir.path(),
        test_kit::vm::GUEST_HOME,
    );
    let vm: VmHandle = rt.block_on(backend.ensure_cli_vm("alice")).expect("boot");
    let client = rt
        .block_on(AgentClient::connect(&*vm.connector))
        .expect("connect");
    // The file written before the pause, and the processes running: init (the agent) and its
    // start time, which a boot would change, with the uptime, which a boot would reset.
    let probe = "cat $HOME/before-pause; cut -d' ' -f22 /proc/1/stat; cut -d' ' -f1 /proc/uptime";
    let before = rt.block_on(shell(
        &client,
        &format!("echo kept > $HOME/before-pause && {{ {probe}; }}"),
    ));
    let hello_before = rt.block_on(client.hello()).expect("hello");
    // The idle policy: a VM running a program, or asked for recently, is not paused.
    let (busy, slept) = rt.block_on(async {
        tokio::join!(
            async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                backend.pause_idle_cli(Duration::ZERO).await
            },
            client.exec_collect(&["sleep", "5"], None)
        )
    });
    assert_eq!(busy, Vec::<String>::new(), "a VM running a program is kept");
    assert_eq!(slept.expect("sleep ran on").status.shell_code(), 0);
    drop(client);
    let recent = rt.block_on(backend.pause_idle_cli(Duration::from_secs(3600)));
    assert_eq!(
        recent,
        Vec::<String>::new(),
        "a VM used within the hour is kept"
    );
    let pids = backend.pids(&vm.id);
    assert_eq!(
        rt.block_on(backend.pause_idle_cli(Duration::ZERO)),
        vec!["alice".to_owned()],
        "an idle VM running nothing is paused"
    );
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} of the paused VM still runs"
        );
    }

    let resumed = rt.block_on(backend.ensure_cli_vm("alice")).expect("resume");
    assert_eq!(resumed.start, VmStart::Resumed, "{resumed:?}");
    assert_eq!(resumed.id, vm.id, "the host's records name the same VM");
    assert!(
        !resumed.created,
        "a resumed VM is not a new one to the host"
    );
    let client = rt
        .block_on(AgentClient::connect(&*resumed.connector))
        .expect("connect");
    let hello_after = rt.block_on(client.hello()).expect("hello");
    assert_eq!(
        hello_after.boot_id, hello_before.boot_id,
        "a resumed VM is the same VM, not a clone"
    );
    let after = rt.block_on(shell(&client, probe));
    let (before, after): (Vec<&str>, Vec<&str>) =
        (before.lines().collect(), after.lines().collect());
    assert_eq!(after[0], "kept", "the file written before the pause");
    assert_eq!(after[1], before[1], "the same init process, not a new boot");
    let uptime = |s: &str| s.parse::<f64>().expect("uptime");
    assert!(
        uptime(after[2]) >= uptime(before[2]),
        "the uptime goes on from the pause: {before:?} then {after:?}"
    );
    let skew = rt.block_on(inside(&client)).clock_skew_ms;
    assert!(skew.abs() < 1000, "the clock was set: {skew} ms");

    rt.block_on(test_kit::credentials::push(
        &client,
        "codex",
        ".codex/auth.json",
        test_kit::credentials::codex(),
    ));
    let read = rt.block_on(shell(&client, "cat $HOME/.codex/auth.json"));
    assert!(read.contains("fake-access-token-0001"), "{read}");
    drop(client);
    rt.block_on(backend.destroy_vm(&resumed.id))
        .expect("destroy");
}
