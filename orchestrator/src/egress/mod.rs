//! Egress: every VM of a user leaves through that user's port of the upstream HTTP proxy.
//!
//! Every user leaves through one port of the upstream HTTP proxy (one stable external IP per port),
//! so providers see one stable address per user. The VM itself holds no proxy address or
//! credentials: its agent's loopback proxy turns each connection into a tunnel over vsock, and the
//! [`EgressGateway`] here opens it to the owner's port with the credentials added, after checking
//! the VM's [`AllowList`]. The guest cannot choose the port, read the password or widen its list.
//!
//! Ports come from a configured range (default
//! 10001-19999) and are recorded in the [`Store`]; the store's unique constraints (one row per user,
//! one row per port) make assignment race-free across hosts sharing one PostgreSQL:
//! each attempt picks a free-looking port and inserts with `ON CONFLICT DO NOTHING`; losing a race
//! just means trying again. Searches start at a point derived from the user id, so hosts assigning
//! different users at once rarely aim at the same port.

mod allow;
mod gateway;
mod range;
mod upstream;

pub use allow::{AllowList, PatternError};
pub use gateway::{
    EgressBinding, EgressEvent, EgressGateway, EgressLimits, EgressVm, GatewayError,
};
pub use range::PortRange;
pub use upstream::{ProxyConfig, UpstreamError};

use crate::store::{AuditEvent, PortMove, Store, StoreError};

/// Why a port could not be assigned.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Every port of the range is held by another user.
    #[error("no free egress port left in {0}")]
    Exhausted(PortRange),
    /// Lost the race for a port more times than is plausible; the store is under extreme contention.
    #[error("could not claim an egress port after {0} attempts")]
    Contention(u32),
    /// The user has no port to rotate.
    #[error("user has no egress port")]
    NoPort,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

const MAX_ATTEMPTS: u32 = 200;

/// Assigns, looks up, releases and rotates users' egress ports.
#[derive(Debug, Clone)]
pub struct EgressPorts {
    store: Store,
    range: PortRange,
}

impl EgressPorts {
    /// Ports from `range`, recorded in `store`.
    pub fn new(store: Store, range: PortRange) -> Self {
        Self { store, range }
    }

    /// The store the ports are recorded in.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The configured range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// The user's port, assigning one if the user has none yet. Stable: the same user always gets
    /// the same port back, from any host, until it is released or rotated.
    pub async fn assign(&self, user: &str) -> Result<u16, EgressError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(port) = self.store.egress_port_of(user).await? {
                return Ok(port);
            }
            let port = self.free_port_from(self.range.start_for(user)).await?;
            if self.store.claim_egress_port(user, port).await? {
                tracing::debug!(port, "egress port assigned");
                self.store
                    .audit(
                        Some(user),
                        &AuditEvent::EgressPort {
                            action: "assigned".into(),
                            port,
                        },
                    )
                    .await?;
                return Ok(port);
            }
        }
        Err(EgressError::Contention(MAX_ATTEMPTS))
    }

    /// The user's port, if one is assigned.
    pub async fn port_of(&self, user: &str) -> Result<Option<u16>, EgressError> {
        Ok(self.store.egress_port_of(user).await?)
    }

    /// Gives the user's port back to the pool; returns it.
    pub async fn release(&self, user: &str) -> Result<Option<u16>, EgressError> {
        let released = self.store.release_egress_port(user).await?;
        if let Some(port) = released {
            self.store
                .audit(
                    Some(user),
                    &AuditEvent::EgressPort {
                        action: "released".into(),
                        port,
                    },
                )
                .await?;
        }
        Ok(released)
    }

    /// Moves the user to another free port (for example when the old exit IP is burned) and
    /// returns it. The old port becomes free.
    pub async fn rotate(&self, user: &str) -> Result<u16, EgressError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self
                .store
                .egress_port_of(user)
                .await?
                .ok_or(EgressError::NoPort)?;
            let next = self.range.next_after(current);
            let candidate = self.free_port_from(next).await?;
            if candidate == current {
                return Err(EgressError::Exhausted(self.range));
            }
            match self
                .store
                .move_egress_port(user, current, candidate)
                .await?
            {
                PortMove::Moved => {
                    self.store
                        .audit(
                            Some(user),
                            &AuditEvent::EgressPort {
                                action: "rotated".into(),
                                port: candidate,
                            },
                        )
                        .await?;
                    return Ok(candidate);
                }
                PortMove::PortTaken | PortMove::UserChanged => continue,
            }
        }
        Err(EgressError::Contention(MAX_ATTEMPTS))
    }

    /// The first free port at or after `from`, wrapping to the start of the range.
    async fn free_port_from(&self, from: u16) -> Result<u16, EgressError> {
        if let Some(p) = self
            .store
            .first_free_egress_port(from, self.range.last())
            .await?
        {
            return Ok(p);
        }
        match self
            .store
            .first_free_egress_port(self.range.first(), self.range.last())
            .await?
        {
            Some(p) => Ok(p),
            None => Err(EgressError::Exhausted(self.range)),
        }
    }
}

#[cfg(test)]
mod tests;
