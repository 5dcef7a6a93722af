//! `bench egress-tunnel`: the egress path with local agents (the release static agent's loopback
//! proxy, the host's gateway, a real squid, an HTTPS origin), against the same work done directly
//! through squid from the host, in the same run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orchestrator::egress::{AllowList, EgressLimits, EgressVm};
use test_kit::egress::{EgressRig, PROXY_PASSWORD, PROXY_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::figure;
use super::stats::percentile;
use crate::shell::step;

/// The download measured both ways.
const DOWNLOAD_BYTES: u64 = 256 * 1024 * 1024;
/// CONNECTs timed each way.
const CONNECT_SAMPLES: usize = 200;
/// Tunnels held open at once.
const CONCURRENT: usize = 1000;

pub fn run() -> Result<()> {
    let agents = crate::agent::build()?;
    raise_descriptor_limit();
    let rt = crate::shell::runtime()?;
    rt.block_on(measure(&agents.cli))
}

async fn measure(agent_bin: &Path) -> Result<()> {
    step("squid (basic auth, per-user ports), an HTTPS origin, the gateway, the release agent");
    let rig = EgressRig::start(2).await;
    let user_port = rig.ports.assign("bench-user").await?;
    let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
    let socket = rig.socket("bench-vm");
    let _binding = gateway.serve_vm(
        &socket,
        EgressVm {
            user: "bench-user".into(),
            vm_id: "bench-vm".into(),
            allow: AllowList::Any,
        },
    )?;
    let agent = test_kit::AgentProcess::launch_with_args(
        agent_bin,
        &[],
        &test_kit::agent::egress_args(&socket),
        false,
    )
    .await?;
    let proxy = proxy_of(&agent).await?;
    let direct = format!("http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{user_port}");
    let url = rig.origin.url(&format!("/bytes/{DOWNLOAD_BYTES}"));
    let cert = rig.origin.cert_path();

    step("downloading through the tunnel and directly through squid (best of 3 each)");
    let mut tunnel = 0f64;
    let mut straight = 0f64;
    for _ in 0..3 {
        tunnel = tunnel.max(download_mb_s(&format!("http://{proxy}"), &cert, &url)?);
        straight = straight.max(download_mb_s(&direct, &cert, &url)?);
    }
    figure("tunnel_mb_s", format!("{tunnel:.0}"));
    figure("direct_mb_s", format!("{straight:.0}"));
    figure(
        "tunnel_vs_direct_ratio",
        format!("{:.2}", tunnel / straight),
    );

    step("CONNECT to tunnel established, through the agent and directly to squid");
    let target = rig.origin.target();
    let mut through = Vec::with_capacity(CONNECT_SAMPLES);
    let mut baseline = Vec::with_capacity(CONNECT_SAMPLES);
    let auth = format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64_basic(PROXY_USER, PROXY_PASSWORD)
    );
    for _ in 0..CONNECT_SAMPLES {
        through.push(connect_time(&proxy, &target, "").await?.0);
        baseline.push(
            connect_time(&format!("127.0.0.1:{user_port}"), &target, &auth)
                .await?
                .0,
        );
    }
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    figure("tunnel_connect_ms_p50", ms(percentile(&mut through, 50.0)));
    figure("tunnel_connect_ms_p99", ms(percentile(&mut through, 99.0)));
    figure("direct_connect_ms_p50", ms(percentile(&mut baseline, 50.0)));

    step(&format!(
        "{CONCURRENT} tunnels open at once, each carrying an exchange"
    ));
    let echo = echo_server().await?;
    let echo_target = format!("127.0.0.1:{}", echo.local_addr()?.port());
    tokio::spawn(serve_echo(echo));
    let opened = futures_util::future::join_all(
        (0..CONCURRENT).map(|_| connect_time(&proxy, &echo_target, "")),
    )
    .await;
    let mut streams: Vec<TcpStream> = opened
        .into_iter()
        .filter_map(|r| r.ok().map(|(_, s)| s))
        .collect();
    let exchanged = futures_util::future::join_all(streams.iter_mut().map(exchange)).await;
    let held = exchanged.iter().filter(|ok| **ok).count();
    figure("tunnel_concurrent_streams", held);
    drop(streams);
    Ok(())
}

/// The proxy address the agent gives its programs.
async fn proxy_of(agent: &test_kit::AgentProcess) -> Result<String> {
    let client = agent.client().await;
    let out = client
        .exec_collect(&["sh", "-c", "echo $HTTPS_PROXY"], None)
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().trim_start_matches("http://").to_owned())
}

/// One download with curl through `proxy`; MB/s as curl measured it.
fn download_mb_s(proxy: &str, cert: &Path, url: &str) -> Result<f64> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
        ])
        .arg("--proxy")
        .arg(proxy)
        .arg("--cacert")
        .arg(cert)
        .arg(url)
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let size: f64 = parts.next().unwrap_or("0").parse()?;
    let secs: f64 = parts.next().unwrap_or("0").parse()?;
    if size as u64 != DOWNLOAD_BYTES || secs <= 0.0 {
        bail!("curl downloaded {size} bytes in {secs} s");
    }
    Ok(size / secs / 1e6)
}

/// Sends a CONNECT for `target` to `proxy` and times it until the proxy's 200 arrives.
async fn connect_time(proxy: &str, target: &str, auth: &str) -> Result<(Duration, TcpStream)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 4096 {
            bail!("no answer to CONNECT: {}", String::from_utf8_lossy(&head));
        }
        head.push(byte[0]);
    }
    let elapsed = started.elapsed();
    if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
        bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
    }
    Ok((elapsed, stream))
}

async fn echo_server() -> Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
}

async fn serve_echo(listener: tokio::net::TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// 1 KiB out and back on an open tunnel.
async fn exchange(stream: &mut TcpStream) -> bool {
    let out = [7u8; 1024];
    let mut back = [0u8; 1024];
    let go = async {
        stream.write_all(&out).await?;
        stream.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back == out)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(30), go).await,
        Ok(Ok(true))
    )
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Every held tunnel is a descriptor here, and two in the gateway.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
