//! Arbitrary datagrams from a TURN server, one after another, into the agent's TURN client
//! (`vm-agent/desktop/src/turn.rs` and its STUN codec), while the agent relays to a peer. Each
//! STUN-looking datagram carries the transaction id of the client's latest request, so the
//! answers reach the client's state machine instead of being dropped as strangers.
//! Invariant: the client never panics, and what it keeps and sends stays bounded.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use protocol::Secret;
use vm_agent_fuzz::desktop::turn::{TurnClient, TurnTarget};

/// Datagrams the client may send while answering one input (its retries and refreshes).
const MAX_SENT_PER_STEP: usize = 64;

fuzz_target!(|data: &[u8]| {
    let local: SocketAddr = ([127, 0, 0, 1], 40000).into();
    let server: SocketAddr = ([127, 0, 0, 1], 3478).into();
    let peer: SocketAddr = ([10, 0, 2, 2], 50000).into();
    let target = TurnTarget {
        host: "127.0.0.1".into(),
        port: 3478,
        username: "fuzz".into(),
        password: Secret::new("fuzz-password".into()),
    };
    let mut now = Instant::now();
    let mut client = TurnClient::new(local, server, &target, now);
    let mut last_id = [0u8; 12];
    let remember = |sent: &[Vec<u8>], last_id: &mut [u8; 12]| {
        assert!(sent.len() <= MAX_SENT_PER_STEP, "{} datagrams at once", sent.len());
        if let Some(id) = sent.iter().rev().find_map(|d| d.get(8..20)) {
            last_id.copy_from_slice(id);
        }
    };
    remember(&client.due(now), &mut last_id);
    // Inputs: [len_hi, len_lo, bytes...] repeated.
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let mut datagram = rest[2..2 + len].to_vec();
        rest = &rest[2 + len..];
        if datagram.len() >= 20 && datagram[0] >> 6 == 0 {
            datagram[8..20].copy_from_slice(&last_id);
        }
        if let Some((_, _, payload)) = client.receive(now, &datagram) {
            assert!(payload.len() <= datagram.len());
        }
        while client.poll_event().is_some() {}
        let _ = client.send(now, peer, b"media");
        now += Duration::from_millis(700);
        remember(&client.due(now), &mut last_id);
    }
    let _ = client.close();
});
