//! Arbitrary bytes as the JSON of every call's messages, both ways: what the agent's router
//! decodes from the host (each method's request), and what the host decodes from a guest it does
//! not trust (each method's answer or stream event). The first byte picks the type.
//! Invariant: decoding never panics, and what decodes encodes back to what decodes the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::browser::Browser;
use protocol::creds::{CredsKey, CredsPut, CredsPutSealed, CredsWatch, CredsWipe};
use protocol::desktop::Desktop;
use protocol::messages::{Configure, Exec, GetHello, Health, ReadFile, Stats, WriteFile};
use protocol::power::Poweroff;
use protocol::pty::Pty;
use protocol::{Streaming, Unary};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `data` as `T`; what decodes encodes and decodes back to the same JSON.
fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let json = serde_json::to_value(&value).expect("what decodes encodes");
    let again: T = serde_json::from_value(json.clone()).expect("what encodes decodes");
    assert_eq!(json, serde_json::to_value(&again).expect("encodes again"));
}

fn unary<M: Unary>(data: &[u8], answer: bool) {
    if answer {
        round_trip::<M::Response>(data)
    } else {
        round_trip::<M::Request>(data)
    }
}

fn streaming<M: Streaming>(data: &[u8], answer: bool) {
    if answer {
        round_trip::<M::Event>(data)
    } else {
        round_trip::<M::Request>(data)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let answer = pick & 0x80 != 0;
    match pick & 0x7f {
        0 => unary::<GetHello>(body, answer),
        1 => unary::<Health>(body, answer),
        2 => unary::<Stats>(body, answer),
        3 => unary::<Configure>(body, answer),
        4 => unary::<ReadFile>(body, answer),
        5 => unary::<WriteFile>(body, answer),
        6 => unary::<CredsPut>(body, answer),
        7 => unary::<CredsPutSealed>(body, answer),
        8 => unary::<CredsKey>(body, answer),
        9 => unary::<CredsWipe>(body, answer),
        10 => unary::<Poweroff>(body, answer),
        11 => unary::<Browser>(body, answer),
        12 => streaming::<Exec>(body, answer),
        13 => streaming::<Pty>(body, answer),
        14 => streaming::<CredsWatch>(body, answer),
        15 => streaming::<Desktop>(body, answer),
        _ => {}
    }
});
