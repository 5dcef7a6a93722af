//! A viewer without a browser: a real WebRTC peer (str0m, the same stack as the agent's, but the
//! offering side) on a loopback UDP socket. It does what a page cannot be made to do on demand:
//! send the agent an RTCP keyframe request (PLI) whenever the test asks.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::desktop::DesktopSession;
use orchestrator::AgentClient;
use protocol::desktop::{DesktopOffer, IceSettings};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

/// One viewer's WebRTC session with the agent, driven by the calling thread.
#[derive(Debug)]
pub struct RtpViewer {
    rtc: Rtc,
    socket: UdpSocket,
    mid: Mid,
    /// Video frames received so far.
    pub frames: u64,
    /// Keyframes among them.
    pub keyframes: u64,
    _session: DesktopSession,
}

impl RtpViewer {
    /// Offers a receive-only video track and a data channel for `display` through `client`, and
    /// applies the agent's answer (ICE runs on loopback).
    pub fn connect(rt: &tokio::runtime::Runtime, client: &AgentClient, display: &str) -> Self {
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .clear_codecs()
            .enable_h264(true)
            .build(Instant::now());
        let socket = UdpSocket::bind("127.0.0.1:0").expect("viewer socket");
        let local = socket.local_addr().expect("addr");
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("host candidate"));
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        change.add_channel("input".into());
        let (offer, pending) = change.apply().expect("an offer");
        let offer = DesktopOffer {
            sdp: offer.to_sdp_string(),
            display: Some(display.to_string()),
            video: Default::default(),
            ice: IceSettings {
                bind: vec!["127.0.0.1".parse().expect("ip")],
                ..Default::default()
            },
        };
        let (session, answer) = rt.block_on(async {
            let mut session = client.desktop(&offer).await.expect("desktop call");
            let answer = session
                .answer_with_candidates()
                .await
                .expect("the agent's answer")
                .to_string();
            (session, answer)
        });
        let answer = SdpAnswer::from_sdp_string(&answer).expect("answer SDP");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        Self {
            rtc,
            socket,
            mid,
            frames: 0,
            keyframes: 0,
            _session: session,
        }
    }

    /// Runs the session until `done(self)` holds; fails the test after `timeout`.
    pub fn run_until(&mut self, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "viewer: {} frames, {} keyframes after {timeout:?}",
                self.frames,
                self.keyframes
            );
            let wait = loop {
                match self.rtc.poll_output().expect("str0m output") {
                    Output::Timeout(at) => break at,
                    Output::Transmit(t) => {
                        let _ = self.socket.send_to(&t.contents, t.destination);
                    }
                    Output::Event(Event::MediaData(data)) if data.mid == self.mid => {
                        self.frames += 1;
                        if is_h264_keyframe(&data.data) {
                            self.keyframes += 1;
                        }
                    }
                    Output::Event(_) => {}
                }
            };
            let now = Instant::now();
            let wait = wait
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(50));
            self.socket.set_read_timeout(Some(wait)).expect("timeout");
            let input = match self.socket.recv_from(&mut buf) {
                Ok((n, source)) => match buf[..n].try_into() {
                    Ok(contents) => Input::Receive(
                        Instant::now(),
                        Receive {
                            proto: Protocol::Udp,
                            source,
                            destination: self.socket.local_addr().expect("addr"),
                            contents,
                        },
                    ),
                    Err(_) => continue,
                },
                Err(_) => Input::Timeout(Instant::now()),
            };
            self.rtc.handle_input(input).expect("str0m input");
        }
    }

    /// Sends the agent a Picture Loss Indication, as a browser does when it cannot decode.
    pub fn request_keyframe(&mut self) {
        self.rtc
            .writer(self.mid)
            .expect("the video track")
            .request_keyframe(None, KeyframeRequestKind::Pli)
            .expect("a PLI");
    }
}

/// Whether an Annex B H.264 access unit holds an IDR slice (NAL type 5).
fn is_h264_keyframe(data: &[u8]) -> bool {
    data.windows(4)
        .filter(|w| w[..3] == [0, 0, 1])
        .any(|w| w[3] & 0x1f == 5)
}
