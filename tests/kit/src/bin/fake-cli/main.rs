//! `fake-cli`: replays a recorded login flow of a real CLI (tests/fixtures/cli/<provider>/<case>/)
//! byte for byte on its terminal, in a chosen chunking, and then behaves like the real login.
//!
//! Like the real CLIs it puts its terminal in raw mode, asks the terminal questions at the recorded
//! points and blocks until they are answered, waits for the keys the recording shows a person (or the
//! agent's auto-responses) typing, hands the recorded URL to `$BROWSER` or `xdg-open`, then waits for
//! whichever comes first: the pasted code (a non-empty line of input) or the browser coming back to the
//! localhost callback of that URL (`GET <redirect path>?code=...&state=...`, see `callback`). Either
//! way it then writes the provider's credential file (temp file + rename, mode 0600) and exits 0; a
//! callback answers HTTP 200 once the file is written. A callback with a wrong `state` is fatal (exit
//! 1), as with claude-code. Ctrl-C at any wait exits 130.
//!
//! The callback listens on 127.0.0.1 at the port of the recorded `redirect_uri` (`--callback-port N`
//! picks another, 0 any free one; a busy port falls back to a free one) and the URL handed to the
//! browser carries the port actually bound. Recordings whose browser URL has no loopback redirect
//! (paste-a-code flows such as gemini's `NO_BROWSER`) only take the pasted code, like the real CLI.
//!
//! usage:
//!   fake-cli FIXTURE_DIR [--chunks whole|bytes|fixed:N|seed:S] [--provider ID | --cred PATH]
//!                        [--no-wait] [--callback-port N] [--pause-at OFFSET:MS] [--deaf-ms MS]
//!                                     `--pause-at` stops writing at that output offset for MS;
//!                                     `--deaf-ms` drops keys typed sooner than MS after a prompt
//!                                     was drawn (as the newest CLIs do)
//!                                     `--provider` writes the credential where the provider rules
//!                                     (protocol's providers.toml) put it for this HOME and env
//!   fake-cli --status ID              the CLI's login status: "Logged in" (exit 0) when that
//!                                     file is a complete login by the same rules, else exit 1
//!   fake-cli --visit URL              one HTTP GET on a loopback URL; prints the status code,
//!                                     exits 0 on 2xx, 1 otherwise
//!   fake-cli --prompt ID TEXT         one prompt, as `claude -p` does: the token of the
//!                                     provider's credential file to `$FAKE_API_URL` (see `prompt`)
//!   fake-cli --complete URL [--state S]
//!                                     what the provider's login page does: visits URL's loopback
//!                                     redirect_uri with a fake code and URL's state (or S)

mod callback;
mod prompt;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

enum Chunks {
    Whole,
    Fixed(usize),
    Seed(u64),
}

struct Args {
    fixture: PathBuf,
    chunks: Chunks,
    cred: Option<PathBuf>,
    no_wait: bool,
    callback_port: Option<u16>,
    /// Stop writing at this output offset for this long (a slow VM, a busy CLI).
    pause: Option<(usize, Duration)>,
    /// Keys typed sooner than this after a prompt was drawn are dropped, as the newest CLIs'
    /// UIs do with input that arrives before they are ready for it.
    deaf_for: Duration,
}

/// What the command line asks for.
enum Mode {
    Replay(Args),
    Status(String),
    Visit(String),
    Complete { url: String, state: Option<String> },
    Prompt { provider: String, text: String },
}

const USAGE: &str = "usage: fake-cli FIXTURE_DIR [--chunks SPEC] [--provider ID | --cred PATH] [--no-wait] [--callback-port N] [--pause-at OFFSET:MS] [--deaf-ms MS] | --status ID | --prompt ID TEXT | --visit URL | --complete URL [--state S]";

fn parse_args() -> Result<Mode, String> {
    let mut it = std::env::args().skip(1);
    let fixture = it.next().ok_or(USAGE)?;
    match fixture.as_str() {
        "--visit" => return Ok(Mode::Visit(it.next().ok_or("--visit needs a URL")?)),
        "--status" => return Ok(Mode::Status(it.next().ok_or("--status needs a provider")?)),
        "--prompt" => {
            let provider = it.next().ok_or("--prompt needs a provider")?;
            let text = it.next().ok_or("--prompt needs the prompt")?;
            return Ok(Mode::Prompt { provider, text });
        }
        "--complete" => {
            let url = it.next().ok_or("--complete needs a URL")?;
            let state = match (it.next().as_deref(), it.next()) {
                (None, _) => None,
                (Some("--state"), Some(s)) => Some(s),
                _ => return Err(USAGE.into()),
            };
            return Ok(Mode::Complete { url, state });
        }
        _ => {}
    }
    let mut args = Args {
        fixture: fixture.into(),
        chunks: Chunks::Whole,
        cred: None,
        no_wait: false,
        callback_port: None,
        pause: None,
        deaf_for: Duration::ZERO,
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--callback-port" => {
                let port = it.next().ok_or("--callback-port needs a port")?;
                args.callback_port = Some(port.parse().map_err(|_| "bad callback port")?);
            }
            "--chunks" => {
                let spec = it.next().ok_or("--chunks needs a value")?;
                args.chunks = match spec.split_once(':') {
                    None if spec == "whole" => Chunks::Whole,
                    None if spec == "bytes" => Chunks::Fixed(1),
                    Some(("fixed", n)) => Chunks::Fixed(n.parse().map_err(|_| "bad fixed size")?),
                    Some(("seed", s)) => Chunks::Seed(s.parse().map_err(|_| "bad seed")?),
                    _ => return Err(format!("unknown chunking {spec:?}")),
                };
            }
            "--cred" => args.cred = Some(it.next().ok_or("--cred needs a path")?.into()),
            "--provider" => {
                let id = it.next().ok_or("--provider needs an id")?;
                args.cred = Some(credential_file(&id)?.resolve(&home()?, env));
            }
            "--no-wait" => args.no_wait = true,
            "--pause-at" => {
                let spec = it.next().ok_or("--pause-at needs OFFSET:MS")?;
                let (at, ms) = spec.split_once(':').ok_or("--pause-at needs OFFSET:MS")?;
                args.pause = Some((
                    at.parse().map_err(|_| "bad pause offset")?,
                    Duration::from_millis(ms.parse().map_err(|_| "bad pause length")?),
                ));
            }
            "--deaf-ms" => {
                let ms = it.next().ok_or("--deaf-ms needs a number")?;
                args.deaf_for = Duration::from_millis(ms.parse().map_err(|_| "bad --deaf-ms")?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Mode::Replay(args))
}

/// A point in the recording where the real CLI waited (or acted).
enum Wait {
    /// Opens the browser on the login URL.
    Browser,
    /// For the terminal's answer to a query.
    Answer,
    /// For these keys.
    Keys(Vec<u8>),
}

struct Terminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl Terminal {
    fn raw() -> Terminal {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        }
        Terminal { saved }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// Exit code 130: the user pressed Ctrl-C.
struct Interrupted;

/// The terminal's input: typed keys that arrive while a query answer is awaited are kept for later,
/// as a real CLI's input parser does.
#[derive(Default)]
struct Input {
    typed: std::collections::VecDeque<u8>,
}

impl Input {
    fn raw_byte(&mut self) -> Result<u8, Interrupted> {
        let mut b = [0u8; 1];
        match std::io::stdin().read(&mut b) {
            Ok(1) if b[0] == 0x03 => Err(Interrupted),
            Ok(1) => Ok(b[0]),
            _ => Err(Interrupted),
        }
    }

    /// Reads one terminal answer: `ESC [ ... final` or `ESC ] ... BEL|ST`.
    fn answer(&mut self) -> Result<Vec<u8>, Interrupted> {
        let mut first = self.raw_byte()?;
        while first != 0x1b {
            self.typed.push_back(first);
            first = self.raw_byte()?;
        }
        let mut got = vec![first, self.raw_byte()?];
        loop {
            let b = self.raw_byte()?;
            got.push(b);
            let done = match got[1] {
                b'[' => (0x40..=0x7e).contains(&b),
                _ => b == 0x07 || got.ends_with(b"\x1b\\"),
            };
            if done {
                return Ok(got);
            }
        }
    }

    /// Waits for `keys` (Enter may arrive as CR or, typed before raw mode, as LF). Keys that
    /// come before `ready` are dropped.
    fn keys(&mut self, keys: &[u8], ready: Instant) -> Result<(), Interrupted> {
        let mut got = Vec::new();
        loop {
            let b = match self.typed.pop_front() {
                Some(b) => b,
                None => self.raw_byte()?,
            };
            if Instant::now() < ready {
                continue;
            }
            got.push(if b == b'\n' { b'\r' } else { b });
            if got.ends_with(keys) {
                return Ok(());
            }
        }
    }

    /// Waits for a pasted code: a non-empty line. A bare Enter (a key meant for an earlier prompt,
    /// an auto-response firing once more) is ignored, as at the real CLIs' paste prompts.
    fn code_line(&mut self) -> Result<(), Interrupted> {
        loop {
            let mut line = Vec::new();
            loop {
                let b = match self.typed.pop_front() {
                    Some(b) => b,
                    None => self.raw_byte()?,
                };
                if b == b'\r' || b == b'\n' {
                    break;
                }
                line.push(b);
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
        }
    }
}

struct Chunker {
    chunks: Chunks,
    state: u64,
}

impl Chunker {
    fn next_len(&mut self, left: usize) -> usize {
        let n = match self.chunks {
            Chunks::Whole => left,
            Chunks::Fixed(n) => n.max(1),
            Chunks::Seed(_) => {
                // xorshift64: reproducible sizes 1..=97 from the seed.
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                (self.state % 97) as usize + 1
            }
        };
        n.min(left)
    }
}

/// Writes `output[from..to]` in the chunker's pieces, pausing at `pause` when it falls inside.
fn write_out(
    out: &mut impl Write,
    chunker: &mut Chunker,
    output: &[u8],
    (from, to): (usize, usize),
    pause: Option<(usize, Duration)>,
) {
    let mut write = |mut bytes: &[u8]| {
        while !bytes.is_empty() {
            let n = chunker.next_len(bytes.len());
            let _ = out.write_all(&bytes[..n]).and_then(|()| out.flush());
            bytes = &bytes[n..];
        }
    };
    match pause {
        Some((at, pause)) if (from..to).contains(&at) => {
            write(&output[from..at]);
            std::thread::sleep(pause);
            write(&output[at..to]);
        }
        _ => write(&output[from..to]),
    }
}

/// The login's credential file: obviously fake tokens, unique to this login (a stand-in API can
/// tell the captured credential from any other).
fn fake_credentials(cli: &str) -> String {
    let mut nonce = [0u8; 6];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut nonce));
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    fixed_credentials(cli).replace(
        "fake-access-token-0001",
        &format!("fake-access-token-0001-{nonce}"),
    )
}

fn fixed_credentials(cli: &str) -> String {
    match cli {
        "claude" => r#"{"claudeAiOauth":{"accessToken":"fake-access-token-0001","refreshToken":"fake-refresh-token-0001","expiresAt":4102444800000,"scopes":["user:inference","user:profile"],"subscriptionType":"max"}}"#.into(),
        "codex" => {
            // A JWT in form only: header {"alg":"none"}, payload {}, signature "fake-signature".
            r#"{"auth_mode":"chatgpt","OPENAI_API_KEY":null,"tokens":{"id_token":"eyJhbGciOiJub25lIn0.e30.fake-signature","access_token":"fake-access-token-0001","refresh_token":"fake-refresh-token-0001","account_id":"fake-account-0001"},"last_refresh":"2026-01-01T00:00:00Z"}"#.into()
        }
        _ => r#"{"access_token":"fake-access-token-0001","refresh_token":"fake-refresh-token-0001","scope":"https://www.googleapis.com/auth/cloud-platform","token_type":"Bearer","id_token":"fake-id-token-0001","expiry_date":4102444800000}"#.into(),
    }
}

/// Writes like the real CLIs: temp file in the same directory, then rename.
fn write_credentials(path: &Path, content: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cred"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// How the final wait ended.
enum Finish {
    /// A line of input (the pasted code).
    Pasted,
    /// The browser came back with a code and the right state; answered once the file is written.
    Callback(std::net::TcpStream),
    /// The browser came back with a state of another login.
    WrongState(std::net::TcpStream),
    /// Ctrl-C, or the terminal went away.
    Interrupted,
}

/// Hands each recorded browser call's URL (`urls`, in the same order) to `$BROWSER` or `xdg-open`.
fn open_browser(calls: &[Value], urls: &[String]) {
    for (call, url) in calls.iter().zip(urls) {
        let program = match call["name"].as_str() {
            Some("xdg-open") => Some("xdg-open".to_owned()),
            _ => std::env::var("BROWSER").ok(),
        };
        if let Some(program) = program {
            // Like the real CLIs: a failing browser is not fatal, the URL is printed anyway.
            let _ = std::process::Command::new(program).arg(url).status();
        }
    }
}

/// `--visit`: prints the status code; 2xx exits 0.
fn visit(url: &str) -> ExitCode {
    match callback::visit(url) {
        Ok(status) => {
            println!("{status}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("fake-cli: {url}: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    let output =
        std::fs::read(args.fixture.join("output.bin")).map_err(|e| format!("output.bin: {e}"))?;
    let meta: Value = serde_json::from_slice(
        &std::fs::read(args.fixture.join("session.json"))
            .map_err(|e| format!("session.json: {e}"))?,
    )
    .map_err(|e| format!("session.json: {e}"))?;
    let cli = meta["argv"][0].as_str().unwrap_or("").to_owned();
    let mut stop = output.len();
    let mut waits: Vec<(usize, Wait)> = Vec::new();
    for q in meta["queries_answered"].as_array().into_iter().flatten() {
        waits.push((q["offset"].as_u64().unwrap_or(0) as usize, Wait::Answer));
    }
    for i in meta["inputs"].as_array().into_iter().flatten() {
        let at = i["offset"].as_u64().unwrap_or(0) as usize;
        if i["pattern"]
            .as_str()
            .is_some_and(|p| p.starts_with("<stop"))
        {
            stop = stop.min(at);
        } else {
            let keys: Vec<u8> = i["keys"]
                .as_str()
                .unwrap_or("")
                .chars()
                .map(|c| c as u32 as u8)
                .collect();
            waits.push((at, Wait::Keys(keys)));
        }
    }
    waits.retain(|(at, _)| *at <= stop);
    waits.sort_by_key(|(at, _)| *at);
    let seed = match args.chunks {
        Chunks::Seed(s) => s.max(1),
        _ => 1,
    };
    let mut chunker = Chunker {
        chunks: args.chunks,
        state: seed,
    };
    let _terminal = Terminal::raw();
    let browser: Vec<Value> = meta["browser_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut urls: Vec<String> = browser
        .iter()
        .map(|c| c["argv"][0].as_str().unwrap_or("").to_owned())
        .collect();
    // The callback listens from before the browser is opened, as in the real CLIs.
    let mut listener = None;
    if !args.no_wait {
        for url in &mut urls {
            if let Some(l) = callback::Listener::bind(url, args.callback_port)
                .map_err(|e| format!("callback listener: {e}"))?
            {
                url.clone_from(&l.browser_url);
                listener = Some(l);
                break;
            }
        }
    }
    // A CLI hands its URL to the browser no later than it prints it: where the recording first
    // shows the browser URL's address (gemini, after its prompts), else at once (claude's printed
    // link is another address).
    let browser_at = urls
        .first()
        .and_then(|u| u.split('?').next())
        .filter(|address| !address.is_empty())
        .and_then(|address| {
            output
                .windows(address.len())
                .position(|w| w == address.as_bytes())
        })
        .unwrap_or(0)
        .min(stop);
    waits.push((browser_at, Wait::Browser));
    waits.sort_by_key(|(at, _)| *at);
    let mut out = std::io::stdout().lock();
    let mut pos = 0;
    let mut input = Input::default();
    let result = (|| -> Result<Option<Finish>, Interrupted> {
        for (at, wait) in &waits {
            write_out(&mut out, &mut chunker, &output, (pos, *at), args.pause);
            pos = *at;
            match wait {
                Wait::Browser => open_browser(&browser, &urls),
                Wait::Answer => {
                    input.answer()?;
                }
                Wait::Keys(keys) => input.keys(keys, Instant::now() + args.deaf_for)?,
            }
        }
        write_out(&mut out, &mut chunker, &output, (pos, stop), args.pause);
        if args.no_wait {
            return Ok(None);
        }
        // The real login now waits for the pasted code or the browser's callback.
        Ok(Some(final_wait(input, listener.take())))
    })();
    let finish = match result {
        Ok(Some(finish)) => finish,
        Ok(None) => return Ok(ExitCode::SUCCESS),
        Err(Interrupted) => return Ok(ExitCode::from(130)),
    };
    let mut page = match finish {
        Finish::Interrupted => return Ok(ExitCode::from(130)),
        Finish::WrongState(mut stream) => {
            callback::respond(&mut stream, 400, "Bad Request", "OAuth state mismatch");
            let _ = write!(out, "\r\nOAuth error: state mismatch\r\n");
            let _ = out.flush();
            return Ok(ExitCode::from(1));
        }
        Finish::Pasted => None,
        Finish::Callback(stream) => Some(stream),
    };
    let written = match &args.cred {
        Some(path) => write_credentials(path, &fake_credentials(&cli)),
        None => Ok(()),
    };
    if let Err(e) = &written {
        let _ = write!(out, "\r\ncannot write credentials: {e}\r\n");
    }
    if let Some(stream) = &mut page {
        match written {
            Ok(()) => callback::respond(
                stream,
                200,
                "OK",
                "Login successful. You can close this window.",
            ),
            Err(_) => callback::respond(stream, 500, "Internal Server Error", "login failed"),
        }
    }
    let _ = write!(out, "\r\nLogin successful.\r\n");
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

/// The provider's (first) credential file in the built-in rules.
fn credential_file(provider: &str) -> Result<protocol::providers::CredentialFile, String> {
    protocol::providers::ProviderFile::builtin()
        .get(provider)
        .and_then(|p| p.credentials.first().cloned())
        .ok_or_else(|| format!("no credential file for provider {provider:?} in the rules"))
}

fn home() -> Result<PathBuf, String> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| "HOME is not set".to_owned())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `--status`: what the real CLI's status command says offline about a pushed or captured file.
fn status(provider: &str) -> Result<ExitCode, String> {
    let file = credential_file(provider)?;
    let path = file.resolve(&home()?, env);
    let complete = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|json| file.is_complete(&json));
    if complete {
        println!("Logged in ({})", path.display());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("Not logged in");
        Ok(ExitCode::from(1))
    }
}

/// Waits for the pasted code (a non-empty line) on the terminal and, with a listener, for the
/// callback at once.
fn final_wait(mut input: Input, listener: Option<callback::Listener>) -> Finish {
    let (done, finished) = std::sync::mpsc::channel();
    if let Some(listener) = listener {
        let done = done.clone();
        std::thread::spawn(move || listener.serve(done));
    }
    std::thread::spawn(move || {
        let _ = done.send(match input.code_line() {
            Ok(()) => Finish::Pasted,
            Err(Interrupted) => Finish::Interrupted,
        });
    });
    finished.recv().unwrap_or(Finish::Interrupted)
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|mode| match mode {
        Mode::Replay(args) => run(args),
        Mode::Status(provider) => status(&provider),
        Mode::Visit(url) => Ok(visit(&url)),
        Mode::Prompt { provider, text } => prompt::run(&provider, &text),
        Mode::Complete { url, state } => {
            callback::callback_for(&url, state.as_deref()).map(|callback| visit(&callback))
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fake-cli: {e}");
            ExitCode::from(2)
        }
    }
}
