//! The login's localhost callback, as the real CLIs run it: the OAuth URL handed to the browser
//! carries a `redirect_uri` on the loopback interface, the CLI listens there, and the provider's
//! login page sends the browser back to `redirect_uri?code=...&state=...`. A `state` other than the
//! one in the URL is fatal (claude-code behaves so).
//!
//! Also the other side, for tests without curl or a browser: `visit` does one HTTP GET on a loopback
//! URL, and `callback_for` builds the URL a provider would send the browser back to.
//!
//! std only (no async runtime, no HTTP crate) so fake-cli stays a small static binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Longest request head the listener reads.
const MAX_HEAD: usize = 16 * 1024;

/// Where an OAuth URL sends the browser back to, when that is the loopback interface.
#[derive(Debug, Clone)]
pub struct Redirect {
    host: String,
    port: u16,
    path: String,
    state: Option<String>,
}

impl Redirect {
    /// The loopback redirect of an OAuth URL (`redirect_uri=http://localhost:PORT/PATH` or
    /// `127.0.0.1`/`[::1]`), with the URL's `state`. None for a redirect elsewhere (the paste-a-code
    /// flows redirect to the provider's own page).
    pub fn of_url(url: &str) -> Option<Redirect> {
        let params = query_params(url);
        let redirect = params
            .iter()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.as_str())?;
        let rest = redirect.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = authority.rsplit_once(':')?;
        if !matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
            return None;
        }
        Some(Redirect {
            host: host.to_owned(),
            port: port.parse().ok()?,
            path: path.split('?').next().unwrap_or("/").to_owned(),
            state: params
                .iter()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.clone()),
        })
    }

    fn uri(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// A bound callback listener and the URL to hand to the browser for it.
pub struct Listener {
    listener: TcpListener,
    redirect: Redirect,
    /// The OAuth URL with the `redirect_uri` of the port actually bound.
    pub browser_url: String,
}

impl Listener {
    /// Binds 127.0.0.1 at the port of `url`'s loopback redirect, or at `port` if given (0: any free
    /// port). A busy port falls back to a free one, like codex (1455, then another); the URL for the
    /// browser then carries the new port. None when `url` has no loopback redirect.
    pub fn bind(url: &str, port: Option<u16>) -> std::io::Result<Option<Listener>> {
        let Some(mut redirect) = Redirect::of_url(url) else {
            return Ok(None);
        };
        let wanted = port.unwrap_or(redirect.port);
        let listener = match TcpListener::bind(("127.0.0.1", wanted)) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && wanted != 0 => {
                TcpListener::bind(("127.0.0.1", 0))?
            }
            Err(e) => return Err(e),
        };
        let bound = listener.local_addr()?.port();
        let browser_url = if bound == redirect.port {
            url.to_owned()
        } else {
            let old = redirect.uri();
            redirect.port = bound;
            replace_param(url, "redirect_uri", &old, &redirect.uri())
        };
        Ok(Some(Listener {
            listener,
            redirect,
            browser_url,
        }))
    }

    /// Answers requests until one carries a code for the redirect path; sends it on `done` with the
    /// connection (the caller answers it once the credential file is written). Requests for other
    /// paths get 404, a callback without a code (e.g. `error=access_denied`) gets 400, and both keep
    /// the listener waiting.
    pub fn serve(self, done: Sender<super::Finish>) {
        for stream in self.listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let Some(target) = read_request_target(&mut stream) else {
                respond(&mut stream, 400, "Bad Request", "bad request");
                continue;
            };
            let path = target.split('?').next().unwrap_or("");
            if path != self.redirect.path {
                respond(&mut stream, 404, "Not Found", "not found");
                continue;
            }
            let params = query_params(&target);
            let get = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            if get("code").is_none_or(str::is_empty) {
                respond(&mut stream, 400, "Bad Request", "no authorization code");
                continue;
            }
            let state_ok = match &self.redirect.state {
                Some(expected) => get("state") == Some(expected.as_str()),
                None => true,
            };
            let finish = if state_ok {
                super::Finish::Callback(stream)
            } else {
                super::Finish::WrongState(stream)
            };
            let _ = done.send(finish);
            return;
        }
    }
}

/// Writes a small HTML page as the whole HTTP/1.1 response and closes.
pub fn respond(stream: &mut TcpStream, status: u16, reason: &str, text: &str) {
    let body = format!("<!doctype html><title>{text}</title><p>{text}</p>\n");
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// The request target of a `GET` request (`/path?query`), read from the request head.
fn read_request_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = std::str::from_utf8(&head).ok()?.lines().next()?;
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("GET"), Some(target), Some(v)) if v.starts_with("HTTP/1.") => Some(target.to_owned()),
        _ => None,
    }
}

/// The URL a provider sends the browser back to after a login: the loopback `redirect_uri` of
/// `oauth_url` with a fake code and `state` (the URL's own unless given).
pub fn callback_for(oauth_url: &str, state: Option<&str>) -> Result<String, String> {
    let redirect = Redirect::of_url(oauth_url).ok_or("the URL has no loopback redirect_uri")?;
    let state = state
        .map(str::to_owned)
        .or(redirect.state.clone())
        .unwrap_or_default();
    Ok(format!(
        "{}?code=fake-code-0001&state={}",
        redirect.uri(),
        encode(&state)
    ))
}

/// One HTTP GET on a loopback URL (`http://127.0.0.1:PORT/...`, `localhost`, `[::1]`); returns the
/// status code. Anything but loopback is refused: this is a test tool, not a browser.
pub fn visit(url: &str) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are visited")?;
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(h, _)| !h.ends_with('['))
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .collect();
    if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err(format!("{authority} is not a loopback address"));
    }
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(mut stream) => return get(&mut stream, authority, target),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

fn get(stream: &mut TcpStream, host: &str, target: &str) -> Result<u16, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fake-cli\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("receive: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or("");
    status
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {status:?}"))
}

/// The decoded `key=value` pairs of a URL's query (or of a request target).
fn query_params(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    query
        .split('#')
        .next()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `url` with the value of query parameter `name` (decoding to `old`) replaced by `new`.
fn replace_param(url: &str, name: &str, old: &str, new: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, v)) if decode(k) == name && decode(v) == old => format!("{k}={}", encode(new)),
            _ => p.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16)
                    .ok()
                    .filter(|_| hex.bytes().all(|c| c.is_ascii_hexdigit()))
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAUDE: &str = "https://claude.com/cai/oauth/authorize?code=true&client_id=x&response_type=code&redirect_uri=http%3A%2F%2Flocalhost%3A46251%2Fcallback&scope=user%3Ainference&state=abc-_1";

    #[test]
    fn finds_the_loopback_redirect_and_state() {
        let r = Redirect::of_url(CLAUDE).expect("redirect");
        assert_eq!(r.uri(), "http://localhost:46251/callback");
        assert_eq!(r.state.as_deref(), Some("abc-_1"));
        assert!(Redirect::of_url(
            "https://x/?redirect_uri=https%3A%2F%2Fplatform.claude.com%2Foauth%2Fcode%2Fcallback"
        )
        .is_none());
    }

    #[test]
    fn rewrites_only_the_redirect_port() {
        let url = replace_param(
            CLAUDE,
            "redirect_uri",
            "http://localhost:46251/callback",
            "http://localhost:5/callback",
        );
        assert_eq!(
            url,
            CLAUDE.replace("localhost%3A46251", "localhost%3A5"),
            "same encoding as the CLI's"
        );
        assert_eq!(
            callback_for(CLAUDE, None).expect("callback"),
            "http://localhost:46251/callback?code=fake-code-0001&state=abc-_1"
        );
    }
}
