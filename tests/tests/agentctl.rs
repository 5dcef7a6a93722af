//! `agentctl` as a person or a script uses it: JSON lines out, the process's exit code back.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use test_kit::{workspace_bin, AgentProcess};

fn agentctl(agent: &AgentProcess, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(workspace_bin("agentctl"))
        .arg("--connect")
        .arg(format!("unix:{}", agent.socket().display()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentctl");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(input) = stdin {
        pipe.write_all(input).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("agentctl ran")
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[tokio::test]
async fn configure_then_exec_sees_the_environment_and_returns_its_exit_code() {
    let agent = AgentProcess::start().await;
    let out = agentctl(
        &agent,
        &[
            "configure",
            "--env",
            "GREETING=hi there",
            "--session-id",
            "s-9",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_lines(&out)[0]["env_keys"][0], "GREETING");

    let out = agentctl(
        &agent,
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING/$AGENT_SESSION_ID\"; exit 7",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(7));
    let lines = json_lines(&out);
    assert_eq!(lines.first().expect("started")["event"], "started");
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "output" && l["text"] == "hi there/s-9\n"),
        "{lines:?}"
    );
    assert_eq!(lines.last().expect("exited")["code"], 7);
}

#[tokio::test]
async fn raw_exec_pipes_stdin_and_stdout_through() {
    let agent = AgentProcess::start().await;
    let out = agentctl(
        &agent,
        &["exec", "--stdin", "--raw", "--", "tr", "a-z", "A-Z"],
        Some(b"shout\n"),
    );
    assert!(out.status.success());
    assert_eq!(out.stdout, b"SHOUT\n");
}

#[tokio::test]
async fn files_and_health_from_the_command_line() {
    let agent = AgentProcess::start().await;
    let path = agent.dir().join("home/.config/x.json");
    let path_s = path.display().to_string();
    let out = agentctl(
        &agent,
        &["write-file", &path_s, "--mode", "600", "--create-dirs"],
        Some(b"{\"a\":1}"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agentctl(&agent, &["read-file", "--raw", &path_s], None);
    assert_eq!(out.stdout, b"{\"a\":1}");
    let out = agentctl(&agent, &["health"], None);
    assert_eq!(json_lines(&out)[0]["status"], "ok");
    let out = agentctl(&agent, &["read-file", "/nonexistent"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}

#[test]
fn wait_hello_prints_the_agents_greeting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = dir.path().join("h.sock");
    let waiter = Command::new(workspace_bin("agentctl"))
        .args(["wait-hello", "--timeout", "30", "--listen"])
        .arg(format!("unix:{}", hello.display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut agent = Command::new(workspace_bin("vm-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", dir.path().join("a.sock").display()))
        .arg("--hello")
        .arg(format!("unix:{}", hello.display()))
        .env("AGENT_LOG", "warn")
        .spawn()
        .expect("agent");
    let out = waiter.wait_with_output().expect("waited");
    let _ = test_kit::stop_agent(&mut agent);
    assert!(out.status.success());
    let hello: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(hello["protocol_version"], protocol::PROTOCOL_VERSION);
}

#[test]
fn bad_addresses_are_refused_before_dialling() {
    for uri in ["vsock:2:1024", "vsock:1:1024", "tcp:127.0.0.1:80"] {
        let out = Command::new(workspace_bin("agentctl"))
            .args(["--connect", uri, "health"])
            .output()
            .expect("ran");
        assert_eq!(out.status.code(), Some(2), "{uri}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}
