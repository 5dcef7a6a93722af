//! `restored`: the host tells an agent whose VM was just restored from saved state what the VM
//! cannot know by itself.
//!
//! A VM restored from a snapshot wakes with everything the snapshot held: the kernel's random
//! state, its clock as it was at the save, its machine id and boot id. Siblings restored from one
//! snapshot would share all of it, so before anything in the guest makes a key or a PKCE verifier
//! the host sends fresh entropy and its clock, and, for a clone, asks for a new identity. The
//! agent's vsock connections are reset by the restore; it says hello again on its own, and the host
//! sends this call once that hello has arrived.

use serde::{Deserialize, Serialize};

use crate::hello::Hello;
use crate::messages::base64_bytes;
use crate::method::{Method, Unary};
use crate::secret::Secret;

/// Bytes of entropy the host sends: a full reseed of the kernel's ChaCha20 generator.
pub const ENTROPY_BYTES: usize = 64;

/// `restored`: reseed, set the clock, and for a clone take a new identity. Answers the agent's
/// hello as it is afterwards.
#[derive(Debug)]
pub struct Restored;
impl Method for Restored {
    const NAME: &'static str = "restored";
}
impl Unary for Restored {
    type Request = RestoredRequest;
    type Response = Hello;
}

/// What a restored VM gets from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredRequest {
    /// [`ENTROPY_BYTES`] from the host's random source, credited to the guest kernel's pool and
    /// forcing a reseed of its generator. Seed material: never printed.
    pub entropy: Secret<EntropyBytes>,
    /// The host's clock, milliseconds since the Unix epoch, read just before the call.
    pub unix_time_ms: u64,
    /// The VM is one of many restored from one snapshot (not a VM resumed from its own saved
    /// state): it takes a fresh machine id, boot id and sealing key.
    pub clone: bool,
}

/// Entropy as base64 in JSON; `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntropyBytes(#[serde(with = "base64_bytes")] pub Vec<u8>);

impl std::fmt::Debug for EntropyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntropyBytes({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_stays_out_of_debug_and_travels_as_base64() {
        let request = RestoredRequest {
            entropy: Secret::new(EntropyBytes(vec![0xAB; ENTROPY_BYTES])),
            unix_time_ms: 1,
            clone: true,
        };
        let debug = format!("{request:?}");
        assert!(!debug.contains("171") && !debug.contains("q6ur"), "{debug}");
        let json = serde_json::to_string(&request).expect("json");
        assert!(json.contains("q6ur"), "{json}");
        let back: RestoredRequest = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, request);
    }
}
