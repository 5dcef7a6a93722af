//! A real TURN server for the desktop tests: Debian's coturn (`turnserver`, installed by `cargo
//! xtask setup`) on loopback with one throwaway user, no TLS, no admin CLI, no configuration from
//! /etc, its log in a file the test reads. Killed on drop.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::desktop::IceServer;
use protocol::secret::Secret;

/// The TURN user the server knows.
pub const TURN_USER: &str = "fakeuser";
/// Its password (obviously fake).
pub const TURN_PASSWORD: &str = "fake-turn-password-0001";
/// The server's realm.
pub const TURN_REALM: &str = "test.invalid";

/// Relay ports the server may hand out.
const RELAY_PORTS: u16 = 16;

/// A running `turnserver`.
#[derive(Debug)]
pub struct Coturn {
    child: Child,
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    /// The range its relayed addresses are in (inclusive), on 127.0.0.1.
    pub relay_ports: (u16, u16),
    dir: tempfile::TempDir,
}

impl Coturn {
    /// Starts the server with the long-term user [`TURN_USER`] and waits until it answers STUN.
    pub fn start() -> Self {
        Self::start_with(&[
            "--lt-cred-mech",
            "--realm",
            TURN_REALM,
            "--user",
            &format!("{TURN_USER}:{TURN_PASSWORD}"),
        ])
    }

    /// Starts the server taking only short-lived credentials made with `secret` (the TURN REST
    /// scheme: `use-auth-secret`), and waits until it answers STUN.
    pub fn start_with_secret(secret: &str) -> Self {
        Self::start_with(&[
            "--use-auth-secret",
            "--static-auth-secret",
            secret,
            "--realm",
            TURN_REALM,
        ])
    }

    fn start_with(auth: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let (lo, hi) = crate::ports::free_udp_range(RELAY_PORTS);
        let log = std::fs::File::create(dir.path().join("turn.log")).expect("log file");
        let child = Command::new("turnserver")
            .args(["-c", "/dev/null", "-n"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", &lo.to_string(), "--max-port", &hi.to_string()])
            .args(auth)
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
            ])
            .args(["--log-file", "stdout", "--simple-log", "--verbose"])
            .arg("--pidfile")
            .arg(dir.path().join("turnserver.pid"))
            .arg("--userdb")
            .arg(dir.path().join("turndb"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start turnserver (coturn; `cargo xtask setup` installs it)");
        let server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            relay_ports: (lo, hi),
            dir,
        };
        server.wait_ready();
        server
    }

    /// A `turn:` URL for it (UDP).
    pub fn url(&self) -> String {
        format!("turn:{}", self.addr)
    }

    /// The server as the host would configure it, with `password` for [`TURN_USER`].
    pub fn ice_server(&self, url: String, password: &str) -> IceServer {
        IceServer {
            urls: vec![url],
            username: Some(TURN_USER.into()),
            credential: Some(Secret::new(password.into())),
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("turn.log")
    }

    /// Polls with STUN Binding requests until the server answers one.
    fn wait_ready(&self) {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("probe socket");
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(b"fake-txn-001");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let _ = probe.send_to(&request, self.addr);
            if let Ok((n, _)) = probe.recv_from(&mut buf) {
                if n >= 20 && buf[..2] == [0x01, 0x01] {
                    return;
                }
            }
        }
        panic!("turnserver did not come up; its log:\n{}", self.log());
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for UDP and TCP");
}
