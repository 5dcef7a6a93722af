//! The VM desktop for a user's browser: the signalling relay and the viewer page.
//!
//! The agent streams the desktop over WebRTC itself; the host only relays signalling between the
//! browser and the agent's `desktop` call ([`DesktopSession`]) and serves [`VIEWER_HTML`]. The page
//! speaks the simplest signalling there is (WHEP style: `POST` the SDP offer as `application/sdp`, the
//! answer SDP comes back), so any host endpoint that relays it through [`DesktopSession::open`] works.

use std::collections::VecDeque;
use std::net::IpAddr;

use protocol::desktop::{Desktop, DesktopEvent, DesktopOffer, DesktopSignal};
use protocol::frame::Frame;

use crate::client::{AgentClient, ClientError, StreamCall, StreamItem};

mod turn;

pub use turn::TurnRest;

/// The viewer: one static HTML page with its script, no build step. Open it with
/// `?signal=<url>` (default `offer`, relative to the page): it posts its offer there and expects the
/// answer SDP back.
pub const VIEWER_HTML: &str = include_str!("viewer.html");

/// The most ICE candidates one session takes from the agent (a VM has a few addresses).
pub const MAX_CANDIDATES: usize = 32;

/// The longest candidate line taken (real ones are under 200 bytes).
pub const MAX_CANDIDATE_LEN: usize = 512;

/// The longest SDP answer taken (real ones are a few KiB).
pub const MAX_ANSWER_LEN: usize = 64 * 1024;

/// Events held while the answer's candidates are gathered.
const MAX_EARLY_EVENTS: usize = 64;

/// One viewer's session with the agent. The viewer watches as long as this value lives.
#[derive(Debug)]
pub struct DesktopSession {
    call: StreamCall<Desktop>,
    answer: String,
    /// Events read ahead by [`Self::answer_with_candidates`], handed out by `next_event` first.
    early: VecDeque<DesktopEvent>,
    /// Candidates on these addresses are kept out of the answer.
    hidden: Vec<IpAddr>,
    /// Candidates taken from the agent so far.
    candidates: usize,
}

impl DesktopSession {
    /// Sends the viewer's offer and waits for the agent's answer.
    pub async fn open(client: &AgentClient, offer: &DesktopOffer) -> Result<Self, ClientError> {
        let mut call = client.open::<Desktop>(offer).await?;
        loop {
            match call.next().await? {
                Some(StreamItem::Event(DesktopEvent::Answer { sdp })) => {
                    if sdp.len() > MAX_ANSWER_LEN {
                        return Err(ClientError::Decode(format!(
                            "the agent's answer has {} bytes, more than {MAX_ANSWER_LEN}",
                            sdp.len()
                        )));
                    }
                    return Ok(Self {
                        call,
                        answer: sdp,
                        early: VecDeque::new(),
                        hidden: Vec::new(),
                        candidates: 0,
                    });
                }
                Some(StreamItem::Event(DesktopEvent::Closed { reason })) => {
                    return Err(ClientError::Decode(format!(
                        "desktop closed before answering: {reason}"
                    )))
                }
                Some(_) => {}
                None => {
                    return Err(ClientError::Decode(
                        "desktop call ended without an answer".into(),
                    ))
                }
            }
        }
    }

    /// The agent's SDP answer. It lists the agent's host and NAT 1:1 candidates; addresses learnt
    /// from STUN servers follow as [`DesktopEvent::Candidate`] events (see [`Self::next_event`]),
    /// then [`DesktopEvent::EndOfCandidates`].
    pub fn answer(&self) -> &str {
        &self.answer
    }

    /// Waits until the agent has gathered all its candidates and returns the answer with the
    /// trickled ones written into it: for signalling without trickle, such as the viewer page's
    /// single `POST` (WHEP style). Without STUN servers this returns at once. Events that arrive
    /// meanwhile are kept for [`Self::next_event`].
    pub async fn answer_with_candidates(&mut self) -> Result<&str, ClientError> {
        loop {
            match self.call.next().await? {
                Some(StreamItem::Event(DesktopEvent::Candidate { candidate })) => {
                    self.admit(&candidate)?;
                    if !on_hidden(&candidate, &self.hidden) {
                        self.answer = with_candidate(&self.answer, &candidate);
                    }
                }
                Some(StreamItem::Event(DesktopEvent::EndOfCandidates)) => return Ok(&self.answer),
                Some(StreamItem::Event(DesktopEvent::Closed { reason })) => {
                    self.early.push_back(DesktopEvent::Closed {
                        reason: reason.clone(),
                    });
                    return Err(ClientError::Decode(format!(
                        "desktop closed while gathering candidates: {reason}"
                    )));
                }
                Some(StreamItem::Event(event)) => {
                    if self.early.len() >= MAX_EARLY_EVENTS {
                        return Err(ClientError::Decode(format!(
                            "the agent sent more than {MAX_EARLY_EVENTS} events before its candidates"
                        )));
                    }
                    self.early.push_back(event)
                }
                Some(StreamItem::Data(..)) => {}
                None => {
                    return Err(ClientError::Decode(
                        "desktop call ended while gathering candidates".into(),
                    ))
                }
            }
        }
    }

    /// Counts a candidate from the agent against the session's bounds.
    fn admit(&mut self, candidate: &str) -> Result<(), ClientError> {
        self.candidates += 1;
        if self.candidates > MAX_CANDIDATES {
            return Err(ClientError::Decode(format!(
                "the agent sent more than {MAX_CANDIDATES} candidates"
            )));
        }
        if candidate.len() > MAX_CANDIDATE_LEN {
            return Err(ClientError::Decode(format!(
                "the agent sent a {}-byte candidate (at most {MAX_CANDIDATE_LEN})",
                candidate.len()
            )));
        }
        Ok(())
    }

    /// Keeps candidates on `addresses` out of the answer, now and from later trickles (a VM's
    /// private address behind its forward, which a viewer elsewhere cannot reach).
    pub fn hide_addresses(&mut self, addresses: Vec<IpAddr>) {
        self.hidden = addresses;
        self.answer = self
            .answer
            .split_inclusive('\n')
            .filter(|l| !(l.starts_with("a=candidate:") && on_hidden(l, &self.hidden)))
            .collect();
    }

    /// Relays a candidate the browser trickled (`RTCIceCandidate.candidate`).
    pub async fn add_candidate(&self, candidate: &str) -> Result<(), ClientError> {
        self.signal(&DesktopSignal::Candidate {
            candidate: candidate.to_string(),
        })
        .await
    }

    /// Tells the agent the browser has no more candidates.
    pub async fn end_of_candidates(&self) -> Result<(), ClientError> {
        self.signal(&DesktopSignal::EndOfCandidates).await
    }

    async fn signal(&self, signal: &DesktopSignal) -> Result<(), ClientError> {
        let frame = Frame::message(signal)?;
        self.call.send_frame(frame).await
    }

    /// The next event of the session (candidates, connected, control, closed); `None` when the
    /// agent ended the call.
    pub async fn next_event(&mut self) -> Result<Option<DesktopEvent>, ClientError> {
        if let Some(event) = self.early.pop_front() {
            return Ok(Some(event));
        }
        loop {
            match self.call.next().await? {
                Some(StreamItem::Event(DesktopEvent::Candidate { candidate })) => {
                    self.admit(&candidate)?;
                    return Ok(Some(DesktopEvent::Candidate { candidate }));
                }
                Some(StreamItem::Event(event)) => return Ok(Some(event)),
                Some(StreamItem::Data(..)) => {}
                None => return Ok(None),
            }
        }
    }
}

/// Whether a candidate line's connection address (its fifth field) is one of `hidden`.
fn on_hidden(candidate: &str, hidden: &[IpAddr]) -> bool {
    candidate
        .trim_start_matches("a=")
        .split_whitespace()
        .nth(4)
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|a| hidden.contains(&a))
}

/// `sdp` with `a=<candidate>` added to every media section (they share one transport under
/// BUNDLE, and a browser reads candidates from any of them).
fn with_candidate(sdp: &str, candidate: &str) -> String {
    let line = format!("a={}\r\n", candidate.trim().trim_start_matches("a="));
    let mut out = String::with_capacity(sdp.len() + 2 * line.len());
    let mut in_media = false;
    for l in sdp.split_inclusive('\n') {
        if l.starts_with("m=") && in_media {
            out.push_str(&line);
        }
        in_media |= l.starts_with("m=");
        out.push_str(l);
        if !l.ends_with('\n') {
            out.push_str("\r\n");
        }
    }
    if in_media {
        out.push_str(&line);
    }
    out
}

impl AgentClient {
    /// Opens a viewer session on the agent's desktop (see [`DesktopSession`]).
    pub async fn desktop(&self, offer: &DesktopOffer) -> Result<DesktopSession, ClientError> {
        DesktopSession::open(self, offer).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_addresses_leave_the_answer() {
        let hidden: Vec<IpAddr> = vec!["10.0.2.15".parse().unwrap()];
        assert!(on_hidden(
            "a=candidate:1 1 udp 2130706431 10.0.2.15 40000 typ host",
            &hidden
        ));
        assert!(!on_hidden(
            "candidate:2 1 udp 1694498815 127.0.0.1 40000 typ srflx raddr 10.0.2.15 rport 40000",
            &hidden
        ));
    }

    #[test]
    fn a_trickled_candidate_goes_into_every_media_section() {
        let sdp = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n";
        let out = with_candidate(sdp, "candidate:1 1 udp 1 203.0.113.9 40000 typ srflx");
        assert_eq!(
            out,
            "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
             a=candidate:1 1 udp 1 203.0.113.9 40000 typ srflx\r\n\
             m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n\
             a=candidate:1 1 udp 1 203.0.113.9 40000 typ srflx\r\n"
        );
    }
}
