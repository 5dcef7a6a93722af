//! AF_VSOCK connector for hypervisors that expose guests through the kernel's vhost-vsock.

use futures_util::future::BoxFuture;
use tokio_vsock::{VsockAddr, VsockStream};

use super::{AgentStream, Connector, TransportError};

/// First CID that can be a guest: 0 is the hypervisor, 1 local, 2 the host itself.
pub const FIRST_GUEST_CID: u32 = 3;

/// Connects to `(cid, port)` over AF_VSOCK.
#[derive(Debug, Clone)]
pub struct VsockConnector {
    cid: u32,
    port: u32,
}

impl VsockConnector {
    /// A connector for guest `cid`. CIDs below 3 are refused here: from a host they reach the
    /// hypervisor or the host itself, never a guest agent.
    pub fn new(cid: u32, port: u32) -> Result<Self, TransportError> {
        if cid < FIRST_GUEST_CID {
            return Err(TransportError::ReservedCid(cid));
        }
        Ok(Self { cid, port })
    }
}

impl Connector for VsockConnector {
    fn connect(&self) -> BoxFuture<'_, Result<AgentStream, TransportError>> {
        Box::pin(async move {
            let stream = VsockStream::connect(VsockAddr::new(self.cid, self.port))
                .await
                .map_err(|e| {
                    TransportError::io(format!("connect vsock:{}:{}", self.cid, self.port), e)
                })?;
            Ok(Box::pin(stream) as AgentStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_hypervisor_cids_are_refused_without_dialling() {
        for cid in 0..FIRST_GUEST_CID {
            assert!(matches!(
                VsockConnector::new(cid, 1024),
                Err(TransportError::ReservedCid(c)) if c == cid
            ));
        }
        assert!(VsockConnector::new(3, 1024).is_ok());
    }
}
