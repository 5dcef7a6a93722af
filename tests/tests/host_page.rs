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
    let mut file = file_config(&dir.path().join("state.db"), &[("FAKE_API_URL", &api.url)]);
    file.sealing = orchestrator::login::Sealing::User;
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
    let seen = run_page_script("walk.cjs", &[&rig.base], &[("ARTIFACTS", &artifacts)]).await;
    stop.store(true, Ordering::Relaxed);
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
    assert_eq!(seen["keyHeld"], "yes", "{seen:#}");
    assert!(
        seen["recoveryFile"]
            .as_str()
            .unwrap()
            .starts_with("user-key-"),
        "{seen:#}"
    );
    let other = seen["otherBrowserSays"].as_str().unwrap();
    assert!(
        other.contains("does not hold your key") && other.contains("Import your recovery file"),
        "{seen:#}"
    );
    assert_eq!(
        seen["statusInOtherBrowser"], "linked",
        "nothing is lost: {seen:#}"
    );
    assert_eq!(seen["statusAfterRevoke"], "not linked", "{seen:#}");
    assert_eq!(seen["error"], "", "no error shown: {seen:#}");
    assert_eq!(seen["error2"], "", "no error shown: {seen:#}");
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen:#}");
    for step in [
        "sign-in",
        "providers",
        "desktop",
        "linked",
        "prompt",
        "other-browser",
        "key-imported",
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
    // One screenshot per step, and the recovery file.
    assert_eq!(shots, 9, "one screenshot per step");
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

/// Runs a script of `tests/page` against `base` with Playwright; returns its JSON line.
async fn run_page_script(script: &str, args: &[&str], env: &[(&str, &std::path::Path)]) -> Value {
    let playwright = test_kit::playwright::playwright_core().expect("playwright-core from npm");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("page")
        .join(script);
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .args(args)
        .env("PLAYWRIGHT_CORE", &playwright)
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(400), command.output())
        .await
        .expect("the script finished in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let seen: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no result from {script:?}: {stdout}\n{stderr}"));
    assert!(
        out.status.success(),
        "{script:?} failed: {seen:#}\n{stderr}\n(its files: {env:?})"
    );
    seen
}

/// The page's HPKE code (WebCrypto, in Debian's Chromium) against RFC 9180's P-256 vector, and
/// interoperating with the Rust side both ways: what the agents seal, the page opens; what the
/// page seals, the agents open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_hpke_passes_rfc9180_and_interoperates_with_the_agents() {
    use protocol::sealed::{seal, KeyPair, SealContext, Sealed};
    let dir = tempfile::tempdir().unwrap();
    let backend = fake_cli_backend(dir.path()).unwrap();
    let file = file_config(&dir.path().join("state.db"), &[]);
    let rig = ServiceRig::start(&file, backend, ServiceConfig::default())
        .await
        .unwrap();
    let vector: Value =
        serde_json::from_str(include_str!("../fixtures/hpke/rfc9180-a3.json")).unwrap();
    let ikm = "7f1c2a9d0e4b5c6a7f8e9d0c1b2a39485766554433221100ffeeddccbbaa9988";
    let ikm_bytes: Vec<u8> = (0..ikm.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&ikm[i..i + 2], 16).unwrap())
        .collect();
    let page_key = KeyPair::derive(&ikm_bytes);
    let rust_key = KeyPair::generate().unwrap();
    let ctx = SealContext {
        user: "user-0001",
        provider: "claude_code",
        version: 7,
    };
    let secret = r#"{"claudeAiOauth":{"accessToken":"fake-access-token-interop"}}"#;
    let input = serde_json::json!({
        "vector": vector,
        "ikm": ikm,
        "ctx": {"user": ctx.user, "provider": ctx.provider, "version": ctx.version},
        "rust_sealed": seal(page_key.public(), &ctx, secret.as_bytes()).unwrap(),
        "rust_public": rust_key.public().to_base64(),
        "page_plaintext": "sealed by the page",
    });
    let input_path = dir.path().join("hpke-input.json");
    std::fs::write(&input_path, serde_json::to_vec(&input).unwrap()).unwrap();
    let out = run_page_script("hpke.cjs", &[&rig.base, input_path.to_str().unwrap()], &[]).await;

    let got = &out["got"];
    for field in [
        "pkRm",
        "skRm",
        "pkEm",
        "enc",
        "shared_secret",
        "key_schedule_context",
        "secret",
        "key",
        "base_nonce",
    ] {
        assert_eq!(got[field], vector[field], "{field}: {out:#}");
    }
    assert_eq!(got["ct"], vector["encryptions"][0]["ct"], "{out:#}");
    assert_eq!(got["opened"], vector["encryptions"][0]["pt"], "{out:#}");

    let info: String = ctx.info().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(out["info"], info, "both sides bind the same bytes");
    assert_eq!(out["rustOpened"], secret);
    assert!(
        out["wrongVersion"]
            .as_str()
            .unwrap()
            .contains("does not open"),
        "{out:#}"
    );
    assert_eq!(out["recoveredOpens"], true, "{out:#}");
    let page_sealed: Sealed = serde_json::from_value(out["pageSealed"].clone()).unwrap();
    assert_eq!(
        rust_key.open(&ctx, &page_sealed).unwrap().as_slice(),
        b"sealed by the page"
    );
    assert!(page_key.open(&ctx, &page_sealed).is_err());
    rig.stop().await;
}
