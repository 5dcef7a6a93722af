//! `cargo xtask fuzz [--all] [--seconds N]`: runs the `cargo fuzz` targets (fuzz/) for a bounded
//! time each: by default the URL detector, with `--all` every target (what a hostile guest or
//! client can feed either end: frames, hellos and error answers, login URLs, sealed envelopes,
//! credential files, egress request heads, credential paths, the detector under resizes). The
//! detector-shaped targets are seeded with the recorded CLI logins (tests/fixtures/cli).
//!
//! Only the stable toolchain is assumed: cargo-fuzz's nightly flags (`-Zsanitizer`, coverage
//! instrumentation) are enabled with `RUSTC_BOOTSTRAP=1`, and AddressSanitizer's runtime ships with
//! the stable `rust-std`. cargo-fuzz itself is installed into `target/tools` once (a cache, like the
//! rest of `target/`). Everything the run writes (build, corpus, crash artifacts) stays under
//! `target/fuzz`; a crash fails the run (after every target had its turn) and its input is kept
//! in `target/fuzz/artifacts/<target>/`. Figures: `fuzz_targets=N`, `fuzz_<target>_execs=N`,
//! `fuzz_crashes=N`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::shell::{cargo, root, sh, step};

/// Every fuzz target (fuzz/fuzz_targets), and whether the recorded logins seed it.
const TARGETS: &[(&str, bool)] = &[
    ("detect", true),
    ("detect_resize", true),
    ("frame", true),
    ("hello", false),
    ("login_urls", false),
    ("sealed", false),
    ("required_fields", false),
    ("egress_head", false),
    ("confined_path", false),
    ("messages", false),
    ("turn", false),
    ("shim_request", false),
];
/// How long CI fuzzes each target by default.
pub const DEFAULT_SECONDS: u64 = 30;

/// Fuzzes the detector, or with `all` every target, for `seconds` each.
pub fn run(seconds: u64, all: bool) -> Result<()> {
    let cargo_fuzz = install()?;
    let work = root().join("target/fuzz");
    let targets: Vec<(&str, bool)> = if all {
        TARGETS.to_vec()
    } else {
        TARGETS[..1].to_vec()
    };
    step(&format!(
        "building {} fuzz target(s) with AddressSanitizer",
        targets.len()
    ));
    sh(Command::new(&cargo_fuzz)
        .args(["fuzz", "build", "--sanitizer", "address", "--target-dir"])
        .arg(&work)
        .current_dir(root())
        .env("RUSTC_BOOTSTRAP", "1"))?;
    let mut crashed = Vec::new();
    for (target, seeded) in &targets {
        match fuzz_one(&cargo_fuzz, &work, target, *seeded, seconds)? {
            Some(execs) => super::bench::figure(&format!("fuzz_{target}_execs"), execs),
            None => crashed.push(*target),
        }
    }
    super::bench::figure("fuzz_targets", targets.len());
    super::bench::figure("fuzz_crashes", crashed.len());
    anyhow::ensure!(
        crashed.is_empty(),
        "fuzz targets failed: {crashed:?} (the inputs are in target/fuzz/artifacts/<target>/)"
    );
    Ok(())
}

/// Fuzzes `target` for `seconds`: its executions, or `None` when it found a crash or a hang.
fn fuzz_one(
    cargo_fuzz: &Path,
    work: &Path,
    target: &str,
    seeded: bool,
    seconds: u64,
) -> Result<Option<u64>> {
    let seeds = work.join("seeds").join(target);
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    for dir in [&corpus, &artifacts, &seeds] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let n = if seeded {
        write_seeds(&root().join("tests/fixtures/cli"), &seeds)?
    } else {
        0
    };
    step(&format!("fuzzing {target} for {seconds} s ({n} seeds)"));
    let mut child = Command::new(cargo_fuzz)
        .args([
            "fuzz",
            "run",
            target,
            "--sanitizer",
            "address",
            "--target-dir",
        ])
        .arg(work)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // One input that takes this long is a hang, and a failure.
        .arg("-timeout=10")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .current_dir(root())
        .env("RUSTC_BOOTSTRAP", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cargo fuzz")?;
    // libFuzzer's log: kept to show on failure, its last line counted.
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let mut execs = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            // "Done 12345 runs in 30 second(s)"
            if let Some(rest) = line.strip_prefix("Done ") {
                execs = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            }
            if tail.len() == 40 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait()?;
    if status.success() {
        return Ok(Some(execs.unwrap_or(0)));
    }
    eprintln!("{target} failed ({status}); the end of its log:");
    for line in tail {
        eprintln!("  {line}");
    }
    Ok(None)
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
