//! `agentctl creds ...`: watch, put and wipe provider credential files in the guest.

use std::path::PathBuf;

use base64::Engine;
use clap::Subcommand;
use orchestrator::AgentClient;
use orchestrator::ClientError;
use protocol::creds::{CredentialFile, CredsPutRequest, CredsScope, CredsWatchRequest};
use protocol::secret::EnvVars;
use serde_json::json;

/// `agentctl creds ...`: the command-line face of the calls above.
#[derive(Debug, Subcommand)]
pub enum CredsCommand {
    /// Print one JSON line per captured credential file until interrupted.
    Watch {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Also report files already complete when the watch starts.
        #[arg(long)]
        existing: bool,
        /// Stop after this many captures.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Push local files into the VM: `--file GUEST_PATH=LOCAL_FILE` (repeatable); guest paths are
    /// absolute or relative to the user's home.
    Put {
        #[command(flatten)]
        scope: ScopeArgs,
        /// GUEST_PATH=LOCAL_FILE.
        #[arg(long = "file", required = true, value_parser = parse_file_arg)]
        files: Vec<(String, PathBuf)>,
    },
    /// Remove the provider's credential files in the VM.
    Wipe {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

/// Provider and user of a `creds` verb.
#[derive(Debug, Clone, clap::Args)]
pub struct ScopeArgs {
    /// Provider (`claude_code`, `codex`, `gemini_cli`).
    #[arg(long)]
    pub provider: String,
    /// Guest user whose home holds the files (default: the agent's user).
    #[arg(long)]
    pub user: Option<String>,
    /// Guest home directory, instead of the user's.
    #[arg(long)]
    pub home: Option<String>,
    /// NAME=VALUE for resolving overrides like CODEX_HOME (repeatable).
    #[arg(long = "env", value_parser = parse_env_arg)]
    pub env: Vec<(String, String)>,
}

impl ScopeArgs {
    fn scope(&self) -> CredsScope {
        CredsScope {
            provider: self.provider.clone(),
            user: self.user.clone(),
            home: self.home.clone(),
            env: EnvVars::from_pairs(self.env.clone()),
        }
    }
}

fn parse_file_arg(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((guest, local)) if !guest.is_empty() && !local.is_empty() => {
            Ok((guest.to_string(), PathBuf::from(local)))
        }
        _ => Err(format!("expected GUEST_PATH=LOCAL_FILE, got {s:?}")),
    }
}

fn parse_env_arg(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// Why a `creds` verb failed.
#[derive(Debug, thiserror::Error)]
pub enum CredsCommandError {
    /// The agent call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A local file could not be read.
    #[error("reading {path:?}: {source}")]
    Local {
        /// The local file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl CredsCommand {
    /// Runs the verb, handing each output line (a JSON object) to `emit`.
    pub async fn run(
        self,
        client: &AgentClient,
        emit: &mut dyn FnMut(serde_json::Value),
    ) -> Result<(), CredsCommandError> {
        match self {
            CredsCommand::Watch {
                scope,
                existing,
                count,
            } => {
                let mut call = client
                    .creds_watch(&CredsWatchRequest {
                        scope: scope.scope(),
                        include_existing: existing,
                        seal_to: None,
                    })
                    .await?;
                emit(json!({"event": "watching", "paths": call.paths()}));
                let mut seen = 0usize;
                while count.is_none_or(|c| seen < c) {
                    let Some(c) = call.next_capture().await? else {
                        break;
                    };
                    seen += 1;
                    emit(json!({
                        "event": "captured",
                        "provider": c.provider,
                        "path": c.path,
                        "sha256": c.sha256,
                        "mtime_ms": c.mtime_ms,
                        "content_base64": base64::engine::general_purpose::STANDARD.encode(&c.content),
                    }));
                }
            }
            CredsCommand::Put { scope, files } => {
                let mut out = Vec::with_capacity(files.len());
                for (guest, local) in files {
                    let content =
                        std::fs::read(&local).map_err(|source| CredsCommandError::Local {
                            path: local.clone(),
                            source,
                        })?;
                    out.push(CredentialFile {
                        path: guest,
                        content,
                    });
                }
                let res = client
                    .creds_put(&CredsPutRequest {
                        scope: scope.scope(),
                        files: out,
                    })
                    .await?;
                for w in res.written {
                    emit(
                        json!({"event": "written", "path": w.path, "len": w.len, "sha256": w.sha256, "created_dirs": w.created_dirs}),
                    );
                }
            }
            CredsCommand::Wipe { scope } => {
                let res = client.creds_wipe(&scope.scope()).await?;
                emit(json!({"event": "wiped", "removed": res.removed}));
            }
        }
        Ok(())
    }
}
