//! Egress through the user's own proxy port: a real squid (basic auth, one port per user), an
//! HTTPS origin standing in for a provider host (the providers cannot be reached here), the real
//! agent as a local process whose programs reach the origin only through its loopback proxy and
//! the host's gateway. `curl` runs through the agent's `exec`, as a CLI in the VM would.
//! (`vm_egress.rs` proves the same path in a real VM over real vsock.)

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use orchestrator::egress::{AllowList, EgressEvent, EgressGateway, EgressLimits, EgressVm};
use orchestrator::store::Store;
use orchestrator::AgentClient;
use test_kit::egress::{EgressRig as Rig, PROXY_PASSWORD, PROXY_USER};
use test_kit::AgentProcess;

const ORIGIN: &str = test_kit::egress::ORIGIN;

/// A user's "VM": its gateway binding and its agent.
struct Vm {
    _binding: orchestrator::egress::EgressBinding,
    agent: AgentProcess,
    client: AgentClient,
}

async fn vm(rig: &Rig, gateway: &EgressGateway, user: &str, allow: AllowList) -> Vm {
    rig.ports.assign(user).await.expect("port");
    let socket = rig.socket(user);
    let binding = gateway
        .serve_vm(
            &socket,
            EgressVm {
                user: user.into(),
                vm_id: format!("vm-of-{user}"),
                allow,
            },
        )
        .expect("serve");
    let agent = AgentProcess::start_with_egress(&socket).await;
    let client = AgentClient::connect(&agent.connector())
        .await
        .expect("connect");
    Vm {
        _binding: binding,
        agent,
        client,
    }
}

struct Curl {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `curl` in the VM with the proxy the agent gives every program, trusting the origin's
/// certificate.
async fn curl(vm: &Vm, cert: &Path, url: &str) -> Curl {
    let cert = cert.display().to_string();
    let out = vm
        .client
        .exec_collect(
            &["curl", "-sS", "--max-time", "20", "--cacert", &cert, url],
            None,
        )
        .await
        .expect("exec curl");
    Curl {
        code: out.status.code.unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

async fn next_event(events: &mut tokio::sync::broadcast::Receiver<EgressEvent>) -> EgressEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an egress event in time")
        .expect("event")
}

async fn audit_text(store: &Store) -> String {
    store
        .audit_log(None)
        .await
        .expect("audit")
        .iter()
        .map(|e| format!("{} {} {}\n", e.event, e.subject, e.detail))
        .collect()
}

// Multi-threaded: the gateway runs in the test's runtime while the test blocks on sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_in_the_vm_reaches_the_origin_through_its_users_port_and_no_password_is_in_the_vm() {
    let rig = Rig::start(4).await;
    let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
    let alice = vm(&rig, &gateway, "alice", rig.only_origin()).await;
    let port = rig
        .ports
        .port_of("alice")
        .await
        .expect("port")
        .expect("assigned");

    let got = curl(&alice, &rig.origin.cert_path(), &rig.origin.url("/")).await;
    assert_eq!(got.code, 0, "curl failed: {}", got.stderr);
    assert_eq!(got.stdout, "hello from the origin\n");
    let log = rig.squid.wait_for_log("CONNECT").await;
    let line = format!("{port} {PROXY_USER} CONNECT {} 200", rig.origin.target());
    assert!(log.contains(&line), "squid did not log {line:?}:\n{log}");

    // A download larger than every buffer on the way arrives whole (back-pressure, half-close).
    let size = 8 * 1024 * 1024;
    let got = curl(
        &alice,
        &rig.origin.cert_path(),
        &rig.origin.url(&format!("/bytes/{size}")),
    )
    .await;
    assert_eq!(got.code, 0, "download failed: {}", got.stderr);
    assert_eq!(got.stdout.len(), size);

    // What the VM's programs get points at the agent, with no credentials; the password is in
    // no environment, command line or log of the VM side.
    let env = alice
        .client
        .exec_collect(&["env"], None)
        .await
        .expect("env");
    let env = String::from_utf8_lossy(&env.stdout).to_string();
    let https_proxy = env
        .lines()
        .find_map(|l| l.strip_prefix("HTTPS_PROXY="))
        .expect("HTTPS_PROXY set for programs");
    assert!(
        https_proxy.starts_with("http://127.0.0.1:") && !https_proxy.contains('@'),
        "{https_proxy}"
    );
    assert!(env.lines().any(|l| l == "NO_PROXY=localhost,127.0.0.1,::1"));
    let pid = alice.agent.pid();
    let agent_env = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let agent_cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    for (what, text) in [
        ("program environment", env.clone()),
        (
            "agent environment",
            String::from_utf8_lossy(&agent_env).into(),
        ),
        (
            "agent command line",
            String::from_utf8_lossy(&agent_cmdline).into(),
        ),
        ("agent log", alice.agent.log()),
        ("squid-facing audit", audit_text(&rig.store).await),
    ] {
        assert!(
            !text.contains(PROXY_PASSWORD),
            "the password is in the {what}"
        );
    }
}

// Multi-threaded: the gateway runs in the test's runtime while the test blocks on sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_vms_at_once_land_on_their_two_ports() {
    let rig = Rig::start(4).await;
    let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
    let alice = vm(&rig, &gateway, "alice", rig.only_origin()).await;
    let bob = vm(&rig, &gateway, "bob", rig.only_origin()).await;
    let (pa, pb) = (
        rig.ports.port_of("alice").await.unwrap().unwrap(),
        rig.ports.port_of("bob").await.unwrap().unwrap(),
    );
    assert_ne!(pa, pb);
    let cert = rig.origin.cert_path();
    let url = rig.origin.url("/");
    let (a, b) = tokio::join!(curl(&alice, &cert, &url), curl(&bob, &cert, &url));
    assert_eq!((a.code, b.code), (0, 0), "{} / {}", a.stderr, b.stderr);
    for port in [pa, pb] {
        let log = rig
            .squid
            .wait_for_log(&format!(" {port} {PROXY_USER} CONNECT"))
            .await;
        let n = log
            .lines()
            .filter(|l| l.contains(&format!(" {port} {PROXY_USER} CONNECT")))
            .count();
        assert_eq!(n, 1, "one CONNECT on port {port}:\n{log}");
    }
}

// Multi-threaded: the gateway runs in the test's runtime while the test blocks on sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_407_in_the_vm_and_an_event_on_the_host() {
    let rig = Rig::start(2).await;
    let gateway = rig.gateway("not-the-password", EgressLimits::default());
    let mut events = gateway.subscribe();
    let alice = vm(&rig, &gateway, "alice", rig.only_origin()).await;
    let got = curl(&alice, &rig.origin.cert_path(), &rig.origin.url("/")).await;
    assert_ne!(got.code, 0);
    assert!(got.stderr.contains("407"), "curl says: {}", got.stderr);
    let event = next_event(&mut events).await;
    assert_eq!(
        (event.user.as_str(), event.status),
        ("alice", 407),
        "{event:?}"
    );
    assert!(event.reason.contains("407") || event.reason.contains("Proxy Authentication"));
    assert!(!format!("{event:?}").contains("not-the-password"));
    let audit = audit_text(&rig.store).await;
    assert!(
        audit.contains("egress_refused") && audit.contains("status=407"),
        "{audit}"
    );
}

// Multi-threaded: the gateway runs in the test's runtime while the test blocks on sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_off_the_allow_list_is_refused_and_audited() {
    let rig = Rig::start(2).await;
    let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
    let mut events = gateway.subscribe();
    let alice = vm(&rig, &gateway, "alice", AllowList::only(["elsewhere.test"])).await;
    let got = curl(&alice, &rig.origin.cert_path(), &rig.origin.url("/")).await;
    assert_ne!(got.code, 0);
    assert!(got.stderr.contains("403"), "curl says: {}", got.stderr);
    let event = next_event(&mut events).await;
    assert_eq!(event.status, 403);
    assert_eq!(event.target, rig.origin.target());
    let audit = audit_text(&rig.store).await;
    assert!(
        audit.contains(&format!("egress_refused {}", rig.origin.target())),
        "{audit}"
    );
    assert!(
        !rig.squid.access_log().contains(ORIGIN),
        "a refused destination never reaches the upstream"
    );
}

// Multi-threaded: the gateway runs in the test's runtime while the test blocks on sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_reach_the_vm_as_proxy_errors() {
    let rig = Rig::start(2).await;
    let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
    let mut events = gateway.subscribe();
    let alice = vm(&rig, &gateway, "alice", AllowList::Any).await;
    // A name the upstream cannot resolve: its DNS failure, as squid reports it.
    let got = curl(&alice, &rig.origin.cert_path(), "https://nowhere.invalid/").await;
    assert_ne!(got.code, 0);
    let event = next_event(&mut events).await;
    // Squid 5 reports a CONNECT to a name it cannot resolve as a 500 ERR_CANNOT_FORWARD (older
    // versions as 503 ERR_DNS_FAIL): either way its status and its own error name come through.
    assert!(event.status >= 500, "{event:?}");
    assert!(
        event.reason.contains("ERR_CANNOT_FORWARD") || event.reason.contains("ERR_DNS_FAIL"),
        "{event:?}"
    );
    assert!(
        got.stderr.contains(&format!("response {}", event.status)),
        "curl says: {}",
        got.stderr
    );

    // The upstream gone: the host cannot reach it, and says so without its address.
    let Rig { squid, origin, .. } = rig;
    drop(squid);
    let got = curl(&alice, &origin.cert_path(), &origin.url("/")).await;
    assert!(
        got.stderr.contains("response 502"),
        "curl says: {}",
        got.stderr
    );
    let event = next_event(&mut events).await;
    assert_eq!(
        (event.status, event.reason.as_str()),
        (502, "upstream proxy unreachable")
    );
}

// Multi-threaded: the gateway runs in the test's runtime while the test blocks on sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_moves_the_next_connection_to_the_new_port_and_closes_the_old_ones() {
    let rig = Rig::start(4).await;
    let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
    let alice = vm(&rig, &gateway, "alice", rig.only_origin()).await;
    let before = rig.ports.port_of("alice").await.unwrap().unwrap();
    let cert = rig.origin.cert_path();
    assert_eq!(curl(&alice, &cert, &rig.origin.url("/")).await.code, 0);
    // A tunnel left open across the rotation (a long download, a websocket).
    let mut open = TcpStream::connect(proxy_addr(&alice).await).expect("proxy");
    let target = rig.origin.target();
    write!(open, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut established = [0u8; 39];
    open.read_exact(&mut established).unwrap();
    assert!(established.starts_with(b"HTTP/1.1 200"));

    let after = gateway.rotate("alice").await.expect("rotate");
    assert_ne!(before, after);
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = open.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "the tunnel on the old port is closed by the rotation: {closed:?}"
    );
    assert_eq!(curl(&alice, &cert, &rig.origin.url("/")).await.code, 0);
    let log = rig
        .squid
        .wait_for_log(&format!("{after} {PROXY_USER} CONNECT"))
        .await;
    let ports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONNECT"))
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    assert_eq!(
        ports,
        [before.to_string(), before.to_string(), after.to_string()],
        "first on the old port (and the tunnel held across), then on the new:\n{log}"
    );
}

/// The VM's proxy address, as the agent gives it to its programs.
async fn proxy_addr(vm: &Vm) -> String {
    let env = vm
        .client
        .exec_collect(&["sh", "-c", "echo $HTTPS_PROXY"], None)
        .await
        .expect("proxy address");
    String::from_utf8_lossy(&env.stdout)
        .trim()
        .trim_start_matches("http://")
        .to_owned()
}

// Multi-threaded: the gateway runs in the test's runtime while the test blocks on sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_skips_the_agent_cannot_smuggle_a_request_past_its_list() {
    use protocol::egress::{read_message, write_message, TunnelKind, TunnelOpen, TunnelReply};
    let rig = Rig::start(2).await;
    let gateway = rig.gateway(PROXY_PASSWORD, EgressLimits::default());
    let mut events = gateway.subscribe();
    let _alice = vm(&rig, &gateway, "alice", rig.only_origin()).await;
    let allowed = rig.origin.target();
    for (head, why) in [
        (
            "GET http://elsewhere.test/ HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n".to_owned(),
            "a request line for another host than the allowed target",
        ),
        (
            format!("TRACE http://{allowed}/ HTTP/1.1\r\nMax-Forwards: 0\r\n\r\n"),
            "TRACE, which would echo the credentials",
        ),
        (
            format!("GET http://{allowed}/ HTTP/1.1\r\nX-Leak:\r\n"),
            "a head whose last header would take the credentials as its value",
        ),
        (
            format!(
                "GET http://{allowed}/ HTTP/1.1\r\n\r\nGET http://elsewhere.test/ HTTP/1.1\r\n\r\n"
            ),
            "a second request after the first",
        ),
    ] {
        let mut tunnel = tokio::net::UnixStream::connect(rig.socket("alice"))
            .await
            .expect("tunnel");
        let open = TunnelOpen {
            target: allowed.clone(),
            kind: TunnelKind::Http,
            head: Some(head),
        };
        write_message(&mut tunnel, &open).await.expect("open");
        let reply: TunnelReply = read_message(&mut tunnel).await.expect("reply");
        assert_eq!(reply.status, 400, "{why}: {reply:?}");
        assert_eq!(next_event(&mut events).await.status, 400);
    }
    let log = rig.squid.access_log();
    assert!(
        !log.contains("elsewhere") && !log.contains("TRACE") && !log.contains("GET"),
        "nothing reached the upstream:\n{log}"
    );
}

/// Tunnels the agent holds at once (`vm_agent::egress::MAX_TUNNELS`, not a dependency here).
fn vm_agent_max_tunnels() -> usize {
    4096
}

/// Raises this process's descriptor limit for the flood (each held connection is one).
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

// Multi-threaded: the gateway runs in the test's runtime while the test blocks on sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_floods_are_limited_and_both_ends_stay_up() {
    raise_descriptor_limit();
    let rig = Rig::start(2).await;
    let limits = EgressLimits {
        max_tunnels_per_vm: 8,
        ..EgressLimits::default()
    };
    let gateway = rig.gateway(PROXY_PASSWORD, limits);
    let alice = vm(&rig, &gateway, "alice", rig.only_origin()).await;
    let proxy = proxy_addr(&alice).await;

    // Garbage to the VM's proxy: a 400, and the proxy goes on.
    let mut raw = TcpStream::connect(&proxy).expect("connect to the proxy");
    raw.write_all(b"\x16\x03\x01garbage garbage\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // Garbage on the tunnel itself (a guest that bypasses the agent): a refusal, not a crash.
    let mut tunnel = std::os::unix::net::UnixStream::connect(rig.socket("alice")).expect("tunnel");
    tunnel.write_all(&[1, 0xff, 0xff, 0xff, 0xff, 0]).unwrap();
    let mut reply = Vec::new();
    tunnel.read_to_end(&mut reply).unwrap();
    assert!(String::from_utf8_lossy(&reply).contains("400"), "{reply:?}");

    // More tunnels than a VM may hold: the rest are answered 503 at once by the gateway.
    let held: Vec<_> = (0..8)
        .map(|_| std::os::unix::net::UnixStream::connect(rig.socket("alice")).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = std::os::unix::net::UnixStream::connect(rig.socket("alice")).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = Vec::new();
    extra.read_to_end(&mut reply).unwrap();
    assert!(String::from_utf8_lossy(&reply).contains("503"), "{reply:?}");
    drop(held);

    // 10,000 connections to the VM's proxy, none saying anything: it holds what it may (waiting
    // for their requests), answers the rest 503 at once, and stays up. Connected in batches
    // smaller than the listen backlog: past it the kernel, not the agent, drops handshakes.
    let mut conns = Vec::with_capacity(10_000);
    for _ in 0..40 {
        let batch = (0..250).map(|_| tokio::net::TcpStream::connect(&proxy));
        for c in futures_util::future::join_all(batch).await {
            let c = c.expect("connect to the VM's proxy");
            // Closed with a reset, not into TIME_WAIT: thousands of loopback ports held for a
            // minute would be taken from the tests that run next (a fake CLI's callback port).
            let reset = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&c, nix::sys::socket::sockopt::Linger, &reset)
                .expect("SO_LINGER");
            conns.push(c);
        }
    }
    let reads = conns.into_iter().map(|mut c| {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut answer = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer));
            read.await
                .is_ok()
                .then(|| String::from_utf8_lossy(&answer).into_owned())
        })
    });
    let answers = futures_util::future::join_all(reads).await;
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Ok(Some(text)) if text.starts_with("HTTP/1.1 503")))
        .count();
    let held = answers.iter().filter(|a| matches!(a, Ok(None))).count();
    // Handshakes the kernel completes for the client can still be dropped on the agent's side
    // when its accept queue overflows (the connection then looks held); on a machine busy with
    // the rest of the suite that was up to ~160 of them: an allowance of 512 for those. Without
    // the agent's limit all 10,000 would be held.
    assert!(
        held <= vm_agent_max_tunnels() + 512 && refused + held == 10_000,
        "{refused} refused, {held} held of 10,000"
    );
    drop(answers);

    // Everything still works: the agent answers, and a real request goes through.
    alice.client.health().await.expect("the agent is up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = curl(&alice, &rig.origin.cert_path(), &rig.origin.url("/")).await;
    assert_eq!(got.code, 0, "after the flood: {}", got.stderr);
}
