//! The real provider CLIs accept pushed credentials: credentials pushed into the agent's home with
//! `creds_put` make `claude auth status` / `codex login status` (run by the agent's `exec`, with
//! no network: `unshare -n`) report a login; before the push and after a wipe they do not.
//! Gemini CLI has no offline status command, so it cannot be checked this way.
//!
//! The CLIs are the npm packages pinned in `tests/fixtures/provider-clis/package.json`, installed
//! by `cargo xtask setup` into the machine-wide cache (here too when missing, so a plain
//! `cargo test` works).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use orchestrator::AgentClient;
use protocol::creds::CredsScope;
use test_kit::AgentProcess;

/// The pinned CLIs' commands, installed into the machine-wide cache when missing.
fn cli_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        test_kit::provider_clis::pinned()
            .expect("the pinned provider CLIs (npm; cargo xtask setup installs it)")
            .bin
    })
}

/// Runs a CLI through the agent, without network; returns (exit code, stdout).
async fn offline(client: &AgentClient, argv: &[&str]) -> (i32, String) {
    let mut full = vec!["unshare", "-n"];
    full.extend_from_slice(argv);
    let out = client.exec_collect(&full, None).await.expect("exec");
    (
        out.status.shell_code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn wipe(client: &AgentClient, provider: &str) -> usize {
    client
        .creds_wipe(&CredsScope {
            provider: provider.into(),
            ..Default::default()
        })
        .await
        .expect("wipe")
        .removed
        .len()
}

#[tokio::test]
async fn claude_auth_status_accepts_a_pushed_credential_offline() {
    let claude = cli_bin_dir().join("claude").display().to_string();
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let status = [claude.as_str(), "auth", "status"];

    let (code, out) = offline(&client, &status).await;
    assert_eq!(code, 1, "not logged in before the push: {out}");

    test_kit::credentials::push(
        &client,
        "claude_code",
        ".claude/.credentials.json",
        test_kit::credentials::claude(),
    )
    .await;
    let (code, out) = offline(&client, &status).await;
    assert_eq!(code, 0, "logged in after the push: {out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON status");
    assert_eq!(report["loggedIn"], true, "{out}");

    assert_eq!(wipe(&client, "claude_code").await, 1);
    let (code, out) = offline(&client, &status).await;
    assert_eq!(code, 1, "logged out after the wipe: {out}");
}

#[tokio::test]
async fn codex_login_status_accepts_a_pushed_credential_offline() {
    let codex = cli_bin_dir().join("codex").display().to_string();
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let status = [codex.as_str(), "login", "status"];

    let (code, out) = offline(&client, &status).await;
    assert_eq!(code, 1, "not logged in before the push: {out}");

    test_kit::credentials::push(
        &client,
        "codex",
        ".codex/auth.json",
        test_kit::credentials::codex(),
    )
    .await;
    let (code, out) = offline(&client, &status).await;
    assert_eq!(code, 0, "logged in after the push: {out}");
    assert!(out.contains("Logged in using ChatGPT"), "{out}");

    assert_eq!(wipe(&client, "codex").await, 1);
    let (code, out) = offline(&client, &status).await;
    assert_eq!(code, 1, "logged out after the wipe: {out}");
}
