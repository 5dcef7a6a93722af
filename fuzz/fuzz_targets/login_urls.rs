//! Arbitrary text as a URL a guest reports, checked against every provider's login URL rules (the
//! host's check) and the device-code rules. Invariants: never panics; nothing longer than
//! `MAX_LOGIN_URL` is ever accepted; an accepted URL has every required parameter.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use protocol::providers::{has_params, LoginUrls, ProviderDef, ProviderFile, MAX_LOGIN_URL};

fn rules() -> &'static [(ProviderDef, LoginUrls)] {
    static RULES: OnceLock<Vec<(ProviderDef, LoginUrls)>> = OnceLock::new();
    RULES.get_or_init(|| {
        ProviderFile::builtin()
            .provider
            .into_iter()
            .map(|def| {
                let urls = LoginUrls::compile(&def).expect("built-in rules compile");
                (def, urls)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (url, code) = text.split_once(' ').unwrap_or((text, ""));
    for (def, urls) in rules() {
        if urls.accepts(url) {
            assert!(url.len() <= MAX_LOGIN_URL);
            assert!(def.opaque_url_patterns.len() > 0 || has_params(url, &def.required_params, &[]));
        }
        for mode in &def.modes {
            if let Some(rule) = urls.device(mode) {
                if rule.accepts(url, code) {
                    assert!(url.len() <= MAX_LOGIN_URL);
                }
            }
        }
    }
});
