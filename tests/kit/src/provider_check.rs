//! Runs the real CLIs' logins through the agent's PTY as the login flow would (fresh home, seed
//! files, the mode's environment, auto-answers) and checks what the provider rules report against
//! an independent reading of the same run: the argv the CLI handed to `$BROWSER`/`xdg-open`
//! (logged by a wrapper in front of the agent's shim), the OSC 8 targets in the raw output, and the
//! output rendered by another terminal emulator: `pyte` (Debian's python3-pyte), written by
//! others than our detector's screen model. (A Rust emulator would share our detector's `vte`
//! parser and, in one workspace build, change its features.) Shared by `cargo xtask
//! provider-check` (the newest published CLIs) and the tests (the pinned ones).
//!
//! Without network, as in a login VM today: each CLI runs in its own network namespace with only
//! loopback (`unshare -n`), except a device-code login, which needs its issuer: the provider's
//! cannot be reached from here, so a stand-in issuer on loopback answers it ([`StandInIssuer`]),
//! and the rules are given its address.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::client::StreamItem;
use orchestrator::AgentClient;
use protocol::frame::FrameKind;
use protocol::messages::WriteFileRequest;
use protocol::providers::{LoginMode, ProviderDef, ProviderFile, UrlKind};
use protocol::pty::{PtyControl, PtyEvent, PtyRequest, PtySpawn, UrlSource};
use protocol::secret::EnvVars;

use crate::provider_clis::CliSet;

/// How long one login may take to show what it wants (gemini starts node twice).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to go on reading once it did (a second URL, the rest of a redraw).
const SETTLE: Duration = Duration::from_millis(1500);
/// Terminal size of the runs (the login flow's).
const COLS: u16 = 100;
const ROWS: u16 = 30;

/// What one mode of one CLI did.
#[derive(Debug, Clone)]
pub struct ModeCheck {
    /// Provider id.
    pub provider: String,
    /// Login mode id.
    pub mode: String,
    /// The CLI version that ran.
    pub version: String,
    /// Where the URL the mode wants came from (`device` for a device code), if it came.
    pub source: Option<String>,
    /// What the rules reported (URLs, or `page code` for a device code).
    pub reported: Vec<String>,
    /// What the independent reading found.
    pub independent: Vec<String>,
    /// The mode's URL (or code) was reported and the independent reading agrees.
    pub matched: bool,
}

/// The rules file the agent of a check must be started with (`AGENT_PROVIDER_RULES`): the
/// built-in rules, with the stand-in issuer's device page added to each device-code mode.
pub fn rules_for(issuer: &StandInIssuer) -> String {
    let page = format!("'^{}/codex/device$'", regex_escape(&issuer.url()));
    protocol::PROVIDER_RULES_TOML.replace(
        "device_url_patterns = ['^https://auth\\.openai\\.com/codex/device$']",
        &format!("device_url_patterns = ['^https://auth\\.openai\\.com/codex/device$', {page}]"),
    )
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escape = ".^$|?*+()[]{}\\".contains(c);
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// Runs every login mode of every provider of `set` through the agent `client` (started with
/// [`rules_for`] `issuer`), each in its own directory under `dir`. Progress goes to stderr.
pub async fn check_all(
    client: &AgentClient,
    set: &CliSet,
    dir: &Path,
    issuer: &StandInIssuer,
) -> Vec<ModeCheck> {
    let rules = ProviderFile::builtin();
    let mut results = Vec::new();
    for provider in &rules.provider {
        let Some(version) = set.versions.get(&provider.id) else {
            continue;
        };
        for mode in &provider.modes {
            eprintln!(
                "==> provider check: {} {version}, mode {}",
                provider.id, mode.id
            );
            let result = check_mode(client, set, provider, mode, version, dir, issuer).await;
            eprintln!(
                "    {}: {} (reported {:?}; independent {:?})",
                result.source.as_deref().unwrap_or("nothing"),
                if result.matched { "match" } else { "NO MATCH" },
                shortened(&result.reported),
                shortened(&result.independent),
            );
            results.push(result);
        }
    }
    results
}

/// The wrapper every run starts through: the agent's `$BROWSER` shim behind a logger of the
/// argv, `xdg-open` likewise, and no network but loopback unless the run needs its issuer. The
/// local agent passes this machine's environment on; a VM's agent has neither `CI` nor
/// `DEBIAN_FRONTEND`, which make gemini print its paste-code URL instead of opening a browser.
const RUN_SH: &str = r#"#!/bin/sh
unset CI DEBIAN_FRONTEND
export CHECK_REAL_BROWSER="$BROWSER"
export BROWSER="$HOME/.check/bin/browser"
export PATH="$HOME/.check/bin:$PATH"
if [ -n "$CHECK_OFFLINE" ]; then
    exec unshare -n sh -c 'ip link set lo up 2>/dev/null; exec "$@"' sh "$@"
fi
exec "$@"
"#;

/// Logs the URL handed to the browser, then hands it to the agent's shim.
const BROWSER_SH: &str = r#"#!/bin/sh
printf '%s\n' "$1" >> "$HOME/.check/argv"
exec "$CHECK_REAL_BROWSER" "$@"
"#;

async fn check_mode(
    client: &AgentClient,
    set: &CliSet,
    provider: &ProviderDef,
    mode: &LoginMode,
    version: &str,
    dir: &Path,
    issuer: &StandInIssuer,
) -> ModeCheck {
    let mut result = ModeCheck {
        provider: provider.id.clone(),
        mode: mode.id.clone(),
        version: version.to_owned(),
        source: None,
        reported: Vec::new(),
        independent: Vec::new(),
        matched: false,
    };
    let home = dir.join(format!("{}-{}-{}", provider.id, mode.id, version));
    if let Err(e) = prepare_home(client, provider, &home).await {
        result.independent.push(format!("(set-up failed: {e})"));
        return result;
    }
    let mut argv = vec![
        "sh".to_owned(),
        home.join(".check/run.sh").display().to_string(),
    ];
    argv.extend(mode.argv.iter().cloned());
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("HOME".into(), home.display().to_string());
    env.insert(
        "PATH".into(),
        format!(
            "{}:{}",
            set.path_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    if mode.url == UrlKind::Device {
        // The provider's issuer cannot be reached from here; the stand-in answers instead.
        argv.extend(["--experimental_issuer".to_owned(), issuer.url()]);
    } else {
        env.insert("CHECK_OFFLINE".into(), "1".into());
        // gemini hands its URL to `xdg-open` only when it sees a display (the browser VM's).
        env.insert("DISPLAY".into(), ":99".into());
    }
    let mut spawn = PtySpawn::new(argv);
    spawn.env = EnvVars(env);
    spawn.cwd = Some(home.display().to_string());
    spawn.cols = COLS;
    spawn.rows = ROWS;
    spawn.provider = Some(provider.id.clone());
    spawn.mode = Some(mode.id.clone());
    let argv_log = home.join(".check/argv");
    let (output, urls, codes) = match run(client, spawn, mode.url, &argv_log).await {
        Ok(seen) => seen,
        Err(e) => {
            result.independent.push(format!("(run failed: {e})"));
            return result;
        }
    };
    let argv_urls: Vec<String> = std::fs::read_to_string(&argv_log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let (shown, words) = match (screen_and_links(&output), screen_words(&output)) {
        (Ok(shown), Ok(words)) => (shown, words),
        (Err(e), _) | (_, Err(e)) => {
            result
                .independent
                .push(format!("(no independent reading: {e})"));
            return result;
        }
    };
    match mode.url {
        UrlKind::Browser => {
            result.independent = argv_urls.clone();
            let wanted: Vec<&(String, UrlSource)> =
                urls.iter().filter(|(u, _)| argv_urls.contains(u)).collect();
            result.source = wanted.first().map(|(_, s)| source_name(*s));
            result.matched =
                !argv_urls.is_empty() && argv_urls.iter().all(|a| urls.iter().any(|(u, _)| u == a));
        }
        UrlKind::Printed => {
            result.independent = shown.clone();
            let printed: Vec<&(String, UrlSource)> = urls
                .iter()
                .filter(|(_, s)| *s != UrlSource::Browser)
                .collect();
            result.source = printed.first().map(|(_, s)| source_name(*s));
            result.matched = !printed.is_empty() && printed.iter().all(|(u, _)| shown.contains(u));
        }
        UrlKind::Device => {
            result.independent = words
                .iter()
                .position(|w| w.ends_with("/codex/device"))
                .and_then(|i| {
                    let page = &words[i];
                    let code = words[i..].iter().find(|w| is_device_code(w))?;
                    Some(format!("{page} {code}"))
                })
                .into_iter()
                .collect();
            result.source = (!codes.is_empty()).then(|| "device".to_owned());
            result.reported = codes.iter().map(|(u, c)| format!("{u} {c}")).collect();
            result.matched = !result.reported.is_empty() && result.reported == result.independent;
            return result;
        }
    }
    result.reported = urls.into_iter().map(|(u, _)| u).collect();
    result
}

/// URLs cut to their address and the first of their query, for progress lines.
fn shortened(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|u| match u.char_indices().nth(72) {
            Some((i, _)) => format!("{}...", &u[..i]),
            None => u.clone(),
        })
        .collect()
}

fn source_name(source: UrlSource) -> String {
    match source {
        UrlSource::Screen => "screen",
        UrlSource::Hyperlink => "hyperlink",
        UrlSource::Clipboard => "clipboard",
        UrlSource::Browser => "browser",
    }
    .to_owned()
}

/// A code as codex prints it: letters and digits, a dash, letters and digits.
fn is_device_code(word: &str) -> bool {
    let Some((a, b)) = word.split_once('-') else {
        return false;
    };
    let part = |p: &str| {
        p.len() >= 4
            && p.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    };
    part(a) && part(b)
}

/// Makes the run's home: the provider's seed files (written through the agent, as the login flow
/// does), the wrapper and the browser loggers.
async fn prepare_home(
    client: &AgentClient,
    provider: &ProviderDef,
    home: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let bin = home.join(".check/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::write(home.join(".check/run.sh"), RUN_SH)?;
    for name in ["browser", "xdg-open"] {
        let path = bin.join(name);
        std::fs::write(&path, BROWSER_SH)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    let home_text = home.display().to_string();
    for seed in &provider.seed_files {
        let path = protocol::providers::expand_home(&seed.path, home);
        client
            .write_file(&WriteFileRequest {
                path: path.display().to_string(),
                content: seed.content_for(&home_text).into_bytes(),
                mode: Some(seed.mode),
                create_dirs: true,
            })
            .await?;
    }
    Ok(())
}

type Seen = (Vec<u8>, Vec<(String, UrlSource)>, Vec<(String, String)>);

/// Runs the login until what the mode wants came (then a little longer), it exited, or the
/// timeout; then closes it. Returns the output, the URLs and the device codes reported. A browser
/// login has what it wants once the browser was called (`argv_log` written) and a URL reported
/// (the agent reports a URL once, from wherever it saw it first).
async fn run(
    client: &AgentClient,
    spawn: PtySpawn,
    wants: UrlKind,
    argv_log: &Path,
) -> Result<Seen, Box<dyn std::error::Error>> {
    let mut call = client.pty(&PtyRequest::Spawn(spawn)).await?;
    let (mut output, mut urls, mut codes) = (Vec::new(), Vec::new(), Vec::new());
    let mut deadline = Instant::now() + LOGIN_TIMEOUT;
    let mut settling = false;
    loop {
        // Woken at least every half second: the browser's log is a file, not an event.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(500));
        if left.is_zero() {
            break;
        }
        let item = match tokio::time::timeout(left, call.next()).await {
            // Woken up with nothing read.
            Err(_) => None,
            Ok(next) => match next? {
                None => break,
                Some(item) => Some(item),
            },
        };
        match item {
            None => {}
            Some(StreamItem::Data(FrameKind::Stdout, bytes)) => output.extend_from_slice(&bytes),
            Some(StreamItem::Data(..)) => {}
            Some(StreamItem::Event(PtyEvent::Url { url, source, .. })) => urls.push((url, source)),
            Some(StreamItem::Event(PtyEvent::DeviceCode { url, code, .. })) => {
                codes.push((url, code))
            }
            Some(StreamItem::Event(PtyEvent::Exited(_))) => break,
            Some(StreamItem::Event(_)) => {}
        }
        let got = match wants {
            UrlKind::Browser => !urls.is_empty() && argv_log.exists(),
            UrlKind::Printed => urls.iter().any(|(_, s)| *s != UrlSource::Browser),
            UrlKind::Device => !codes.is_empty(),
        };
        if got && !settling {
            settling = true;
            deadline = Instant::now() + SETTLE;
        }
    }
    let _ = orchestrator::pty::control(&call, &PtyControl::Close).await;
    Ok((output, urls, codes))
}

/// Renders `output` on a `COLS` x `ROWS` screen with pyte; returns its rows.
const PYTE_RENDER: &str = r#"
import sys, pyte

class Screen(pyte.Screen):
    # pyte 0.8 (Debian 12) hands xterm's private SGR (CSI > 4 m, key modifiers) to an SGR
    # handler that does not take it: they change no cell, so they are dropped.
    def select_graphic_rendition(self, *attrs, private=False):
        if not private:
            super().select_graphic_rendition(*attrs)

cols, rows = int(sys.argv[2]), int(sys.argv[3])
screen = Screen(cols, rows)
stream = pyte.ByteStream(screen)
stream.feed(open(sys.argv[1], "rb").read())
sys.stdout.write("\n".join(screen.display))
"#;

/// The rows of `output` as pyte renders them.
pub fn rendered_rows(output: &[u8]) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("output.bin");
    std::fs::write(&file, output).map_err(|e| e.to_string())?;
    // Debian's interpreter and its python3-pyte, whatever python3 comes first on PATH.
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", PYTE_RENDER])
        .arg(&file)
        .args([COLS.to_string(), ROWS.to_string()])
        .output()
        .map_err(|e| {
            format!("python3 (with python3-pyte; cargo xtask setup installs them): {e}")
        })?;
    if !out.status.success() {
        return Err(format!(
            "pyte failed (python3-pyte installed? cargo xtask setup installs it): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The URLs a person sees: OSC 8 hyperlink targets in the raw output, and URLs on the screen as
/// pyte renders it, rows joined where a URL runs to the end of one row and carries on at the
/// start of the next (soft wraps, and the hard wraps CLIs insert).
pub fn screen_and_links(output: &[u8]) -> Result<Vec<String>, String> {
    let mut found = osc8_targets(output);
    let rows = rendered_rows(output)?;
    let url_char = |c: char| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c);
    for (i, row) in rows.iter().enumerate() {
        let Some(start) = row.find("https://") else {
            continue;
        };
        let mut url: String = row[start..].chars().take_while(|c| url_char(*c)).collect();
        let mut ends_row = row[start + url.len()..].trim().is_empty();
        for next in rows.iter().skip(i + 1) {
            let piece: String = next
                .trim_start()
                .chars()
                .take_while(|c| url_char(*c))
                .collect();
            if !ends_row || piece.is_empty() || piece.starts_with("http") {
                break;
            }
            let rest = next.trim_start()[piece.len()..].trim();
            url.push_str(&piece);
            ends_row = rest.is_empty();
        }
        let url = url.trim_end_matches(['.', ',', ')']).to_owned();
        if !found.contains(&url) {
            found.push(url);
        }
    }
    Ok(found)
}

/// The words on the screen as pyte renders it.
fn screen_words(output: &[u8]) -> Result<Vec<String>, String> {
    Ok(rendered_rows(output)?
        .iter()
        .flat_map(|row| row.split_whitespace())
        .map(str::to_owned)
        .collect())
}

/// Targets of OSC 8 hyperlinks (`ESC ] 8 ; params ; URI ST`), read from the raw bytes.
fn osc8_targets(output: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = output;
    while let Some(at) = find(rest, b"\x1b]8;") {
        rest = &rest[at + 4..];
        let Some(semi) = rest.iter().position(|b| *b == b';') else {
            break;
        };
        let target = &rest[semi + 1..];
        let end = target
            .iter()
            .position(|b| *b == 0x07 || *b == 0x1b)
            .unwrap_or(target.len());
        let uri = String::from_utf8_lossy(&target[..end]).into_owned();
        if uri.starts_with("http") && !found.contains(&uri) {
            found.push(uri);
        }
        rest = &target[end..];
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A stand-in for codex's device-code issuer on loopback (the provider cannot be reached from
/// here): hands out one code and keeps the login pending. Stops when dropped.
#[derive(Debug)]
pub struct StandInIssuer {
    port: u16,
    stop: Arc<AtomicBool>,
}

/// The code the stand-in hands out.
pub const STAND_IN_CODE: &str = "FAKE-0001";

impl StandInIssuer {
    /// Listens on a free loopback port.
    pub fn start() -> std::io::Result<StandInIssuer> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        answer(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(StandInIssuer { port, stop })
    }

    /// Its base URL, given to codex as `--experimental_issuer`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for StandInIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request: the user code for `POST .../deviceauth/usercode`, "pending" (403) for the token
/// poll, 404 otherwise.
fn answer(mut stream: std::net::TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&request, b"\r\n\r\n").is_none() && request.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path.ends_with("/deviceauth/usercode") {
        (
            "200 OK",
            format!(
                r#"{{"device_auth_id":"fake-device-auth-0001","user_code":"{STAND_IN_CODE}","interval":"5"}}"#
            ),
        )
    } else if path.ends_with("/deviceauth/token") {
        (
            "403 Forbidden",
            r#"{"error":"authorization_pending"}"#.to_owned(),
        )
    } else {
        ("404 Not Found", "{}".to_owned())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}
