//! `bench desktop`: the desktop as a viewer experiences it, end to end on one machine: Xvfb at
//! 1280x720, the static agent streaming it, headless Chromium showing it through the viewer page.
//!
//! - glass to glass: an X client repaints the screen in a new colour at T0 (wall clock); the viewer
//!   page timestamps (same wall clock) the first decoded frame whose pixels show that colour;
//! - encode time: the agent's own grab+encode percentiles (its `stats` events) while animating;
//! - sustained fps: frames the page decoded per second while a full-screen animation runs;
//! - CPU: the agent process's CPU time over wall time, idle (static screen, viewer connected,
//!   10 s) and active (the animation).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use protocol::desktop::DesktopEvent;
use test_kit::desktop::chromium::Chromium;
use test_kit::desktop::relay::Relay;
use test_kit::desktop::xserver::{Canvas, Xvfb};
use test_kit::AgentProcess;

use super::figure;
use crate::shell::step;

const SAMPLES: usize = 40;
const ANIMATION: Duration = Duration::from_secs(6);
const IDLE: Duration = Duration::from_secs(10);

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let agent_bin = crate::agent::build_flavour(crate::agent::Flavour::Desktop)?;
    let rt = crate::shell::runtime()?;

    step("starting Xvfb 1280x720, the agent and the viewer");
    let x = Xvfb::start(1280, 720);
    let canvas = Canvas::open(&x.display, 0x000000);
    let (agent, relay) = rt.block_on(async {
        let agent =
            AgentProcess::launch(&agent_bin, &[("DISPLAY", x.display.as_str())], false).await?;
        let relay = Relay::start(agent.client().await, None).await;
        anyhow::Ok((agent, relay))
    })?;
    let mut browser = Chromium::launch();
    browser.watch(&format!("http://{}/", relay.addr), Duration::from_secs(60));
    let mut session = relay
        .sessions
        .lock()
        .map_err(|_| anyhow::anyhow!("relay lock"))?
        .pop()
        .context("no viewer session")?;

    step("glass to glass");
    browser.eval(
        "viewer.onFrame.push(() => { const p = viewer.probe; if (!p || p.seen) return; \
         const px = viewer.sample(640, 360); if (px && Math.abs(px[0] - p.rgb[0]) < 40 && \
         Math.abs(px[1] - p.rgb[1]) < 40 && Math.abs(px[2] - p.rgb[2]) < 40) \
         p.seen = performance.timeOrigin + performance.now(); }); true",
    );
    let mut latencies = Vec::new();
    for i in 0..SAMPLES {
        let rgb: u32 = if i % 2 == 0 { 0xe03010 } else { 0x1040e0 };
        browser.eval(&format!(
            "viewer.probe = {{ rgb: [{}, {}, {}], seen: null }}; true",
            rgb >> 16,
            (rgb >> 8) & 255,
            rgb & 255
        ));
        let t0 = wall_ms();
        canvas.paint(rgb);
        let deadline = Instant::now() + Duration::from_secs(5);
        let seen = loop {
            if let Some(seen) = browser.eval("viewer.probe.seen").as_f64() {
                break seen;
            }
            if Instant::now() > deadline {
                bail!("the viewer never showed colour {rgb:06x}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        latencies.push(seen - t0);
        std::thread::sleep(Duration::from_millis(150));
    }
    latencies.sort_by(f64::total_cmp);
    figure(
        "glass_to_glass_p50_ms",
        format!("{:.1}", quantile(&latencies, 0.5)),
    );
    figure(
        "glass_to_glass_p95_ms",
        format!("{:.1}", quantile(&latencies, 0.95)),
    );

    step("full-screen animation");
    let frames_before = browser.eval("viewer.frames").as_f64().unwrap_or(0.0);
    let cpu_before = cpu_ticks(agent.pid())?;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < ANIMATION {
        canvas.paint_stripes(n);
        n += 1;
        std::thread::sleep(Duration::from_millis(16));
    }
    let elapsed = started.elapsed();
    let cpu = cpu_ticks(agent.pid())? - cpu_before;
    let frames = browser.eval("viewer.frames").as_f64().unwrap_or(0.0) - frames_before;
    let encode = rt.block_on(async {
        let mut last = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Ok(Some(event))) =
            tokio::time::timeout_at(deadline, session.next_event()).await
        {
            if let DesktopEvent::Stats {
                encode_ms_p50,
                encode_ms_p95,
                ..
            } = event
            {
                last = Some((encode_ms_p50, encode_ms_p95));
                break;
            }
        }
        last
    });
    let (encode_p50, _encode_p95) = encode.context("the agent sent no stats")?;
    figure("encode_ms_p50_720p", format!("{encode_p50:.2}"));
    figure(
        "fps_720p_sustained",
        format!("{:.1}", frames / elapsed.as_secs_f64()),
    );
    figure("active_cpu_pct", format!("{:.1}", cpu_pct(cpu, elapsed)));

    step("static desktop, viewer connected");
    std::thread::sleep(Duration::from_secs(1));
    let cpu_before = cpu_ticks(agent.pid())?;
    let started = Instant::now();
    std::thread::sleep(IDLE);
    let cpu = cpu_ticks(agent.pid())? - cpu_before;
    figure(
        "idle_cpu_pct",
        format!("{:.2}", cpu_pct(cpu, started.elapsed())),
    );
    drop(session);
    Ok(())
}

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based, whole line).
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn cpu_pct(ticks: u64, wall: Duration) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz / wall.as_secs_f64() * 100.0
}
