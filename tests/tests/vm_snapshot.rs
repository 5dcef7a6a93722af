//! Restored VMs, on real microVMs: what the host's `restored` call does to a VM (fresh entropy, the
//! host's clock, a clone's new machine id, boot id and sealing key), and that a VM which cannot be
//! saved is refused with QEMU's reason while its backend boots instead and says so.
//!
//! Saving these VMs is blocked on this machine's QEMU: Debian's (7.2, and 10.0 in backports) marks
//! the vhost-user vsock device unmigratable. The second test asserts the refusal and the fallback,
//! which is what a deployment on such a QEMU gets.

use std::time::{SystemTime, UNIX_EPOCH};

use orchestrator::vm::{QemuVmBackend, VmBackend, VmKind, VmSpec, VmStart};
use orchestrator::AgentClient;
use protocol::messages::ExecRequest;
use protocol::restore::{EntropyBytes, Restored, RestoredRequest, ENTROPY_BYTES};
use protocol::{ErrorCode, Secret};

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

#[test]
fn a_vm_that_cannot_be_saved_is_refused_with_qemus_reason_and_boots_instead() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let launcher = test_kit::vm::launcher();
    let err = rt
        .block_on(launcher.make_snapshot(&dir.path().join("direct"), None, |_| async { Ok(()) }))
        .expect_err("QEMU refuses to save a VM with a vhost-user vsock device");
    assert!(err.to_string().contains("vhost-user-vsock"), "{err}");
    assert!(
        !dir.path().join("direct").exists(),
        "nothing half-made is left as a snapshot"
    );

    let backend = QemuVmBackend::new(launcher, test_kit::vm::GUEST_HOME)
        .with_browser_snapshot(dir.path().join("browser"));
    let vm = rt
        .block_on(backend.create_vm(VmSpec {
            user_id: "alice".into(),
            kind: VmKind::Browser,
            session_id: None,
        }))
        .expect("a VM all the same");
    match &vm.start {
        VmStart::BootedAfterFailedRestore(why) => {
            assert!(why.contains("non-migratable"), "{why}")
        }
        other => panic!("expected a boot after the failed snapshot, got {other:?}"),
    }
    let client = rt
        .block_on(AgentClient::connect(&*vm.connector))
        .expect("the booted VM answers");
    rt.block_on(client.health()).expect("health");
    drop(client);
    rt.block_on(backend.destroy_vm(&vm.id)).expect("destroy");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "no half-made snapshot: {leftovers:?}");
}
