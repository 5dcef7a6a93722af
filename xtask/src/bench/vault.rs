//! `bench vault`: sealing and opening a 4 KiB credential. Baseline: the bare AES-256-GCM encryption
//! of the same bytes (no nonce generation, no additional-data encoding, no copies), same run.

use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::Result;
use orchestrator::vault::{CredentialPlaintext, Keyring, RecordContext, Vault};

use super::{figure, stats::percentile};
use crate::shell::step;

const ROUNDS: usize = 20_000;
const SIZE: usize = 4096;
// Obviously fake key material.
const KEY: &str = "bench:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let vault = Vault::new(Keyring::from_spec(KEY, "bench")?);
    let ctx = RecordContext {
        user_id: "bench-user",
        provider: "codex",
        version: 1,
    };
    let body: Vec<u8> = (0..SIZE).map(|i| b"{\"fake\":\"token\"}"[i % 16]).collect();
    step(&format!(
        "{ROUNDS} seals and opens of a {SIZE}-byte credential"
    ));
    let mut seal = Vec::with_capacity(ROUNDS);
    let mut open = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let plaintext = CredentialPlaintext::new(body.clone());
        let t = Instant::now();
        let sealed = vault.seal(&ctx, &plaintext)?;
        seal.push(t.elapsed());
        let t = Instant::now();
        let opened = vault.open(&ctx, &sealed)?;
        open.push(t.elapsed());
        anyhow::ensure!(
            opened.expose() == body.as_slice(),
            "round trip changed the bytes"
        );
    }
    step("baseline: bare AES-256-GCM over the same bytes");
    let mut raw = raw_aesgcm(&body, ROUNDS)?;
    let seal_p50 = percentile(&mut seal, 50.0);
    let open_p50 = percentile(&mut open, 50.0);
    let raw_p50 = percentile(&mut raw, 50.0);
    figure(
        "vault_seal_p50_us",
        format!("{:.1}", seal_p50.as_secs_f64() * 1e6),
    );
    figure(
        "vault_open_p50_us",
        format!("{:.1}", open_p50.as_secs_f64() * 1e6),
    );
    figure(
        "vault_raw_aesgcm_p50_us",
        format!("{:.1}", raw_p50.as_secs_f64() * 1e6),
    );
    figure(
        "vault_seal_vs_raw_aesgcm_ratio",
        format!(
            "{:.2}",
            seal_p50.as_secs_f64() / raw_p50.as_secs_f64().max(1e-9)
        ),
    );
    Ok(())
}

/// `rounds` timings of the bare AES-256-GCM encryption of `body` (fixed key and nonce, no
/// additional data, no allocation inside the timed part): the floor any sealing scheme pays.
pub(super) fn raw_aesgcm(body: &[u8], rounds: usize) -> Result<Vec<Duration>> {
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from([0u8; 32]));
    let nonce = Nonce::from([0u8; 12]);
    let mut raw = Vec::with_capacity(rounds);
    let mut buf = Vec::with_capacity(body.len() + 16);
    for _ in 0..rounds {
        buf.clear();
        buf.extend_from_slice(body);
        let t = Instant::now();
        cipher
            .encrypt_in_place(&nonce, b"", &mut buf)
            .map_err(|_| anyhow::anyhow!("encrypt"))?;
        raw.push(t.elapsed());
    }
    Ok(raw)
}
