//! The login-URL detector while the terminal changes size between reads (a viewer resizing the
//! login's terminal). Invariants: never panics; no URL is reported twice.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use vm_agent_fuzz::detect::UrlDetector;
use vm_agent_fuzz::input::FuzzInput;

fuzz_target!(|data: &[u8]| {
    let Some(input) = FuzzInput::decode(data) else {
        return;
    };
    let mut detector = UrlDetector::new(input.cols, input.rows, vm_agent_fuzz::builtin_rules());
    let mut seen = HashSet::new();
    for (i, read) in input.reads().enumerate() {
        for u in detector.feed(read) {
            assert!(seen.insert(u.url), "reported twice");
        }
        let _ = detector.take_replies();
        // Each read's first bytes pick the next size (1..=256 x 1..=100).
        let cols = u16::from(read.first().copied().unwrap_or(79)) + 1;
        let rows = u16::from(read.get(1).copied().unwrap_or(23)) % 100 + 1;
        if i % 2 == 0 {
            detector.resize(cols, rows);
        }
    }
    for u in detector.finish() {
        assert!(seen.insert(u.url), "reported twice");
    }
});
