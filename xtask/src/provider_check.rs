//! `cargo xtask provider-check`: the guard against provider drift. Installs the newest published
//! CLIs next to the pinned ones, runs every login mode of each through the agent's PTY as the
//! login flow would, and checks what the provider rules report against an independent reading of
//! the same run (`test_kit::provider_check`). Prints per CLI and mode the version, where the URL
//! came from and whether it matched, then the figures; fails when a mode of the newest CLIs does
//! not match.

use anyhow::{bail, Result};

use crate::bench::figure;
use crate::shell::step;
use test_kit::provider_check::{check_all, rules_for, ModeCheck, StandInIssuer};
use test_kit::provider_clis;

/// Runs the check.
pub fn run() -> Result<()> {
    crate::setup::run()?;
    let agent_bin = crate::agent::build_flavour(crate::agent::Flavour::Cli)?;
    step("the pinned CLIs");
    let pinned = provider_clis::pinned()?;
    step("asking the npm registry for the newest CLIs");
    let newest_versions = provider_clis::newest_versions()?;
    let newest = provider_clis::install(&provider_clis::package_json(&newest_versions))?;
    let issuer = StandInIssuer::start()?;
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, rules_for(&issuer))?;
    let rt = crate::shell::runtime()?;
    let (newest_results, pinned_results) = rt.block_on(async {
        let rules = rules.display().to_string();
        let agent = test_kit::AgentProcess::launch(
            &agent_bin,
            &[("AGENT_PROVIDER_RULES", rules.as_str())],
            false,
        )
        .await?;
        let client = agent.client().await;
        step(&format!("the newest CLIs: {newest_versions:?}"));
        let newest_results = check_all(&client, &newest, dir.path(), &issuer).await;
        let pinned_results = if pinned.versions == newest.versions {
            newest_results.clone()
        } else {
            step(&format!("the pinned CLIs: {:?}", pinned.versions));
            check_all(&client, &pinned, dir.path(), &issuer).await
        };
        anyhow::Ok((newest_results, pinned_results))
    })?;
    summary("newest", &newest_results);
    summary("pinned", &pinned_results);
    for r in &newest_results {
        figure(&format!("{}_{}_version", r.provider, r.mode), &r.version);
    }
    let matched = |rs: &[ModeCheck]| rs.iter().filter(|r| r.matched).count();
    figure("provider_check_modes", newest_results.len());
    figure("provider_check_match", matched(&newest_results));
    figure("provider_check_pinned_modes", pinned_results.len());
    figure("provider_check_pinned_match", matched(&pinned_results));
    if matched(&newest_results) < newest_results.len() {
        bail!("the newest CLIs drifted from the provider rules (see NO MATCH above)");
    }
    if pinned.versions != newest.versions {
        step(&format!(
            "every mode of the newest CLIs matches: the pins (tests/fixtures/provider-clis/package.json) can move to {newest_versions:?}"
        ));
    }
    Ok(())
}

fn summary(which: &str, results: &[ModeCheck]) {
    for r in results {
        step(&format!(
            "{which}: {} {} {}: url from {}, {}",
            r.provider,
            r.version,
            r.mode,
            r.source.as_deref().unwrap_or("nowhere"),
            if r.matched {
                "matches"
            } else {
                "DOES NOT MATCH"
            }
        ));
    }
}
