//! PTY sessions as the login flow uses them: the real agent binary, real PTYs, and `fake-cli`
//! replaying what the real CLIs wrote (tests/fixtures/cli), answering their terminal queries, passing
//! their first-run prompts, catching their URL from the screen and from `$BROWSER`/`xdg-open`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use orchestrator::client::{StreamCall, StreamItem};
use protocol::frame::{Frame, FrameKind};
use protocol::pty::{Pty, PtyControl, PtyEvent, PtyRequest, PtySpawn, UrlSource};
use protocol::secret::EnvVars;
use protocol::{ErrorBody, ErrorCode};
use test_kit::{process_alive, AgentProcess};

fn fixture(case: &str) -> PathBuf {
    test_kit::fake_clis::fixtures_root().join(case)
}

fn fake_cli() -> String {
    test_kit::workspace_bin("fake-cli").display().to_string()
}

fn expected_url(case: &str) -> String {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(case).join("session.json")).expect("json"))
            .expect("parse");
    meta["expected_urls"][0]["url"]
        .as_str()
        .expect("url")
        .to_owned()
}

fn recorded_browser_url(case: &str) -> Option<String> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(case).join("session.json")).expect("json"))
            .expect("parse");
    meta["browser_calls"][0]["argv"][0]
        .as_str()
        .map(str::to_owned)
}

#[derive(Debug, Default)]
struct Seen {
    output: Vec<u8>,
    urls: Vec<(String, String, UrlSource)>,
    device_codes: Vec<(String, String)>,
    exit: Option<i32>,
    session: Option<String>,
}

/// Reads events until the program exits; sends `keys` once `replayed` bytes of output arrived (the
/// fake CLI replays its recording byte for byte: then it shows its paste prompt) and a URL was
/// reported (a person pastes the code once the prompt is there).
async fn drive(call: &mut StreamCall<Pty>, keys_after_url: Option<(usize, &[u8])>) -> Seen {
    let mut seen = Seen::default();
    let mut sent = false;
    let deadline = Duration::from_secs(60);
    loop {
        let Ok(item) = tokio::time::timeout(deadline, call.next()).await else {
            let tail = String::from_utf8_lossy(&seen.output);
            let tail: String = tail
                .chars()
                .rev()
                .take(1500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "pty stream stalled; URLs so far {:?}, keys sent: {sent}; the output ends with:\n{tail}",
                seen.urls
            );
        };
        let item = item.expect("pty stream");
        match item {
            None => break,
            Some(StreamItem::Data(FrameKind::Stdout, b)) => seen.output.extend_from_slice(&b),
            Some(StreamItem::Data(..)) => {}
            Some(StreamItem::Event(PtyEvent::Started { session, .. })) => {
                seen.session = Some(session)
            }
            Some(StreamItem::Event(PtyEvent::Attached { session, .. })) => {
                seen.session = Some(session)
            }
            Some(StreamItem::Event(PtyEvent::Url {
                url,
                provider,
                source,
            })) => {
                seen.urls.push((provider, url, source));
            }
            Some(StreamItem::Event(PtyEvent::DeviceCode { url, code, .. })) => {
                seen.device_codes.push((url, code));
            }
            Some(StreamItem::Event(PtyEvent::Exited(status))) => {
                seen.exit = Some(status.shell_code());
            }
            Some(StreamItem::Event(PtyEvent::Error(e))) => panic!("the agent refused input: {e}"),
        }
        if let (Some((replayed, keys)), false) = (keys_after_url, sent) {
            if !seen.urls.is_empty() && seen.output.len() >= replayed {
                sent = true;
                call.send(FrameKind::Stdin, Bytes::copy_from_slice(keys))
                    .await
                    .expect("send keys");
            }
        }
    }
    seen
}

fn fake_spawn(case: &str, chunks: &str, cred: &Path, provider: &str) -> PtySpawn {
    fake_spawn_with(case, chunks, cred, provider, &[])
}

fn fake_spawn_with(
    case: &str,
    chunks: &str,
    cred: &Path,
    provider: &str,
    extra: &[&str],
) -> PtySpawn {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(case).join("session.json")).expect("json"))
            .expect("parse");
    let mut spawn = PtySpawn::new([
        fake_cli(),
        fixture(case).display().to_string(),
        "--chunks".into(),
        chunks.into(),
        "--cred".into(),
        cred.display().to_string(),
    ]);
    spawn.argv.extend(extra.iter().map(|a| a.to_string()));
    spawn.cols = meta["cols"].as_u64().expect("cols") as u16;
    spawn.rows = meta["rows"].as_u64().expect("rows") as u16;
    spawn.provider = Some(provider.into());
    spawn
}

async fn login_with_fake(agent: &AgentProcess, case: &str, chunks: &str, provider: &str) -> Seen {
    login_with_fake_args(agent, case, chunks, provider, &[]).await
}

async fn login_with_fake_args(
    agent: &AgentProcess,
    case: &str,
    chunks: &str,
    provider: &str,
    extra: &[&str],
) -> Seen {
    let cred = agent
        .dir()
        .join(format!("cred-{}.json", case.replace('/', "-")));
    let client = agent.client().await;
    let mut call = client
        .pty(&PtyRequest::Spawn(fake_spawn_with(
            case, chunks, &cred, provider, extra,
        )))
        .await
        .expect("spawn");
    // After the URL, the person pastes the code: the fake CLI then writes its credential file.
    let seen = drive(
        &mut call,
        Some((test_kit::fake_clis::replay_len(case), b"fake-code-0001\r")),
    )
    .await;
    assert_eq!(
        seen.exit,
        Some(0),
        "{case}: {}",
        String::from_utf8_lossy(&seen.output)
    );
    let cred = std::fs::read_to_string(&cred).expect("credential file written");
    assert!(cred.contains("fake-access-token-0001"));
    seen
}

#[tokio::test]
async fn codex_tui_login_answers_queries_passes_the_prompt_and_reports_one_url() {
    let agent = AgentProcess::start().await;
    for (case, chunks) in [("codex/tui-100x30", "seed:7"), ("codex/tui-80x24", "bytes")] {
        let seen = login_with_fake(&agent, case, chunks, "codex").await;
        // The screen (OSC 8 target) and the $BROWSER shim carry the same URL: one event.
        let urls: Vec<&str> = seen.urls.iter().map(|(_, u, _)| u.as_str()).collect();
        assert_eq!(urls, vec![expected_url(case).as_str()], "{case}");
        assert_eq!(seen.urls[0].0, "codex");
        assert!(matches!(
            seen.urls[0].2,
            UrlSource::Hyperlink | UrlSource::Browser
        ));
    }
}

/// claude-code 2.1.332 prints its link inside an OSC 8 hyperlink: the short one by default, the
/// full one with CLAUDE_CODE_FULL_SIGN_IN_LINK=1 (hard-wrapped by the Ink UI, each row a link to
/// the whole URL); `$BROWSER` gets the full URL with a localhost callback. Both are reported.
#[tokio::test]
async fn claude_login_reports_the_printed_link_and_the_browser_variant() {
    let agent = AgentProcess::start().await;
    for case in [
        "claude_code/setup-token-full-100x30",
        "claude_code/auth-login-80x24",
    ] {
        let seen = login_with_fake(&agent, case, "fixed:13", "claude_code").await;
        let mut urls: Vec<(String, UrlSource)> = seen
            .urls
            .iter()
            .map(|(p, u, s)| {
                assert_eq!(p, "claude_code");
                (u.clone(), *s)
            })
            .collect();
        urls.sort_by(|a, b| a.0.cmp(&b.0));
        let mut expected = vec![
            (expected_url(case), UrlSource::Hyperlink),
            (
                recorded_browser_url(case).expect("browser url"),
                UrlSource::Browser,
            ),
        ];
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(urls, expected, "{case}");
    }
}

#[tokio::test]
async fn gemini_login_gets_past_its_prompts_and_its_xdg_open_reaches_the_agent() {
    let agent = AgentProcess::start().await;
    let case = "gemini_cli/display-100x30";
    let seen = login_with_fake(&agent, case, "seed:3", "gemini_cli").await;
    let urls: Vec<&str> = seen.urls.iter().map(|(_, u, _)| u.as_str()).collect();
    assert_eq!(urls, vec![expected_url(case).as_str()]);
}

/// The newest CLIs drop keys that arrive while they are still drawing their prompt (claude's trust
/// dialog for ~150 ms, codex's "Press enter to continue" in the instant it appears): fake-cli
/// drops keys typed within 100 ms of a prompt. An answer sent at the first byte of the prompt is
/// lost and the login stalls; the agent answers once the output has been quiet (300 ms: the
/// margin keeps a loaded machine, where the fake CLI's own clock lags its output, from losing it).
#[tokio::test]
async fn prompts_are_answered_when_the_program_is_ready_for_input() {
    let agent = AgentProcess::start().await;
    for (case, provider) in [
        ("codex/tui-100x30", "codex"),
        ("gemini_cli/display-80x24", "gemini_cli"),
    ] {
        let seen =
            login_with_fake_args(&agent, case, "seed:5", provider, &["--deaf-ms", "100"]).await;
        let urls: Vec<&str> = seen.urls.iter().map(|(_, u, _)| u.as_str()).collect();
        assert!(
            urls.contains(&expected_url(case).as_str()),
            "{case}: {urls:?}"
        );
    }
}

/// The provider rules with codex's device page also at `http://127.0.0.1:8765/codex/device`, the
/// stand-in issuer the `device-auth-stub` recording ran against (the provider cannot be reached
/// from here); everything else as built in.
fn rules_with_the_stub_issuer(dir: &Path) -> PathBuf {
    let rules = protocol::PROVIDER_RULES_TOML.replace(
        r"device_url_patterns = ['^https://auth\.openai\.com/codex/device$']",
        r"device_url_patterns = ['^https://auth\.openai\.com/codex/device$', '^http://127\.0\.0\.1:8765/codex/device$']",
    );
    assert_ne!(
        rules,
        protocol::PROVIDER_RULES_TOML,
        "the device rule is where it was"
    );
    let path = dir.join("rules.toml");
    std::fs::write(&path, rules).expect("rules file");
    path
}

/// codex login --device-auth prints a verification page and a one-time code: in the device_code
/// mode the agent reports both, whole, even when the output stops in the middle of the code
/// (a slow VM), and never a cut-short code. Recorded against a stand-in issuer (see
/// tests/fixtures/cli/README.md); the offline recording (no code came) reports nothing.
#[tokio::test]
async fn a_device_code_login_reports_its_page_and_code_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules_with_the_stub_issuer(dir.path());
    let agent =
        AgentProcess::start_with(&[("AGENT_PROVIDER_RULES", rules.to_str().expect("utf-8"))]).await;
    let client = agent.client().await;
    let case = "codex/device-auth-stub-100x30";
    let meta = test_kit::fake_clis::recording(case);
    let want = (
        meta["device_code"]["verification_url"]
            .as_str()
            .expect("url")
            .to_owned(),
        meta["device_code"]["user_code"]
            .as_str()
            .expect("code")
            .to_owned(),
    );
    let output = std::fs::read(fixture(case).join("output.bin")).expect("output.bin");
    let code_at = output
        .windows(want.1.len())
        .position(|w| w == want.1.as_bytes())
        .expect("the code is in the recording");
    // Paused right after "FAKE-0", which the loose pattern above takes for a code.
    let pauses = [None, Some(code_at + 6), Some(code_at + want.1.len() - 1)];
    for pause in pauses {
        let mut extra = vec!["--no-wait".to_owned()];
        if let Some(at) = pause {
            extra.extend(["--pause-at".to_owned(), format!("{at}:400")]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut spawn =
            fake_spawn_with(case, "seed:3", &dir.path().join("c.json"), "codex", &extra);
        spawn.mode = Some("device_code".into());
        let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
        let seen = drive(&mut call, None).await;
        assert_eq!(seen.device_codes, vec![want.clone()], "pause at {pause:?}");
        assert!(seen.urls.is_empty(), "no login URL: {:?}", seen.urls);
    }
    let offline = "codex/device-auth-100x30";
    let mut spawn = fake_spawn_with(
        offline,
        "whole",
        &dir.path().join("c.json"),
        "codex",
        &["--no-wait"],
    );
    spawn.mode = Some("device_code".into());
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
    let seen = drive(&mut call, None).await;
    assert!(
        seen.device_codes.is_empty() && seen.urls.is_empty(),
        "{seen:?}"
    );
    // A mode the provider does not have is refused.
    let mut spawn = fake_spawn_with(offline, "whole", &dir.path().join("c.json"), "codex", &[]);
    spawn.mode = Some("no_such_mode".into());
    let err = client
        .pty(&PtyRequest::Spawn(spawn))
        .await
        .expect_err("unknown mode");
    assert!(err.to_string().contains("no_such_mode"), "{err}");
}

/// claude-code 2.1.332's trust dialog opens on "No, exit" (Enter quits). The agent moves to "Yes"
/// and confirms it, with keys the dialog takes (fake-cli drops keys sooner than 200 ms after a
/// prompt, as claude does); the person then types /login and the login URL comes.
#[tokio::test]
async fn claudes_trust_dialog_is_answered_yes_though_it_opens_on_no() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let case = "claude_code/app-100x30";
    let cred = agent.dir().join("c.json");
    let spawn = fake_spawn_with(case, "seed:9", &cred, "claude_code", &["--deaf-ms", "200"]);
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
    // What a person types at the app's prompts, once each prompt has been on screen a while
    // (the raw output: words are placed by cursor moves, so "run /login" is not one string).
    for (prompt, keys) in [("/login", "/login"), ("Sign in with your Anthropic", "\r")] {
        read_until(&mut call, prompt).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        call.send(FrameKind::Stdin, Bytes::copy_from_slice(keys.as_bytes()))
            .await
            .expect("type");
    }
    let mut found = None;
    while found.is_none() {
        match tokio::time::timeout(Duration::from_secs(60), call.next())
            .await
            .expect("the login URL came")
            .expect("stream")
        {
            Some(StreamItem::Event(PtyEvent::Url { url, .. })) => found = Some(url),
            Some(StreamItem::Event(PtyEvent::Exited(status))) => {
                panic!("claude quit at its trust dialog: {status:?}")
            }
            Some(_) => {}
            None => panic!("the session ended without a URL"),
        }
    }
    assert_eq!(found.as_deref(), Some(expected_url(case).as_str()));
}

#[tokio::test]
async fn a_program_blocked_on_a_cursor_query_completes() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    // codex/login has no query; the TUI recording blocks on five of them before drawing anything.
    let mut spawn = fake_spawn(
        "codex/tui-80x24",
        "whole",
        &agent.dir().join("c.json"),
        "codex",
    );
    spawn.argv.push("--no-wait".into());
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
    let seen = drive(&mut call, None).await;
    assert_eq!(seen.exit, Some(0));
    assert!(String::from_utf8_lossy(&seen.output).contains("Sign in with ChatGPT"));
}

async fn read_until(call: &mut StreamCall<Pty>, needle: &str) -> String {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        match tokio::time::timeout(Duration::from_secs(30), call.next())
            .await
            .expect("stalled")
            .expect("stream")
        {
            Some(StreamItem::Data(_, b)) => out.extend_from_slice(&b),
            Some(_) => {}
            None => panic!("ended before {needle:?}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pids_in(text: &str) -> Vec<i32> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .filter(|p| *p > 1)
        .collect()
}

#[tokio::test]
async fn closing_a_session_kills_its_whole_process_group() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let script =
        "sleep 1000 & echo kid=$!; sh -c 'sleep 1000 & echo grandkid=$!; wait' & echo ready; wait";
    let mut call = client
        .pty(&PtyRequest::Spawn(PtySpawn::new(["sh", "-c", script])))
        .await
        .expect("spawn");
    let mut text = read_until(&mut call, "ready").await;
    if !text.contains("grandkid") {
        text.push_str(&read_until(&mut call, "grandkid").await);
    }
    let pids = pids_in(&text);
    assert_eq!(pids.len(), 2, "{text}");
    assert!(pids.iter().all(|p| process_alive(*p)));
    orchestrator::pty::control(&call, &PtyControl::Close)
        .await
        .expect("close");
    let seen = drive(&mut call, None).await;
    assert!(seen.exit.is_some());
    let survivors = survivors_after_5s(&pids).await;
    assert!(
        survivors.is_empty(),
        "processes of the group survived: {survivors:?}"
    );
}

/// Daemons leave the process group, the terminal session and their parent (`setsid` and a fork,
/// as codex's app-server and its pid-update-loop do). One keeps the session's environment, one
/// starts with an empty environment (only the session's cgroup holds it; this machine's agent runs
/// as root with cgroup v2, as in the VM). Both end when the session is closed, and when the
/// program exits on its own.
#[tokio::test]
async fn a_session_ends_the_daemons_its_program_started() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let script = "setsid -f sh -c 'echo marked=$$; exec sleep 1000'; \
                  setsid -f env -i sh -c 'echo bare=$$; exec sleep 1000'; \
                  sleep 0.3; echo ready; ";
    for close in [true, false] {
        let tail = if close { "sleep 1000" } else { "exit 0" };
        let mut call = client
            .pty(&PtyRequest::Spawn(PtySpawn::new([
                "sh",
                "-c",
                &format!("{script}{tail}"),
            ])))
            .await
            .expect("spawn");
        let text = read_until(&mut call, "ready").await;
        let daemon = |name: &str| -> i32 {
            text.split(&format!("{name}="))
                .nth(1)
                .and_then(|rest| pids_in(rest).first().copied())
                .unwrap_or_else(|| panic!("no {name} pid in {text:?}"))
        };
        let pids = [daemon("marked"), daemon("bare")];
        for pid in pids {
            // Its own session: neither the group nor the terminal session reaches it.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
            let sid: i32 = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(3)?.parse().ok())
                .expect("sid");
            assert_eq!(sid, pid, "the daemon {pid} is a session leader");
        }
        if close {
            orchestrator::pty::control(&call, &PtyControl::Close)
                .await
                .expect("close");
        }
        let seen = drive(&mut call, None).await;
        assert!(seen.exit.is_some());
        let survivors = survivors_after_5s(&pids).await;
        assert!(
            survivors.is_empty(),
            "daemons {survivors:?} outlived their session (closed: {close})"
        );
    }
}

#[tokio::test]
async fn a_dropped_client_reattaches_and_gets_the_scrollback_first() {
    let agent = AgentProcess::start().await;
    let session;
    {
        let client = agent.client().await;
        let mut spawn = PtySpawn::new(["sh", "-c", "echo before-drop; read x; echo after-$x"]);
        spawn.keep_on_detach = true;
        let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
        match call.next().await.expect("event") {
            Some(StreamItem::Event(PtyEvent::Started { session: s, .. })) => session = s,
            other => panic!("expected started, got {other:?}"),
        }
        read_until(&mut call, "before-drop").await;
        drop(call);
        drop(client);
    }
    let client = agent.client().await;
    let mut call = client
        .pty(&PtyRequest::Attach {
            session: session.clone(),
            interactive: false,
        })
        .await
        .expect("attach");
    match call.next().await.expect("event") {
        Some(StreamItem::Event(PtyEvent::Attached {
            session: s,
            scrollback_bytes,
        })) => {
            assert_eq!(s, session);
            assert!(scrollback_bytes > 0);
        }
        other => panic!("expected attached, got {other:?}"),
    }
    read_until(&mut call, "before-drop").await;
    call.send(FrameKind::Stdin, Bytes::from_static(b"again\n"))
        .await
        .expect("keys");
    let seen = drive(&mut call, None).await;
    assert!(String::from_utf8_lossy(&seen.output).contains("after-again"));
    assert_eq!(seen.exit, Some(0));
}

/// A person's terminal attached late is shown the session so far without its terminal queries:
/// it would answer them as keys typed into the program (a device-attributes answer's digits pick
/// an item of a numbered menu). The agent answered them when they were live.
#[tokio::test]
async fn a_late_terminal_is_not_shown_queries_it_would_answer_as_keys() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let script = r#"printf '\033[c\033[>q\033]11;?\007\033[31mmenu\033[0m\n'; sleep 1; \
                    printf 'shown\n'; sleep 1"#;
    let mut spawn = PtySpawn::new(["sh", "-c", script]);
    spawn.keep_on_detach = true;
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
    let session = match call.next().await.expect("event") {
        Some(StreamItem::Event(PtyEvent::Started { session, .. })) => session,
        other => panic!("expected started, got {other:?}"),
    };
    let live = read_until(&mut call, "shown").await;
    assert!(
        live.contains("\x1b[c"),
        "the live stream has the query: {live:?}"
    );
    let mut late = client
        .pty(&PtyRequest::Attach {
            session,
            interactive: true,
        })
        .await
        .expect("attach");
    let shown = read_until(&mut late, "shown").await;
    assert!(shown.contains("\x1b[31mmenu"), "{shown:?}");
    for query in ["\x1b[c", "\x1b[>q", "\x1b]11;?"] {
        assert!(!shown.contains(query), "{query:?} shown again: {shown:?}");
    }
    let seen = drive(&mut late, None).await;
    assert_eq!(seen.exit, Some(0));
}

/// A person's terminal attached to a live session: the agent still answers the program's terminal
/// queries (at once, as the terminal the program sees), and the terminal's own answers, which come
/// late and once per terminal, are not typed into the program; its keys are. (gemini's login, with
/// the browser VM's terminal attached, took a late device-attributes answer's digits as a pick of
/// its menu's second item.)
#[tokio::test]
async fn a_persons_terminal_types_its_keys_but_not_its_answers_to_queries() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let script = r#"stty -echo; echo ready; read go
        stty -icanon min 1 time 0; printf '\033[c'
        echo answer=$(dd bs=1 count=7 2>/dev/null | od -An -tx1)
        stty icanon; read line; echo "picked=$line." "#;
    let mut spawn = PtySpawn::new(["sh", "-c", script]);
    spawn.interactive = true;
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
    read_until(&mut call, "ready").await;
    call.send(FrameKind::Stdin, Bytes::from_static(b"go\n"))
        .await
        .expect("keys");
    read_until(&mut call, "\x1b[c").await;
    // What xterm answers, then what the person types.
    call.send(
        FrameKind::Stdin,
        Bytes::from_static(b"\x1b[?64;1;2;6;9;15;22c\x1b]11;rgb:2020/2828/3030\x1b\\x\n"),
    )
    .await
    .expect("keys");
    let seen = drive(&mut call, None).await;
    let text = String::from_utf8_lossy(&seen.output);
    assert!(
        text.contains("answer= 1b 5b 3f 31 3b 32 63"),
        "the agent's device attributes: {text:?}"
    );
    assert!(text.contains("picked=x."), "{text:?}");
    assert_eq!(seen.exit, Some(0));
}

#[tokio::test]
async fn resize_signals_env_and_bad_input_behave() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let mut spawn = PtySpawn::new([
        "sh",
        "-c",
        "echo var=$DEMO; stty size; trap 'stty size; exit 7' WINCH; echo ready; while :; do sleep 0.05; done",
    ]);
    spawn.env = EnvVars::from_pairs([("DEMO", "per-call")]);
    spawn.cols = 90;
    spawn.rows = 20;
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
    let text = read_until(&mut call, "ready").await;
    assert!(text.contains("var=per-call"), "{text}");
    assert!(text.contains("20 90"), "{text}");
    orchestrator::pty::control(
        &call,
        &PtyControl::Resize {
            cols: 120,
            rows: 40,
        },
    )
    .await
    .expect("resize");
    let seen = drive(&mut call, None).await;
    assert!(String::from_utf8_lossy(&seen.output).contains("40 120"));
    assert_eq!(seen.exit, Some(7));

    // An unknown provider or an empty argv is a typed error; the connection stays usable.
    let mut bad = PtySpawn::new(["true"]);
    bad.provider = Some("nope".into());
    let err = client.pty(&PtyRequest::Spawn(bad)).await;
    let err = match err {
        Ok(mut call) => call.next().await.expect_err("refused"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(client.health().await.is_ok());
}

/// Runs `argv` in a second PTY session of the same agent to its end: (output, exit code).
async fn run_in_pty(client: orchestrator::AgentClient, argv: Vec<String>) -> (String, i32) {
    let mut call = client
        .pty(&PtyRequest::Spawn(PtySpawn::new(argv)))
        .await
        .expect("spawn");
    let seen = drive(&mut call, None).await;
    (
        String::from_utf8_lossy(&seen.output).into_owned(),
        seen.exit.expect("exit status"),
    )
}

/// Logs in through the localhost callback: the fake CLI hands its URL to `$BROWSER` (the agent's
/// shim), and a program in the VM (`fake-cli --complete`, what the provider's page makes the browser
/// do) visits the URL's `redirect_uri` with a code and `state`. Returns the CLI's outcome and what
/// the visit printed.
async fn login_through_callback(
    agent: &AgentProcess,
    case: &str,
    provider: &str,
    state: Option<&str>,
) -> (Seen, String, i32, PathBuf) {
    let cred = agent
        .dir()
        .join(format!("cb-{}.json", case.replace('/', "-")));
    let client = agent.client().await;
    let mut spawn = fake_spawn(case, "seed:5", &cred, provider);
    // Any free port: parallel tests (and other users of this machine) may hold the recorded one.
    spawn.argv.extend(["--callback-port".into(), "0".into()]);
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
    let mut seen = Seen::default();
    let mut visit = None;
    loop {
        let Ok(item) = tokio::time::timeout(Duration::from_secs(60), call.next()).await else {
            let tail = &seen.output[seen.output.len().saturating_sub(300)..];
            panic!(
                "{case}: stalled; urls {:?}; visit finished: {:?}; screen tail {:?}",
                seen.urls,
                visit.as_ref().map(tokio::task::JoinHandle::is_finished),
                String::from_utf8_lossy(tail)
            );
        };
        match item.expect("pty stream") {
            None => break,
            Some(StreamItem::Data(FrameKind::Stdout, b)) => seen.output.extend_from_slice(&b),
            Some(StreamItem::Event(PtyEvent::Url {
                url,
                provider,
                source,
            })) => {
                if source == UrlSource::Browser && visit.is_none() {
                    let mut argv = vec![fake_cli(), "--complete".into(), url.clone()];
                    if let Some(state) = state {
                        argv.extend(["--state".into(), state.into()]);
                    }
                    // Concurrently: the CLI keeps writing while the browser comes back.
                    visit = Some(tokio::spawn(run_in_pty(client.clone(), argv)));
                }
                seen.urls.push((provider, url, source));
            }
            Some(StreamItem::Event(PtyEvent::Exited(status))) => {
                seen.exit = Some(status.shell_code())
            }
            Some(_) => {}
        }
    }
    let (visit_output, visit_exit) = visit
        .expect("the CLI handed a URL to $BROWSER")
        .await
        .expect("visit task");
    (seen, visit_output, visit_exit, cred)
}

#[tokio::test]
async fn a_login_completes_through_the_localhost_callback() {
    let agent = AgentProcess::start().await;
    for (case, provider) in [
        ("claude_code/auth-login-80x24", "claude_code"),
        ("codex/login-80x24", "codex"),
        ("gemini_cli/display-80x24", "gemini_cli"),
    ] {
        let (seen, visit, visit_exit, cred) =
            login_through_callback(&agent, case, provider, None).await;
        let screen = String::from_utf8_lossy(&seen.output);
        assert_eq!(
            visit.trim(),
            "200",
            "{case}: the browser got the success page"
        );
        assert_eq!(visit_exit, 0);
        assert_eq!(seen.exit, Some(0), "{case}: {screen}");
        assert!(screen.contains("Login successful"), "{case}: {screen}");
        let cred = std::fs::read_to_string(&cred).expect("credential file written");
        assert!(cred.contains("fake-access-token-0001"), "{case}");
        // The URL the browser got carries the port the CLI actually listens on.
        let browser = seen
            .urls
            .iter()
            .find(|(_, _, s)| *s == UrlSource::Browser)
            .expect("browser url");
        assert_ne!(
            Some(browser.1.as_str()),
            recorded_browser_url(case).as_deref()
        );
    }
}

#[tokio::test]
async fn a_callback_with_another_logins_state_fails_the_login() {
    let agent = AgentProcess::start().await;
    let case = "claude_code/auth-login-100x30";
    let (seen, visit, visit_exit, cred) =
        login_through_callback(&agent, case, "claude_code", Some("state-of-another-login")).await;
    let screen = String::from_utf8_lossy(&seen.output);
    assert_eq!(visit.trim(), "400");
    assert_eq!(visit_exit, 1);
    assert_eq!(seen.exit, Some(1), "{screen}");
    assert!(screen.contains("state mismatch"), "{screen}");
    assert!(
        !cred.exists(),
        "no credential file after a refused callback"
    );
}

/// Reads until the agent refuses a frame; returns the error (output before it is skipped).
async fn next_refusal(call: &mut StreamCall<Pty>) -> ErrorBody {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), call.next())
            .await
            .expect("pty stream stalled")
            .expect("pty stream")
            .expect("stream ended before the refusal");
        match item {
            StreamItem::Event(PtyEvent::Error(e)) => return e,
            StreamItem::Event(PtyEvent::Exited(s)) => panic!("session ended instead: {s:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn bad_control_messages_are_refused_with_typed_errors_and_the_session_lives_on() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let spawn = PtySpawn::new([
        "sh",
        "-c",
        "echo ready; read line; echo got=$line; stty size",
    ]);
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
    read_until(&mut call, "ready").await;
    let raw =
        |json: &'static str| Frame::data(FrameKind::Message, Bytes::from_static(json.as_bytes()));
    let cases: [(Frame, &str); 6] = [
        (raw("{not json"), ""),
        (raw(r#"{"op":"explode"}"#), "explode"),
        (raw(r#"{"op":"resize","cols":"wide"}"#), ""),
        (
            Frame::message(&PtyControl::Resize { cols: 0, rows: 0 }).expect("frame"),
            "0x0",
        ),
        // A 34 GB screen: refused with the limits, nothing allocated.
        (
            Frame::message(&PtyControl::Resize {
                cols: 65535,
                rows: 65535,
            })
            .expect("frame"),
            "65535x65535 is invalid (1 to 1000 columns, 1 to 500 rows)",
        ),
        (
            Frame::message(&PtyControl::Signal {
                signal: "SIGNOPE".into(),
            })
            .expect("frame"),
            "SIGNOPE",
        ),
    ];
    for (frame, mentions) in cases {
        call.send_frame(frame).await.expect("send");
        let e = next_refusal(&mut call).await;
        assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
        assert!(e.message.contains(mentions), "{e}");
    }
    // An output frame is not input either.
    call.send_frame(Frame::data(FrameKind::Stdout, Bytes::from_static(b"x")))
        .await
        .expect("send");
    assert_eq!(next_refusal(&mut call).await.code, ErrorCode::BadRequest);
    // The same session still takes a resize and keys, and ends normally.
    orchestrator::pty::control(&call, &PtyControl::Resize { cols: 70, rows: 15 })
        .await
        .expect("resize");
    call.send(FrameKind::Stdin, Bytes::from_static(b"hello\n"))
        .await
        .expect("keys");
    let seen = drive(&mut call, None).await;
    let text = String::from_utf8_lossy(&seen.output);
    assert!(text.contains("got=hello"), "{text}");
    assert!(text.contains("15 70"), "{text}");
    assert_eq!(seen.exit, Some(0));
    assert!(client.health().await.is_ok());
}

/// Where the agent with this pid keeps its browser shim (socket and symlinks).
fn shim_dir(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("vm-agent-shim-{pid}"))
}

#[tokio::test]
async fn the_shim_directory_is_traversable_only_and_removed_when_the_agent_stops() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let uid = nix::unistd::getuid().as_raw();
    let mut agent = AgentProcess::start().await;
    let dir = shim_dir(agent.pid());
    let meta = std::fs::symlink_metadata(&dir).expect("shim directory exists");
    assert!(meta.is_dir());
    // Programs run as the image's unprivileged user: they may reach the socket and the symlinks
    // but not list the directory; the socket checks each caller's process.
    assert_eq!(meta.mode() & 0o777, 0o711, "{}", dir.display());
    assert_eq!(meta.uid(), uid);
    let socket = std::fs::symlink_metadata(dir.join("shim.sock")).expect("socket");
    assert!(socket.file_type().is_socket());
    assert_eq!(socket.mode() & 0o777, 0o666);
    assert_eq!(socket.uid(), uid);
    // Programs are pointed at it.
    let (out, code) = run_in_pty(
        agent.client().await,
        vec!["sh".into(), "-c".into(), "echo browser=$BROWSER".into()],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("browser={}/bin/vm-agent-browser", dir.display())),
        "{out}"
    );

    let status = agent.terminate().expect("agent stopped");
    assert!(status.success(), "{status:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());

    // An agent killed outright cannot clean up: the next one removes what it left.
    let mut killed = AgentProcess::start().await;
    let left = shim_dir(killed.pid());
    killed.kill();
    assert!(left.exists());
    let next = AgentProcess::start().await;
    assert!(!left.exists(), "{} not swept", left.display());
    assert!(shim_dir(next.pid()).exists());
}

#[tokio::test]
async fn interactive_agentctl_takes_the_local_terminal_size_and_follows_its_resizes() {
    use portable_pty::{native_pty_system, CommandBuilder, PtySize};
    use std::io::Read;
    let agent = AgentProcess::start().await;
    let size = |cols, rows| PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    };
    // A person's terminal: a real PTY of 77x19 with agentctl as its session leader.
    let local = native_pty_system()
        .openpty(size(77, 19))
        .expect("local pty");
    let mut cmd = CommandBuilder::new(test_kit::workspace_bin("agentctl"));
    cmd.arg("--connect");
    cmd.arg(format!("unix:{}", agent.socket().display()));
    cmd.args([
        "pty",
        "--interactive",
        "--",
        "sh",
        "-c",
        "stty size; trap 'stty size; exit 3' WINCH; echo ready; while :; do sleep 0.05; done",
    ]);
    let mut child = local.slave.spawn_command(cmd).expect("agentctl");
    drop(local.slave);
    let mut reader = local.master.try_clone_reader().expect("reader");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let mut wait_for = async |needle: &str| {
        while !screen.contains(needle) {
            let chunk = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in {screen:?}"))
                .unwrap_or_else(|| panic!("terminal closed before {needle:?}: {screen:?}"));
            screen.push_str(&String::from_utf8_lossy(&chunk));
        }
        screen.clone()
    };
    let shown = wait_for("ready").await;
    assert!(shown.contains("19 77"), "{shown:?}");
    local.master.resize(size(93, 21)).expect("resize");
    wait_for("21 93").await;
    // agentctl ends with the program (no key press needed) and passes its exit code on.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("agentctl status") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agentctl still running after its program ended: {screen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.exit_code(), 3, "{screen:?}");
}

/// A slow VM stalls a CLI's output anywhere, also in the middle of its URL. Whatever the point,
/// the URL is reported whole and never cut short: the output of each recording is paused at every
/// offset inside its URL (and a little after it), many sessions at once on one agent.
#[tokio::test]
async fn a_url_is_reported_whole_wherever_the_output_pauses() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    for case in [
        "claude_code/setup-token-full-80x24",
        "claude_code/auth-login-full-80x24",
        "gemini_cli/nobrowser-80x24",
        "codex/login-80x24",
    ] {
        let output = std::fs::read(fixture(case).join("output.bin")).expect("output.bin");
        let want = expected_url(case);
        let start = output
            .windows(8)
            .position(|w| w == b"https://")
            .expect("a URL in the recording");
        let end = (start + want.len() + 16).min(test_kit::fake_clis::replay_len(case));
        let offsets: Vec<usize> = (start..end).collect();
        for batch in offsets.chunks(16) {
            let runs = batch.iter().map(|at| {
                let client = client.clone();
                let cred = agent.dir().join(format!("cred-{at}.json"));
                async move {
                    let pause = format!("{at}:20");
                    let spawn = fake_spawn_with(
                        case,
                        "whole",
                        &cred,
                        "codex",
                        &["--no-wait", "--pause-at", &pause],
                    );
                    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
                    (*at, drive(&mut call, None).await)
                }
            });
            for (at, seen) in futures_util::future::join_all(runs).await {
                let urls: Vec<&str> = seen.urls.iter().map(|(_, u, _)| u.as_str()).collect();
                assert!(
                    urls.contains(&want.as_str()),
                    "{case}, paused at {at}: {urls:?}"
                );
                for url in &urls {
                    assert!(
                        *url == want || !want.starts_with(url),
                        "{case}, paused at {at}: cut short: {url}"
                    );
                }
            }
        }
    }
}

/// The processes of `pids` still alive once they have had 5 s to end.
async fn survivors_after_5s(pids: &[i32]) -> Vec<i32> {
    for _ in 0..100 {
        if pids.iter().all(|p| !process_alive(*p)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pids.iter().copied().filter(|p| process_alive(*p)).collect()
}

/// The browser shim takes a session's URLs only from that session's own processes: a process
/// outside it that knows the session id (another session's CLI, anything of the guest user) is
/// refused, from what the kernel says the caller is.
#[tokio::test]
async fn the_shim_refuses_a_caller_outside_the_session_it_names() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let mut call = client
        .pty(&PtyRequest::Spawn(PtySpawn::new(["sleep", "30"])))
        .await
        .expect("spawn");
    let session = match call.next().await.expect("pty stream") {
        Some(StreamItem::Event(PtyEvent::Started { session, .. })) => session,
        other => panic!("expected Started, got {other:?}"),
    };
    let stream = tokio::net::UnixStream::connect(shim_dir(agent.pid()).join("shim.sock"))
        .await
        .expect("connect to the shim");
    let (read, mut write) = stream.into_split();
    let line = serde_json::json!({
        "session": session,
        "url": "https://claude.com/cai/oauth/authorize?code=true&client_id=forged&code_challenge=x&state=y",
        "via": "forger",
    });
    write
        .write_all(format!("{line}\n").as_bytes())
        .await
        .expect("send");
    let mut reply = String::new();
    tokio::io::BufReader::new(read)
        .read_line(&mut reply)
        .await
        .expect("reply");
    assert!(
        reply.starts_with("error: the caller is not a process of pty session"),
        "{reply}"
    );
    // Nothing reached the session: no URL event before it is closed.
    orchestrator::pty::control(
        &call,
        &PtyControl::Signal {
            signal: "SIGKILL".into(),
        },
    )
    .await
    .expect("kill");
    while let Some(item) = call.next().await.expect("pty stream") {
        assert!(
            !matches!(item, StreamItem::Event(PtyEvent::Url { .. })),
            "a forged URL was reported: {item:?}"
        );
    }
}

/// Runs `script` through `exec` as `user` (the agent's default when `None`): its stdout, or the
/// agent's refusal.
async fn exec_as(
    client: &orchestrator::AgentClient,
    script: &str,
    user: Option<&str>,
) -> Result<String, orchestrator::ClientError> {
    let request = protocol::messages::ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        user: user.map(Into::into),
        ..Default::default()
    };
    let mut call = client.exec(&request).await?;
    call.close_input();
    let out = call.collect_exec().await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The agent alone is root: every program runs as its unprivileged user (`--user` here, the
/// image's `user` in a VM) with that user's `HOME`, `USER` and `LOGNAME`, through `exec` and on a
/// PTY, and cannot signal the agent or read its memory; root only when a call names it. An agent
/// that is not root (a developer's) runs everything as itself and refuses another user.
#[tokio::test]
async fn programs_run_as_the_unprivileged_user_unless_root_is_named() {
    if !nix::unistd::geteuid().is_root() {
        let agent = AgentProcess::start().await;
        let refused = exec_as(&agent.client().await, "id -u", Some("root")).await;
        let Err(orchestrator::ClientError::Agent(body)) = refused else {
            panic!("a non-root agent ran a program as root: {refused:?}");
        };
        assert_eq!(body.code, ErrorCode::Forbidden, "{body}");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("the machine has the user nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let agent = AgentProcess::launch_with_args(
        &test_kit::agent::workspace_bin("vm-agent"),
        &[],
        &["--user".into(), "nobody".into()],
        true,
    )
    .await
    .expect("start vm-agent --user nobody");
    let client = agent.client().await;

    let who = "id -u; id -g; id -G; echo $HOME $USER $LOGNAME";
    // On a terminal, the terminal is the program's too.
    let who_on_a_pty = format!("{who}; stat -c %u \"$(tty)\"");
    let home = nobody.dir.display();
    assert_eq!(
        exec_as(&client, who, None).await.expect("exec"),
        format!("{uid}\n{gid}\n{gid}\n{home} nobody nobody\n"),
        "exec runs as the agent's user, with no other group"
    );
    let pid = agent.pid();
    assert_eq!(
        exec_as(
            &client,
            &format!(
                "kill -0 {pid} 2>/dev/null || echo no-signal; \
                 cat /proc/{pid}/environ >/dev/null 2>&1 || echo no-memory"
            ),
            None,
        )
        .await
        .expect("exec"),
        "no-signal\nno-memory\n"
    );
    assert_eq!(
        exec_as(&client, "id -u", Some("root"))
            .await
            .expect("exec as root"),
        "0\n"
    );
    let unknown = exec_as(&client, "id -u", Some("no-such-user")).await;
    let Err(orchestrator::ClientError::Agent(body)) = unknown else {
        panic!("ran as a user that does not exist: {unknown:?}");
    };
    assert_eq!(body.code, ErrorCode::NotFound, "{body}");

    // A working directory the user may not enter is refused, not entered as root.
    let closed = agent.dir().join("root-only");
    std::fs::create_dir(&closed).expect("mkdir");
    std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let private = protocol::messages::ExecRequest {
        argv: vec!["ls".into()],
        cwd: Some(closed.display().to_string()),
        ..Default::default()
    };
    let refused = client.exec(&private).await;
    let Err(orchestrator::ClientError::Agent(body)) = refused else {
        panic!("entered a directory its user may not: {refused:?}");
    };
    assert_eq!(body.code, ErrorCode::Forbidden, "{body}");
    let mut spawn = PtySpawn::new(["ls"]);
    spawn.cwd = Some(closed.display().to_string());
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
    let seen = drive(&mut call, None).await;
    assert_ne!(
        seen.exit,
        Some(0),
        "{}",
        String::from_utf8_lossy(&seen.output)
    );

    // On a PTY (through the agent's wrapper, which enters the session's cgroup first).
    let (out, code) =
        run_in_pty(client.clone(), vec!["sh".into(), "-c".into(), who_on_a_pty]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{uid}\r\n{gid}\r\n{gid}\r\n{home} nobody nobody\r\n{uid}"
        )),
        "{out}"
    );
    let mut spawn = PtySpawn::new(["id", "-u"]);
    spawn.user = Some("root".into());
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await.expect("spawn");
    let seen = drive(&mut call, None).await;
    assert_eq!(String::from_utf8_lossy(&seen.output).trim(), "0");
}

/// A file the host writes (a CLI's settings) belongs to the owner of the directory it lands in,
/// and so do the directories made for it: the CLI, running as that user, can change it.
#[tokio::test]
async fn written_files_belong_to_the_owner_of_their_directory() {
    use std::os::unix::fs::MetadataExt;
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let home = agent.dir().join("someone");
    std::fs::create_dir(&home).expect("home");
    let (uid, gid) = if nix::unistd::geteuid().is_root() {
        (65534, 65534)
    } else {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    };
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).expect("chown the home");
    let path = home.join(".cli/settings.json");
    client
        .write_file(&protocol::messages::WriteFileRequest {
            path: path.display().to_string(),
            content: b"{}".to_vec(),
            mode: Some(0o600),
            create_dirs: true,
        })
        .await
        .expect("write_file");
    for p in [path.clone(), home.join(".cli")] {
        let md = std::fs::metadata(&p).expect("written");
        assert_eq!((md.uid(), md.gid()), (uid, gid), "{}", p.display());
    }
}
