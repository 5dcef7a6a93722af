//! The agent's own relay on the host's TURN server, for a VM behind a symmetric NAT or without
//! any forward: the real agent allocates on a real coturn (`turnserver` on loopback) with
//! long-term credentials, trickles the relayed address as a `relay` candidate, and carries media
//! through it; a TURN server that refuses the password, or answers garbage, costs one warning in
//! the agent's log and the session goes on with its other candidates.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use orchestrator::desktop::DesktopSession;
use protocol::desktop::{DesktopEvent, DesktopOffer, IceServer, IceSettings};
use serde_json::json;
use test_kit::desktop::chromium::{captured_offer, Chromium};
use test_kit::desktop::relay::Relay;
use test_kit::desktop::turn::{Coturn, TURN_PASSWORD, TURN_USER};
use test_kit::desktop::xserver::{Canvas, Xvfb};
use test_kit::AgentProcess;

/// `(kind, address, port)` of every `candidate:` line in `text`.
fn candidates(text: &str) -> Vec<(String, IpAddr, u16)> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches("a=").strip_prefix("candidate:"))
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

fn offer(servers: Vec<IceServer>) -> DesktopOffer {
    DesktopOffer {
        sdp: captured_offer(),
        ice: IceSettings {
            servers,
            bind: vec!["127.0.0.1".parse().unwrap()],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The candidates the agent trickles until it says it has no more.
fn trickled(rt: &tokio::runtime::Runtime, session: &mut DesktopSession) -> Vec<String> {
    rt.block_on(async {
        let mut found = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, session.next_event()).await {
                Ok(Ok(Some(DesktopEvent::Candidate { candidate }))) => found.push(candidate),
                Ok(Ok(Some(DesktopEvent::EndOfCandidates))) => return found,
                Ok(Ok(Some(_))) => {}
                other => panic!("no end of candidates: {other:?} (so far {found:?})"),
            }
        }
    })
}

/// A viewer that is only a UDP socket: it trickles its address to `session` and returns the
/// sources of the agent's ICE connectivity checks (STUN Binding requests for this session) that
/// reach it until `enough` says so or 20 s pass.
fn checks_reaching_a_viewer(
    rt: &tokio::runtime::Runtime,
    session: &DesktopSession,
    enough: impl Fn(&[SocketAddr]) -> bool,
) -> Vec<SocketAddr> {
    let viewer = UdpSocket::bind("127.0.0.1:0").expect("viewer socket");
    viewer
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let addr = viewer.local_addr().expect("addr");
    let line = format!(
        "candidate:1 1 udp 2122260223 {} {} typ host",
        addr.ip(),
        addr.port()
    );
    rt.block_on(session.add_candidate(&line))
        .expect("trickled candidate");
    let ufrag = captured_offer()
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("ufrag")
        .trim()
        .to_string();
    let mut sources = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline && !enough(&sources) {
        let Ok((n, from)) = viewer.recv_from(&mut buf) else {
            continue;
        };
        let msg = &buf[..n];
        let check = n >= 20
            && msg[..2] == [0x00, 0x01]
            && msg[4..8] == [0x21, 0x12, 0xa4, 0x42]
            && msg.windows(ufrag.len()).any(|w| w == ufrag.as_bytes());
        if check && !sources.contains(&from) {
            sources.push(from);
        }
    }
    sources
}

/// A "TURN server" that answers every datagram with bytes that are no STUN at all.
fn garbage_server() -> (SocketAddr, std::thread::JoinHandle<usize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let addr = socket.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let mut answered = 0;
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            // Looks like a STUN header with a lying length, then noise.
            let mut junk = vec![0x01, 0x13, 0xff, 0xf0, 0x21, 0x12, 0xa4, 0x42];
            junk.extend(buf[..n].iter().rev().map(|b| b ^ 0x5a));
            let _ = socket.send_to(&junk, from);
            answered += 1;
        }
        answered
    });
    (addr, server)
}

#[test]
fn the_agent_trickles_a_relay_on_a_turn_server_and_goes_on_without_a_working_one() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(320, 240);
    let _canvas = Canvas::open(&x.display, 0x336699);
    let turn = Coturn::start();
    let agent = rt.block_on(AgentProcess::start_logged(&[(
        "DISPLAY",
        x.display.as_str(),
    )]));
    let client = rt.block_on(agent.client());

    // The right credentials: a relay candidate on the server's relay address.
    let good = offer(vec![turn.ice_server(turn.url(), TURN_PASSWORD)]);
    let mut session = rt.block_on(client.desktop(&good)).expect("answer");
    let found = trickled(&rt, &mut session);
    let relays: Vec<_> = candidates(&found.join("\n"))
        .into_iter()
        .filter(|c| c.0 == "relay")
        .collect();
    assert_eq!(relays.len(), 1, "one relay candidate: {found:?}");
    let relay = SocketAddr::new(relays[0].1, relays[0].2);
    let (lo, hi) = turn.relay_ports;
    assert_eq!(relay.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    assert!(
        (lo..=hi).contains(&relay.port()),
        "the relay is the TURN server's ({lo}-{hi}): {relay}"
    );
    assert!(
        turn.log().contains(&format!("username=<{TURN_USER}>")),
        "coturn saw an authenticated allocation:\n{}",
        turn.log()
    );

    // The relay carries the agent's connectivity checks to a viewer: through coturn, from the
    // relayed address (a permission and Send/ChannelData on the real server).
    let sources = checks_reaching_a_viewer(&rt, &session, |s| s.contains(&relay));
    assert!(
        sources.contains(&relay),
        "checks arrived from {sources:?}, none through the relay {relay}"
    );
    for done in [
        "CREATE_PERMISSION processed, success",
        "CHANNEL_BIND processed, success",
    ] {
        // coturn writes its log line after it answered; give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !turn.log().contains(done) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = turn.log();
        assert!(log.contains(done), "coturn's log has no {done:?}:\n{log}");
    }

    // A wrong password: no relay, one clear warning without the password, and the session still
    // works on its host candidate.
    let wrong = "fake-wrong-password-0002";
    let bad = offer(vec![turn.ice_server(turn.url(), wrong)]);
    let mut refused = rt.block_on(client.desktop(&bad)).expect("answer");
    let host_port = candidates(refused.answer())
        .into_iter()
        .find(|c| c.0 == "host")
        .expect("host candidate")
        .2;
    let found = trickled(&rt, &mut refused);
    assert!(
        !candidates(&found.join("\n")).iter().any(|c| c.0 == "relay"),
        "no relay with a wrong password: {found:?}"
    );
    let host = SocketAddr::from(([127, 0, 0, 1], host_port));
    let sources = checks_reaching_a_viewer(&rt, &refused, |s| s.contains(&host));
    assert!(
        sources.contains(&host),
        "host checks still go out: {sources:?}"
    );
    let log = agent.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("no TURN relay"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning for the refusal:\n{log}");
    assert!(
        warnings[0].contains("credentials") && warnings[0].contains(&turn.addr.to_string()),
        "{}",
        warnings[0]
    );
    assert!(
        !log.contains(wrong) && !log.contains(TURN_PASSWORD),
        "a TURN password in the agent's log:\n{log}"
    );

    // A server that answers garbage: given up after a few seconds with one warning.
    let (junk, junk_server) = garbage_server();
    let garbage = offer(vec![IceServer {
        urls: vec![format!("turn:{junk}")],
        username: Some(TURN_USER.into()),
        credential: Some(protocol::secret::Secret::new(TURN_PASSWORD.into())),
    }]);
    let mut ignored = rt.block_on(client.desktop(&garbage)).expect("answer");
    let found = trickled(&rt, &mut ignored);
    assert!(
        !candidates(&found.join("\n")).iter().any(|c| c.0 == "relay"),
        "{found:?}"
    );
    let log = agent.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no TURN relay") && l.contains(&junk.to_string()))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the garbage server:\n{log}"
    );
    assert!(warnings[0].contains("did not answer"), "{}", warnings[0]);
    assert_eq!(
        rt.block_on(client.health())
            .expect("agent still serves")
            .status,
        "ok"
    );
    drop((session, refused, ignored));
    assert!(junk_server.join().expect("garbage server") > 0);

    // The viewer left: the agent gave its relay back (a Refresh with lifetime 0) instead of
    // leaving it to expire.
    let freed = format!("username=<{TURN_USER}>, lifetime=0");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !turn.log().contains(&freed) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        turn.log().contains(&freed),
        "coturn's log has no deallocation:\n{}",
        turn.log()
    );
}

/// Short-lived credentials (the TURN REST scheme) instead of one long-term password: the host
/// mints them per session from a secret only it and the TURN server hold; the agent allocates
/// with fresh ones, and expired ones get no relay.
#[test]
fn the_agent_allocates_with_short_lived_credentials_and_expired_ones_are_refused() {
    use orchestrator::desktop::TurnRest;
    use std::time::SystemTime;
    const SECRET: &str = "fake-turn-secret-0001";
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(320, 240);
    let _canvas = Canvas::open(&x.display, 0x336699);
    let turn = Coturn::start_with_secret(SECRET);
    let agent = rt.block_on(AgentProcess::start_logged(&[(
        "DISPLAY",
        x.display.as_str(),
    )]));
    let client = rt.block_on(agent.client());
    let rest = TurnRest::new(
        vec![turn.url()],
        protocol::secret::Secret::new(SECRET.into()),
        Duration::from_secs(600),
    );

    let fresh = rest.server("session-0001", SystemTime::now());
    let user = fresh.username.clone().expect("a user name");
    assert!(user.ends_with(":session-0001"), "{user}");
    let mut session = rt
        .block_on(client.desktop(&offer(vec![fresh])))
        .expect("answer");
    let found = trickled(&rt, &mut session);
    assert!(
        candidates(&found.join("\n")).iter().any(|c| c.0 == "relay"),
        "a relay with fresh credentials: {found:?}"
    );
    assert!(
        turn.log().contains(&format!("username=<{user}>")),
        "coturn saw the short-lived user:\n{}",
        turn.log()
    );

    // Minted an hour ago for ten minutes: expired.
    let stale = rest.server(
        "session-0002",
        SystemTime::now() - Duration::from_secs(3600),
    );
    let mut refused = rt
        .block_on(client.desktop(&offer(vec![stale])))
        .expect("answer");
    let found = trickled(&rt, &mut refused);
    assert!(
        !candidates(&found.join("\n")).iter().any(|c| c.0 == "relay"),
        "no relay with expired credentials: {found:?}"
    );
    let log = agent.log();
    assert!(!log.contains(SECRET), "the secret reached the agent's log");
    drop((session, refused));
}

/// Keeps only the agent's relay candidates in the answer: the browser never learns another
/// address of the agent.
fn only_relay_candidates(candidate: &str) -> bool {
    candidate.contains(" typ relay")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn a_browser_watches_through_the_agents_relay_only() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(640, 480);
    let canvas = Canvas::open(&x.display, 0x20c040);
    let turn = Coturn::start();
    // The agent's host socket is on 127.0.0.2 and hidden from the browser; the TURN server's
    // permissions (per IP) let only the agent's relay on 127.0.0.1 through to the browser's relay.
    // So the one path between them is agent relay → coturn → browser's own relay (over TCP, so
    // the browser has no server-reflexive address the agent could reach directly).
    let (agent, relay) = rt.block_on(async {
        let agent = AgentProcess::start_logged(&[("DISPLAY", x.display.as_str())]).await;
        let ice = IceSettings {
            servers: vec![turn.ice_server(turn.url(), TURN_PASSWORD)],
            bind: vec!["127.0.0.2".parse().unwrap()],
            ..Default::default()
        };
        let relay =
            Relay::start_filtered(agent.client().await, None, ice, only_relay_candidates).await;
        (agent, relay)
    });
    let browser_ice = json!([{
        "urls": [format!("turn:{}?transport=tcp", turn.addr)],
        "username": TURN_USER,
        "credential": TURN_PASSWORD,
    }]);
    let mut browser = Chromium::launch();
    browser.watch(
        &format!(
            "http://{}/?resize=0&ice={}",
            relay.addr,
            percent_encode(&browser_ice.to_string())
        ),
        Duration::from_secs(60),
    );
    let agent_relay = {
        let sessions = relay.sessions.lock().unwrap();
        let answer = sessions.first().expect("a session").answer().to_string();
        let mut relays: Vec<_> = candidates(&answer)
            .into_iter()
            .filter(|c| c.0 == "relay")
            .collect();
        // The candidate is written under each m-line (BUNDLE): one address.
        relays.dedup();
        assert_eq!(relays.len(), 1, "{answer}");
        SocketAddr::new(relays[0].1, relays[0].2)
    };
    let remote = browser.selected_remote_candidate();
    assert_eq!(
        remote,
        json!([agent_relay.ip().to_string(), agent_relay.port(), "relay"]),
        "media flows through the agent's relay {agent_relay}\nagent log:\n{}",
        agent.log()
    );
    canvas.paint(0x1040e0);
    browser.wait_colour(320, 240, 0x1040e0, 40);
}
