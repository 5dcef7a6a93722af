//! One viewer's WebRTC session, driven by str0m's sans-I/O state machine.
//!
//! str0m (rather than the `webrtc` crate) because it is sans-I/O (we own the sockets and the clock,
//! so one tokio task drives a viewer with no hidden threads), it packetizes H.264 and answers
//! PLI/FIR/NACK itself, and its crypto builds into the static musl agent. The measured comparison is
//! in the issue note.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use protocol::desktop::{
    clipboard_pieces, DesktopEvent, DesktopSignal, IceSettings, InputEvent, ViewerMessage,
    MAX_CLIPBOARD_BYTES,
};
use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

use super::clipboard::ClipboardContent;
use super::cursor::CursorImage;
use super::reflexive::{stun_targets, Gathering};
use super::screen::{Screen, VideoFrame};
use super::turn::{turn_targets, TurnClient, TurnEvent, TurnTarget};
use super::DesktopError;
use sockets::{bind_sockets, read_socket, resolve};

mod sockets;

/// How often a watching viewer's caller hears [`DesktopEvent::Stats`].
const STATS_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

/// Data channel bytes str0m buffers before `write` refuses more (a whole clipboard fits).
const CHANNEL_BUFFER: usize = 4 * MAX_CLIPBOARD_BYTES;

/// A viewer session after the offer was answered.
pub struct Session {
    rtc: Rtc,
    sockets: Vec<Arc<UdpSocket>>,
    screen: Arc<Screen>,
    viewer: u64,
    video: Option<Mid>,
    /// The viewer's data channel once open.
    channel: Option<ChannelId>,
    /// The channel just opened: the viewer gets the VM's clipboard as it is now.
    channel_opened: bool,
    /// Messages for the viewer waiting for room in the channel's buffer.
    outbox: VecDeque<Vec<u8>>,
    /// Clipboard text the viewer is sending in pieces.
    clipboard_in: String,
    /// The text being sent is over the limit: its pieces are dropped (size so far).
    clipboard_in_over: Option<usize>,
    /// STUN servers to learn server-reflexive candidates from.
    stun: Vec<(String, u16)>,
    /// Addresses already advertised (host and 1:1 candidates).
    advertised: Vec<SocketAddr>,
    /// TURN servers to allocate a relay on.
    turn: Vec<TurnTarget>,
    /// The relays being allocated or in use, one per TURN server address and local socket.
    turns: Vec<TurnClient>,
    /// Addresses of the viewer's candidates: the relays let them through (TURN permissions).
    remote_ips: Vec<IpAddr>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("viewer", &self.viewer)
            .finish()
    }
}

impl Session {
    /// Binds the media sockets, accepts `offer` (with `cert` as the DTLS identity when given),
    /// and returns the session with its SDP answer.
    pub async fn answer(
        screen: Arc<Screen>,
        offer: &str,
        ice: &IceSettings,
        cert: Option<str0m::crypto::dtls::DtlsCert>,
    ) -> Result<(Self, String), DesktopError> {
        let offer_text = offer;
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| DesktopError::BadOffer(e.to_string()))?;
        let mut config = RtcConfig::new()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .clear_codecs()
            .enable_h264(true)
            .set_sctp_max_buffered_amount(CHANNEL_BUFFER);
        // The agent's certificate when made (see `Desktops`); else str0m makes one now.
        if let Some(cert) = cert {
            config = config.set_dtls_cert(cert);
        }
        let mut rtc = config.build(Instant::now());
        let sockets = bind_sockets(ice).await?;
        let mut advertised = Vec::new();
        for socket in &sockets {
            let local = socket.local_addr().map_err(DesktopError::Io)?;
            let host =
                Candidate::host(local, "udp").map_err(|e| DesktopError::Ice(e.to_string()))?;
            rtc.add_local_candidate(host);
            advertised.push(local);
            if let Some(public) = ice.nat_1to1_ip.filter(|ip| ip.is_ipv4() == local.is_ipv4()) {
                let public = SocketAddr::new(public, local.port());
                let mapped = Candidate::server_reflexive(public, local, "udp")
                    .map_err(|e| DesktopError::Ice(e.to_string()))?;
                rtc.add_local_candidate(mapped);
                advertised.push(public);
            }
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| DesktopError::BadOffer(e.to_string()))?;
        let viewer = screen.join();
        let session = Self {
            rtc,
            sockets,
            screen,
            viewer,
            video: None,
            channel: None,
            channel_opened: false,
            outbox: VecDeque::new(),
            clipboard_in: String::new(),
            clipboard_in_over: None,
            stun: stun_targets(&ice.servers),
            advertised,
            turn: turn_targets(&ice.servers),
            turns: Vec::new(),
            remote_ips: candidate_ips(offer_text),
        };
        Ok((session, answer.to_sdp_string()))
    }

    /// Runs until the peer goes away, ICE fails, `signals` ends with the caller gone, or `events`
    /// is closed. Returns why it ended.
    pub async fn run(
        mut self,
        mut signals: mpsc::Receiver<DesktopSignal>,
        events: mpsc::Sender<DesktopEvent>,
    ) -> String {
        let (datagrams_tx, mut datagrams) = mpsc::channel::<(Vec<u8>, SocketAddr, SocketAddr)>(256);
        let mut readers = tokio::task::JoinSet::new();
        for socket in &self.sockets {
            let socket = socket.clone();
            let tx = datagrams_tx.clone();
            readers.spawn(async move { read_socket(socket, tx).await });
        }
        drop(datagrams_tx);
        let mut frames = self.screen.subscribe();
        let mut holder = self.screen.holder();
        holder.mark_changed();
        let mut clipboard = self.screen.clipboard_content();
        let mut cursor = self.screen.cursor_shape();
        let mut connected = false;
        let mut signals_open = true;
        let mut stats = tokio::time::interval(STATS_PERIOD);
        let mut frames_sent = 0u64;
        let mut encode_ms: Vec<f64> = Vec::new();
        // Server-reflexive candidates: resolve the STUN servers, then ask them; the viewer hears
        // each new address, then that there are no more.
        let mut resolving =
            (!self.stun.is_empty()).then(|| tokio::spawn(resolve(std::mem::take(&mut self.stun))));
        let mut gathering = Gathering::default();
        let mut gathered = false;
        // Relay candidates: resolve the TURN servers, then allocate on each.
        let mut turn_resolving = (!self.turn.is_empty())
            .then(|| tokio::spawn(super::turn::resolve(std::mem::take(&mut self.turn))));
        let reason = loop {
            let deadline = match self.drain(&events, &mut connected).await {
                Ok(Some(deadline)) => deadline,
                Ok(None) => break "the viewer disconnected".to_string(),
                Err(e) => break e.to_string(),
            };
            self.ask_stun(&mut gathering).await;
            if let Err(e) = self.ask_turn(&events).await {
                break e;
            }
            if !gathered
                && resolving.is_none()
                && gathering.done()
                && turn_resolving.is_none()
                && self.turns.iter().all(TurnClient::settled)
            {
                gathered = true;
                if events.send(DesktopEvent::EndOfCandidates).await.is_err() {
                    break "the caller went away".to_string();
                }
            }
            let deadline = gathering
                .next_deadline()
                .into_iter()
                .chain(self.turns.iter().filter_map(TurnClient::next_deadline))
                .fold(deadline, Instant::min);
            if std::mem::take(&mut self.channel_opened) {
                if let Some(content) = clipboard
                    .as_mut()
                    .and_then(|c| c.borrow_and_update().clone())
                {
                    self.send_clipboard(&content);
                }
                if let Some(shape) = cursor.as_mut().and_then(|c| c.borrow_and_update().clone()) {
                    self.send_cursor(&shape);
                }
            }
            if !self.outbox.is_empty() && self.flush_outbox() {
                // Queued messages became packets: send them before waiting.
                continue;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            let input = tokio::select! {
                resolved = resolved(resolving.as_mut()) => {
                    resolving = None;
                    gathering = Gathering::start(&self.local_addrs(), &resolved, Instant::now());
                    continue;
                }
                servers = resolved(turn_resolving.as_mut()) => {
                    turn_resolving = None;
                    let now = Instant::now();
                    for local in self.local_addrs() {
                        for (server, target) in &servers {
                            if server.is_ipv4() == local.is_ipv4() {
                                self.turns.push(TurnClient::new(local, *server, target, now));
                            }
                        }
                    }
                    continue;
                }
                d = datagrams.recv() => match d {
                    Some((data, source, destination)) => {
                        if let Some((base, mapped)) = gathering.answer(destination, source, &data) {
                            if let Err(e) = self.reflexive(base, mapped, &events).await {
                                break e;
                            }
                            continue;
                        }
                        if let Some(turn) = self
                            .turns
                            .iter_mut()
                            .find(|t| t.server() == source && t.local() == destination)
                        {
                            // The TURN server's: an answer, or a peer's datagram it relayed.
                            let Some((peer, relay, data)) = turn.receive(Instant::now(), &data) else {
                                continue;
                            };
                            let Ok(contents) = data.as_slice().try_into() else { continue };
                            let input = Input::Receive(
                                Instant::now(),
                                Receive { proto: Protocol::Udp, source: peer, destination: relay, contents },
                            );
                            if let Err(e) = self.rtc.handle_input(input) {
                                break e.to_string();
                            }
                            continue;
                        }
                        let Ok(contents) = data.as_slice().try_into() else { continue };
                        let input = Input::Receive(
                            Instant::now(),
                            Receive { proto: Protocol::Udp, source, destination, contents },
                        );
                        if let Err(e) = self.rtc.handle_input(input) {
                            break e.to_string();
                        }
                        continue;
                    }
                    None => break "media sockets closed".to_string(),
                },
                f = frames.recv() => {
                    match f {
                        Ok(frame) if connected => {
                            if let Err(e) = self.write_frame(&frame) {
                                break e.to_string();
                            }
                            frames_sent += 1;
                            encode_ms.push(frame.encode_time.as_secs_f64() * 1000.0);
                            if frames_sent == 1 {
                                debug!(
                                    viewer = self.viewer,
                                    encode_ms = frame.encode_time.as_millis() as u64,
                                    "first frame sent"
                                );
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            debug!(viewer = self.viewer, skipped = n, "viewer lagged, asking for a keyframe");
                            self.screen.request_keyframe();
                        }
                        Err(broadcast::error::RecvError::Closed) => break "capture stopped".to_string(),
                    }
                    continue;
                }
                s = signals.recv(), if signals_open => {
                    match s {
                        Some(signal) => self.signal(signal),
                        None => signals_open = false,
                    }
                    continue;
                }
                changed = next_published(clipboard.as_mut()) => {
                    match changed {
                        Some(content) => self.send_clipboard(&content),
                        None => clipboard = None,
                    }
                    continue;
                }
                changed = next_published(cursor.as_mut()) => {
                    match changed {
                        Some(shape) => self.send_cursor(&shape),
                        None => cursor = None,
                    }
                    continue;
                }
                changed = holder.changed() => {
                    if changed.is_ok() {
                        let held = *holder.borrow_and_update() == Some(self.viewer);
                        // The page hears it too (queued until its channel opens).
                        self.tell(&ViewerMessage::Control { held });
                        if events.send(DesktopEvent::Control { held }).await.is_err() {
                            break "the caller went away".to_string();
                        }
                    }
                    continue;
                }
                _ = stats.tick() => {
                    if !encode_ms.is_empty() {
                        encode_ms.sort_by(f64::total_cmp);
                        let at = |q: f64| encode_ms[((encode_ms.len() - 1) as f64 * q).round() as usize];
                        let event = DesktopEvent::Stats {
                            frames: frames_sent,
                            encode_ms_p50: at(0.5),
                            encode_ms_p95: at(0.95),
                        };
                        encode_ms.clear();
                        if events.send(event).await.is_err() {
                            break "the caller went away".to_string();
                        }
                    }
                    continue;
                }
                () = events.closed() => break "the caller went away".to_string(),
                () = tokio::time::sleep(wait) => Input::Timeout(Instant::now()),
            };
            if let Err(e) = self.rtc.handle_input(input) {
                break e.to_string();
            }
        };
        self.rtc.disconnect();
        for i in 0..self.turns.len() {
            // The server frees the relay now rather than when its lifetime runs out.
            if let Some(bye) = self.turns[i].close() {
                let (local, server) = (self.turns[i].local(), self.turns[i].server());
                self.send_from(local, server, &bye).await;
            }
        }
        self.screen.leave(self.viewer);
        readers.abort_all();
        info!(viewer = self.viewer, %reason, "viewer session ended");
        reason
    }

    /// Sends everything str0m wants sent and handles its events; returns when it next needs time
    /// to pass, or `None` once the session is over.
    async fn drain(
        &mut self,
        events: &mpsc::Sender<DesktopEvent>,
        connected: &mut bool,
    ) -> Result<Option<Instant>, DesktopError> {
        loop {
            if !self.rtc.is_alive() {
                return Ok(None);
            }
            let output = self.rtc.poll_output()?;
            match output {
                Output::Timeout(deadline) => return Ok(Some(deadline)),
                Output::Transmit(t) => {
                    if let Some(turn) = self
                        .turns
                        .iter_mut()
                        .find(|c| c.allocated() == Some(t.source))
                    {
                        // From the relay candidate: wrapped for the TURN server (dropped when
                        // the allocation is gone).
                        let (local, server) = (turn.local(), turn.server());
                        if let Some(wrapped) = turn.send(Instant::now(), t.destination, &t.contents)
                        {
                            self.send_from(local, server, &wrapped).await;
                        }
                        continue;
                    }
                    let socket = self
                        .sockets
                        .iter()
                        .find(|s| s.local_addr().is_ok_and(|a| a == t.source))
                        .or_else(|| self.sockets.first());
                    if let Some(socket) = socket {
                        // A lost datagram is what UDP does; ICE and RTCP recover.
                        let _ = socket.send_to(&t.contents, t.destination).await;
                    }
                }
                Output::Event(event) => match event {
                    Event::Connected => {
                        debug!(viewer = self.viewer, "dtls connected");
                        *connected = true;
                        self.screen.request_keyframe();
                        let _ = events.send(DesktopEvent::Connected).await;
                    }
                    Event::MediaAdded(m) if m.kind == MediaKind::Video => self.video = Some(m.mid),
                    Event::KeyframeRequest(_) => self.screen.request_keyframe(),
                    Event::ChannelOpen(id, _) => {
                        self.channel = Some(id);
                        self.channel_opened = true;
                    }
                    Event::ChannelData(data) => {
                        if self.channel.is_none() {
                            self.channel = Some(data.id);
                        }
                        self.input(&data.data)
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        return Ok(None)
                    }
                    Event::IceConnectionStateChange(state) => {
                        debug!(viewer = self.viewer, ?state, "ice")
                    }
                    _ => {}
                },
            }
        }
    }

    /// The local addresses of the media sockets.
    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Sends the STUN requests that are due.
    async fn ask_stun(&self, gathering: &mut Gathering) {
        for (local, server, request) in gathering.due(Instant::now()) {
            if let Some(socket) = self
                .sockets
                .iter()
                .find(|s| s.local_addr().is_ok_and(|a| a == local))
            {
                // A lost request is retried; a refused one times out.
                let _ = socket.send_to(&request, server).await;
            }
        }
    }

    /// Sends `datagram` to `to` from the media socket bound at `local`.
    async fn send_from(&self, local: SocketAddr, to: SocketAddr, datagram: &[u8]) {
        if let Some(socket) = self
            .sockets
            .iter()
            .find(|s| s.local_addr().is_ok_and(|a| a == local))
        {
            // A lost datagram is what UDP does; TURN requests are retried.
            let _ = socket.send_to(datagram, to).await;
        }
    }

    /// Sends what the TURN clients have due and acts on what they report: a relay becomes a
    /// local candidate trickled to the viewer; a server that refused or never answered is one
    /// warning, and the session goes on with its other candidates.
    async fn ask_turn(&mut self, events: &mpsc::Sender<DesktopEvent>) -> Result<(), String> {
        let now = Instant::now();
        for i in 0..self.turns.len() {
            let (local, server) = (self.turns[i].local(), self.turns[i].server());
            for datagram in self.turns[i].due(now) {
                self.send_from(local, server, &datagram).await;
            }
            while let Some(event) = self.turns[i].poll_event() {
                match event {
                    TurnEvent::Allocated(relay) => self.relayed(i, relay, events).await?,
                    TurnEvent::Failed(why) => {
                        warn!(viewer = self.viewer, %server, "no TURN relay: {why}")
                    }
                }
            }
        }
        Ok(())
    }

    /// TURN client `i` relays for us at `relay`: a relay candidate, trickled to the viewer; the
    /// viewer's known addresses get their permissions right away.
    async fn relayed(
        &mut self,
        i: usize,
        relay: SocketAddr,
        events: &mpsc::Sender<DesktopEvent>,
    ) -> Result<(), String> {
        let now = Instant::now();
        let turn = &mut self.turns[i];
        for ip in &self.remote_ips {
            turn.permit(now, *ip);
        }
        let (local, server) = (turn.local(), turn.server());
        let candidate = match Candidate::relayed(relay, local, "udp") {
            Ok(c) => c,
            Err(e) => {
                warn!(viewer = self.viewer, %server, error = %e, "relay candidate refused");
                return Ok(());
            }
        };
        let Some(added) = self.rtc.add_local_candidate(candidate) else {
            return Ok(());
        };
        let line = added.to_sdp_string();
        info!(viewer = self.viewer, %relay, %server, "relay candidate");
        events
            .send(DesktopEvent::Candidate {
                candidate: line.trim().trim_start_matches("a=").to_string(),
            })
            .await
            .map_err(|_| "the caller went away".to_string())
    }

    /// A STUN server saw socket `base` as `mapped`: a new address becomes a local candidate and is
    /// trickled to the viewer.
    async fn reflexive(
        &mut self,
        base: SocketAddr,
        mapped: SocketAddr,
        events: &mpsc::Sender<DesktopEvent>,
    ) -> Result<(), String> {
        if self.advertised.contains(&mapped) {
            debug!(viewer = self.viewer, %mapped, "reflexive address already advertised");
            return Ok(());
        }
        self.advertised.push(mapped);
        let candidate = match Candidate::server_reflexive(mapped, base, "udp") {
            Ok(c) => c,
            Err(e) => {
                warn!(viewer = self.viewer, error = %e, "reflexive candidate refused");
                return Ok(());
            }
        };
        let Some(added) = self.rtc.add_local_candidate(candidate) else {
            return Ok(());
        };
        let line = added.to_sdp_string();
        info!(viewer = self.viewer, %mapped, "server-reflexive candidate");
        events
            .send(DesktopEvent::Candidate {
                candidate: line.trim().trim_start_matches("a=").to_string(),
            })
            .await
            .map_err(|_| "the caller went away".to_string())
    }

    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), DesktopError> {
        let Some(mid) = self.video else { return Ok(()) };
        let Some(writer) = self.rtc.writer(mid) else {
            return Ok(());
        };
        let Some(pt) = pick_h264(writer.payload_params()) else {
            return Err(DesktopError::BadOffer(
                "the viewer cannot decode H.264".into(),
            ));
        };
        writer
            .write(
                pt,
                frame.captured,
                MediaTime::from_90khz(frame.rtp_90khz),
                frame.frame.data.clone(),
            )
            .map_err(DesktopError::Rtc)
    }

    fn signal(&mut self, signal: DesktopSignal) {
        match signal {
            DesktopSignal::Candidate { candidate } => {
                let line = candidate.trim().trim_start_matches("a=");
                match Candidate::from_sdp_string(line) {
                    Ok(c) => {
                        let ip = c.addr().ip();
                        if !self.remote_ips.contains(&ip) {
                            self.remote_ips.push(ip);
                            for turn in &mut self.turns {
                                turn.permit(Instant::now(), ip);
                            }
                        }
                        self.rtc.add_remote_candidate(c)
                    }
                    // mDNS (`.local`) candidates cannot be resolved here; the browser's checks
                    // reach us anyway and become peer-reflexive candidates.
                    Err(e) => debug!(error = %e, "remote candidate skipped"),
                }
            }
            DesktopSignal::EndOfCandidates => {}
        }
    }

    fn input(&mut self, data: &[u8]) {
        let event: InputEvent = match serde_json::from_slice(data) {
            Ok(e) => e,
            Err(e) => {
                debug!(viewer = self.viewer, error = %e, "malformed input ignored");
                self.tell(&ViewerMessage::Error {
                    message: format!("malformed input ignored: {e}"),
                });
                return;
            }
        };
        match event {
            InputEvent::TakeControl => self.screen.take_control(self.viewer),
            InputEvent::Clipboard { text, more } => self.clipboard_piece(&text, more),
            InputEvent::Resize { width, height } => {
                if let Err(e) = self.screen.resize(self.viewer, width, height) {
                    warn!(viewer = self.viewer, error = %e, "resize failed");
                    self.tell(&ViewerMessage::Error {
                        message: format!("the screen cannot take {width}x{height}: {e}"),
                    });
                }
            }
            event => {
                if let Err(e) = self.screen.input(self.viewer, &event) {
                    warn!(viewer = self.viewer, error = %e, "input injection failed");
                }
            }
        }
    }

    /// One piece of clipboard text from the viewer; the last one sets the VM's clipboard.
    fn clipboard_piece(&mut self, text: &str, more: bool) {
        match self.clipboard_in_over.as_mut() {
            Some(over) => *over += text.len(),
            None if self.clipboard_in.len() + text.len() > MAX_CLIPBOARD_BYTES => {
                self.clipboard_in_over = Some(self.clipboard_in.len() + text.len());
                self.clipboard_in = String::new();
            }
            None => self.clipboard_in.push_str(text),
        }
        if more {
            return;
        }
        let text = std::mem::take(&mut self.clipboard_in);
        let result = match self.clipboard_in_over.take() {
            Some(bytes) => Err(super::clipboard::ClipboardError::TooLarge { bytes }),
            None => self.screen.set_clipboard(self.viewer, &text),
        };
        match result {
            Ok(true) => debug!(viewer = self.viewer, bytes = text.len(), "clipboard set"),
            Ok(false) => self.tell(&ViewerMessage::Error {
                message: "only the viewer in control sets the VM's clipboard".into(),
            }),
            Err(e) => {
                debug!(viewer = self.viewer, error = %e, "clipboard refused");
                self.tell(&ViewerMessage::Error {
                    message: format!("the VM's clipboard was not set: {e}"),
                });
            }
        }
    }

    /// The VM's clipboard changed: the viewer gets its text in pieces (or hears it is too large).
    fn send_clipboard(&mut self, content: &ClipboardContent) {
        match content {
            ClipboardContent::Text(text) => {
                let pieces = clipboard_pieces(text);
                let last = pieces.len() - 1;
                for (i, piece) in pieces.into_iter().enumerate() {
                    self.tell(&ViewerMessage::Clipboard {
                        text: piece.to_string(),
                        more: i < last,
                    });
                }
            }
            ClipboardContent::TooLarge { bytes } => self.tell(&ViewerMessage::ClipboardTooLarge {
                bytes: u64::try_from(*bytes).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Tells the viewer the cursor's new shape (its page makes it the local cursor over the video).
    fn send_cursor(&mut self, shape: &CursorImage) {
        use base64::Engine as _;
        self.tell(&ViewerMessage::Cursor {
            width: shape.width,
            height: shape.height,
            xhot: shape.xhot,
            yhot: shape.yhot,
            rgba: base64::engine::general_purpose::STANDARD.encode(&shape.rgba),
        });
    }

    /// Queues a message for the viewer's data channel.
    fn tell(&mut self, message: &ViewerMessage) {
        match serde_json::to_vec(message) {
            Ok(bytes) => self.outbox.push_back(bytes),
            Err(e) => warn!(error = %e, "viewer message not encoded"),
        }
    }

    /// Writes queued messages while the channel has room; returns whether any was written.
    fn flush_outbox(&mut self) -> bool {
        let Some(id) = self.channel else {
            return false;
        };
        let mut wrote = false;
        while let Some(message) = self.outbox.front() {
            let Some(mut channel) = self.rtc.channel(id) else {
                return wrote;
            };
            match channel.write(false, message) {
                Ok(true) => {
                    self.outbox.pop_front();
                    wrote = true;
                }
                Ok(false) => return wrote,
                Err(e) => {
                    warn!(viewer = self.viewer, error = %e, "data channel write failed");
                    self.outbox.clear();
                    return wrote;
                }
            }
        }
        wrote
    }
}

/// The resolved servers once resolution finished; never resolves when nothing is resolving.
async fn resolved<T: Send + 'static>(
    resolving: Option<&mut tokio::task::JoinHandle<Vec<T>>>,
) -> Vec<T> {
    match resolving {
        Some(task) => task.await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

/// The addresses of the `a=candidate` lines of `sdp` (mDNS `.local` names are skipped).
fn candidate_ips(sdp: &str) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for line in sdp.lines() {
        let Some(line) = line.trim().strip_prefix("a=") else {
            continue;
        };
        if !line.starts_with("candidate:") {
            continue;
        }
        if let Ok(c) = Candidate::from_sdp_string(line) {
            if !ips.contains(&c.addr().ip()) {
                ips.push(c.addr().ip());
            }
        }
    }
    ips
}

/// The next clipboard content; `None` when there is no clipboard (it never resolves then).
async fn next_published<T: Clone>(published: Option<&mut watch::Receiver<Option<T>>>) -> Option<T> {
    let Some(published) = published else {
        return std::future::pending().await;
    };
    loop {
        published.changed().await.ok()?;
        if let Some(value) = published.borrow_and_update().clone() {
            return Some(value);
        }
    }
}

/// The H.264 payload type to send with: packetization mode 1, constrained baseline preferred.
fn pick_h264<'a>(
    params: impl Iterator<Item = &'a str0m::format::PayloadParams>,
) -> Option<str0m::media::Pt> {
    let candidates: Vec<_> = params
        .filter(|p| p.spec().codec == Codec::H264)
        .filter(|p| p.spec().format.packetization_mode == Some(1))
        .collect();
    let rank = |p: &&&str0m::format::PayloadParams| match p.spec().format.profile_level_id {
        Some(id) if id >> 8 == 0x42e0 => 0,
        Some(id) if id >> 16 == 0x42 => 1,
        _ => 2,
    };
    candidates.iter().min_by_key(rank).map(|p| p.pt())
}
