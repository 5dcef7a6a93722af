//! `bench hostile`: a hostile guest against both ends.
//!
//! - The orchestrator (a login service in this process, local agent VMs) against
//!   `test_kit::hostile`'s fake agent: login VMs flooding URL events (junk, valid-looking, huge),
//!   many sessions at once, several rounds; `url_flood_peak_rss_mb` is this process's peak
//!   resident memory over its resident memory before (the fake agent sends its large URLs as one
//!   shared frame, so what grows is the host's). A CLI VM that never answers a push:
//!   `stalled_push_other_user_ms` is how long another user's pending push takes to land meanwhile
//!   (goal: under the call deadline + 100 ms).
//! - The real static agent against hostile requests: each attack, then a health call on the same
//!   connection; `agent_survived_attacks=N of N`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use orchestrator::login::{LoginConfig, LoginEventKind, LoginService, SessionState};
use orchestrator::AgentClient;
use protocol::frame::{Frame, FrameKind};
use protocol::messages::WriteFileRequest;
use protocol::pty::{PtyControl, PtyRequest, PtySpawn};
use test_kit::hostile::{Attack, HostileBackend};

use super::figure;
use crate::shell::step;

/// Flood sessions run at once, and rounds of them.
const CONCURRENT: usize = 4;
const ROUNDS: usize = 3;
/// The call deadline of the stalled-push scenario.
const DEADLINE: Duration = Duration::from_secs(2);

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let agent_bin = crate::agent::build_flavour(crate::agent::Flavour::Cli)?;
    let fake_cli = super::release_fake_cli()?;
    crate::shell::runtime()?.block_on(async {
        url_flood(&agent_bin, &fake_cli).await?;
        stalled_push(&agent_bin, &fake_cli).await?;
        agent_attacks(&agent_bin).await
    })
}

/// This process's resident memory: (current, peak) in bytes.
fn rss() -> Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/self/status"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

async fn service(
    dir: &std::path::Path,
    agent_bin: &std::path::Path,
    fake_cli: &std::path::Path,
    browser: Option<Attack>,
) -> Result<(
    LoginService,
    Arc<HostileBackend<test_kit::local_backend::LocalAgentBackend>>,
)> {
    let config = LoginConfig {
        call_timeout: DEADLINE,
        push_retry_delay: Duration::from_secs(3600),
        ..LoginConfig::default()
    };
    let (local, store) =
        super::login::local_backend(dir, agent_bin.to_path_buf(), fake_cli).await?;
    let backend = HostileBackend::new(local, browser);
    let service = super::login::service_on(backend.clone(), store, config)?;
    Ok((service, backend))
}

/// A codex login to its end, the code pasted when a URL shows: its final state.
async fn login(service: &LoginService, user: &str) -> Result<SessionState> {
    let id = service.start(user, "codex").await?;
    let mut events = service.subscribe(&id).await?;
    while let Some(ev) = events.next().await {
        if let LoginEventKind::AuthUrl { .. } = ev.kind {
            let _ = service.submit_code(&id, "fake-code-0001").await;
        }
    }
    Ok(service.wait(&id).await?.0)
}

async fn url_flood(agent_bin: &std::path::Path, fake_cli: &std::path::Path) -> Result<()> {
    let floods = [
        ("junk 900 KiB", 900 * 1024, false),
        ("login-shaped 900 KiB", 900 * 1024, true),
        ("login-shaped 2 KiB", 2048, true),
    ];
    let dir = tempfile::tempdir()?;
    let (before, _) = rss()?;
    // The kernel's peak counter restarts here (writing 5 to clear_refs resets VmHWM).
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS counter")?;
    let mut sessions = 0;
    let mut failed = 0;
    for (name, bytes, valid) in floods {
        step(&format!(
            "URL flood ({name}, 100,000 events a session): {ROUNDS} rounds of {CONCURRENT} sessions at once"
        ));
        let (service, _backend) = service(
            &dir.path().join(name.replace(' ', "-")),
            agent_bin,
            fake_cli,
            Some(Attack::UrlFlood {
                count: 100_000,
                bytes,
                valid,
            }),
        )
        .await?;
        for round in 0..ROUNDS {
            let mut logins = tokio::task::JoinSet::new();
            for i in 0..CONCURRENT {
                let service = service.clone();
                logins.spawn(async move { login(&service, &format!("flood-{round}-{i}")).await });
            }
            while let Some(done) = logins.join_next().await {
                sessions += 1;
                if done?? == SessionState::Failed {
                    failed += 1;
                }
            }
        }
    }
    let (_, peak) = rss()?;
    ensure!(
        failed == sessions,
        "{failed} of {sessions} flooding sessions failed"
    );
    figure("url_flood_sessions", sessions);
    figure(
        "url_flood_failed_sessions",
        format!("{failed} of {sessions}"),
    );
    figure(
        "url_flood_peak_rss_mb",
        format!(
            "{:.1}",
            peak.saturating_sub(before) as f64 / (1024.0 * 1024.0)
        ),
    );
    Ok(())
}

async fn stalled_push(agent_bin: &std::path::Path, fake_cli: &std::path::Path) -> Result<()> {
    step(&format!(
        "a CLI VM that never answers a push (call deadline {} ms) beside another user's pending push",
        DEADLINE.as_millis()
    ));
    let dir = tempfile::tempdir()?;
    let (service, backend) = service(dir.path(), agent_bin, fake_cli, None).await?;
    backend.hostile_cli("mallory", Attack::StallCredentials);
    ensure!(login(&service, "mallory").await? == SessionState::Completed);
    ensure!(login(&service, "erin").await? == SessionState::Completed);
    let local = backend.inner();
    let vm = local.cli_vm_of("erin").context("erin's CLI VM")?;
    let codex = local.home_of(&vm).context("home")?.join(".codex");
    std::fs::remove_dir_all(&codex)?;
    std::fs::write(&codex, b"not a directory")?;
    ensure!(login(&service, "erin").await? == SessionState::Completed);
    std::fs::remove_file(&codex)?;
    let file = codex.join("auth.json");
    let retry = {
        let service = service.clone();
        tokio::spawn(async move { service.push_pending().await })
    };
    let t = Instant::now();
    while !file.exists() {
        ensure!(t.elapsed() < DEADLINE * 3, "erin's push never landed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let landed = t.elapsed();
    let pushed = retry.await??;
    ensure!(pushed == 1, "{pushed} pushes landed, expected erin's alone");
    figure("call_deadline_ms", DEADLINE.as_millis());
    figure(
        "stalled_push_other_user_ms",
        format!("{:.1}", landed.as_secs_f64() * 1e3),
    );
    Ok(())
}

fn post(
    path: &str,
    version: &str,
    body: Bytes,
) -> Result<http::Request<orchestrator::client::RequestBody>> {
    Ok(http::Request::post(path)
        .header(protocol::PROTOCOL_HEADER, version)
        .body(Full::new(body).boxed())?)
}

/// Sends `request`; whether the agent answered it with a clear refusal (a typed error, in the
/// answer or in its stream).
async fn refused(
    client: &AgentClient,
    request: http::Request<orchestrator::client::RequestBody>,
) -> bool {
    let Ok(response) = client.send_raw(request).await else {
        return false;
    };
    let status = response.status();
    let Ok(body) = response.into_body().collect().await else {
        return false;
    };
    let body = body.to_bytes();
    if status.as_u16() != 200 {
        return serde_json::from_slice::<protocol::ErrorBody>(&body).is_ok();
    }
    let mut decoder = protocol::frame::FrameDecoder::new(protocol::frame::DEFAULT_MAX_FRAME);
    if decoder.extend(&body).is_err() {
        return false;
    }
    while let Ok(Some(frame)) = decoder.next_frame() {
        // Streams refuse with an error frame; a terminal session, which lives on, with an error
        // event.
        let pty_error = frame.kind == FrameKind::Message
            && matches!(frame.json(), Ok(protocol::pty::PtyEvent::Error(_)));
        if frame.kind == FrameKind::Error || pty_error {
            return true;
        }
    }
    false
}

async fn agent_attacks(agent_bin: &std::path::Path) -> Result<()> {
    step("hostile requests against the real agent, each followed by a health call");
    let agent = super::start_agent(agent_bin).await?;
    let client = agent.client().await;
    let home = agent.dir().join("home");
    let outside = agent.dir().join("outside");
    std::fs::create_dir_all(&outside)?;
    std::os::unix::fs::symlink(&outside, home.join("planted"))?;
    let stream = |opening: Frame, then: &[u8]| {
        let mut body = opening.encode().to_vec();
        body.extend_from_slice(then);
        Bytes::from(body)
    };
    let pty_spawn = |cols, rows| {
        let mut spawn = PtySpawn::new(["sh", "-c", "sleep 1"]);
        spawn.cols = cols;
        spawn.rows = rows;
        Frame::message(&PtyRequest::Spawn(spawn))
    };
    // `cat` reading its input: a stream whose next frame is the attack.
    let cat = Frame::message(&protocol::messages::ExecRequest {
        argv: vec!["cat".into()],
        stdin: true,
        ..Default::default()
    })?;
    let attacks: Vec<(&str, http::Request<orchestrator::client::RequestBody>)> = vec![
        (
            "unknown method",
            post("/v1/no_such_call", "1", Bytes::from_static(b"{}"))?,
        ),
        (
            "another protocol version",
            post("/v1/health", "99", Bytes::from_static(b"{}"))?,
        ),
        (
            "malformed JSON",
            post("/v1/read_file", "1", Bytes::from_static(b"{\"path\": 12"))?,
        ),
        (
            "a body over the limit",
            post(
                "/v1/write_file",
                "1",
                Bytes::from(vec![b' '; protocol::MAX_BODY_BYTES + 1]),
            )?,
        ),
        (
            "a frame header declaring 64 MiB",
            post("/v1/exec", "1", stream(cat.clone(), &[4u8, 4, 0, 0, 0]))?,
        ),
        (
            "an unknown frame kind",
            post(
                "/v1/exec",
                "1",
                stream(cat.clone(), &[99u8, 0, 0, 0, 1, b'x']),
            )?,
        ),
        (
            "a 65535x65535 terminal",
            post("/v1/pty", "1", stream(pty_spawn(65535, 65535)?, &[]))?,
        ),
        (
            "a resize to 65535x65535",
            post(
                "/v1/pty",
                "1",
                stream(
                    pty_spawn(80, 24)?,
                    &Frame::message(&PtyControl::Resize {
                        cols: 65535,
                        rows: 65535,
                    })?
                    .encode(),
                ),
            )?,
        ),
        (
            "write_file through a planted symlink",
            post(
                "/v1/write_file",
                "1",
                Bytes::from(serde_json::to_vec(&WriteFileRequest {
                    path: home.join("planted/x").display().to_string(),
                    content: b"x".to_vec(),
                    mode: None,
                    create_dirs: true,
                })?),
            )?,
        ),
        (
            "a credential path climbing out of the home",
            post(
                "/v1/creds_put",
                "1",
                Bytes::from(serde_json::to_vec(&serde_json::json!({
                    "provider": "claude_code",
                    "files": [{"path": "../../etc/x", "content": "e30="}],
                }))?),
            )?,
        ),
        (
            "a sealed credential that is not an envelope",
            post(
                "/v1/creds_put_sealed",
                "1",
                Bytes::from(serde_json::to_vec(&serde_json::json!({
                    "provider": "claude_code",
                    "path": "~/.claude/.credentials.json",
                    "owner": "u",
                    "version": 1,
                    "sealed": {"suite": protocol::sealed::SUITE, "enc": "AAAA", "ciphertext": "AAAA"},
                }))?),
            )?,
        ),
        (
            "an empty argv",
            post(
                "/v1/exec",
                "1",
                stream(
                    Frame::message(&protocol::messages::ExecRequest::default())?,
                    &[],
                ),
            )?,
        ),
    ];
    let total = attacks.len();
    let mut survived = 0;
    for (name, request) in attacks {
        let clear = tokio::time::timeout(Duration::from_secs(10), refused(&client, request))
            .await
            .unwrap_or(false);
        let healthy = client.health().await.is_ok() && test_kit::process_alive(agent.pid() as i32);
        let untouched = std::fs::read_dir(&outside)?.count() == 0;
        if clear && healthy && untouched {
            survived += 1;
        } else {
            eprintln!("  {name}: refused clearly={clear}, agent healthy={healthy}, nothing written outside={untouched}");
        }
    }
    figure("agent_survived_attacks", format!("{survived} of {total}"));
    Ok(())
}
