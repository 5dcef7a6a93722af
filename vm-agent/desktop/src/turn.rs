//! A relay of the agent's own on the host's TURN servers (RFC 8656 over UDP), offered to the viewer
//! as a `relay` candidate: a VM behind a symmetric NAT, or without any forward, still gets media
//! through when the viewer cannot reach any of its host or server-reflexive addresses.
//!
//! The client is sans-I/O like str0m: [`TurnClient`] turns datagrams from the server into events
//! and relayed payloads, and payloads for peers into datagrams for the server; the viewer session
//! owns the socket. It runs over the session's own media socket (not a socket of its own), so the
//! relay candidate's base is the same socket as the host candidate's, the reader task and the port
//! range stay as they are, and a VM that may only use the gateway's forwarded ports still reaches
//! the TURN server. Datagrams from the TURN server's address are its; everything else goes to
//! str0m as before.
//!
//! Long-term credentials (401 → REALM/NONCE → signed retry, 438 stale nonce), Refresh before the
//! allocation's lifetime ends, CreatePermission for every peer address (refreshed every 4 minutes),
//! and ChannelBind per peer so media travels as 4-byte-header ChannelData instead of Send
//! indications (those carry the first packets until the channel is bound).
//!
//! The STUN messages themselves are encoded and parsed by the `codec` submodule.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use protocol::desktop::IceServer;
use protocol::secret::Secret;
use tracing::{debug, warn};

use super::reflexive::{decode_address, split_host_port, transaction_id};
use codec::{
    encode, long_term_key, xor_address, Message, ALLOCATE, ATTR_CHANNEL_NUMBER, ATTR_DATA,
    ATTR_LIFETIME, ATTR_NONCE, ATTR_REALM, ATTR_REQUESTED_TRANSPORT, ATTR_USERNAME,
    ATTR_XOR_PEER_ADDRESS, ATTR_XOR_RELAYED_ADDRESS, CHANNEL_BIND, CLASS_MASK, CREATE_PERMISSION,
    DATA, ERROR, INDICATION, REFRESH, SEND, SUCCESS,
};

// Named by path so the fuzz build, which compiles this file on its own, finds it too.
#[path = "turn/codec.rs"]
mod codec;

/// REQUESTED-TRANSPORT's protocol number for UDP.
const UDP: u8 = 17;

/// First try, then retries this far apart, doubling up to [`MAX_RETRY`] ...
const RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(1);
/// ... this many sends in all; the request is given up one interval after the last.
const ATTEMPTS: u32 = 4;
/// Permissions last 5 minutes and channels 10 on the server; both are renewed after 4.
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// A permission or channel the server refused is asked for again after this long.
const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// 438 Stale Nonce answers followed per request before giving it up.
const MAX_STALE: u32 = 3;
/// Allocation lifetime asked for on a refresh, and assumed when an answer names none (seconds).
const DEFAULT_LIFETIME: u32 = 600;
/// Channel numbers a client may bind (RFC 8656 §12).
const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x4fff;

/// A `turn:` server (UDP transport) with the credentials to allocate on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnTarget {
    /// Host name or address of the server.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// TURN user name.
    pub username: String,
    /// TURN password (printed as `[redacted]`).
    pub password: Secret<String>,
}

/// The servers of `servers` the agent allocates a relay on: `turn:` URLs over UDP with a user name
/// and credential. Others that name TURN (`turns:`, `?transport=tcp`, no credentials) are skipped
/// with a warning saying why; the browser may still relay through them.
pub fn turn_targets(servers: &[IceServer]) -> Vec<TurnTarget> {
    let mut targets = Vec::new();
    for server in servers {
        for url in &server.urls {
            let url = url.trim();
            let (rest, query) = url.split_once('?').unwrap_or((url, ""));
            let Some((scheme, rest)) = rest.split_once(':') else {
                continue;
            };
            match scheme.to_ascii_lowercase().as_str() {
                "turn" => {}
                "turns" => {
                    warn!(%url, "TURN over TLS is not supported by the agent; no relay from it");
                    continue;
                }
                _ => continue,
            }
            if query
                .split('&')
                .any(|kv| kv.eq_ignore_ascii_case("transport=tcp"))
            {
                warn!(%url, "TURN over TCP is not supported by the agent; no relay from it");
                continue;
            }
            let (Some(username), Some(password)) = (&server.username, &server.credential) else {
                warn!(%url, "TURN server without username and credential; no relay from it");
                continue;
            };
            let (host, port) = split_host_port(rest);
            if host.is_empty() {
                continue;
            }
            let target = TurnTarget {
                host: host.to_string(),
                port,
                username: username.clone(),
                password: password.clone(),
            };
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
    }
    targets
}

/// What a [`TurnClient`] has to tell the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// The server relays for us at this address: a `relay` candidate.
    Allocated(SocketAddr),
    /// There is no (more) relay from this server; why, for one warning.
    Failed(String),
}

/// What a request was for (its bytes are rebuilt on a retry with a new nonce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Allocate,
    Refresh(u32),
    Permission(IpAddr),
    Bind(SocketAddr, u16),
}

/// A request waiting for its answer.
#[derive(Debug)]
struct Transaction {
    id: [u8; 12],
    request: Request,
    bytes: Vec<u8>,
    sent: u32,
    next: Instant,
    stale: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Allocate sent; `signed` once it carries our credentials.
    Allocating {
        signed: bool,
    },
    Allocated {
        relay: SocketAddr,
    },
    Closed,
}

/// A permission or channel binding: whether the server installed it, and when to renew it.
#[derive(Debug, Clone, Copy)]
struct Installed {
    ready: bool,
    renew: Instant,
}

/// One allocation on one TURN server, from one local socket.
pub struct TurnClient {
    local: SocketAddr,
    server: SocketAddr,
    username: String,
    password: Secret<String>,
    realm: Option<String>,
    nonce: Option<String>,
    /// MD5(username:realm:password), once the server named its realm.
    key: Option<Secret<[u8; 16]>>,
    state: State,
    /// The relayed address once allocated; kept after a failure so that the session still
    /// recognizes (and drops) what str0m sends from that candidate.
    allocated: Option<SocketAddr>,
    pending: Vec<Transaction>,
    refresh_at: Option<Instant>,
    permissions: HashMap<IpAddr, Installed>,
    channels: HashMap<SocketAddr, (u16, Installed)>,
    peers: HashMap<u16, SocketAddr>,
    next_channel: u16,
    events: VecDeque<TurnEvent>,
}

impl std::fmt::Debug for TurnClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnClient")
            .field("local", &self.local)
            .field("server", &self.server)
            .field("username", &self.username)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl TurnClient {
    /// Starts allocating on `server` (resolved from `target`) from the socket bound at `local`.
    pub fn new(local: SocketAddr, server: SocketAddr, target: &TurnTarget, now: Instant) -> Self {
        let mut client = Self {
            local,
            server,
            username: target.username.clone(),
            password: target.password.clone(),
            realm: None,
            nonce: None,
            key: None,
            state: State::Allocating { signed: false },
            allocated: None,
            pending: Vec::new(),
            refresh_at: None,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            peers: HashMap::new(),
            next_channel: *CHANNELS.start(),
            events: VecDeque::new(),
        };
        client.request(Request::Allocate, now);
        client
    }

    /// The local socket address the client talks from.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The TURN server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The relayed address, once allocated.
    pub fn relay(&self) -> Option<SocketAddr> {
        match self.state {
            State::Allocated { relay } => Some(relay),
            _ => None,
        }
    }

    /// The relayed address this client was ever given (still `Some` after the allocation failed).
    pub fn allocated(&self) -> Option<SocketAddr> {
        self.allocated
    }

    /// Allocation is over one way or the other (allocated or failed).
    pub fn settled(&self) -> bool {
        !matches!(self.state, State::Allocating { .. })
    }

    /// The next event for the session.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    /// When something is next due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let renewals = self
            .permissions
            .values()
            .chain(self.channels.values().map(|(_, c)| c))
            .map(|i| i.renew);
        self.pending
            .iter()
            .map(|t| t.next)
            .chain(self.refresh_at)
            .chain(renewals)
            .min()
    }

    /// Datagrams for the server due now: first sends, retries, and renewals. Requests out of
    /// attempts are given up (an Allocate that never got an answer fails the client).
    pub fn due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        if self.state == State::Closed {
            return Vec::new();
        }
        if self.refresh_at.is_some_and(|at| at <= now) {
            self.refresh_at = None;
            self.request(Request::Refresh(DEFAULT_LIFETIME), now);
        }
        let mut renew = Vec::new();
        for (ip, p) in &mut self.permissions {
            if p.renew <= now {
                p.renew = now + PERMISSION_REFRESH;
                renew.push(Request::Permission(*ip));
            }
        }
        for (peer, (number, c)) in &mut self.channels {
            if c.renew <= now {
                c.renew = now + PERMISSION_REFRESH;
                renew.push(Request::Bind(*peer, *number));
            }
        }
        for r in renew {
            self.request(r, now);
        }
        let mut given_up = Vec::new();
        let mut out = Vec::new();
        for t in &mut self.pending {
            if t.next > now {
                continue;
            }
            if t.sent >= ATTEMPTS {
                given_up.push(t.id);
                continue;
            }
            out.push(t.bytes.clone());
            t.sent += 1;
            t.next = now + (RETRY * 2u32.pow(t.sent - 1)).min(MAX_RETRY);
        }
        for id in given_up {
            if let Some(i) = self.pending.iter().position(|t| t.id == id) {
                let t = self.pending.remove(i);
                self.unanswered(t.request);
            }
        }
        out
    }

    /// A datagram that arrived from the server. Returns a payload the server relayed from a peer,
    /// as `(peer, relayed address, payload)`; answers to our requests change the client's state
    /// (see [`TurnClient::poll_event`]). Anything else is dropped.
    pub fn receive(
        &mut self,
        now: Instant,
        datagram: &[u8],
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let relay = self.relay();
        match datagram.first()? >> 6 {
            // ChannelData: channel number, length, payload.
            1 => {
                let number = u16::from_be_bytes([datagram[0], *datagram.get(1)?]);
                let len = usize::from(u16::from_be_bytes([*datagram.get(2)?, *datagram.get(3)?]));
                let payload = datagram.get(4..4 + len)?;
                let peer = *self.peers.get(&number)?;
                Some((peer, relay?, payload.to_vec()))
            }
            0 => {
                let Some(msg) = Message::parse(datagram) else {
                    debug!(server = %self.server, "unparsable datagram from the TURN server dropped");
                    return None;
                };
                if msg.kind == DATA | INDICATION {
                    let peer = decode_address(msg.attr(ATTR_XOR_PEER_ADDRESS)?, Some(&msg.id))?;
                    return Some((peer, relay?, msg.attr(ATTR_DATA)?.to_vec()));
                }
                self.answer(now, &msg);
                None
            }
            _ => None,
        }
    }

    /// Wraps `payload` for `peer` into a datagram for the server (ChannelData once the peer's
    /// channel is bound, a Send indication until then), asking for the peer's permission and
    /// channel when it is new. `None` while there is no relay.
    pub fn send(&mut self, now: Instant, peer: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
        self.relay()?;
        if peer.is_ipv4() != self.server.is_ipv4() {
            return None;
        }
        self.permit(now, peer.ip());
        if !self.channels.contains_key(&peer) && CHANNELS.contains(&self.next_channel) {
            let number = self.next_channel;
            self.next_channel += 1;
            self.channels.insert(
                peer,
                (
                    number,
                    Installed {
                        ready: false,
                        renew: now + PERMISSION_REFRESH,
                    },
                ),
            );
            self.peers.insert(number, peer);
            self.request(Request::Bind(peer, number), now);
        }
        let len = u16::try_from(payload.len()).ok()?;
        match self.channels.get(&peer) {
            Some((number, c)) if c.ready => {
                let mut out = Vec::with_capacity(4 + payload.len());
                out.extend_from_slice(&number.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(payload);
                Some(out)
            }
            _ => {
                let id = transaction_id();
                let peer_attr = xor_address(peer, &id);
                Some(encode(
                    SEND | INDICATION,
                    &id,
                    &[(ATTR_XOR_PEER_ADDRESS, &peer_attr), (ATTR_DATA, payload)],
                    None,
                ))
            }
        }
    }

    /// Asks the server to let datagrams from `ip` through to the relay (a remote candidate's
    /// address), unless already asked. Ignored before the allocation.
    pub fn permit(&mut self, now: Instant, ip: IpAddr) {
        if self.relay().is_none()
            || ip.is_ipv4() != self.server.is_ipv4()
            || self.permissions.contains_key(&ip)
        {
            return;
        }
        self.permissions.insert(
            ip,
            Installed {
                ready: false,
                renew: now + PERMISSION_REFRESH,
            },
        );
        self.request(Request::Permission(ip), now);
    }

    /// Ends the allocation: a Refresh with lifetime 0 for the server (best effort, not retried).
    pub fn close(&mut self) -> Option<Vec<u8>> {
        let allocated = self.relay().is_some();
        self.state = State::Closed;
        self.pending.clear();
        allocated.then(|| self.encode_request(Request::Refresh(0), &transaction_id(), true))
    }

    /// Queues `request` to be sent now.
    fn request(&mut self, request: Request, now: Instant) {
        let id = transaction_id();
        let bytes = self.encode_request(request, &id, false);
        self.pending.push(Transaction {
            id,
            request,
            bytes,
            sent: 0,
            next: now,
            stale: 0,
        });
    }

    /// The request's bytes, signed once the server named its realm.
    fn encode_request(&self, request: Request, id: &[u8; 12], closing: bool) -> Vec<u8> {
        let mut attrs: Vec<(u16, Vec<u8>)> = Vec::new();
        let kind = match request {
            Request::Allocate => {
                attrs.push((ATTR_REQUESTED_TRANSPORT, vec![UDP, 0, 0, 0]));
                ALLOCATE
            }
            Request::Refresh(lifetime) => {
                let lifetime = if closing { 0 } else { lifetime };
                attrs.push((ATTR_LIFETIME, lifetime.to_be_bytes().to_vec()));
                REFRESH
            }
            Request::Permission(ip) => {
                attrs.push((
                    ATTR_XOR_PEER_ADDRESS,
                    xor_address(SocketAddr::new(ip, 0), id),
                ));
                CREATE_PERMISSION
            }
            Request::Bind(peer, number) => {
                let mut n = number.to_be_bytes().to_vec();
                n.extend_from_slice(&[0, 0]);
                attrs.push((ATTR_CHANNEL_NUMBER, n));
                attrs.push((ATTR_XOR_PEER_ADDRESS, xor_address(peer, id)));
                CHANNEL_BIND
            }
        };
        let key = match (&self.key, &self.realm, &self.nonce) {
            (Some(key), Some(realm), Some(nonce)) => {
                attrs.push((ATTR_USERNAME, self.username.as_bytes().to_vec()));
                attrs.push((ATTR_REALM, realm.as_bytes().to_vec()));
                attrs.push((ATTR_NONCE, nonce.as_bytes().to_vec()));
                Some(key.expose().as_slice())
            }
            _ => None,
        };
        let attrs: Vec<(u16, &[u8])> = attrs.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        encode(kind, id, &attrs, key)
    }

    /// A response to one of our requests (unknown transaction ids are dropped).
    fn answer(&mut self, now: Instant, msg: &Message<'_>) {
        let Some(i) = self.pending.iter().position(|t| t.id == msg.id) else {
            return;
        };
        let class = msg.kind & CLASS_MASK;
        if class == SUCCESS {
            // Once we sign, a success must be signed with our key (the relayed address in a
            // forged answer would divert media).
            if let Some(key) = &self.key {
                if !msg.verify(key.expose()) {
                    debug!(server = %self.server, "TURN answer with a bad MESSAGE-INTEGRITY dropped");
                    return;
                }
            }
            let t = self.pending.remove(i);
            self.succeeded(now, t.request, msg);
        } else if class == ERROR {
            let t = self.pending.remove(i);
            let (code, reason) = msg.error_code().unwrap_or((0, String::new()));
            self.refused(now, t, code, &reason, msg);
        }
    }

    fn succeeded(&mut self, now: Instant, request: Request, msg: &Message<'_>) {
        let lifetime = msg
            .attr(ATTR_LIFETIME)
            .and_then(|v| v.try_into().ok())
            .map(u32::from_be_bytes);
        match request {
            Request::Allocate => {
                let Some(relay) = msg
                    .attr(ATTR_XOR_RELAYED_ADDRESS)
                    .and_then(|v| decode_address(v, Some(&msg.id)))
                else {
                    self.fail("the allocation answer has no relayed address".into());
                    return;
                };
                self.state = State::Allocated { relay };
                self.allocated = Some(relay);
                self.schedule_refresh(now, lifetime.unwrap_or(DEFAULT_LIFETIME));
                self.events.push_back(TurnEvent::Allocated(relay));
            }
            Request::Refresh(_) => self.schedule_refresh(now, lifetime.unwrap_or(DEFAULT_LIFETIME)),
            Request::Permission(ip) => {
                if let Some(p) = self.permissions.get_mut(&ip) {
                    p.ready = true;
                }
            }
            Request::Bind(peer, _) => {
                if let Some((_, c)) = self.channels.get_mut(&peer) {
                    c.ready = true;
                }
            }
        }
    }

    fn refused(&mut self, now: Instant, t: Transaction, code: u16, reason: &str, msg: &Message) {
        let realm = msg
            .attr(ATTR_REALM)
            .and_then(|v| std::str::from_utf8(v).ok());
        let nonce = msg
            .attr(ATTR_NONCE)
            .and_then(|v| std::str::from_utf8(v).ok());
        let signed = self.key.is_some();
        match (code, realm, nonce) {
            // The first (unsigned) Allocate learns the realm and nonce; a signed one refused
            // again means the credentials are wrong.
            (401, Some(realm), Some(nonce))
                if t.request == Request::Allocate
                    && self.state == (State::Allocating { signed: false }) =>
            {
                self.realm = Some(realm.to_string());
                self.nonce = Some(nonce.to_string());
                self.key = Some(Secret::new(long_term_key(
                    &self.username,
                    realm,
                    self.password.expose(),
                )));
                self.state = State::Allocating { signed: true };
                self.request(Request::Allocate, now);
            }
            (438, _, Some(nonce)) if signed && t.stale < MAX_STALE => {
                self.nonce = Some(nonce.to_string());
                if let Some(realm) = realm {
                    self.realm = Some(realm.to_string());
                }
                let id = transaction_id();
                let bytes = self.encode_request(t.request, &id, false);
                self.pending.push(Transaction {
                    id,
                    request: t.request,
                    bytes,
                    sent: 0,
                    next: now,
                    stale: t.stale + 1,
                });
            }
            _ => {
                let why = format!("{code} {}", printable(reason));
                match t.request {
                    Request::Allocate if code == 401 => self.fail(format!(
                        "the TURN server refused the credentials of user {:?} ({why})",
                        self.username
                    )),
                    Request::Allocate => {
                        self.fail(format!("the TURN server refused the allocation ({why})"))
                    }
                    Request::Refresh(_) => {
                        self.fail(format!("the TURN server ended the allocation ({why})"))
                    }
                    Request::Permission(ip) => {
                        debug!(server = %self.server, %ip, %why, "TURN permission refused");
                        if let Some(p) = self.permissions.get_mut(&ip) {
                            p.renew = now + REFUSED_RETRY;
                        }
                    }
                    Request::Bind(peer, _) => {
                        debug!(server = %self.server, %peer, %why, "TURN channel refused");
                        if let Some((_, c)) = self.channels.get_mut(&peer) {
                            c.renew = now + REFUSED_RETRY;
                        }
                    }
                }
            }
        }
    }

    /// A request got no answer at all.
    fn unanswered(&mut self, request: Request) {
        match request {
            Request::Allocate => self.fail(format!(
                "the TURN server did not answer ({ATTEMPTS} attempts)"
            )),
            Request::Refresh(_) => self.fail("the TURN server stopped answering refreshes".into()),
            Request::Permission(_) | Request::Bind(..) => {
                debug!(server = %self.server, ?request, "TURN request unanswered")
            }
        }
    }

    fn fail(&mut self, why: String) {
        self.state = State::Closed;
        self.pending.clear();
        self.refresh_at = None;
        self.permissions.clear();
        self.channels.clear();
        self.events.push_back(TurnEvent::Failed(why));
    }

    /// The allocation is refreshed a minute before it would expire (halfway for short ones).
    fn schedule_refresh(&mut self, now: Instant, lifetime: u32) {
        let lifetime = Duration::from_secs(u64::from(lifetime));
        let ahead = if lifetime > Duration::from_secs(120) {
            lifetime - Duration::from_secs(60)
        } else {
            lifetime / 2
        };
        self.refresh_at = Some(now + ahead);
    }
}

/// At most 128 printable characters of a server's reason phrase.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(128).collect()
}

/// How long resolving a TURN server's name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The addresses of `targets`, each with its target; names that do not resolve in time are
/// skipped with a warning.
pub async fn resolve(targets: Vec<TurnTarget>) -> Vec<(SocketAddr, TurnTarget)> {
    let mut found = Vec::new();
    for target in targets {
        let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
        match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                for addr in addrs {
                    if !found.iter().any(|(a, _)| *a == addr) {
                        found.push((addr, target.clone()));
                    }
                }
            }
            Ok(Err(e)) => {
                warn!(host = %target.host, error = %e, "TURN server not resolved; no relay from it")
            }
            Err(_) => {
                warn!(host = %target.host, "TURN server not resolved in time; no relay from it")
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::codec::{ATTR_ERROR_CODE, ATTR_MESSAGE_INTEGRITY};
    use super::*;

    fn target() -> TurnTarget {
        TurnTarget {
            host: "127.0.0.1".into(),
            port: 3478,
            username: "fakeuser".into(),
            password: Secret::new("fake-turn-password-0001".into()),
        }
    }

    /// An answer of `kind` to transaction `id` with `attrs`, signed with `key` when given.
    fn answer(kind: u16, id: [u8; 12], attrs: &[(u16, Vec<u8>)], key: Option<&[u8]>) -> Vec<u8> {
        let attrs: Vec<(u16, &[u8])> = attrs.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        encode(kind, &id, &attrs, key)
    }

    fn error(code: u16, reason: &str) -> Vec<u8> {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        v
    }

    fn id_of(msg: &[u8]) -> [u8; 12] {
        msg[8..20].try_into().unwrap()
    }

    #[test]
    fn allocation_authenticates_after_401_and_offers_the_relay() {
        let now = Instant::now();
        let local: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let server: SocketAddr = "192.0.2.10:3478".parse().unwrap();
        let mut c = TurnClient::new(local, server, &target(), now);
        let first = c.due(now);
        assert_eq!(first.len(), 1);
        let req = Message::parse(&first[0]).unwrap();
        assert_eq!(req.kind, ALLOCATE);
        assert_eq!(req.attr(ATTR_REQUESTED_TRANSPORT), Some(&[17, 0, 0, 0][..]));
        assert!(req.attr(ATTR_MESSAGE_INTEGRITY).is_none());

        let challenge = answer(
            ALLOCATE | ERROR,
            req.id,
            &[
                (ATTR_ERROR_CODE, error(401, "Unauthorized")),
                (ATTR_REALM, b"test.invalid".to_vec()),
                (ATTR_NONCE, b"fake-nonce-1".to_vec()),
            ],
            None,
        );
        assert_eq!(c.receive(now, &challenge), None);
        let signed = c.due(now);
        assert_eq!(signed.len(), 1);
        let req = Message::parse(&signed[0]).unwrap();
        let key = long_term_key("fakeuser", "test.invalid", "fake-turn-password-0001");
        assert!(req.verify(&key), "signed with the long-term key");
        assert_eq!(req.attr(ATTR_USERNAME), Some(&b"fakeuser"[..]));
        assert!(!signed[0]
            .windows(b"fake-turn-password".len())
            .any(|w| w == b"fake-turn-password"));

        // A stale nonce: the same request again with the new nonce.
        let stale = answer(
            ALLOCATE | ERROR,
            req.id,
            &[
                (ATTR_ERROR_CODE, error(438, "Stale Nonce")),
                (ATTR_NONCE, b"fake-nonce-2".to_vec()),
            ],
            None,
        );
        c.receive(now, &stale);
        let again = c.due(now);
        let req = Message::parse(&again[0]).unwrap();
        assert_eq!(req.attr(ATTR_NONCE), Some(&b"fake-nonce-2"[..]));
        assert!(req.verify(&key));

        let relay: SocketAddr = "192.0.2.10:50000".parse().unwrap();
        let forged = answer(
            ALLOCATE | SUCCESS,
            req.id,
            &[
                (ATTR_XOR_RELAYED_ADDRESS, xor_address(relay, &req.id)),
                (ATTR_LIFETIME, 600u32.to_be_bytes().to_vec()),
            ],
            Some(b"not the key"),
        );
        c.receive(now, &forged);
        assert_eq!(
            c.relay(),
            None,
            "an answer not signed with our key is dropped"
        );
        let ok = answer(
            ALLOCATE | SUCCESS,
            req.id,
            &[
                (ATTR_XOR_RELAYED_ADDRESS, xor_address(relay, &req.id)),
                (ATTR_LIFETIME, 600u32.to_be_bytes().to_vec()),
            ],
            Some(&key),
        );
        c.receive(now, &ok);
        assert_eq!(c.relay(), Some(relay));
        assert_eq!(c.poll_event(), Some(TurnEvent::Allocated(relay)));
        assert!(c.settled());

        // Media to a peer: a Send indication while the channel is being bound, with a permission
        // and a channel bind asked for; ChannelData once bound, both ways.
        let peer: SocketAddr = "198.51.100.7:61000".parse().unwrap();
        let wrapped = c.send(now, peer, b"hello").unwrap();
        let ind = Message::parse(&wrapped).unwrap();
        assert_eq!(ind.kind, SEND | INDICATION);
        assert_eq!(ind.attr(ATTR_DATA), Some(&b"hello"[..]));
        assert_eq!(
            decode_address(ind.attr(ATTR_XOR_PEER_ADDRESS).unwrap(), Some(&ind.id)),
            Some(peer)
        );
        let reqs: Vec<_> = c.due(now);
        let kinds: Vec<u16> = reqs
            .iter()
            .map(|r| Message::parse(r).unwrap().kind)
            .collect();
        assert_eq!(kinds, vec![CREATE_PERMISSION, CHANNEL_BIND]);
        for r in &reqs {
            let m = Message::parse(r).unwrap();
            assert!(m.verify(&key));
            c.receive(now, &answer(m.kind | SUCCESS, m.id, &[], Some(&key)));
        }
        let data = c.send(now, peer, b"hello").unwrap();
        assert_eq!(&data[..4], &[0x40, 0x00, 0x00, 0x05]);
        assert_eq!(&data[4..], b"hello");
        assert_eq!(
            c.receive(now, &[0x40, 0x00, 0x00, 0x02, b'h', b'i']),
            Some((peer, relay, b"hi".to_vec()))
        );
        let id = [7u8; 12];
        let indication = answer(
            DATA | INDICATION,
            id,
            &[
                (ATTR_XOR_PEER_ADDRESS, xor_address(peer, &id)),
                (ATTR_DATA, b"yo".to_vec()),
            ],
            None,
        );
        assert_eq!(
            c.receive(now, &indication),
            Some((peer, relay, b"yo".to_vec()))
        );

        // The allocation is refreshed before its lifetime ends; permissions within 5 minutes.
        assert!(c.due(now + Duration::from_secs(200)).is_empty());
        let later: Vec<u16> = c
            .due(now + Duration::from_secs(241))
            .iter()
            .map(|r| Message::parse(r).unwrap().kind)
            .collect();
        assert!(later.contains(&CREATE_PERMISSION) && later.contains(&CHANNEL_BIND));
        let refresh: Vec<_> = c.due(now + Duration::from_secs(541));
        assert!(refresh
            .iter()
            .any(|r| Message::parse(r).unwrap().kind == REFRESH));
        let bye = c.close().expect("deallocation");
        let bye = Message::parse(&bye).unwrap();
        assert_eq!(bye.attr(ATTR_LIFETIME), Some(&[0, 0, 0, 0][..]));
    }

    #[test]
    fn wrong_credentials_garbage_and_silence_fail_cleanly() {
        let now = Instant::now();
        let local: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let server: SocketAddr = "192.0.2.10:3478".parse().unwrap();
        let challenge = |id| {
            answer(
                ALLOCATE | ERROR,
                id,
                &[
                    (ATTR_ERROR_CODE, error(401, "Unauthorized")),
                    (ATTR_REALM, b"test.invalid".to_vec()),
                    (ATTR_NONCE, b"fake-nonce-1".to_vec()),
                ],
                None,
            )
        };
        let mut c = TurnClient::new(local, server, &target(), now);
        let first = c.due(now);
        c.receive(now, &challenge(id_of(&first[0])));
        let second = c.due(now);
        c.receive(now, &challenge(id_of(&second[0])));
        match c.poll_event() {
            Some(TurnEvent::Failed(why)) => {
                assert!(why.contains("credentials") && why.contains("401"), "{why}");
                assert!(!why.contains("fake-turn-password"), "{why}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(c.settled() && c.relay().is_none());
        assert!(c.due(now + Duration::from_secs(10)).is_empty());
        assert!(!format!("{c:?}").contains("fake-turn-password"));

        // Garbage is dropped; a server that never answers is given up after a few attempts.
        let mut c = TurnClient::new(local, server, &target(), now);
        for junk in [
            &[][..],
            &[0x00, 0x01],
            &[0x40, 0x00, 0xff, 0xff, 1],
            &[0xff; 64],
            &[0x01, 0x13, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0],
        ] {
            assert_eq!(c.receive(now, junk), None);
        }
        let mut sent = 0;
        let mut t = now;
        let event = loop {
            sent += c.due(t).len();
            if let Some(event) = c.poll_event() {
                break event;
            }
            t = c.next_deadline().expect("a deadline while allocating");
            assert!(t < now + Duration::from_secs(10), "gives up in time");
        };
        assert!(
            matches!(&event, TurnEvent::Failed(why) if why.contains("did not answer")),
            "{event:?}"
        );
        assert_eq!(sent, ATTEMPTS as usize);
        assert!(c.settled() && c.relay().is_none());
    }

    /// Walks a new client through the 401 challenge to an allocation at `relay`; returns the key.
    fn allocate(c: &mut TurnClient, now: Instant, relay: SocketAddr) -> [u8; 16] {
        let first = c.due(now);
        let challenge = answer(
            ALLOCATE | ERROR,
            id_of(&first[0]),
            &[
                (ATTR_ERROR_CODE, error(401, "Unauthorized")),
                (ATTR_REALM, b"test.invalid".to_vec()),
                (ATTR_NONCE, b"fake-nonce-1".to_vec()),
            ],
            None,
        );
        c.receive(now, &challenge);
        let signed = c.due(now);
        let id = id_of(&signed[0]);
        let key = long_term_key("fakeuser", "test.invalid", "fake-turn-password-0001");
        let ok = answer(
            ALLOCATE | SUCCESS,
            id,
            &[
                (ATTR_XOR_RELAYED_ADDRESS, xor_address(relay, &id)),
                (ATTR_LIFETIME, 600u32.to_be_bytes().to_vec()),
            ],
            Some(&key),
        );
        c.receive(now, &ok);
        assert_eq!(c.poll_event(), Some(TurnEvent::Allocated(relay)));
        key
    }

    #[test]
    fn refused_permissions_are_asked_again_and_a_refused_refresh_ends_the_relay() {
        let now = Instant::now();
        let local: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let server: SocketAddr = "192.0.2.10:3478".parse().unwrap();
        let relay: SocketAddr = "192.0.2.10:50000".parse().unwrap();
        let mut c = TurnClient::new(local, server, &target(), now);
        let key = allocate(&mut c, now, relay);

        // A permission the server refuses is asked for again later, not in a loop.
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        c.permit(now, ip);
        c.permit(now, ip);
        let asked = c.due(now);
        assert_eq!(asked.len(), 1, "one request per address");
        let m = Message::parse(&asked[0]).unwrap();
        assert_eq!(m.kind, CREATE_PERMISSION);
        let refusal = answer(
            CREATE_PERMISSION | ERROR,
            m.id,
            &[(ATTR_ERROR_CODE, error(403, "Forbidden"))],
            None,
        );
        c.receive(now, &refusal);
        assert!(c.due(now + Duration::from_secs(5)).is_empty());
        let again = c.due(now + REFUSED_RETRY);
        assert_eq!(again.len(), 1);
        assert_eq!(Message::parse(&again[0]).unwrap().kind, CREATE_PERMISSION);
        assert_eq!(
            c.poll_event(),
            None,
            "a refused permission does not end the relay"
        );

        // A stale nonce on a refresh is followed; a refresh refused for good ends the relay.
        let at = now + Duration::from_secs(541);
        let refresh = c
            .due(at)
            .into_iter()
            .map(|r| Message::parse(&r).map(|m| (m.kind, m.id)).unwrap())
            .find(|(kind, _)| *kind == REFRESH)
            .expect("a refresh");
        let stale = answer(
            REFRESH | ERROR,
            refresh.1,
            &[
                (ATTR_ERROR_CODE, error(438, "Stale Nonce")),
                (ATTR_NONCE, b"fake-nonce-2".to_vec()),
            ],
            None,
        );
        c.receive(at, &stale);
        let retried = c.due(at);
        let m = Message::parse(&retried[0]).unwrap();
        assert_eq!(m.kind, REFRESH);
        assert_eq!(m.attr(ATTR_NONCE), Some(&b"fake-nonce-2"[..]));
        assert!(m.verify(&key));
        let gone = answer(
            REFRESH | ERROR,
            m.id,
            &[(ATTR_ERROR_CODE, error(437, "Allocation Mismatch"))],
            None,
        );
        c.receive(at, &gone);
        match c.poll_event() {
            Some(TurnEvent::Failed(why)) => assert!(why.contains("437"), "{why}"),
            other => panic!("expected the relay to end, got {other:?}"),
        }
        assert_eq!(c.relay(), None);
        assert_eq!(c.allocated(), Some(relay), "still recognized as ours");
        assert_eq!(c.send(at, "198.51.100.7:1".parse().unwrap(), b"x"), None);
        assert!(c.due(at + Duration::from_secs(600)).is_empty());
    }

    #[test]
    fn only_udp_turn_urls_with_credentials_are_targets() {
        let servers = [
            IceServer {
                urls: vec![
                    "turn:turn.example.org".into(),
                    "turn:192.0.2.1:3479?transport=udp".into(),
                    "turn:192.0.2.1:3480?transport=tcp".into(),
                    "turns:turn.example.org:5349".into(),
                    "stun:stun.example.org".into(),
                ],
                username: Some("fakeuser".into()),
                credential: Some(Secret::new("fake-turn-password-0001".into())),
            },
            IceServer {
                urls: vec!["turn:nocreds.example.org".into()],
                ..Default::default()
            },
        ];
        let found: Vec<(String, u16)> = turn_targets(&servers)
            .into_iter()
            .map(|t| (t.host, t.port))
            .collect();
        assert_eq!(
            found,
            vec![
                ("turn.example.org".to_string(), 3478),
                ("192.0.2.1".to_string(), 3479)
            ]
        );
    }
}
