//! Arbitrary bytes through the frame decoder, whole and in the fuzzer's chunks. Invariants: it never
//! panics; a stream that decodes gives the same frames however it is split; a bad one fails
//! however it is split, after a prefix of the same frames (a valid frame just before the bad
//! header may or may not come out first, depending on where the read ended).

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::frame::{Frame, FrameDecoder};
use vm_agent_fuzz::input::FuzzInput;

/// A small limit, so the too-large path is reached too.
const MAX_FRAME: usize = 4096;

fn decode<'a>(reads: impl Iterator<Item = &'a [u8]>) -> (Vec<Frame>, Option<String>) {
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    let mut frames = Vec::new();
    for read in reads {
        if let Err(e) = decoder.extend(read) {
            return (frames, Some(e.to_string()));
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    let end = decoder.finish().err().map(|e| e.to_string());
    (frames, end)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = FuzzInput::decode(data) else {
        return;
    };
    let whole = decode(std::iter::once(input.output));
    let split = decode(input.reads());
    assert_eq!(whole.1.is_some(), split.1.is_some(), "cuts {:?}", input.cuts);
    if whole.1.is_none() {
        assert_eq!(whole.0, split.0, "reads at {:?} changed the frames", input.cuts);
    } else {
        let n = whole.0.len().min(split.0.len());
        assert_eq!(whole.0[..n], split.0[..n], "reads at {:?} changed the frames", input.cuts);
        assert!(whole.0.len().abs_diff(split.0.len()) <= 1);
    }
});
