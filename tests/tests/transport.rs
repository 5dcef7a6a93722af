//! Connectors and the hello listener against the real agent.
//!
//! The hybrid-vsock tests put a relay that speaks the VMM side of the handshake (`CONNECT <port>` /
//! `OK <port>`) in front of the agent's Unix socket: it stands in for Firecracker or
//! vhost-device-vsock, which the VM tests use for real.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use orchestrator::transport::HybridVsockConnector;
use orchestrator::{AgentClient, ClientError, HelloListener, TransportError};
use test_kit::{workspace_bin, AgentProcess};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Serves the VMM side of hybrid vsock on `path`: answers `reply` to the handshake, then (on `OK`)
/// splices the stream to `agent`.
fn vmm_relay(path: PathBuf, agent: PathBuf, reply: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = UnixListener::bind(&path).expect("bind relay");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let agent = agent.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                if stream.read_line(&mut line).await.is_err() || !line.starts_with("CONNECT ") {
                    return;
                }
                let mut stream = stream.into_inner();
                let _ = stream.write_all(reply.as_bytes()).await;
                if !reply.starts_with("OK") {
                    return;
                }
                let Ok(mut upstream) = UnixStream::connect(&agent).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
            });
        }
    })
}

#[tokio::test]
async fn hybrid_vsock_handshake_reaches_the_agent() {
    let agent = AgentProcess::start().await;
    let uds = agent.dir().join("vm.vsock");
    let _relay = vmm_relay(uds.clone(), agent.socket().to_path_buf(), "OK 1024\n");
    let client = AgentClient::connect(&HybridVsockConnector::new(&uds, 1024))
        .await
        .expect("connect through the handshake");
    assert_eq!(
        client.hello().await.expect("hello").boot_id,
        agent.hello.boot_id
    );
    let out = client
        .exec_collect(&["echo", "via hvsock"], None)
        .await
        .expect("exec");
    assert_eq!(out.stdout, b"via hvsock\n");
}

#[tokio::test]
async fn a_refused_hybrid_handshake_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vm.vsock");
    let _relay = vmm_relay(uds.clone(), dir.path().join("none"), "ERR no listener\n");
    let err = AgentClient::connect(&HybridVsockConnector::new(&uds, 1024))
        .await
        .expect_err("refused");
    match err {
        ClientError::Transport(TransportError::Handshake(msg)) => {
            assert!(msg.contains("ERR no listener"), "{msg}")
        }
        other => panic!("expected a handshake error, got {other}"),
    }
    let err = AgentClient::connect(&HybridVsockConnector::new(dir.path().join("absent"), 1024))
        .await
        .expect_err("no socket");
    assert!(
        matches!(err, ClientError::Transport(TransportError::Io { .. })),
        "{err}"
    );
}

fn spawn_agent(socket: &Path, hello: &Path) -> std::process::Child {
    Command::new(workspace_bin("vm-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--hello")
        .arg(format!("unix:{}", hello.display()))
        .env("AGENT_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn agent")
}

#[tokio::test]
async fn the_agent_keeps_saying_hello_until_the_host_listens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let hello_path = dir.path().join("hello.sock");
    let mut child = spawn_agent(&socket, &hello_path);
    // The host comes up after the agent: the agent must still be retrying.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = HelloListener::bind(&hello_path).expect("bind");
    let hello = listener.wait(Duration::from_secs(30)).await;
    let _ = test_kit::stop_agent(&mut child);
    assert_eq!(
        hello.expect("hello").protocol_version,
        protocol::PROTOCOL_VERSION
    );
}

#[tokio::test]
async fn bad_greetings_are_refused_and_the_real_hello_still_arrives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let listener = HelloListener::bind(dir.path().join("hello.sock")).expect("bind");
    let path = listener.path().to_path_buf();
    let impostors = tokio::spawn(async move {
        // Garbage, then a hello of another protocol version.
        let mut s = UnixStream::connect(&path).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        drop(s);
        let wrong = protocol::Hello {
            agent_version: "9".into(),
            protocol_version: 99,
            capabilities: vec![],
            boot_id: "x".into(),
            machine_id: String::new(),
            start_to_hello_ms: 0,
            listen_port: None,
        };
        let mut s = UnixStream::connect(&path).await.expect("connect");
        let frame = protocol::frame::Frame::message(&wrong).expect("encode");
        s.write_all(&frame.encode()).await.expect("write");
        let mut ack = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut ack).await;
        ack
    });
    let waiting = tokio::spawn(async move { listener.wait(Duration::from_secs(30)).await });
    let ack = impostors.await.expect("impostors");
    let mut decoder = protocol::frame::FrameDecoder::default();
    decoder.extend(&ack).expect("ack frame");
    let ack: protocol::HelloAck = decoder
        .next_frame()
        .expect("frame")
        .expect("an ack")
        .json()
        .expect("ack json");
    assert!(!ack.accepted && ack.reason.is_some());
    let hello_path = dir.path().join("hello.sock");
    let mut child = spawn_agent(&socket, &hello_path);
    let hello = waiting.await.expect("task");
    let _ = test_kit::stop_agent(&mut child);
    assert_eq!(
        hello.expect("the real hello").protocol_version,
        protocol::PROTOCOL_VERSION
    );
}
