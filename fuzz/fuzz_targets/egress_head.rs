//! Arbitrary bytes as what a VM's program sends the agent's egress proxy: a plain HTTP request head
//! and a CONNECT target. Invariants: never panics; a target that splits joins back to one that
//! splits the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::egress::{join_target, plain_request, split_target};

fuzz_target!(|data: &[u8]| {
    let _ = plain_request(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((host, port)) = split_target(text) {
            let joined = join_target(&host, port);
            assert_eq!(split_target(&joined).ok(), Some((host, port)), "{joined}");
        }
    }
});
