//! Arbitrary JSON as a captured credential file, through each provider's rules: the required-field
//! check, expiry and scopes. Invariant: never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::providers::ProviderFile;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for def in ProviderFile::builtin().provider {
        for file in &def.credentials {
            let _ = file.is_complete(&json);
            let _ = file.expiry_ms(&json);
            let _ = file.granted_scopes(&json);
        }
    }
});
