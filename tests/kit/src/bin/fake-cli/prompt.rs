//! `fake-cli --prompt PROVIDER TEXT`: what `claude -p`, `codex exec` and `gemini -p` do, against a
//! stand-in of the provider's API (the real ones cannot be reached here): read the access token
//! from the provider's credential file, `POST` the prompt to `$FAKE_API_URL` (a loopback
//! `http://` URL) with `Authorization: Bearer <token>`, and print the answer as it streams in.
//! Not logged in: "Not logged in", exit 1; the API refuses: its status on stderr, exit 1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

/// Where the providers' credential files keep the access token.
const TOKEN_POINTERS: [&str; 3] = [
    "/claudeAiOauth/accessToken",
    "/tokens/access_token",
    "/access_token",
];

pub fn run(provider: &str, prompt: &str) -> Result<ExitCode, String> {
    let file = super::credential_file(provider)?;
    let path = file.resolve(&super::home()?, super::env);
    let token = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|json| {
            TOKEN_POINTERS
                .iter()
                .find_map(|p| json.pointer(p).and_then(Value::as_str).map(str::to_owned))
        });
    let Some(token) = token else {
        println!("Not logged in");
        return Ok(ExitCode::from(1));
    };
    let url = std::env::var("FAKE_API_URL").map_err(|_| "FAKE_API_URL is not set".to_owned())?;
    let rest = url
        .strip_prefix("http://")
        .ok_or("FAKE_API_URL must be http://")?;
    let (authority, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let target = if target.is_empty() { "/" } else { target };
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| format!("{authority} is not a loopback address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "POST {target} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nX-Provider: {provider}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{prompt}",
        prompt.len()
    )
    .map_err(|e| format!("send: {e}"))?;
    // The head, then the body copied out as it comes (the stand-in closes when done).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return Err("the API closed before answering".into()),
        }
        if head.len() > 16 * 1024 {
            return Err("the API's answer head is too long".into());
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("not an HTTP answer")?;
    let mut out = std::io::stdout();
    let mut buf = [0u8; 4096];
    let mut body = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if status == 200 => {
                let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
            }
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    if status == 200 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("API error {status}: {}", String::from_utf8_lossy(&body));
        Ok(ExitCode::from(1))
    }
}
