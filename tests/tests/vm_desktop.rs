//! The desktop of a real microVM in the user's browser: the desktop image (Xvfb and the static
//! `x-probe` X client in the guest), the agent streaming it over WebRTC, and the viewer page in
//! headless Chromium on the host. Signalling goes over vsock through the orchestrator; media over
//! UDP through the one port the VM's isolated user-mode network forwards, which the agent learns
//! from the host's ICE settings (NAT 1:1 address and fixed port), as behind a gateway's per-VM
//! forward. The video must show what the guest's X client paints, and a click and keys in the
//! viewer must reach it.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use orchestrator::client::{ExecOutput, StreamItem};
use orchestrator::vm::QemuLauncher;
use orchestrator::AgentClient;
use protocol::frame::FrameKind;
use protocol::messages::{ExecEvent, ExecRequest};
use protocol::secret::EnvVars;
use serde_json::json;
use test_kit::desktop::chromium::Chromium;
use test_kit::desktop::relay::Relay;

/// Small, because every frame is captured and encoded under emulation.
const W: u32 = 320;
const H: u32 = 240;
const DISPLAY: &str = ":0";

/// Runs `argv` in the guest on the X display; its stdout lines arrive on the returned channel
/// (stderr and the exit are reported as `stderr: ...` and `exited: ...` lines). The process lives
/// as long as the runtime, or until it exits.
fn spawn_in_guest(
    rt: &tokio::runtime::Runtime,
    client: &AgentClient,
    argv: &[&str],
) -> mpsc::Receiver<String> {
    let req = ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: EnvVars::from_pairs([("DISPLAY", DISPLAY)]),
        ..Default::default()
    };
    let mut call = rt
        .block_on(client.exec(&req))
        .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"));
    // No stdin: the process's input ends here.
    call.close_input();
    let (tx, rx) = mpsc::channel();
    rt.spawn(async move {
        let mut partial = Vec::new();
        while let Ok(Some(item)) = call.next().await {
            let line = match item {
                StreamItem::Data(FrameKind::Stdout, bytes) => {
                    partial.extend_from_slice(&bytes);
                    while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=end).collect();
                        let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_owned());
                    }
                    continue;
                }
                StreamItem::Data(FrameKind::Stderr, bytes) => {
                    format!("stderr: {}", String::from_utf8_lossy(&bytes).trim_end())
                }
                StreamItem::Event(ExecEvent::Exited(status)) => format!("exited: {status:?}"),
                _ => continue,
            };
            let _ = tx.send(line);
        }
    });
    rx
}

/// Runs a short command in the guest on the X display; returns its output.
fn output_in_guest(
    rt: &tokio::runtime::Runtime,
    client: &AgentClient,
    argv: &[&str],
) -> ExecOutput {
    let req = ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: EnvVars::from_pairs([("DISPLAY", DISPLAY)]),
        ..Default::default()
    };
    rt.block_on(async {
        let mut call = client.exec(&req).await?;
        call.close_input();
        call.collect_exec().await
    })
    .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"))
}

/// [`output_in_guest`], failing with its stderr unless the command succeeds.
fn run_in_guest(rt: &tokio::runtime::Runtime, client: &AgentClient, argv: &[&str]) {
    let out = output_in_guest(rt, client, argv);
    assert_eq!(
        out.status.shell_code(),
        0,
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for a line of `rx` starting with `prefix`, failing with everything seen on the way.
fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("{what}: no {prefix:?} line; the guest process said {seen:?}");
}

#[test]
fn the_desktop_of_a_microvm_streams_to_the_viewer_and_takes_input() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (port, _) = test_kit::ports::free_udp_range(1);
    let mut config = test_kit::vm::config(test_kit::vm::desktop_assets());
    // The initramfs (agent, Xvfb and its libraries) unpacks into guest memory.
    config.memory_mib = 512;
    config.network = Some(test_kit::vm::udp_from_loopback(port));
    let vm = rt
        .block_on(QemuLauncher::new(config).create("test-desktop"))
        .expect("the desktop VM boots and its agent says hello");
    let client = rt
        .block_on(AgentClient::connect(&vm.connector()))
        .expect("connect through hybrid vsock");

    let xvfb = spawn_in_guest(
        &rt,
        &client,
        &[
            "Xvfb",
            DISPLAY,
            "-screen",
            "0",
            &format!("{W}x{H}x24"),
            "-nolisten",
            "tcp",
            "-extension",
            "GLX",
            // The painted root window must outlive its painter: by default the server resets
            // when its last client leaves.
            "-noreset",
        ],
    );
    // The display is up once a client can paint on it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = output_in_guest(&rt, &client, &["x-probe", "fill", "ff0000"]);
        if out.status.shell_code() == 0 {
            break;
        }
        if Instant::now() > deadline {
            let said: Vec<String> = xvfb.try_iter().collect();
            panic!(
                "Xvfb never came up; x-probe said {}, Xvfb said {said:?}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let relay = rt.block_on(Relay::through_user_network(
        client.clone(),
        Some(DISPLAY.into()),
        port,
    ));
    let mut browser = Chromium::launch();
    // The page is the desktop's size, so page and desktop coordinates agree.
    browser.set_viewport(W, H);
    browser.watch(
        &format!("http://{}/?resize=0", relay.addr),
        Duration::from_secs(120),
    );
    assert_eq!(
        browser.eval("[viewer.video.videoWidth, viewer.video.videoHeight]"),
        json!([W, H]),
        "the video has the VM desktop's size"
    );
    // Media flows through the forward: the browser's selected pair ends at its host side.
    let remote = browser.selected_remote_candidate();
    assert_eq!(
        remote,
        json!(["127.0.0.1", port, "srflx"]),
        "the selected pair's remote end"
    );
    browser.wait_colour(W / 2, H / 2, 0xff0000, 32);
    for colour in ["00ff00", "0000ff", "336699"] {
        run_in_guest(&rt, &client, &["x-probe", "fill", colour]);
        let rgb = u32::from_str_radix(colour, 16).expect("hex");
        browser.wait_colour(W / 2, H / 2, rgb, 32);
        browser.wait_colour(4, 4, rgb, 32);
    }

    // Input: a click and keys in the viewer reach the guest's X client.
    let probe = spawn_in_guest(&rt, &client, &["x-probe", "watch"]);
    wait_line(&probe, "ready", "x-probe watch");
    browser.wait_for("viewer.dc.readyState === 'open'", Duration::from_secs(30));
    browser.click(100.0, 80.0);
    let click = wait_line(&probe, "click", "a click in the viewer");
    let fields: Vec<i32> = click
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    assert_eq!(fields.first(), Some(&1), "left button: {click}");
    assert!(
        matches!(fields[..], [_, x, y] if (x - 100).abs() <= 1 && (y - 80).abs() <= 1),
        "click at {click}"
    );
    browser.type_text("a7");
    assert_eq!(
        wait_line(&probe, "key", "a key typed in the viewer"),
        "key 61"
    );
    assert_eq!(
        wait_line(&probe, "key", "a digit typed in the viewer"),
        "key 37"
    );

    drop(browser);
    drop(relay);
    drop(client);
    rt.block_on(vm.destroy()).expect("destroy the VM");
}
