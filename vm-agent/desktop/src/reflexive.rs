//! Server-reflexive candidates: the address a viewer can reach the agent's media socket at when the
//! VM sits behind a NAT the host does not forward 1:1, learnt by asking the host's STUN servers
//! (RFC 8489 Binding) from that very socket, and trickled to the viewer after the answer.
//!
//! The codec is written out here (a Binding request is a 20-byte header; the answer's
//! XOR-MAPPED-ADDRESS is one attribute) because str0m's STUN parser is for ICE connectivity checks
//! and refuses a Binding answer without MESSAGE-INTEGRITY, which plain STUN servers never send.
//! TURN servers answer Binding requests too, so their `turn:` URLs (UDP) count as STUN servers;
//! the agent's relay on them is [`super::turn`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use protocol::desktop::IceServer;

/// The STUN magic cookie (RFC 8489 §6).
const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// Default STUN port (RFC 8489 §18.6).
const DEFAULT_PORT: u16 = 3478;

/// Requests are sent this many times (UDP loses datagrams) ...
const ATTEMPTS: u32 = 3;
/// ... this far apart; gathering ends one interval after the last attempt.
const RETRY: Duration = Duration::from_millis(500);

/// `host:port` of every server in `servers` the agent can ask over UDP: `stun:` URLs and `turn:`
/// URLs whose transport is UDP (the default). `stuns:`/`turns:` (TLS) and TCP transports are for
/// the browser only.
pub fn stun_targets(servers: &[IceServer]) -> Vec<(String, u16)> {
    let mut targets = Vec::new();
    for url in servers.iter().flat_map(|s| s.urls.iter()) {
        let url = url.trim();
        let (rest, query) = url.split_once('?').unwrap_or((url, ""));
        let Some((scheme, rest)) = rest.split_once(':') else {
            continue;
        };
        let udp = match scheme.to_ascii_lowercase().as_str() {
            "stun" => true,
            "turn" => !query
                .split('&')
                .any(|kv| kv.eq_ignore_ascii_case("transport=tcp")),
            _ => false,
        };
        if !udp {
            continue;
        }
        let (host, port) = split_host_port(rest);
        if host.is_empty() {
            continue;
        }
        let target = (host.to_string(), port);
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    targets
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
pub(super) fn split_host_port(s: &str) -> (&str, u16) {
    if let Some(v6) = s.strip_prefix('[') {
        let (host, rest) = v6.split_once(']').unwrap_or((v6, ""));
        let port = rest
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(DEFAULT_PORT);
        return (host, port);
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().unwrap_or(DEFAULT_PORT)),
        _ => (s, DEFAULT_PORT),
    }
}

/// A Binding request with transaction id `id`.
pub fn binding_request(id: [u8; 12]) -> [u8; 20] {
    let mut msg = [0u8; 20];
    msg[..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    // Length 0: no attributes.
    msg[4..8].copy_from_slice(&MAGIC);
    msg[8..].copy_from_slice(&id);
    msg
}

/// The transaction id and mapped address of a Binding success answer; `None` for anything else.
pub fn parse_binding_success(msg: &[u8]) -> Option<([u8; 12], SocketAddr)> {
    if msg.len() < 20 || msg[4..8] != MAGIC {
        return None;
    }
    if u16::from_be_bytes([msg[0], msg[1]]) != BINDING_SUCCESS {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
    let body = msg.get(20..20 + len)?;
    let mut id = [0u8; 12];
    id.copy_from_slice(&msg[8..20]);
    let mut plain = None;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + alen)?;
        match kind {
            ATTR_XOR_MAPPED_ADDRESS => return Some((id, decode_address(value, Some(&id))?)),
            ATTR_MAPPED_ADDRESS => plain = decode_address(value, None),
            _ => {}
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    plain.map(|addr| (id, addr))
}

/// A (XOR-)MAPPED-ADDRESS value; `xor` holds the transaction id for the XOR variant.
pub(super) fn decode_address(value: &[u8], xor: Option<&[u8; 12]>) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let mut port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]);
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC);
    if let Some(id) = xor {
        port ^= u16::from_be_bytes([MAGIC[0], MAGIC[1]]);
        key[4..].copy_from_slice(id);
    }
    let unmask = |bytes: &[u8], out: &mut [u8]| {
        for (i, (o, b)) in out.iter_mut().zip(bytes).enumerate() {
            *o = if xor.is_some() { b ^ key[i] } else { *b };
        }
    };
    let ip = match family {
        1 => {
            let mut b = [0u8; 4];
            unmask(value.get(4..8)?, &mut b);
            IpAddr::V4(Ipv4Addr::from(b))
        }
        2 => {
            let mut b = [0u8; 16];
            unmask(value.get(4..20)?, &mut b);
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A fresh random transaction id (it is all that ties an answer to our request, so it comes from
/// the kernel's random source; the process-seeded SipHash keys are the fallback).
pub(super) fn transaction_id() -> [u8; 12] {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Read;

    let mut id = [0u8; 12];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut id));
    if read.is_err() {
        let state = std::collections::hash_map::RandomState::new();
        let mut a = state.build_hasher();
        a.write_u8(1);
        let mut b = state.build_hasher();
        b.write_u8(2);
        id[..8].copy_from_slice(&a.finish().to_le_bytes());
        id[8..].copy_from_slice(&b.finish().to_le_bytes()[..4]);
    }
    id
}

/// One outstanding Binding request.
#[derive(Debug)]
struct Pending {
    id: [u8; 12],
    /// The agent's socket it goes out of.
    local: SocketAddr,
    server: SocketAddr,
    sent: u32,
    next: Instant,
}

/// The Binding requests of one viewer session, their retries, and when gathering is over.
#[derive(Debug, Default)]
pub struct Gathering {
    pending: Vec<Pending>,
}

impl Gathering {
    /// Asks every server in `servers` (resolved addresses) from every local socket address of the
    /// same IP family.
    pub fn start(locals: &[SocketAddr], servers: &[SocketAddr], now: Instant) -> Self {
        let mut pending = Vec::new();
        for local in locals {
            for server in servers.iter().filter(|s| s.is_ipv4() == local.is_ipv4()) {
                pending.push(Pending {
                    id: transaction_id(),
                    local: *local,
                    server: *server,
                    sent: 0,
                    next: now,
                });
            }
        }
        Self { pending }
    }

    /// Gathering is over: every request was answered or given up.
    pub fn done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Datagrams due now, as `(from local, to server, bytes)`; requests out of attempts are given
    /// up.
    pub fn due(&mut self, now: Instant) -> Vec<(SocketAddr, SocketAddr, [u8; 20])> {
        self.pending.retain(|p| p.sent < ATTEMPTS || p.next > now);
        let mut out = Vec::new();
        for p in &mut self.pending {
            if p.next <= now && p.sent < ATTEMPTS {
                out.push((p.local, p.server, binding_request(p.id)));
                p.sent += 1;
                p.next = now + RETRY;
            }
        }
        out
    }

    /// When something is next due (`None` once done).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.next).min()
    }

    /// Takes a datagram that arrived on `local` from `source`. Returns `Some` when it answered one
    /// of our requests: the local socket and the mapped address the server saw.
    pub fn answer(
        &mut self,
        local: SocketAddr,
        source: SocketAddr,
        msg: &[u8],
    ) -> Option<(SocketAddr, SocketAddr)> {
        let (id, mapped) = parse_binding_success(msg)?;
        let i = self
            .pending
            .iter()
            .position(|p| p.id == id && p.server == source && p.local == local)?;
        let p = self.pending.remove(i);
        Some((p.local, mapped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(urls: &[&str]) -> IceServer {
        IceServer {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn stun_and_udp_turn_urls_are_asked() {
        let servers = [
            server(&["stun:stun.example.org", "stun:192.0.2.1:19302"]),
            server(&[
                "turn:turn.example.org:3479?transport=udp",
                "turns:x.example.org",
            ]),
            server(&[
                "turn:tcp.example.org?transport=tcp",
                "stun:[2001:db8::1]:5000",
            ]),
            server(&["stun:stun.example.org:3478", "bogus"]),
        ];
        assert_eq!(
            stun_targets(&servers),
            vec![
                ("stun.example.org".to_string(), 3478),
                ("192.0.2.1".to_string(), 19302),
                ("turn.example.org".to_string(), 3479),
                ("2001:db8::1".to_string(), 5000),
            ]
        );
    }

    #[test]
    fn a_binding_answer_gives_the_mapped_address() {
        // RFC 5769 §2.2 sample response (IPv4), without its integrity and fingerprint attributes.
        let id = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let mut msg = vec![0x01, 0x01, 0x00, 0x0c];
        msg.extend_from_slice(&MAGIC);
        msg.extend_from_slice(&id);
        msg.extend_from_slice(&[
            0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
        ]);
        let (got_id, addr) = parse_binding_success(&msg).expect("parsed");
        assert_eq!(got_id, id);
        assert_eq!(addr, "192.0.2.1:32853".parse().unwrap());
        assert!(parse_binding_success(&binding_request(id)).is_none());
        assert!(parse_binding_success(&msg[..msg.len() - 2]).is_none());
    }

    #[test]
    fn requests_are_retried_then_given_up() {
        let now = Instant::now();
        let local: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        let stun: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let mut g = Gathering::start(&[local], &[stun, v6], now);
        assert_eq!(g.due(now).len(), 1, "only the same family is asked");
        assert!(g.due(now).is_empty());
        assert_eq!(g.due(now + RETRY).len(), 1);
        assert_eq!(g.due(now + RETRY * 2).len(), 1);
        assert!(!g.done());
        assert!(g.due(now + RETRY * 3).is_empty());
        assert!(g.done());
    }
}
