//! The three provider CLIs as the login flow runs them, faked: a directory of `claude`, `codex` and
//! `gemini` commands that replay a recorded real login (`fake-cli` with a fixture of
//! `tests/fixtures/cli/`) and write the provider's credential file once the login is completed.
//!
//! Called as for one prompt (`claude -p TEXT`, `codex exec TEXT`, `gemini -p TEXT`), a wrapper
//! runs `fake-cli --prompt` instead: the login's token to a stand-in API (`$FAKE_API_URL`).
//!
//! Each wrapper also leaves what the CLI saw for the tests: its environment in `$HOME/.fake-login-env`.
//! With `FAKE_LOGIN_HOLD=1` in its environment it waits for `$HOME/.fake-release` before starting
//! (holds a login in `ready`, before any URL). Like the real CLIs, the login completes when the user
//! pastes the code (a line typed into its terminal).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One faked CLI.
#[derive(Debug, Clone, Copy)]
pub struct FakeCli {
    /// The command name.
    pub command: &'static str,
    /// Its provider, whose rules say where it writes its credential.
    pub provider: &'static str,
    /// The recording it replays (at the login PTY's 100x30).
    pub recording: &'static str,
    /// The recording it replays instead when this variable of a login mode is set (the real
    /// CLI prints differently then).
    pub variant: Option<(&'static str, &'static str)>,
}

/// The three faked CLIs.
pub const FAKE_CLIS: [FakeCli; 3] = [
    FakeCli {
        command: "claude",
        provider: "claude_code",
        recording: "claude_code/auth-login-100x30",
        variant: Some((
            "CLAUDE_CODE_FULL_SIGN_IN_LINK",
            "claude_code/auth-login-full-100x30",
        )),
    },
    FakeCli {
        command: "codex",
        provider: "codex",
        recording: "codex/login-100x30",
        variant: None,
    },
    FakeCli {
        command: "gemini",
        provider: "gemini_cli",
        recording: "gemini_cli/display-100x30",
        variant: Some(("NO_BROWSER", "gemini_cli/nobrowser-100x30")),
    },
];

/// The recorded CLI logins (`tests/fixtures/cli`).
pub fn fixtures_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/cli")
}

/// A recording's `session.json` (what the real CLI printed, asked, was sent, and opened).
pub fn recording(case: &str) -> serde_json::Value {
    let path = fixtures_root().join(case).join("session.json");
    serde_json::from_slice(&std::fs::read(&path).expect("session.json")).expect("parse")
}

/// How many bytes the fake CLI replays before it waits for the pasted code (or the callback). A
/// tail of the replay is no marker: TUI redraws repeat their last bytes many times, and a code pasted
/// at an earlier prompt would answer that prompt instead.
pub fn replay_len(case: &str) -> usize {
    let out = std::fs::metadata(fixtures_root().join(case).join("output.bin"))
        .expect("output.bin")
        .len() as usize;
    recording(case)["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            i["pattern"]
                .as_str()
                .is_some_and(|p| p.starts_with("<stop"))
        })
        .filter_map(|i| i["offset"].as_u64())
        .map(|o| o as usize)
        .min()
        .unwrap_or(out)
}

/// Writes the three wrappers into `dir` (created if missing), running `fake_cli` with fixtures
/// under `fixtures`. Returns `dir`, to be put in front of the agents' `PATH`.
pub fn install(dir: &Path, fake_cli: &Path, fixtures: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for FakeCli {
        command: name,
        provider,
        recording: fixture,
        variant,
    } in FAKE_CLIS
    {
        let (var, variant) = variant.unwrap_or(("FAKE_CLI_NO_VARIANT", fixture));
        let script = format!(
            r#"#!/bin/sh
# One prompt (`claude -p TEXT`, `codex exec ... TEXT`, `gemini -p TEXT`): the last argument.
case "${{1:-}}" in
  -p|exec) for arg; do prompt=$arg; done; exec '{fake_cli}' --prompt {provider} "$prompt" ;;
esac
env > "$HOME/.fake-login-env"
if [ -n "${{FAKE_LOGIN_HOLD:-}}" ]; then
  while [ ! -e "$HOME/.fake-release" ]; do sleep 0.02; done
fi
fixture='{fixture}'
if [ -n "${{{var}:-}}" ]; then fixture='{variant}'; fi
exec '{fake_cli}' "{fixtures}/$fixture" --chunks seed:7 --provider {provider}
"#,
            fake_cli = fake_cli.display(),
            fixtures = fixtures.display(),
        );
        let path = dir.join(name);
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir.to_path_buf())
}
