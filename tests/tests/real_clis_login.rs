//! The pinned real CLIs (`tests/fixtures/provider-clis/package.json`, from the npm registry) still
//! log in through the agent as the provider rules expect: every login mode of each, run through
//! the agent's PTY without network, reports the URL (or device code) the mode wants, and an
//! independent reading of the same run agrees (the argv handed to the browser, the OSC 8 targets,
//! the screen as pyte renders it). A CLI upgrade that breaks detection fails here. The device-code
//! mode runs against a stand-in issuer on loopback: the provider cannot be reached from here.

use test_kit::provider_check::{check_all, rules_for, StandInIssuer};
use test_kit::AgentProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_login_mode_of_the_pinned_clis_reports_what_it_wants() {
    let set = test_kit::provider_clis::pinned().expect("the pinned CLIs (npm)");
    let issuer = StandInIssuer::start().expect("stand-in issuer");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, rules_for(&issuer)).expect("rules");
    let agent =
        AgentProcess::start_with(&[("AGENT_PROVIDER_RULES", rules.to_str().expect("utf-8"))]).await;
    let client = agent.client().await;
    let results = check_all(&client, &set, dir.path(), &issuer).await;
    let modes: usize = protocol::providers::ProviderFile::builtin()
        .provider
        .iter()
        .map(|p| p.modes.len())
        .sum();
    assert_eq!(results.len(), modes, "every mode of every provider ran");
    for r in &results {
        assert!(
            r.matched,
            "{} {} {}: reported {:?}, independently {:?}",
            r.provider, r.version, r.mode, r.reported, r.independent
        );
    }
}
