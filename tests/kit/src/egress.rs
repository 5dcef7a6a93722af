//! The egress path's real peers: squid as the users' upstream proxy (basic auth, one port per
//! user) and an HTTPS origin standing in for a provider host (the providers cannot be reached
//! here). Squid resolves the origin's name from its own hosts file, so a name reaches the upstream
//! unresolved, as it would in production.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator::egress::{
    AllowList, EgressGateway, EgressLimits, EgressPorts, PortRange, ProxyConfig,
};
use orchestrator::store::Store;
use protocol::secret::Secret;

/// Squid's binary (Debian's `squid` package; `cargo xtask setup` installs it).
const SQUID: &str = "/usr/sbin/squid";
const NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";

fn free_tcp_port() -> u16 {
    crate::ports::free_tcp_range(1).0
}

fn wait_listening(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {port} within 30 s; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running squid: basic auth for one user, one `http_port` per egress port, an access log that
/// records the port each request arrived on and the authenticated user. Stopped on drop.
#[derive(Debug)]
pub struct Squid {
    child: Child,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
}

impl Squid {
    /// Starts squid on the loopback ports `first..=last` (the users' egress ports), accepting
    /// `user`/`password`, resolving each of `hosts` to 127.0.0.1 (other names fail DNS).
    pub fn start((first, last): (u16, u16), user: &str, password: &str, hosts: &[&str]) -> Self {
        assert!(
            Path::new(SQUID).exists(),
            "{SQUID} is missing: run `cargo xtask setup` (installs squid)"
        );
        let dir = tempfile::tempdir().expect("squid dir");
        // Squid drops to its own user: it must read its files and write its logs here.
        set_mode(dir.path(), 0o777);
        let hash = Command::new("openssl")
            .args(["passwd", "-apr1", password])
            .output()
            .expect("openssl passwd");
        assert!(hash.status.success(), "openssl passwd failed");
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            format!("{user}:{}", String::from_utf8_lossy(&hash.stdout).trim()),
        )
        .expect("passwd");
        let hosts_file = dir.path().join("hosts");
        let hosts_text: String = hosts.iter().map(|h| format!("127.0.0.1 {h}\n")).collect();
        std::fs::write(&hosts_file, hosts_text).expect("hosts");
        let ports: Vec<u16> = (first..=last).collect();
        let d = dir.path().display();
        let mut conf = String::new();
        for port in &ports {
            conf.push_str(&format!("http_port 127.0.0.1:{port}\n"));
        }
        conf.push_str(&format!(
            "auth_param basic program {NCSA_AUTH} {passwd}\n\
             auth_param basic realm egress-test\n\
             acl authed proxy_auth REQUIRED\n\
             http_access allow authed\n\
             http_access deny all\n\
             logformat egress %ts %>lp %un %rm %ru %>Hs\n\
             access_log stdio:{d}/access.log egress\n\
             cache_log {d}/cache.log\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             hosts_file {hosts}\n\
             dns_nameservers 127.0.0.1\n\
             dns_timeout 2 seconds\n\
             negative_dns_ttl 1 seconds\n\
             pid_filename none\n\
             coredump_dir {d}\n\
             netdb_filename none\n\
             pinger_enable off\n\
             icp_port 0\n\
             via off\n\
             forwarded_for delete\n\
             shutdown_lifetime 0 seconds\n\
             max_filedescriptors 16384\n",
            passwd = passwd.display(),
            hosts = hosts_file.display(),
        ));
        let conf_path = dir.path().join("squid.conf");
        std::fs::write(&conf_path, conf).expect("squid.conf");
        for f in ["access.log", "cache.log", "passwd", "hosts", "squid.conf"] {
            let path = dir.path().join(f);
            if !path.exists() {
                std::fs::File::create(&path).expect("log file");
            }
            set_mode(&path, 0o666);
        }
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        // A service name of its own: squid names its shared memory after it, and squids of
        // parallel tests would otherwise collide on it ("shm_open ... File exists").
        let child = Command::new(SQUID)
            .arg("-n")
            .arg(format!("egress{first}"))
            .arg("-N")
            .arg("-f")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start squid");
        let squid = Self { child, dir, ports };
        for port in &squid.ports {
            wait_listening(*port, "squid", &squid.dir.path().join("cache.log"));
        }
        squid
    }

    /// Its ports, in the order asked for.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// What squid logged of the requests: `time port user method url status` per line.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Its access log, waiting up to 10 s for a line containing `needle` (squid writes a
    /// request's line when the request ends).
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.access_log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The origin's Python program: `/` answers a greeting, `/bytes/N` N bytes (for downloads),
/// `POST /echo` the body it got back.
const ORIGIN_PY: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/bytes/"):
            n = int(self.path[7:])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"x" * 65536
            while n > 0:
                self.wfile.write(chunk[:min(n, 65536)])
                n -= 65536
        else:
            self.send(b"hello from the origin\n")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.send(self.rfile.read(n))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
# Each connection's handshake in its own thread: a listening socket wrapped in TLS shakes hands
# inside accept(), one client at a time, so one that waits (a browser's preconnect, a client
# that drops the untrusted certificate late) held up every other.
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    def get_request(self):
        conn, addr = self.socket.accept()
        return ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr
    def finish_request(self, request, client_address):
        request.do_handshake()
        super().finish_request(request, client_address)
srv = S(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
srv.serve_forever()
"#;

/// An HTTPS origin on loopback: the stand-in for a provider's hosts. Its certificate names
/// every host it stands in for and is signed by a certificate authority of its own, made for the
/// run: a client trusts it only when told to (`curl --cacert`, Chromium's `CACertificates`
/// policy), as a real provider's is trusted. Stopped on drop.
#[derive(Debug)]
pub struct HttpsOrigin {
    child: Child,
    dir: tempfile::TempDir,
    name: String,
    port: u16,
}

impl HttpsOrigin {
    /// Starts the origin for `names` (the first is the one its URLs use) on loopback port `port`
    /// (443 for URLs without a port).
    pub fn start_on(names: &[&str], port: u16) -> Self {
        let dir = tempfile::tempdir().expect("origin dir");
        let path = |file: &str| dir.path().join(file);
        let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            path("leaf.ext"),
            format!(
                "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )
        .expect("leaf extensions");
        let openssl = |what: &str, args: &[&str]| {
            let made = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(made.success(), "openssl could not make the origin's {what}");
        };
        #[rustfmt::skip]
        openssl("authority", &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=test-kit stand-in authority",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", "ca.key", "-out", "ca.pem",
        ]);
        let subject = format!("/CN={}", names[0]);
        #[rustfmt::skip]
        openssl("certificate request", &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject,
            "-keyout", "key.pem", "-out", "leaf.csr",
        ]);
        #[rustfmt::skip]
        openssl("certificate", &[
            "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext", "-out", "cert.pem",
        ]);
        let script = path("origin.py");
        std::fs::File::create(&script)
            .and_then(|mut f| f.write_all(ORIGIN_PY.as_bytes()))
            .expect("origin script");
        let log = path("origin.log");
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(path("cert.pem"))
            .arg(path("key.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("origin log"))
            .spawn()
            .expect("start the origin (python3)");
        wait_listening(port, "the HTTPS origin", &log);
        Self {
            child,
            dir,
            name: names[0].to_owned(),
            port,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://name:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.name, self.port)
    }

    /// `name:port`, as an allow-list entry or a CONNECT target.
    pub fn target(&self) -> String {
        format!("{}:{}", self.name, self.port)
    }

    /// The authority that signed its certificate (PEM), for the client's `--cacert`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The authority's certificate as base64 DER, as Chromium's `CACertificates` policy takes it.
    pub fn authority_base64(&self) -> String {
        let pem = std::fs::read_to_string(self.cert_path()).expect("the authority's certificate");
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }
}

impl Drop for HttpsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake upstream user every egress test uses (squid accepts it; never a real account).
pub const PROXY_USER: &str = "fake-egress-user";
/// Its fake password: tests grep the VM and the logs for it.
pub const PROXY_PASSWORD: &str = "fake-egress-pass-4b1d";
/// The origin's name: squid resolves it, the VM never does.
pub const ORIGIN: &str = "login.provider.test";

/// The built-in providers' login hosts (claude's full link is on claude.com, its short one on
/// claude.ai).
pub const LOGIN_HOSTS: [&str; 4] = [
    "claude.com",
    "claude.ai",
    "auth.openai.com",
    "accounts.google.com",
];

/// Squid on a range of per-user ports, the origin, a store, and the users' ports over that range:
/// what every egress test and `cargo xtask bench egress-tunnel` start from.
#[derive(Debug)]
pub struct EgressRig {
    /// Holds the store and the gateway sockets.
    pub dir: tempfile::TempDir,
    /// The upstream.
    pub squid: Squid,
    /// The provider stand-in.
    pub origin: HttpsOrigin,
    /// Where ports and audit events are recorded.
    pub store: Store,
    /// The users' ports (squid's ports).
    pub ports: EgressPorts,
}

impl EgressRig {
    /// Starts it with `users_ports` ports, the origin named [`ORIGIN`] on a free port.
    pub async fn start(users_ports: u16) -> Self {
        Self::start_with(users_ports, &[ORIGIN], None).await
    }

    /// Starts it with `users_ports` ports and the origin answering for every one of `names`
    /// (squid resolves them all to it; its certificate names the first) on `origin_port`, or a
    /// free port.
    pub async fn start_with(users_ports: u16, names: &[&str], origin_port: Option<u16>) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let range = crate::ports::free_tcp_range(users_ports);
        let squid = Squid::start(range, PROXY_USER, PROXY_PASSWORD, names);
        let origin = HttpsOrigin::start_on(names, origin_port.unwrap_or_else(free_tcp_port));
        let store = crate::login::sqlite_store(dir.path(), "egress-test").await;
        let ports = EgressPorts::new(
            store.clone(),
            PortRange::new(range.0, range.1).expect("range"),
        );
        Self {
            dir,
            squid,
            origin,
            store,
            ports,
        }
    }

    /// Started for real CLIs' logins in a browser VM: squid takes every one of [`LOGIN_HOSTS`]
    /// to the origin on port 443 (whose certificate Chromium refuses unless given its authority:
    /// what the tests check is that the login page is asked for through the user's port).
    pub async fn for_logins() -> Self {
        Self::start_with(2, &LOGIN_HOSTS, Some(443)).await
    }

    /// Serves the egress tunnels of VM `vm_id` arriving at `socket` through `gateway` as `user`
    /// (given a port now), the built-in providers' hosts allowed; returns the user's port and the
    /// binding (the VM's way out until it drops).
    pub async fn serve_login_vm(
        &self,
        gateway: &EgressGateway,
        socket: &Path,
        user: &str,
        vm_id: &str,
    ) -> (u16, orchestrator::egress::EgressBinding) {
        let port = self.ports.assign(user).await.expect("a user's port");
        let allow = orchestrator::login::ProviderLogin::builtin()
            .into_iter()
            .flat_map(|p| p.egress_hosts)
            .collect();
        let binding = gateway
            .serve_vm(
                socket,
                orchestrator::egress::EgressVm {
                    user: user.into(),
                    vm_id: vm_id.into(),
                    allow: AllowList::Only(allow),
                },
            )
            .expect("serve the VM's egress");
        (port, binding)
    }

    /// A gateway to squid authenticating with `password`.
    pub fn gateway(&self, password: &str, limits: EgressLimits) -> EgressGateway {
        EgressGateway::new(
            self.ports.clone(),
            ProxyConfig {
                host: "127.0.0.1".into(),
                username: PROXY_USER.into(),
                password: Secret::new(password.into()),
            },
            limits,
        )
    }

    /// A socket path for a VM's tunnels.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    /// An allow-list of the origin alone.
    pub fn only_origin(&self) -> AllowList {
        AllowList::only([self.origin.target()])
    }
}

/// A TLS server that reads each client's first message, keeps the ClientHello's random (32 bytes
/// the client's generator made for this connection) and closes: two TLS clients whose random
/// state is one and the same send the same randoms. Stopped on drop.
#[derive(Debug)]
pub struct HelloRecorder {
    randoms: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HelloRecorder {
    /// Starts it on loopback port `port` (443 for URLs without a port).
    pub fn start_on(port: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the recorder");
        listener.set_nonblocking(true).expect("nonblocking");
        let randoms = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (randoms, stop) = (randoms.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            if let Some(random) = client_hello_random(conn) {
                                randoms.lock().expect("randoms").push(random);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Self {
            randoms,
            stop,
            thread: Some(thread),
        }
    }

    /// The randoms of the ClientHellos seen so far, as hex, in arrival order.
    pub fn randoms(&self) -> Vec<String> {
        self.randoms.lock().expect("randoms").clone()
    }
}

impl Drop for HelloRecorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The random of the ClientHello that opens `conn` (record header 5 bytes, handshake header 4,
/// version 2, then the random), or `None` if it does not open with one.
fn client_hello_random(mut conn: std::net::TcpStream) -> Option<String> {
    use std::io::Read;
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = [0u8; 43];
    conn.read_exact(&mut head).ok()?;
    (head[0] == 0x16 && head[5] == 0x01)
        .then(|| head[11..43].iter().map(|b| format!("{b:02x}")).collect())
}
