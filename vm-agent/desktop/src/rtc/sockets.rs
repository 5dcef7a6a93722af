//! The media sockets of a viewer's session: bound per local address (in the configured port
//! range), read into the session's task, and the STUN/TURN servers' names resolved.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use protocol::desktop::IceSettings;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::warn;

use crate::DesktopError;

/// Largest UDP datagram we read.
const MAX_DATAGRAM: usize = 2048;

/// How long resolving a STUN server's name may take.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The addresses of `servers`; names that do not resolve in time are skipped.
pub(super) async fn resolve(servers: Vec<(String, u16)>) -> Vec<SocketAddr> {
    let mut found = Vec::new();
    for (host, port) in servers {
        match tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(addrs)) => {
                for addr in addrs {
                    if !found.contains(&addr) {
                        found.push(addr);
                    }
                }
            }
            Ok(Err(e)) => warn!(%host, error = %e, "STUN server not resolved"),
            Err(_) => warn!(%host, "STUN server not resolved in time"),
        }
    }
    found
}

/// Reads datagrams from `socket` into `tx` (payload, source, local address) until either ends.
pub(super) async fn read_socket(
    socket: Arc<UdpSocket>,
    tx: mpsc::Sender<(Vec<u8>, SocketAddr, SocketAddr)>,
) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, source)) => {
                if tx.send((buf[..n].to_vec(), source, local)).await.is_err() {
                    return;
                }
            }
            // ICMP errors surface as recv errors on Linux; the socket stays usable.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(_) => return,
        }
    }
}

/// One UDP socket per local address, on a port from the configured range when there is one.
pub(super) async fn bind_sockets(ice: &IceSettings) -> Result<Vec<Arc<UdpSocket>>, DesktopError> {
    let addrs = if ice.bind.is_empty() {
        interface_addresses()
    } else {
        ice.bind.clone()
    };
    let mut sockets = Vec::new();
    if let Some((lo, hi)) = ice.udp_ports {
        if lo == 0 || lo > hi {
            return Err(DesktopError::BadOffer(format!(
                "UDP port range {lo}-{hi} is empty or starts at 0"
            )));
        }
    }
    for ip in addrs {
        let socket = match ice.udp_ports {
            Some((lo, hi)) => bind_in_range(ip, lo, hi).await?,
            None => UdpSocket::bind(SocketAddr::new(ip, 0))
                .await
                .map_err(DesktopError::Io)?,
        };
        sockets.push(Arc::new(socket));
    }
    Ok(sockets)
}

async fn bind_in_range(ip: IpAddr, lo: u16, hi: u16) -> Result<UdpSocket, DesktopError> {
    for port in lo..=hi {
        if let Ok(socket) = UdpSocket::bind(SocketAddr::new(ip, port)).await {
            return Ok(socket);
        }
    }
    Err(DesktopError::Ice(format!(
        "no free UDP port in {lo}-{hi} on {ip}"
    )))
}

/// Non-loopback IPv4 addresses of the interfaces that are up; loopback when there is none.
fn interface_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let up = ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
            let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
                continue;
            };
            let ip = IpAddr::V4(addr.ip());
            if up && !ip.is_loopback() && !found.contains(&ip) {
                found.push(ip);
            }
        }
    }
    if found.is_empty() {
        found.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    found
}
