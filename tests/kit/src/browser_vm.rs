//! The browser VM as the tests and the image benchmark drive it: wait for its Chromium, run a
//! real CLI's login in its browser mode, wait for Chromium to open the URL.

use std::time::{Duration, Instant};

use orchestrator::client::{StreamCall, StreamItem};
use orchestrator::AgentClient;
use protocol::browser::{BrowserState, OpenedUrl};
use protocol::messages::{Empty, WriteFileRequest};
use protocol::providers::ProviderFile;
use protocol::pty::{Pty, PtyEvent, PtyRequest, PtySpawn, UrlSource};

pub use crate::vm::GUEST_HOME;

/// Waits until the browser VM's Chromium answers; returns its state.
pub async fn browser_ready(client: &AgentClient) -> BrowserState {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let state = client
            .call::<protocol::browser::Browser>(&Empty {})
            .await
            .expect("the browser VM's agent drives a browser");
        if state.ready {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium never came up: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Makes the VM's Chromium trust `authority` (base64 DER) as a deployment would trust its own
/// authority: a managed policy file (`CACertificates`), then Chromium started again to read it
/// (killed; the agent restarts it). Pages of the stand-in for the providers then load as the
/// providers' own would. Returns the restarted browser's state.
pub async fn trust_authority(client: &AgentClient, authority: &str) -> BrowserState {
    let before = browser_ready(client).await;
    let policy = serde_json::json!({ "CACertificates": [authority] });
    client
        .write_file(&WriteFileRequest {
            path: "/etc/chromium/policies/managed/stand-in-authority.json".into(),
            content: policy.to_string().into_bytes(),
            mode: Some(0o644),
            create_dirs: false,
        })
        .await
        .expect("the policy file");
    let pid = before.pid.expect("Chromium's pid").to_string();
    let killed = client
        .exec_collect(&["kill", "-9", &pid], None)
        .await
        .expect("kill Chromium");
    assert_eq!(killed.status.shell_code(), 0, "kill Chromium");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let state = browser_ready(client).await;
        if state.starts > before.starts {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium not restarted: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `provider`'s login in its browser mode in the guest, as the login flow does (seeds
/// written into the home, the agent's PTY at the login size); returns the URLs reported and the
/// call (the login keeps running while it is held).
pub async fn start_login(
    client: &AgentClient,
    provider: &str,
) -> (Vec<(String, UrlSource)>, StreamCall<Pty>) {
    let rules = ProviderFile::builtin();
    let def = rules.get(provider).expect("provider");
    for seed in &def.seed_files {
        let path = protocol::providers::expand_home(&seed.path, std::path::Path::new(GUEST_HOME));
        client
            .write_file(&WriteFileRequest {
                path: path.display().to_string(),
                content: seed.content_for(GUEST_HOME).into_bytes(),
                mode: Some(seed.mode),
                create_dirs: true,
            })
            .await
            .expect("seed file");
    }
    let mode = def.mode(Some("browser")).expect("a browser mode");
    let mut spawn = PtySpawn::new(mode.argv.clone());
    spawn.provider = Some(provider.into());
    spawn.mode = Some(mode.id.clone());
    spawn.cwd = Some(GUEST_HOME.into());
    spawn.cols = 100;
    spawn.rows = 30;
    let mut call = client
        .pty(&PtyRequest::Spawn(spawn))
        .await
        .expect("login spawn");
    let mut urls = Vec::new();
    let mut output = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Until the URL handed to the browser came, and a moment for a second one.
    let mut settle: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let until = settle.unwrap_or(deadline).min(deadline);
        let Some(left) = until.checked_duration_since(now) else {
            break;
        };
        match tokio::time::timeout(left, call.next()).await {
            Err(_) => break,
            Ok(item) => match item.expect("pty stream") {
                Some(StreamItem::Data(_, b)) => output.extend_from_slice(&b),
                Some(StreamItem::Event(PtyEvent::Url { url, source, .. })) => {
                    urls.push((url, source));
                    settle.get_or_insert(Instant::now() + Duration::from_secs(3));
                }
                Some(StreamItem::Event(PtyEvent::Exited(status))) => {
                    panic!(
                        "{provider}'s login exited ({status:?}): {}",
                        String::from_utf8_lossy(&output)
                    )
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    assert!(
        !urls.is_empty(),
        "{provider}: no URL; the terminal shows {}",
        String::from_utf8_lossy(&output)
    );
    (urls, call)
}

/// Waits until the browser has committed a navigation to one of `urls` and its tab shows it
/// (its error page: the VM has no network); returns it.
pub async fn navigated(client: &AgentClient, urls: &[(String, UrlSource)]) -> OpenedUrl {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = browser_ready(client).await;
        let opened = state
            .opened
            .iter()
            .find(|o| o.navigated_ms.is_some() && urls.iter().any(|(u, _)| *u == o.url));
        if let Some(opened) = opened {
            if state.tabs.iter().any(|t| t.url == opened.url) {
                return opened.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "not opened, or the tab does not show it: {urls:?}; {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
