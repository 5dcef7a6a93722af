//! Arbitrary bytes as the line a program in the guest writes to the agent's browser shim socket.
//! Invariant: parsing never panics, refuses what is longer than the limit, and a request that
//! parses writes back as a line that parses to the same request.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::shim::{ShimRequest, ShimRequestError, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    match ShimRequest::parse(data) {
        Ok(request) => {
            assert!(data.len() <= MAX_LINE);
            let line = request.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            let again = ShimRequest::parse(line.as_bytes());
            if line.len() <= MAX_LINE {
                assert_eq!(again, Ok(request));
            } else {
                assert_eq!(again, Err(ShimRequestError::TooLong));
            }
        }
        Err(ShimRequestError::TooLong) => assert!(data.len() > MAX_LINE),
        Err(_) => {}
    }
});
