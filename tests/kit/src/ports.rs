//! Loopback UDP ports for servers a test starts (media sockets, QEMU forwards, coturn relays).

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU16, Ordering};

/// A run of `n` consecutive loopback UDP ports nobody uses right now. The ports are released on
/// return and bound again by whoever the test starts, so searches of parallel tests begin at
/// different places (by process and by call) rather than trusting that the first free run stays
/// free.
pub fn free_udp_range(n: u16) -> (u16, u16) {
    static CALLS: AtomicU16 = AtomicU16::new(0);
    let nth = CALLS.fetch_add(1, Ordering::Relaxed);
    let start = 30000 + (std::process::id() % 500) as u16 * 40 + (nth % 8) * n * 5;
    for lo in (start..60000).step_by(usize::from(n) * 3) {
        let held: Vec<_> = (lo..lo + n)
            .map_while(|p| UdpSocket::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return (lo, lo + n - 1);
        }
    }
    panic!("no free range of {n} UDP ports on loopback");
}
