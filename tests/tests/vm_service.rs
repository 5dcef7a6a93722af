//! The host service over real microVMs (QEMU, emulated here): a browser VM of the golden browser
//! image waits in the warm pool, a login takes it, and the login's desktop reaches a viewer page
//! (headless Chromium) through the VM's own media forward, which the QEMU backend gave it and
//! whose private guest address stays out of the answer. The CLI VM is the test image (the real
//! CLIs' logins need only the browser VM here). The login is a real `claude auth login`: its URL
//! reaches the service's event stream; the providers cannot be reached, so it is then cancelled.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use host_service::ServiceConfig;
use orchestrator::vm::{QemuLauncher, QemuVmBackend, WarmPool};
use serde_json::json;
use test_kit::desktop::chromium::Chromium;
use test_kit::service::{file_config, ServiceRig};

#[test]
fn a_pooled_browser_vms_desktop_reaches_the_page_through_its_own_forward() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (first, last) = test_kit::ports::free_udp_range(4);
    let mut browser = test_kit::vm::config(test_kit::vm::browser_assets());
    browser.memory_mib = 1024;
    browser.vcpus = 2;
    let cli = test_kit::vm::config(test_kit::vm::assets());
    let dir = tempfile::tempdir().unwrap();
    let qemu = Arc::new(
        QemuVmBackend::with_images(
            QemuLauncher::new(browser),
            QemuLauncher::new(cli),
            dir.path().join("disks"),
            test_kit::vm::GUEST_HOME,
        )
        .with_desktop_forwards(IpAddr::V4(Ipv4Addr::LOCALHOST), first, last),
    );
    let _guard = rt.enter();
    let pool = WarmPool::new(qemu.clone(), 1, Duration::from_secs(300));
    let file = file_config(&dir.path().join("state.db"), &[]);
    let rig = rt
        .block_on(ServiceRig::start(
            &file,
            Arc::new(pool.clone()),
            ServiceConfig::default(),
        ))
        .unwrap();
    assert_eq!(
        rt.block_on(pool.wait_ready(1, Duration::from_secs(300))),
        1,
        "the pool fills"
    );
    let pooled = qemu.vm_ids();
    assert_eq!(pooled.len(), 1, "{pooled:?}");

    let mut c = rig.client();
    rt.block_on(c.register("vm@example.test", "a long enough password"))
        .unwrap();
    let r = rt
        .block_on(c.post("/v1/accounts/claude_code/link/start", json!({})))
        .unwrap();
    let id = r.json["login_session_id"].as_str().unwrap().to_owned();
    let events = rt
        .block_on(c.sse_until(
            &format!("/v1/accounts/claude_code/link/{id}/events"),
            Duration::from_secs(300),
            |e| e.data["type"] == "auth_url" || e.data["state"] == "failed",
        ))
        .unwrap();
    let progress: Vec<String> = events
        .iter()
        .filter(|e| e.data["type"] == "progress" && e.data["step"] == "browser_vm")
        .map(|e| e.data["detail"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(progress, pooled, "the login took the pooled VM: {events:?}");
    let url = events.last().unwrap();
    assert!(
        url.data["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://claude")),
        "the real claude's URL reached the stream: {events:?}"
    );

    let ticket = rt
        .block_on(c.post(
            &format!("/v1/accounts/claude_code/link/{id}/desktop"),
            json!({}),
        ))
        .unwrap();
    let viewer = format!(
        "{}{}",
        rig.base,
        ticket.json["viewer_url"].as_str().unwrap()
    );
    let mut page = Chromium::launch();
    page.watch(&viewer, Duration::from_secs(180));
    let remote = page.selected_remote_candidate();
    assert_eq!(
        remote[0], "127.0.0.1",
        "media came through the forward: {remote}"
    );
    let port = remote[1].as_u64().unwrap() as u16;
    assert!(
        (first..=last).contains(&port),
        "{remote} in {first}..={last}"
    );
    drop(page);

    let r = rt
        .block_on(c.post(
            &format!("/v1/accounts/claude_code/link/{id}/cancel"),
            json!({}),
        ))
        .unwrap();
    assert_eq!(r.json["cancelled"], true);
    rt.block_on(c.sse_until(
        &format!("/v1/accounts/claude_code/link/{id}/events"),
        Duration::from_secs(120),
        |e| e.data["state"] == "cancelled",
    ))
    .unwrap();
    assert!(
        !qemu.vm_ids().contains(&pooled[0]),
        "the login's VM is gone"
    );
    rt.block_on(rig.stop());
    rt.block_on(pool.shutdown());
    for vm in qemu.vm_ids() {
        use orchestrator::vm::VmBackend;
        rt.block_on(qemu.destroy_vm(&vm)).unwrap();
    }
    assert!(qemu.vm_ids().is_empty());
}
