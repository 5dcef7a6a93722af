//! ICE configuration from the host, as a VM without its own public address needs it: the gateway
//! forwards a fixed UDP port range of a public IP 1:1 to the VM. The real agent must bind its media
//! socket inside that range, advertise the public IP with the same port, and use candidates the
//! viewer trickles after the answer (over the signalling call, not the SDP). No browser is needed:
//! the offer is one Chromium made (a fixture), and the "viewer" side is a plain UDP socket that
//! receives the agent's ICE connectivity checks. One test adds a real Chromium viewer to show the
//! configured agent streams through the range.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use protocol::desktop::{DesktopOffer, IceSettings};
use test_kit::desktop::chromium::{captured_offer, Chromium};
use test_kit::desktop::relay::Relay;
use test_kit::desktop::xserver::{Canvas, Xvfb};
use test_kit::AgentProcess;

/// The public address the gateway would map onto the VM (TEST-NET-3, never routed).
const PUBLIC_IP: &str = "203.0.113.7";

/// `(kind, address, port)` of every `a=candidate` line of `sdp` (related addresses are not
/// compared: str0m, like browsers, shows them as 0.0.0.0).
fn candidates(sdp: &str) -> Vec<(String, IpAddr, u16)> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .map(|c| {
            let f: Vec<&str> = c.split_whitespace().collect();
            assert!(f.len() >= 8, "candidate line {c:?}");
            (
                f[7].to_string(),
                f[4].parse().expect("candidate address"),
                f[5].parse().expect("candidate port"),
            )
        })
        .collect()
}

/// Local ports of the UDP sockets process `pid` holds (from /proc: its socket inodes matched
/// against the kernel's UDP table).
fn udp_ports_of(pid: u32) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("agent fds") {
        let Ok(target) = std::fs::read_link(fd.expect("fd").path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).expect("udp table");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            inodes.contains(*f.get(9)?).then_some(port)
        })
        .collect()
}

#[test]
fn binds_in_the_port_range_and_advertises_the_public_ip() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(320, 240);
    let _canvas = Canvas::open(&x.display, 0x336699);
    let agent = rt.block_on(AgentProcess::start_with(&[("DISPLAY", x.display.as_str())]));
    let client = rt.block_on(agent.client());
    let (lo, hi) = test_kit::ports::free_udp_range(4);
    let public: IpAddr = PUBLIC_IP.parse().unwrap();
    let offer = DesktopOffer {
        sdp: captured_offer(),
        ice: IceSettings {
            bind: vec!["127.0.0.1".parse().unwrap()],
            nat_1to1_ip: Some(public),
            udp_ports: Some((lo, hi)),
            ..Default::default()
        },
        ..Default::default()
    };

    let session = rt.block_on(client.desktop(&offer)).expect("answer");
    let found = candidates(session.answer());
    let host: Vec<_> = found.iter().filter(|c| c.0 == "host").collect();
    assert_eq!(host.len(), 1, "one host candidate: {found:?}");
    let port = host[0].2;
    assert_eq!(host[0].1, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert!(
        (lo..=hi).contains(&port),
        "host candidate port {port} outside {lo}-{hi}"
    );
    assert!(
        found
            .iter()
            .any(|c| c.0 == "srflx" && c.1 == public && c.2 == port),
        "the public 1:1 address with the same port is advertised: {found:?}"
    );
    assert!(
        udp_ports_of(agent.pid()).contains(&port),
        "the agent's UDP socket is bound on {port}: {:?}",
        udp_ports_of(agent.pid())
    );

    // A second viewer gets its own port, still inside the range.
    let second = rt.block_on(client.desktop(&offer)).expect("second answer");
    let second_port = candidates(second.answer())
        .into_iter()
        .find(|c| c.0 == "host")
        .expect("host candidate")
        .2;
    assert_ne!(second_port, port);
    assert!((lo..=hi).contains(&second_port), "{second_port}");
    let bound = udp_ports_of(agent.pid());
    assert!(
        bound.contains(&port) && bound.contains(&second_port),
        "{bound:?}"
    );

    // The viewer trickles a candidate after the answer: the agent's connectivity checks reach it,
    // from the port inside the range, for this session (the offer's ICE user name).
    let viewer = UdpSocket::bind("127.0.0.1:0").expect("viewer socket");
    viewer
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let viewer_addr = viewer.local_addr().expect("addr");
    let line = format!(
        "candidate:1 1 udp 2122260223 {} {} typ host",
        viewer_addr.ip(),
        viewer_addr.port()
    );
    rt.block_on(session.add_candidate(&line))
        .expect("trickled candidate");
    let offer_ufrag = offer
        .sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("ufrag")
        .trim()
        .to_string();
    let mut buf = [0u8; 1500];
    let (n, from) = viewer
        .recv_from(&mut buf)
        .expect("the agent sent a connectivity check to the trickled candidate");
    let msg = &buf[..n];
    assert_eq!(&msg[..2], &[0x00, 0x01], "a STUN Binding request");
    assert_eq!(&msg[4..8], &[0x21, 0x12, 0xa4, 0x42], "STUN magic cookie");
    assert!(
        msg.windows(offer_ufrag.len())
            .any(|w| w == offer_ufrag.as_bytes()),
        "the check is for this viewer's session (user name has {offer_ufrag})"
    );
    assert_eq!(
        from,
        SocketAddr::new("127.0.0.1".parse().unwrap(), port),
        "sent from the socket inside the range"
    );
    drop((session, second));
}

#[test]
fn a_full_port_range_is_a_clear_error() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(320, 240);
    let _canvas = Canvas::open(&x.display, 0x336699);
    let agent = rt.block_on(AgentProcess::start_with(&[("DISPLAY", x.display.as_str())]));
    let client = rt.block_on(agent.client());
    // Someone else holds the only port of the range.
    let taken = UdpSocket::bind("127.0.0.1:0").expect("socket");
    let port = taken.local_addr().expect("addr").port();
    let offer = DesktopOffer {
        sdp: captured_offer(),
        ice: IceSettings {
            bind: vec!["127.0.0.1".parse().unwrap()],
            udp_ports: Some((port, port)),
            ..Default::default()
        },
        ..Default::default()
    };
    match rt.block_on(client.desktop(&offer)) {
        Err(orchestrator::ClientError::Agent(e)) => {
            assert_eq!(e.code, protocol::ErrorCode::Io, "{e}");
            assert!(e.message.contains(&format!("{port}-{port}")), "{e}");
        }
        other => panic!("expected a clear error, got {other:?}"),
    }
    let backwards = DesktopOffer {
        ice: IceSettings {
            udp_ports: Some((port, port - 1)),
            ..offer.ice.clone()
        },
        ..offer.clone()
    };
    match rt.block_on(client.desktop(&backwards)) {
        Err(orchestrator::ClientError::Agent(e)) => {
            assert_eq!(e.code, protocol::ErrorCode::BadRequest, "{e}");
            assert!(e.message.contains("empty"), "{e}");
        }
        other => panic!("expected a bad-request error, got {other:?}"),
    }
    assert_eq!(
        rt.block_on(client.health())
            .expect("agent still serves")
            .status,
        "ok"
    );
}

#[test]
fn a_browser_watches_through_the_port_range() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(640, 480);
    let canvas = Canvas::open(&x.display, 0x20c040);
    let (lo, hi) = test_kit::ports::free_udp_range(4);
    let (_agent, relay) = rt.block_on(async {
        let agent = AgentProcess::start_with(&[("DISPLAY", x.display.as_str())]).await;
        let ice = IceSettings {
            bind: vec!["127.0.0.1".parse().unwrap()],
            nat_1to1_ip: Some(PUBLIC_IP.parse().unwrap()),
            udp_ports: Some((lo, hi)),
            ..Default::default()
        };
        let relay = Relay::start_with_ice(agent.client().await, None, ice).await;
        (agent, relay)
    });
    let mut browser = Chromium::launch();
    browser.watch(
        &format!("http://{}/?resize=0", relay.addr),
        Duration::from_secs(60),
    );
    let remote = browser.selected_remote_candidate();
    let port = remote[1].as_u64().expect("selected pair's remote port");
    assert!(
        (u64::from(lo)..=u64::from(hi)).contains(&port),
        "media flows to the agent's socket inside {lo}-{hi}: {remote}"
    );
    canvas.paint(0x1040e0);
    browser.wait_colour(320, 240, 0x1040e0, 40);
}

/// A STUN server on loopback that answers every Binding request as if a NAT stood between it and
/// the agent: the mapped address is `public` with the request's source port. Loopback cannot put a
/// NAT in the path, so this stands in for the server-side view a real STUN server would report
/// behind one; everything on the agent's side (sockets, requests, parsing, trickling) is real.
fn nat_stun_server(public: IpAddr) -> (SocketAddr, std::thread::JoinHandle<usize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("stun socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let addr = socket.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let mut answered = 0;
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let req = &buf[..n];
            if n < 20 || req[..2] != [0x00, 0x01] || req[4..8] != [0x21, 0x12, 0xa4, 0x42] {
                continue;
            }
            let IpAddr::V4(ip) = public else {
                unreachable!("IPv4 only")
            };
            let mut answer = vec![0x01, 0x01, 0x00, 0x0c];
            answer.extend_from_slice(&req[4..20]);
            answer.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
            answer.extend_from_slice(&(from.port() ^ 0x2112).to_be_bytes());
            let cookie = [0x21, 0x12, 0xa4, 0x42];
            answer.extend(ip.octets().iter().zip(cookie).map(|(a, b)| a ^ b));
            socket.send_to(&answer, from).expect("answer");
            answered += 1;
            if answered == 1 {
                // The test's sessions ask within seconds of each other; stop once they are done.
                socket
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
            }
        }
        answered
    });
    (addr, server)
}

#[test]
fn the_agent_trickles_the_address_a_stun_server_sees_then_says_it_has_no_more() {
    use protocol::desktop::{DesktopEvent, IceServer};

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(320, 240);
    let _canvas = Canvas::open(&x.display, 0x336699);
    let agent = rt.block_on(AgentProcess::start_with(&[("DISPLAY", x.display.as_str())]));
    let client = rt.block_on(agent.client());
    let public: IpAddr = "203.0.113.9".parse().unwrap();
    let (stun, server) = nat_stun_server(public);
    let offer = DesktopOffer {
        sdp: captured_offer(),
        ice: IceSettings {
            servers: vec![IceServer {
                urls: vec![
                    format!("stun:{stun}"),
                    // A TLS-only server the agent cannot ask is skipped, not an error.
                    "turns:turn.invalid:5349".into(),
                ],
                ..Default::default()
            }],
            bind: vec!["127.0.0.1".parse().unwrap()],
            ..Default::default()
        },
        ..Default::default()
    };
    let mut session = rt.block_on(client.desktop(&offer)).expect("answer");
    let host_port = candidates(session.answer())
        .into_iter()
        .find(|c| c.0 == "host")
        .expect("host candidate")
        .2;
    assert!(
        !session.answer().contains("203.0.113.9"),
        "the reflexive address is trickled, not in the answer"
    );
    let trickled = rt.block_on(async {
        let mut trickled = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, session.next_event()).await {
                Ok(Ok(Some(DesktopEvent::Candidate { candidate }))) => trickled.push(candidate),
                Ok(Ok(Some(DesktopEvent::EndOfCandidates))) => return trickled,
                Ok(Ok(Some(_))) => {}
                other => panic!("no end of candidates: {other:?} (so far {trickled:?})"),
            }
        }
    });
    assert_eq!(trickled.len(), 1, "{trickled:?}");
    let found = candidates(&format!("a={}", trickled[0]));
    assert_eq!(
        found,
        vec![("srflx".to_string(), public, host_port)],
        "the address the STUN server saw for the host candidate's socket"
    );

    // A host whose browser signalling has no trickle (the viewer page's single POST) waits for
    // the candidates and gets them written into the answer; the session's events are kept.
    let mut whole = rt.block_on(client.desktop(&offer)).expect("second answer");
    let sdp = rt
        .block_on(whole.answer_with_candidates())
        .expect("gathered")
        .to_string();
    let found = candidates(&sdp);
    let port = found.iter().find(|c| c.0 == "host").expect("host").2;
    assert!(
        found.contains(&("srflx".to_string(), public, port)),
        "the answer has the reflexive candidate: {found:?}"
    );
    let control = rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), whole.next_event()).await {
                Ok(Ok(Some(DesktopEvent::Control { held }))) => return held,
                Ok(Ok(Some(_))) => {}
                other => panic!("no control event: {other:?}"),
            }
        }
    });
    assert!(!control, "the first session still holds control");
    assert!(server.join().expect("stun server") >= 2);
    drop((session, whole));
}
