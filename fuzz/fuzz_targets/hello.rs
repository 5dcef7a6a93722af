//! Arbitrary bytes as the hello a VM's agent sends and as the JSON of an agent's error answer.
//! Invariant: decoding never panics, and what decodes encodes back to something that decodes the
//! same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{ErrorBody, Hello};

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = serde_json::from_slice::<Hello>(data) {
        let again: Hello = serde_json::from_slice(&serde_json::to_vec(&hello).unwrap()).unwrap();
        assert_eq!(hello, again);
    }
    if let Ok(err) = serde_json::from_slice::<ErrorBody>(data) {
        let again: ErrorBody = serde_json::from_slice(&serde_json::to_vec(&err).unwrap()).unwrap();
        assert_eq!(err, again);
    }
});
