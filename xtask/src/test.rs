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
    step("tests");
    sh(cargo().args(["test", "--workspace"]))?;
    step("static agent");
    crate::agent::build()?;
    Ok(())
}
