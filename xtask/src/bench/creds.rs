//! `bench creds`: credential capture and push against the real static agent over a Unix socket.
//!
//! - capture latency: credential file renamed into place -> capture event at the client, with the
//!   old system's 2 s poller (reading the file over RPC every 2 s) measured on the same writes in
//!   the same run as the baseline;
//! - push latency: `creds_put` round trip (atomic write with fsyncs, owner, mode), with the
//!   foundation's plain `write_file` of the same bytes as the baseline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orchestrator::AgentClient;
use protocol::creds::{CredentialFile, CredsPutRequest, CredsScope, CredsWatchRequest};
use protocol::messages::WriteFileRequest;
use tokio::sync::mpsc;

use super::{figure, stats::percentile};
use crate::shell::step;

/// Captures measured back to back.
const RAPID_CAPTURES: usize = 300;
/// Writes observed by both the watch and the 2 s poller.
const POLLED_WRITES: usize = 10;
/// The old system's poll period.
const POLL_PERIOD: Duration = Duration::from_secs(2);
/// Pushes measured.
const PUSHES: usize = 500;

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let agent_bin = crate::agent::build_flavour(crate::agent::Flavour::Cli)?;
    let rt = crate::shell::runtime()?;
    rt.block_on(measure(&agent_bin))
}

fn credential(i: usize) -> String {
    format!(
        r#"{{"claudeAiOauth":{{"accessToken":"fake-access-token-{i:06}","refreshToken":"fake-refresh-token-{i:06}","expiresAt":1767225600000,"scopes":["user:inference","user:profile"],"subscriptionType":"fake"}}}}"#
    )
}

/// Writes the way the CLIs do: a temp file next to the target, then a rename. Returns the instant
/// of the rename (the moment the complete file is in place).
fn write_by_rename(dir: &Path, target: &Path, body: &str) -> Result<Instant> {
    let tmp = dir.join(".credentials.json.tmp.bench");
    std::fs::write(&tmp, body)?;
    let t0 = Instant::now();
    std::fs::rename(&tmp, target)?;
    Ok(t0)
}

/// A small pseudo-random delay in `0..max`, so writes fall at random phases of the poller.
fn jitter(seed: &mut u64, max: Duration) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(1).max(1);
    Duration::from_millis(*seed % max_ms)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

async fn measure(agent_bin: &Path) -> Result<()> {
    let agent = super::start_agent(agent_bin).await?;
    let home: PathBuf = agent.home();
    let client = agent.client().await;
    let scope = CredsScope {
        provider: "claude_code".into(),
        home: Some(home.display().to_string()),
        ..Default::default()
    };

    // The watch starts before ~/.claude exists, as in a fresh login VM.
    let mut watch = client
        .creds_watch(&CredsWatchRequest {
            scope: scope.clone(),
            include_existing: false,
            seal_to: None,
        })
        .await?;
    let cred_dir = home.join(".claude");
    let target = cred_dir.join(".credentials.json");
    std::fs::create_dir(&cred_dir)?;

    step(&format!(
        "{RAPID_CAPTURES} captures: rename into place -> event at the client"
    ));
    let mut capture = Vec::with_capacity(RAPID_CAPTURES + POLLED_WRITES);
    let mut serial = 0usize;
    for _ in 0..RAPID_CAPTURES {
        serial += 1;
        let t0 = write_by_rename(&cred_dir, &target, &credential(serial))?;
        wait_capture(&mut watch, serial).await?;
        capture.push(t0.elapsed());
    }

    step(&format!(
        "baseline: {POLLED_WRITES} writes seen by a {}s poller (and by the watch)",
        POLL_PERIOD.as_secs()
    ));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let poll_client = client.clone();
    let poll_path = target.display().to_string();
    let poller = tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL_PERIOD);
        loop {
            tick.tick().await;
            if let Ok(file) = poll_client.read_file(&poll_path).await {
                if seen_tx.send((Instant::now(), file.content)).is_err() {
                    return;
                }
            }
        }
    });
    let mut polled = Vec::with_capacity(POLLED_WRITES);
    let mut seed = u64::from(std::process::id()) | 1;
    for _ in 0..POLLED_WRITES {
        tokio::time::sleep(jitter(&mut seed, POLL_PERIOD)).await;
        serial += 1;
        let body = credential(serial);
        let t0 = write_by_rename(&cred_dir, &target, &body)?;
        wait_capture(&mut watch, serial).await?;
        capture.push(t0.elapsed());
        loop {
            let (at, content) = tokio::time::timeout(POLL_PERIOD * 3, seen_rx.recv())
                .await
                .context("the poller saw nothing for 6 s")?
                .context("the poller stopped")?;
            if content == body.as_bytes() {
                polled.push(at.saturating_duration_since(t0));
                break;
            }
        }
    }
    poller.abort();

    // Pushes go to a home on the disk (the workspace's target directory, where a VM's home would
    // be) and, for comparison, on tmpfs; fsync costs dominate on disk.
    let disk = tempfile::tempdir_in(crate::shell::root().join("target"))?;
    step(&format!(
        "{PUSHES} pushes (creds_put) and {PUSHES} plain write_file baselines on {} ({})",
        disk.path().display(),
        fs_kind(disk.path())
    ));
    let (mut push, mut plain) = pushes(&client, &scope, disk.path()).await?;
    step(&format!("the same {PUSHES} pushes on tmpfs"));
    let shm = tempfile::tempdir_in("/dev/shm").context("tmpfs at /dev/shm")?;
    let (mut push_tmpfs, _) = pushes(&client, &scope, shm.path()).await?;
    step("floor: temp file, fsync, rename, fsync dir, in this process, on the same disk");
    let mut floor = Vec::with_capacity(PUSHES);
    for i in 0..PUSHES {
        let t = Instant::now();
        durable_write(disk.path(), credential(i).as_bytes())?;
        floor.push(t.elapsed());
    }

    let capture_p50 = percentile(&mut capture, 50.0);
    let poll_p50 = percentile(&mut polled, 50.0);
    figure("capture_latency_p50_ms", ms(capture_p50));
    figure("capture_latency_p99_ms", ms(percentile(&mut capture, 99.0)));
    figure("poll_baseline_p50_ms", ms(poll_p50));
    figure(
        "capture_vs_poll_p50_ratio",
        format!(
            "{:.4}",
            capture_p50.as_secs_f64() / poll_p50.as_secs_f64().max(1e-9)
        ),
    );
    let push_p50 = percentile(&mut push, 50.0);
    let plain_p50 = percentile(&mut plain, 50.0);
    figure("push_latency_p50_us", push_p50.as_micros());
    figure(
        "push_latency_p99_us",
        percentile(&mut push, 99.0).as_micros(),
    );
    figure("write_file_baseline_p50_us", plain_p50.as_micros());
    figure(
        "push_vs_write_file_p50_ratio",
        format!(
            "{:.2}",
            push_p50.as_secs_f64() / plain_p50.as_secs_f64().max(1e-9)
        ),
    );
    figure(
        "push_fsync_floor_p50_us",
        percentile(&mut floor, 50.0).as_micros(),
    );
    figure(
        "push_latency_tmpfs_p50_us",
        percentile(&mut push_tmpfs, 50.0).as_micros(),
    );
    Ok(())
}

/// Waits for the capture of write number `serial`, skipping nothing: any other capture is a bug.
async fn wait_capture(
    watch: &mut orchestrator::creds::CredsWatchCall,
    serial: usize,
) -> Result<()> {
    let expected = credential(serial);
    let c = tokio::time::timeout(Duration::from_secs(10), watch.next_capture())
        .await
        .context("no capture within 10 s")??
        .context("the watch ended")?;
    if c.content != expected.as_bytes() {
        bail!("captured the wrong content for write {serial}");
    }
    Ok(())
}

/// `PUSHES` creds_put calls into a home under `base`, each followed by a plain write_file of the
/// same bytes; returns both latency lists.
async fn pushes(
    client: &AgentClient,
    scope: &CredsScope,
    base: &Path,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let home = base.join("push-home");
    std::fs::create_dir(&home)?;
    let scope = CredsScope {
        home: Some(home.display().to_string()),
        ..scope.clone()
    };
    let plain_path = home.join("plain.json").display().to_string();
    let mut push = Vec::with_capacity(PUSHES);
    let mut plain = Vec::with_capacity(PUSHES);
    for i in 0..PUSHES {
        let body = credential(i).into_bytes();
        let req = CredsPutRequest {
            scope: scope.clone(),
            files: vec![CredentialFile {
                path: ".claude/.credentials.json".into(),
                content: body.clone(),
            }],
        };
        let t = Instant::now();
        let res = client.creds_put(&req).await?;
        push.push(t.elapsed());
        if res.written.len() != 1 {
            bail!("creds_put wrote {} files", res.written.len());
        }
        let t = Instant::now();
        client
            .write_file(&WriteFileRequest {
                path: plain_path.clone(),
                content: body,
                mode: Some(0o600),
                create_dirs: false,
            })
            .await?;
        plain.push(t.elapsed());
    }
    Ok((push, plain))
}

/// The durability work a push cannot skip, without RPC or hardening.
fn durable_write(dir: &Path, body: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join("floor.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("floor.json"))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn fs_kind(path: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
