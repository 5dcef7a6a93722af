//! Stands for a host process that holds a VM and then dies without a chance to clean up:
//! `vm-holder FILES` boots the test image with QEMU as the unprivileged VM account, its files
//! copied into `FILES` (`test_kit::vm::unprivileged_launcher`), checks that its agent answers,
//! prints `pids <qemu> <backend> dir <vm dir>` and waits to be killed.

use orchestrator::AgentClient;

use anyhow::{ensure, Context};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let files = std::env::args()
        .nth(1)
        .context("usage: vm-holder FILES (a directory for the VM account's files)")?;
    let launcher = test_kit::vm::unprivileged_launcher(std::path::Path::new(&files));
    let vm = launcher
        .create("test-holder")
        .await
        .context("the VM boots and its agent says hello")?;
    let client = AgentClient::connect(&vm.connector())
        .await
        .context("connect to the agent")?;
    let out = client
        .exec_collect(&["echo", "ready"], None)
        .await
        .context("exec in the VM")?;
    ensure!(out.stdout == b"ready\n", "the agent answered {out:?}");
    let pids: Vec<String> = vm.pids().iter().map(u32::to_string).collect();
    println!("pids {} dir {}", pids.join(" "), vm.dir().display());
    // Held until killed: nothing here ever stops the VM.
    std::future::pending::<()>().await;
    Ok(())
}
