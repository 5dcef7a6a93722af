//! The VM desktop for a user's browser: the signalling relay and the viewer page.
//!
//! The agent streams the desktop over WebRTC itself; the host only relays signalling between the
//! browser and the agent's `desktop` call ([`DesktopSession`]) and serves [`VIEWER_HTML`]. The page
//! speaks the simplest signalling there is (WHEP style: `POST` the SDP offer as `application/sdp`, the
//! answer SDP comes back), so any host endpoint that relays it through [`DesktopSession::open`] works.

use protocol::desktop::{Desktop, DesktopEvent, DesktopOffer, DesktopSignal};
use protocol::frame::Frame;

use crate::client::{AgentClient, ClientError, StreamCall, StreamItem};

/// The viewer: one static HTML page with its script, no build step. Open it with
/// `?signal=<url>` (default `offer`, relative to the page): it posts its offer there and expects the
/// answer SDP back.
pub const VIEWER_HTML: &str = include_str!("viewer.html");

/// One viewer's session with the agent. The viewer watches as long as this value lives.
#[derive(Debug)]
pub struct DesktopSession {
    call: StreamCall<Desktop>,
    answer: String,
}

impl DesktopSession {
    /// Sends the viewer's offer and waits for the agent's answer.
    pub async fn open(client: &AgentClient, offer: &DesktopOffer) -> Result<Self, ClientError> {
        let mut call = client.open::<Desktop>(offer).await?;
        loop {
            match call.next().await? {
                Some(StreamItem::Event(DesktopEvent::Answer { sdp })) => {
                    return Ok(Self { call, answer: sdp })
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
        let frame = Frame::message(signal).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call.send_frame(frame).await
    }

    /// The next event of the session (candidates, connected, control, closed); `None` when the
    /// agent ended the call.
    pub async fn next_event(&mut self) -> Result<Option<DesktopEvent>, ClientError> {
        loop {
            match self.call.next().await? {
                Some(StreamItem::Event(event)) => return Ok(Some(event)),
                Some(StreamItem::Data(..)) => {}
                None => return Ok(None),
            }
        }
    }
}

impl AgentClient {
    /// Opens a viewer session on the agent's desktop (see [`DesktopSession`]).
    pub async fn desktop(&self, offer: &DesktopOffer) -> Result<DesktopSession, ClientError> {
        DesktopSession::open(self, offer).await
    }
}
