//! `bench seal`: the zero-knowledge path. HPKE sealing and opening of a 4 KiB credential (what the
//! browser VM's agent and the user's page do), against the bare AES-256-GCM encryption of the same
//! bytes in the same run; then a refresh's round trip with local agents in the user-sealed mode:
//! the CLI VM's credential file is replaced → the agent there sees it, seals it to the user's key,
//! the host stores the envelope as the next version.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use orchestrator::login::{LoginConfig, Sealing};
use protocol::sealed::{seal, KeyPair, SealContext};

use super::{figure, stats::percentile};
use crate::shell::step;

const ROUNDS: usize = 2_000;
const SIZE: usize = 4096;
const REFRESHES: usize = 30;
const USER: &str = "bench-user";
const PROVIDER: &str = "codex";

/// Runs the benchmark.
pub fn run() -> Result<()> {
    hpke_figures()?;
    let agent_bin = crate::agent::build_flavour(crate::agent::Flavour::Cli)?;
    let fake_cli = super::release_fake_cli()?;
    let rt = crate::shell::runtime()?;
    rt.block_on(refresh_figures(agent_bin, fake_cli))
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn hpke_figures() -> Result<()> {
    let key = KeyPair::generate()?;
    let ctx = SealContext {
        user: USER,
        provider: PROVIDER,
        version: 1,
    };
    let body: Vec<u8> = (0..SIZE).map(|i| b"{\"fake\":\"token\"}"[i % 16]).collect();
    step(&format!(
        "{ROUNDS} HPKE seals and opens of a {SIZE}-byte credential"
    ));
    let mut sealing = Vec::with_capacity(ROUNDS);
    let mut opening = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let sealed = seal(key.public(), &ctx, &body)?;
        sealing.push(t.elapsed());
        let t = Instant::now();
        let opened = key.open(&ctx, &sealed)?;
        opening.push(t.elapsed());
        ensure!(opened.as_slice() == body, "round trip changed the bytes");
    }
    step("baseline: bare AES-256-GCM over the same bytes");
    let mut raw = super::vault::raw_aesgcm(&body, ROUNDS)?;
    let seal_p50 = percentile(&mut sealing, 50.0);
    let raw_p50 = percentile(&mut raw, 50.0);
    figure("hpke_seal_p50_us", us(seal_p50));
    figure("hpke_open_p50_us", us(percentile(&mut opening, 50.0)));
    figure("aesgcm_p50_us", us(raw_p50));
    figure(
        "hpke_seal_vs_aesgcm_ratio",
        format!(
            "{:.1}",
            seal_p50.as_secs_f64() / raw_p50.as_secs_f64().max(1e-9)
        ),
    );
    Ok(())
}

async fn refresh_figures(
    agent_bin: std::path::PathBuf,
    fake_cli: std::path::PathBuf,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = LoginConfig {
        sealing: Sealing::User,
        ..LoginConfig::default()
    };
    let (service, backend, store) =
        super::login::local_service(dir.path(), agent_bin, &fake_cli, config).await?;
    let user_key = KeyPair::generate()?;
    service.set_user_key(USER, user_key.public()).await?;

    step("a user-sealed login, delivered into the CLI VM as the user's page does");
    super::login::one_flow(&service, USER).await?;
    let pending = service
        .pending_delivery(USER, PROVIDER)
        .await?
        .context("nothing to deliver after the login")?;
    let delivery = test_kit::login::reseal_as_the_page(&user_key, &pending)?;
    service.deliver(USER, PROVIDER, &delivery).await?;
    let recipe = service
        .provider(PROVIDER)
        .context("codex is a known provider")?;
    let file = backend
        .home_of(&pending.vm_id)
        .context("the CLI VM's home")?
        .join(&recipe.credential_file);
    let mut credential: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;

    step(&format!(
        "{REFRESHES} refreshes in the CLI VM (file replaced → next sealed version stored)"
    ));
    let mut round_trips = Vec::with_capacity(REFRESHES);
    let mut version = pending.version;
    for i in 0..REFRESHES {
        credential["tokens"]["access_token"] =
            serde_json::Value::String(format!("fake-refreshed-access-token-{i:04}"));
        // As the CLIs write: a temporary file renamed over the old one.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&credential)?)?;
        let t = Instant::now();
        std::fs::rename(&tmp, &file)?;
        let deadline = t + Duration::from_secs(10);
        loop {
            let stored = store.credential(USER, PROVIDER).await?;
            if stored.as_ref().map(|s| s.version) == Some(version + 1) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "refresh {i}: version {} never stored",
                version + 1
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        round_trips.push(t.elapsed());
        version += 1;
        eprint!("\r  {}/{REFRESHES}", i + 1);
    }
    eprintln!();
    let stored = store
        .credential(USER, PROVIDER)
        .await?
        .context("the credential is stored")?;
    let last = user_key.open(
        &SealContext {
            user: USER,
            provider: PROVIDER,
            version,
        },
        &stored
            .envelope
            .user_sealed()
            .context("the stored version is user-sealed")?,
    )?;
    ensure!(
        last.as_slice() == serde_json::to_vec(&credential)?,
        "the last stored version is not the last refresh"
    );
    figure(
        "refresh_to_stored_ms_p50",
        format!(
            "{:.1}",
            percentile(&mut round_trips, 50.0).as_secs_f64() * 1e3
        ),
    );
    Ok(())
}
