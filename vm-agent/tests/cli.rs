//! The agent's command line: it refuses anything but vsock and Unix listeners.

use std::process::Command;

#[test]
fn tcp_listeners_do_not_exist() {
    let out = Command::new(env!("CARGO_BIN_EXE_vm-agent"))
        .args(["--listen", "tcp:0.0.0.0:8080", "--no-hello"])
        .output()
        .expect("ran");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected vsock:PORT or unix:/path"));
}
