//! Arbitrary bytes as a sealed credential (the JSON envelope a guest or a page sends) and as a
//! public key. Invariants: never panics; nothing made up opens.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use protocol::sealed::{KeyPair, PublicKey, SealContext, Sealed};

fn key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::derive(b"fuzz: a fixed, obviously fake key seed"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(sealed) = serde_json::from_slice::<Sealed>(data) {
        let ctx = SealContext {
            user: "u",
            provider: "codex",
            version: 1,
        };
        assert!(key().open(&ctx, &sealed).is_err(), "a made-up envelope opened");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PublicKey::from_base64(text);
    }
    let _ = PublicKey::from_bytes(data);
});
