//! `cargo xtask fuzz [--seconds N]`: runs the URL detector's `cargo fuzz` target (fuzz/) for a
//! bounded time, seeded with the recorded CLI logins (tests/fixtures/cli).
//!
//! Only the stable toolchain is assumed: cargo-fuzz's nightly flags (`-Zsanitizer`, coverage
//! instrumentation) are enabled with `RUSTC_BOOTSTRAP=1`, and AddressSanitizer's runtime ships with
//! the stable `rust-std`. cargo-fuzz itself is installed into `target/tools` once (a cache, like the
//! rest of `target/`). Everything the run writes (build, corpus, crash artifacts) stays under
//! `target/fuzz`; a crash fails the run and its input is kept in `target/fuzz/artifacts/detect/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::shell::{cargo, root, sh, step};

/// The fuzz target (fuzz/fuzz_targets/detect.rs).
const TARGET: &str = "detect";
/// How long CI fuzzes by default.
pub const DEFAULT_SECONDS: u64 = 60;

/// Builds the target if needed and fuzzes it for `seconds`.
pub fn run(seconds: u64) -> Result<()> {
    let cargo_fuzz = install()?;
    let work = root().join("target/fuzz");
    let seeds = work.join("seeds").join(TARGET);
    let corpus = work.join("corpus").join(TARGET);
    let artifacts = work.join("artifacts").join(TARGET);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let n = write_seeds(&root().join("tests/fixtures/cli"), &seeds)?;
    step(&format!(
        "fuzzing the URL detector for {seconds} s ({n} seeds from the recorded logins)"
    ));
    let mut cmd = Command::new(&cargo_fuzz);
    cmd.args([
        "fuzz",
        "run",
        TARGET,
        "--sanitizer",
        "address",
        "--target-dir",
    ])
    .arg(&work)
    .arg(&corpus)
    .arg(&seeds)
    .arg("--")
    .arg(format!("-max_total_time={seconds}"))
    // One input that takes this long is a hang, and a failure.
    .arg("-timeout=10")
    .arg(format!("-artifact_prefix={}/", artifacts.display()))
    .env("RUSTC_BOOTSTRAP", "1");
    sh(&mut cmd).context(
        "the detector fuzz target failed (the crashing input is in target/fuzz/artifacts/detect/)",
    )
}

/// cargo-fuzz from `target/tools`, installed there (with cargo's progress) when absent.
fn install() -> Result<PathBuf> {
    let tools = root().join("target/tools");
    let bin = tools.join("bin/cargo-fuzz");
    if bin.exists() {
        return Ok(bin);
    }
    step("installing cargo-fuzz into target/tools (once)");
    sh(cargo()
        .args(["install", "--locked", "cargo-fuzz", "--root"])
        .arg(&tools))?;
    Ok(bin)
}

/// Bytes of output kept either side of a URL in a short seed.
const WINDOW: usize = 1024;

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes one seed per recording and one per URL in it (`output.bin` with the header fuzz/src/input.rs reads: columns-1,
/// rows-1, no read boundaries) into `dir`; returns how many.
fn write_seeds(fixtures: &Path, dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut n = 0;
    for provider in std::fs::read_dir(fixtures)? {
        let provider = provider?.path();
        if !provider.is_dir() {
            continue;
        }
        for case in std::fs::read_dir(&provider)? {
            let case = case?.path();
            let name = case.file_name().unwrap_or_default().to_string_lossy();
            // `<case>-<cols>x<rows>` (tests/fixtures/cli/README.md).
            let (cols, rows) = name
                .rsplit_once('-')
                .and_then(|(_, size)| size.split_once('x'))
                .and_then(|(c, r)| Some((c.parse::<u16>().ok()?, r.parse::<u16>().ok()?)))
                .with_context(|| format!("{}: no <cols>x<rows> in the name", case.display()))?;
            let mut seed = vec![
                (cols.clamp(1, 256) - 1) as u8,
                (rows.clamp(1, 100) - 1) as u8,
                0,
            ];
            let output = std::fs::read(case.join("output.bin"))?;
            let provider = provider.file_name().unwrap_or_default().to_string_lossy();
            // Whole recordings run slowly (tens of kB each); a window around each URL gives the
            // fuzzer short inputs that still hold the interesting part.
            let mut at = 0;
            while let Some(off) = find(&output[at..], b"https://") {
                let url = at + off;
                let window = &output[url.saturating_sub(WINDOW)..(url + WINDOW).min(output.len())];
                let mut short = seed.clone();
                short.extend_from_slice(window);
                std::fs::write(dir.join(format!("{provider}-{name}-at-{url}")), short)?;
                n += 1;
                at = url + WINDOW;
                if at >= output.len() {
                    break;
                }
            }
            seed.extend(output);
            std::fs::write(dir.join(format!("{provider}-{name}")), seed)?;
            n += 1;
        }
    }
    anyhow::ensure!(n > 0, "no recordings under {}", fixtures.display());
    Ok(n)
}
