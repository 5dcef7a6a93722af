//! Loopback ports for servers a test starts (media sockets, QEMU forwards, coturn relays, squid's
//! per-user ports).

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};

/// A run of `n` consecutive loopback UDP ports nobody uses right now.
pub fn free_udp_range(n: u16) -> (u16, u16) {
    free_range(n, "UDP", 30000..60000, |p| {
        UdpSocket::bind(("127.0.0.1", p)).is_ok()
    })
}

/// A run of `n` consecutive loopback TCP ports nobody listens on right now, below the ephemeral
/// range (32768 and up on Linux): the clients of a test (thousands, in a flood) never take them.
pub fn free_tcp_range(n: u16) -> (u16, u16) {
    free_range(n, "TCP", 20000..32700, |p| {
        TcpListener::bind(("127.0.0.1", p)).is_ok()
    })
}

/// The ports are released on return and bound again by whoever the test starts, so searches of
/// parallel tests begin at different places (by process and by call) rather than trusting that
/// the first free run stays free.
fn free_range(
    n: u16,
    what: &str,
    within: std::ops::Range<u16>,
    free: impl Fn(u16) -> bool,
) -> (u16, u16) {
    static CALLS: AtomicU16 = AtomicU16::new(0);
    let nth = CALLS.fetch_add(1, Ordering::Relaxed);
    let spread = (within.end - within.start) / 2;
    let offset = ((std::process::id() % 500) as u16 * 40 + (nth % 8) * n * 5) % spread;
    for lo in (within.start + offset..within.end - n).step_by(usize::from(n) * 3) {
        if (lo..lo + n).all(&free) {
            return (lo, lo + n - 1);
        }
    }
    panic!("no free range of {n} {what} ports on loopback");
}
