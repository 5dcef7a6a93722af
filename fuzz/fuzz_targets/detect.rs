//! Arbitrary terminal output in arbitrary reads through the login-URL detector. Invariants: it never
//! panics; no URL is reported twice; the URLs (with provider and source, in order) are the same when
//! the output arrives in one read as when it arrives in the fuzzer's reads.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use vm_agent_fuzz::detect::{DetectedUrl, UrlDetector};
use vm_agent_fuzz::input::FuzzInput;

fn run<'a>(input: &FuzzInput<'a>, reads: impl Iterator<Item = &'a [u8]>) -> Vec<DetectedUrl> {
    let mut detector = UrlDetector::new(input.cols, input.rows, vm_agent_fuzz::builtin_rules());
    let mut found = Vec::new();
    for read in reads {
        found.extend(detector.feed(read));
        // Terminal-query answers are taken after every read, as the agent does.
        let _ = detector.take_replies();
    }
    found.extend(detector.finish());
    let mut urls = HashSet::new();
    for u in &found {
        assert!(urls.insert(u.url.as_str()), "reported twice: {u:?}");
    }
    found
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = FuzzInput::decode(data) else {
        return;
    };
    let whole = run(&input, std::iter::once(input.output));
    let split = run(&input, input.reads());
    assert_eq!(whole, split, "reads at {:?} changed the result", input.cuts);
});
