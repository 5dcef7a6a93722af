//! Arbitrary paths against the allowed roots the credential writer (and `write_file`) confine to.
//! Invariants: never panics; a path it takes is below one of the roots and has no `..`.

#![no_main]

use std::path::{Component, Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use vm_agent_fuzz::confine::ConfinedPath;

fuzz_target!(|data: &[u8]| {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(std::ffi::OsStr::from_bytes(data));
    let roots = [PathBuf::from("/root"), PathBuf::from("/home/user"), PathBuf::from("/")];
    for root in [&roots[..2], &roots[2..]] {
        if let Ok(confined) = ConfinedPath::new(root, path) {
            let full = confined.full();
            assert!(root.iter().any(|r| full.starts_with(r)), "{full:?}");
            assert!(!full.components().any(|c| c == Component::ParentDir), "{full:?}");
        }
    }
});
