//! The foundation as a host uses it: the real agent binary over a Unix socket, driven by the
//! orchestrator's client.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use orchestrator::client::StreamItem;
use orchestrator::ClientError;
use protocol::frame::{Frame, FrameKind};
use protocol::messages::{ConfigureRequest, ExecRequest, WriteFileRequest};
use protocol::secret::EnvVars;
use protocol::{ErrorBody, ErrorCode, PROTOCOL_HEADER};
use sha2::{Digest, Sha256};
use test_kit::{process_alive, AgentProcess};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn agent_code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Agent(ErrorBody { code, .. }) => code,
        other => panic!("expected an agent error, got {other}"),
    }
}

#[tokio::test]
async fn hello_tells_who_the_agent_is() {
    let agent = AgentProcess::start().await;
    assert_eq!(agent.hello.protocol_version, protocol::PROTOCOL_VERSION);
    assert!(agent.hello.capabilities.iter().any(|c| c == "exec"));
    assert_eq!(
        agent.hello.boot_id.trim(),
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .expect("boot_id")
            .trim()
    );
    let client = agent.client().await;
    assert_eq!(
        client.hello().await.expect("hello").boot_id,
        agent.hello.boot_id
    );
    let stats = client.stats().await.expect("stats");
    assert!(stats.agent_rss_kb > 0 && stats.mem_total_kb > 0);
}

#[tokio::test]
async fn configured_environment_reaches_every_later_process() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let answer = client
        .configure(&ConfigureRequest {
            env: EnvVars::from_pairs([
                ("HTTPS_PROXY", "http://user:pw@127.0.0.1:3128"),
                ("DEMO_VAR", "configured"),
            ]),
            session_id: Some("sess-42".into()),
            ..Default::default()
        })
        .await
        .expect("configure");
    assert_eq!(answer.env_keys, vec!["DEMO_VAR", "HTTPS_PROXY"]);
    let out = client.exec_collect(&["env"], None).await.expect("exec env");
    let env = String::from_utf8(out.stdout).expect("utf8");
    assert!(env.lines().any(|l| l == "DEMO_VAR=configured"), "{env}");
    assert!(env
        .lines()
        .any(|l| l == "HTTPS_PROXY=http://user:pw@127.0.0.1:3128"));
    assert!(env.lines().any(|l| l == "AGENT_SESSION_ID=sess-42"));

    // Per-call variables win over configured ones, for that call only.
    let mut call = client
        .exec(&ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo $DEMO_VAR".into()],
            env: EnvVars::from_pairs([("DEMO_VAR", "per-call")]),
            ..Default::default()
        })
        .await
        .expect("exec");
    call.close_input();
    assert_eq!(
        call.collect_exec().await.expect("run").stdout,
        b"per-call\n"
    );

    client
        .configure(&ConfigureRequest {
            unset: vec!["DEMO_VAR".into()],
            ..Default::default()
        })
        .await
        .expect("unset");
    let out = client
        .exec_collect(&["sh", "-c", "echo \"[$DEMO_VAR]\""], None)
        .await
        .expect("exec");
    assert_eq!(out.stdout, b"[]\n");
}

#[tokio::test]
async fn exec_reports_exit_codes_signals_and_stderr() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let out = client
        .exec_collect(&["sh", "-c", "echo out; echo err >&2; exit 7"], None)
        .await
        .expect("exec");
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(out.status.code, Some(7));
    let out = client
        .exec_collect(&["sh", "-c", "kill -TERM $$"], None)
        .await
        .expect("exec");
    assert_eq!((out.status.code, out.status.signal), (None, Some(15)));
    let err = client
        .exec_collect(&["/nonexistent/program"], None)
        .await
        .expect_err("must fail");
    assert_eq!(agent_code(err), ErrorCode::NotFound);
}

#[tokio::test]
async fn exec_stdin_arrives_intact() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let input: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let out = client
        .exec_collect(&["sha256sum"], Some(&input))
        .await
        .expect("exec");
    let reported = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(
        reported.split_whitespace().next(),
        Some(hex(&Sha256::digest(&input)).as_str())
    );
}

#[tokio::test]
async fn large_streamed_output_is_intact() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let script = "f=$(mktemp); head -c 50000000 /dev/urandom > $f; \
                  sha256sum $f | cut -d' ' -f1 >&2; cat $f; rm $f";
    let out = client
        .exec_collect(&["sh", "-c", script], None)
        .await
        .expect("exec");
    assert_eq!(out.status.code, Some(0));
    assert_eq!(out.stdout.len(), 50_000_000);
    assert_eq!(
        String::from_utf8(out.stderr).expect("utf8").trim(),
        hex(&Sha256::digest(&out.stdout))
    );
}

/// Collecting is for short commands: an output past the host's bound is a clear error, not an
/// ever-growing buffer, and the connection carries on.
#[tokio::test]
async fn collected_output_is_bounded() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let too_much = (orchestrator::client::MAX_COLLECTED_OUTPUT + 1024 * 1024).to_string();
    let err = client
        .exec_collect(&["head", "-c", &too_much, "/dev/zero"], None)
        .await
        .expect_err("too much to collect");
    assert!(
        matches!(err, ClientError::OutputTooLarge(n) if n == orchestrator::client::MAX_COLLECTED_OUTPUT),
        "{err}"
    );
    assert_eq!(client.health().await.expect("health").status, "ok");
}

#[tokio::test]
async fn a_bad_frame_is_refused_and_the_connection_survives() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    for (bad, expected) in [
        // Unknown frame kind.
        (&[99u8, 0, 0, 0, 1, b'x'][..], ErrorCode::BadRequest),
        // A header declaring 64 MiB: refused from the header alone.
        (&[4u8, 4, 0, 0, 0][..], ErrorCode::TooLarge),
    ] {
        // A hand-built exec body: a valid opening, valid stdin, then the bad bytes.
        let opening = Frame::message(&ExecRequest {
            argv: vec!["cat".into()],
            stdin: true,
            ..Default::default()
        })
        .expect("encode");
        let mut body = opening.encode().to_vec();
        body.extend_from_slice(&Frame::data(FrameKind::Stdin, &b"ok"[..]).encode());
        body.extend_from_slice(bad);
        let response = client
            .send_raw(post("/v1/exec", "1", Bytes::from(body)))
            .await
            .expect("answered");
        assert_eq!(response.status().as_u16(), 200);
        let mut frames = protocol::body::FrameReader::new(response.into_body(), 1 << 20);
        let mut error = None;
        while let Some(frame) = frames.next().await.expect("well-formed answer") {
            if frame.kind == FrameKind::Error {
                error = Some(frame.json::<ErrorBody>().expect("error body"));
            }
        }
        assert_eq!(error.expect("an error frame").code, expected);
        assert!(client.is_open());
        client.health().await.expect("connection still serves");
    }
}

#[tokio::test]
async fn malformed_unknown_mismatched_and_oversized_requests_get_clear_errors() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let cases: Vec<(http::Request<_>, u16, ErrorCode)> = vec![
        (
            post("/v1/no_such_call", "1", Bytes::from_static(b"{}")),
            404,
            ErrorCode::UnknownMethod,
        ),
        (
            post("/v1/health", "99", Bytes::from_static(b"{}")),
            400,
            ErrorCode::VersionMismatch,
        ),
        (
            post("/v1/read_file", "1", Bytes::from_static(b"{\"path\": 12")),
            400,
            ErrorCode::BadRequest,
        ),
        (
            post(
                "/v1/write_file",
                "1",
                Bytes::from(vec![b' '; protocol::MAX_BODY_BYTES + 1]),
            ),
            413,
            ErrorCode::TooLarge,
        ),
    ];
    for (request, status, code) in cases {
        let response = client.send_raw(request).await.expect("answered");
        assert_eq!(response.status().as_u16(), status);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let err: ErrorBody = serde_json::from_slice(&body).expect("error body");
        assert_eq!(err.code, code, "{}", err.message);
        client.health().await.expect("connection survives");
    }
}

fn post(
    path: &str,
    version: &str,
    body: Bytes,
) -> http::Request<orchestrator::client::RequestBody> {
    http::Request::post(path)
        .header(PROTOCOL_HEADER, version)
        .body(http_body_util::Full::new(body).boxed())
        .expect("request")
}

#[tokio::test]
async fn a_stalled_flood_does_not_delay_control_calls() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    // 1 GiB of output nobody reads: flow control stalls that stream, not the connection.
    let mut flood = client
        .exec(&ExecRequest {
            argv: vec![
                "head".into(),
                "-c".into(),
                "1073741824".into(),
                "/dev/zero".into(),
            ],
            ..Default::default()
        })
        .await
        .expect("exec");
    flood.close_input();
    let Some(StreamItem::Event(_started)) = flood.next().await.expect("started") else {
        panic!("expected the started event");
    };
    for _ in 0..50 {
        tokio::time::timeout(Duration::from_secs(10), client.health())
            .await
            .expect("health answered while the flood is stalled")
            .expect("health");
    }
    let out = client
        .exec_collect(&["echo", "still here"], None)
        .await
        .expect("exec");
    assert_eq!(out.stdout, b"still here\n");
}

#[tokio::test]
async fn ending_an_exec_call_kills_its_whole_process_group() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let mut call = client
        .exec(&ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "sleep 300 & echo $!; wait".into()],
            ..Default::default()
        })
        .await
        .expect("exec");
    call.close_input();
    let mut pids = Vec::new();
    while pids.len() < 2 {
        match call.next().await.expect("item").expect("not ended") {
            StreamItem::Event(protocol::messages::ExecEvent::Started { pid }) => {
                pids.push(pid as i32)
            }
            StreamItem::Data(FrameKind::Stdout, b) => pids.push(
                String::from_utf8_lossy(&b)
                    .trim()
                    .parse()
                    .expect("background pid"),
            ),
            _ => {}
        }
    }
    assert!(pids.iter().all(|p| process_alive(*p)));
    drop(call);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|p| process_alive(*p)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes {pids:?} survived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.stats().await.expect("stats").running_processes, 0);
}

#[tokio::test]
async fn files_round_trip_atomically_with_their_mode() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let path = agent.dir().join("home/deep/dir/file.json");
    let path_s = path.display().to_string();
    client
        .write_file(&WriteFileRequest {
            path: path_s.clone(),
            content: b"{\"k\":1}".to_vec(),
            mode: Some(0o600),
            create_dirs: true,
        })
        .await
        .expect("write");
    let back = client.read_file(&path_s).await.expect("read");
    assert_eq!(
        (back.content.as_slice(), back.mode),
        (&b"{\"k\":1}"[..], 0o600)
    );
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temp files left: {leftovers:?}");
    // A symlink planted on the way (the agent is root; a guest user may own the directory):
    // refused, nothing written through it.
    let outside = agent.dir().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    std::os::unix::fs::symlink(&outside, agent.dir().join("home/deep/link")).expect("symlink");
    let err = client
        .write_file(&WriteFileRequest {
            path: agent
                .dir()
                .join("home/deep/link/x.json")
                .display()
                .to_string(),
            content: b"{}".to_vec(),
            mode: None,
            create_dirs: true,
        })
        .await
        .expect_err("through a symlink");
    let ClientError::Agent(body) = err else {
        panic!("an agent error");
    };
    assert_eq!(body.code, ErrorCode::Forbidden);
    assert!(body.message.contains("symlink"), "{body:?}");
    assert_eq!(std::fs::read_dir(&outside).expect("ls").count(), 0);
    let err = client
        .read_file("/nonexistent/x")
        .await
        .expect_err("missing");
    assert_eq!(agent_code(err), ErrorCode::NotFound);
    let err = client.read_file("relative/x").await.expect_err("relative");
    assert_eq!(agent_code(err), ErrorCode::BadRequest);
}

/// Many large request bodies at once cannot make the agent hold more than its budget (a small VM
/// would run out of memory): past it a call is refused with a clear error, and once the held
/// bodies end the same call goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_at_once_are_refused_past_the_agents_budget() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    const MIB: usize = 1024 * 1024;
    // Three bodies of 15 MiB each that never end: the agent holds all of them.
    let mut held = Vec::new();
    for _ in 0..3 {
        let (tx, body) = protocol::body::ChannelBody::channel(32);
        for _ in 0..15 {
            tx.send(Frame::data(FrameKind::Stdin, vec![b' '; MIB - 5]))
                .await
                .expect("queue");
        }
        let request = http::Request::post("/v1/write_file")
            .header(PROTOCOL_HEADER, "1")
            .body(body.boxed())
            .expect("request");
        let client = client.clone();
        held.push((
            tx,
            tokio::spawn(async move { client.send_raw(request).await }),
        ));
    }
    let big = |n: usize| WriteFileRequest {
        path: agent
            .dir()
            .join(format!("home/big-{n}"))
            .display()
            .to_string(),
        // 10 MiB, about 13.3 MiB as JSON (base64).
        content: vec![b'x'; 10 * MIB],
        mode: None,
        create_dirs: false,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let refusal = loop {
        n += 1;
        match client.write_file(&big(n)).await {
            Err(ClientError::Agent(body)) => break body,
            Ok(_) => {
                // The held bodies are not all read yet.
                assert!(tokio::time::Instant::now() < deadline, "never refused");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(refusal.code, ErrorCode::TooLarge, "{refusal:?}");
    assert!(refusal.message.contains("already holds"), "{refusal:?}");
    client.health().await.expect("the agent serves");
    // The held bodies end (malformed, refused): their share comes back.
    for (tx, answer) in held {
        drop(tx);
        let _ = answer.await;
    }
    client
        .write_file(&big(0))
        .await
        .expect("within the budget again");
}
