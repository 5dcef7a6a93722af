//! The golden images in real microVMs (QEMU, TCG here): Debian 12 root disks built by
//! `cargo xtask image cli|browser`, each VM on its own copy-on-write overlay of the read-only
//! golden image, the agent baked into the image and started by the boot initramfs.

use std::time::Duration;

use orchestrator::vm::{QemuLauncher, QemuVm};
use orchestrator::AgentClient;
use protocol::creds::{CredentialFile, CredsPutRequest, CredsScope};

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

fn cli_launcher() -> QemuLauncher {
    let mut config = test_kit::vm::config(test_kit::vm::cli_assets());
    // Node.js CLIs: the old system's 256 MB is tight for gemini; 512 MB, one vCPU.
    config.memory_mib = 512;
    QemuLauncher::new(config)
}

async fn boot(launcher: &QemuLauncher, overlay: &std::path::Path) -> (QemuVm, AgentClient) {
    let vm = launcher
        .create_with_overlay("cli-vm", overlay)
        .await
        .expect("the CLI VM boots from its overlay and its agent says hello");
    let client = AgentClient::connect_with_retry(&vm.connector(), Duration::from_secs(30))
        .await
        .expect("connect");
    (vm, client)
}

/// A user's CLI VM: a credential pushed by the orchestrator makes the real `claude auth status`
/// and `codex login status` say logged in; the VM is powered off and booted again from its
/// overlay, and the files and the logins are still there; the golden image is never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_credentials_log_the_real_clis_in_and_survive_a_restart() {
    let launcher = cli_launcher();
    let golden = launcher
        .config()
        .root_image
        .clone()
        .expect("a golden image");
    let golden_before = std::fs::metadata(&golden)
        .expect("golden")
        .modified()
        .expect("mtime");
    let state = tempfile::tempdir().expect("tempdir");
    let overlay = state.path().join("alice-cli.qcow2");

    let (vm, client) = boot(&launcher, &overlay).await;
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
        client
            .creds_put(&CredsPutRequest {
                scope: CredsScope {
                    provider: provider.into(),
                    ..Default::default()
                },
                files: vec![CredentialFile {
                    path: path.into(),
                    content: content.into_bytes(),
                }],
            })
            .await
            .expect("push");
    }
    let logged_in = |client: AgentClient| async move {
        let (code, out) = run(&client, &["claude", "auth", "status"]).await;
        assert_eq!(code, 0, "claude auth status: {out}");
        let (code, out) = run(&client, &["codex", "login", "status"]).await;
        assert_eq!(code, 0, "codex login status: {out}");
        assert!(out.contains("Logged in using ChatGPT"), "{out}");
    };
    logged_in(client.clone()).await;

    // Power off cleanly (the file system is synced), boot again from the same overlay.
    client.poweroff().await.expect("poweroff");
    drop(client);
    let mut vm = vm;
    vm.wait_exit(Duration::from_secs(60))
        .await
        .expect("QEMU exits");
    vm.destroy().await.expect("destroy the stopped VM");
    assert!(overlay.exists(), "the CLI VM's overlay outlives the VM");
    let (vm, client) = boot(&launcher, &overlay).await;
    logged_in(client.clone()).await;
    drop(client);
    vm.destroy().await.expect("destroy");

    let golden_after = std::fs::metadata(&golden)
        .expect("golden")
        .modified()
        .expect("mtime");
    assert_eq!(
        golden_before, golden_after,
        "the golden image is never written"
    );
}
