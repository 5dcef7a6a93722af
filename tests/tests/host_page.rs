//! The host service's web page walked by a person's browser: Playwright (`playwright-core` from
//! npm) driving Debian's Chromium through sign-up, linking Claude Code with the login VM's
//! desktop live in the page (its frames must change as the desktop does), pasting the code,
//! seeing the account linked, running a prompt and reading its streamed answer, and revoking.
//! Screenshots of each step are kept in `target/test-artifacts/host-page/`.
//!
//! VMs are local agent processes streaming an Xvfb desktop; the CLI is the fake one (a recorded
//! real login: the providers cannot be reached here), and the prompt's answer comes from a
//! stand-in API that accepts only the token of the credential captured into the user's CLI VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use host_service::ServiceConfig;
use protocol::desktop::IceSettings;
use serde_json::Value;
use test_kit::desktop::xserver::{Canvas, Xvfb};
use test_kit::service::{
    fake_cli_backend, file_config, tokens_in_vms, ServiceRig, StandinApi, STANDIN_ANSWER,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_walks_the_page_in_a_real_browser() {
    let x = Xvfb::start(1280, 800);
    // The desktop changes on its own, as a real one does: the page must show it changing.
    let stop = Arc::new(AtomicBool::new(false));
    let painter = {
        let (display, stop) = (x.display.clone(), stop.clone());
        std::thread::spawn(move || {
            let canvas = Canvas::open(&display, 0x2060a0);
            let mut on = false;
            while !stop.load(Ordering::Relaxed) {
                on = !on;
                canvas.paint(if on { 0xe0c020 } else { 0x2060a0 });
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };

    let dir = tempfile::tempdir().unwrap();
    let backend = fake_cli_backend(dir.path()).unwrap();
    let api = StandinApi::start_verifying(tokens_in_vms(backend.clone()))
        .await
        .unwrap();
    let file = file_config(&dir.path().join("state.db"), &[("FAKE_API_URL", &api.url)]);
    let service = ServiceConfig {
        desktop_display: Some(x.display.clone()),
        desktop_ice: IceSettings {
            bind: vec!["127.0.0.1".parse().unwrap()],
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let rig = ServiceRig::start(&file, backend.clone(), service)
        .await
        .unwrap();

    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/host-page");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let playwright = test_kit::playwright::playwright_core().expect("playwright-core from npm");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("page/walk.cjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&rig.base)
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("ARTIFACTS", &artifacts)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(400), run)
        .await
        .expect("the walk finished in time")
        .expect("node runs");
    stop.store(true, Ordering::Relaxed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let seen: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no result from the walk: {stdout}\n{stderr}"));
    assert!(
        out.status.success(),
        "the walk failed: {seen:#}\n{stderr}\nscreenshots in {}",
        artifacts.display()
    );
    assert_eq!(seen["statusBefore"], "not linked", "{seen:#}");
    assert!(
        seen["url"].as_str().unwrap().contains("https://claude"),
        "{seen:#}"
    );
    assert_eq!(seen["desktopChanged"], true, "{seen:#}");
    assert_eq!(seen["foreignSignalRefused"], true, "{seen:#}");
    assert!(seen["frames"].as_u64().unwrap() > 3, "{seen:#}");
    assert_eq!(seen["statusLinked"], "linked", "{seen:#}");
    assert_eq!(
        seen["answer"].as_str().unwrap().trim_end(),
        STANDIN_ANSWER.concat().trim_end(),
        "{seen:#}"
    );
    assert_eq!(seen["statusAfterRevoke"], "not linked", "{seen:#}");
    assert_eq!(seen["error"], "", "no error shown: {seen:#}");
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen:#}");
    for step in [
        "sign-in",
        "providers",
        "desktop",
        "linked",
        "prompt",
        "revoked",
    ] {
        assert!(
            seen["steps"]
                .as_array()
                .unwrap()
                .contains(&Value::from(step)),
            "{seen:#}"
        );
    }
    let shots = std::fs::read_dir(&artifacts).unwrap().count();
    assert_eq!(shots, 6, "one screenshot per step");
    let seen_api = api.seen.lock().unwrap().clone();
    assert_eq!(seen_api.len(), 1, "{seen_api:?}");
    rig.stop().await;
    for vm in backend.vm_ids() {
        use orchestrator::vm::VmBackend;
        let _ = backend.destroy_vm(&vm).await;
    }
    painter.join().unwrap();
    drop(x);
}
