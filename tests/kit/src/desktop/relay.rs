//! What a host service does for the viewer: serve the page and relay its offer to the agent's
//! `desktop` call (a minimal HTTP/1.1 server on loopback).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use orchestrator::desktop::{DesktopSession, VIEWER_HTML};
use orchestrator::AgentClient;
use protocol::desktop::{DesktopOffer, IceSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The relay; viewer sessions live as long as it does.
#[derive(Debug)]
pub struct Relay {
    /// Where the viewer page is served.
    pub addr: SocketAddr,
    /// The sessions opened so far (kept open: a viewer watches while its session lives).
    pub sessions: Arc<Mutex<Vec<DesktopSession>>>,
}

impl Relay {
    /// Serves `GET /` (the viewer) and `POST /offer` (offer SDP in, answer SDP out) for `display`.
    /// `display: None` streams the agent's default display. The agent's media socket is on
    /// loopback.
    pub async fn start(client: AgentClient, display: Option<String>) -> Self {
        let ice = IceSettings {
            bind: vec!["127.0.0.1".parse().unwrap()],
            ..Default::default()
        };
        Self::start_with_ice(client, display, ice).await
    }

    /// [`Relay::start`] with the host's ICE configuration for every viewer.
    pub async fn start_with_ice(
        client: AgentClient,
        display: Option<String>,
        ice: IceSettings,
    ) -> Self {
        Self::start_filtered(client, display, ice, |_| true).await
    }

    /// A relay to the desktop of a microVM on QEMU's user-mode network with UDP `port` forwarded
    /// from the host's loopback (see `test_kit::vm::udp_from_loopback`): brings the guest's side
    /// of the network up as the image's init would, binds the agent to the guest address on the
    /// forwarded port and announces the host side of the forward. Only that address reaches the
    /// page: the guest's own address exists nowhere on the host, and the browser would send its
    /// checks there, out of the machine.
    pub async fn through_user_network(
        client: AgentClient,
        display: Option<String>,
        port: u16,
    ) -> Self {
        let guest = orchestrator::vm::UserNetwork::GUEST_ADDR;
        orchestrator::vm::UserNetwork::bring_up_guest(&client)
            .await
            .expect("bring the guest's network up");
        let ice = IceSettings {
            bind: vec![IpAddr::V4(guest)],
            nat_1to1_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            udp_ports: Some((port, port)),
            ..Default::default()
        };
        Self::start_filtered(client, display, ice, |candidate| {
            candidate.contains(" 127.0.0.1 ")
        })
        .await
    }

    /// [`Relay::start_with_ice`], passing the page only the answer's candidates `keep` accepts (a
    /// host service drops the VM's private addresses, which mean nothing to a viewer elsewhere).
    pub async fn start_filtered(
        client: AgentClient,
        display: Option<String>,
        ice: IceSettings,
        keep: fn(&str) -> bool,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let kept = sessions.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let client = client.clone();
                let display = display.clone();
                let ice = ice.clone();
                let kept = kept.clone();
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut stream).await else {
                        return;
                    };
                    let (status, ctype, out) = if head.starts_with("POST /offer") {
                        let offer = DesktopOffer {
                            sdp: String::from_utf8_lossy(&body).into_owned(),
                            display,
                            video: Default::default(),
                            ice,
                        };
                        // The page's one POST has no trickle: the answer carries every candidate.
                        let opened = match client.desktop(&offer).await {
                            Ok(mut session) => match session.answer_with_candidates().await {
                                Ok(answer) => Ok((keep_candidates(answer, keep), session)),
                                Err(e) => Err(e),
                            },
                            Err(e) => Err(e),
                        };
                        match opened {
                            Ok((answer, session)) => {
                                kept.lock().unwrap().push(session);
                                ("201 Created", "application/sdp", answer)
                            }
                            Err(e) => ("502 Bad Gateway", "text/plain", e.to_string()),
                        }
                    } else if head.starts_with("GET / ") || head.starts_with("GET /?") {
                        (
                            "200 OK",
                            "text/html; charset=utf-8",
                            VIEWER_HTML.to_string(),
                        )
                    } else {
                        ("404 Not Found", "text/plain", "not found".to_string())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{out}",
                        out.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Self { addr, sessions }
    }
}

/// `sdp` without the `a=candidate:` lines `keep` refuses.
fn keep_candidates(sdp: &str, keep: fn(&str) -> bool) -> String {
    sdp.split_inclusive('\n')
        .filter(|line| !line.starts_with("a=candidate:") || keep(line.trim_end()))
        .collect()
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            return Some((head, body));
        }
    }
}
