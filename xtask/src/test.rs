//! `cargo xtask test`: the README's test command and the whole of CI.

use anyhow::Result;

use crate::shell::{cargo, sh, step};

/// Runs setup, formatting and lint checks, then every test of the workspace.
pub fn run() -> Result<()> {
    crate::setup::run()?;
    step("checking formatting");
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("building every binary (integration tests start the real agent)");
    sh(cargo().args(["build", "--workspace", "--bins"]))?;
    step("lints (clippy, warnings are errors)");
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("lints of the CLI VM's agent (built without its desktop)");
    sh(cargo().args([
        "clippy",
        "--package",
        "vm-agent",
        "--no-default-features",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("starting a throwaway PostgreSQL for the store tests (loopback only)");
    let postgres = test_kit::postgres::Cluster::start(&std::env::temp_dir())?;
    step("tests");
    sh(cargo()
        .args(["test", "--workspace"])
        .env(test_kit::postgres::URL_ENV, postgres.url()))?;
    drop(postgres);
    crate::fuzz::run(crate::fuzz::DEFAULT_SECONDS, true)?;
    step("the demo's walk, headless (cargo xtask demo --check)");
    crate::demo::run(crate::demo::DemoArgs {
        check: true,
        port: 0,
        pool: 1,
        sealing: crate::demo::DemoSealing::User,
    })?;
    step("static agent");
    crate::agent::build()?;
    Ok(())
}
