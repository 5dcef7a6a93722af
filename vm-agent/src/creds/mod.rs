//! `creds`: provider credential files in the guest: capture them when a CLI writes them, write
//! pushed ones atomically, wipe them.
//!
//! Submodules: [`confine`] (allowed roots and the symlink-free walk), [`watch`] (inotify capture),
//! [`write`] (atomic push), [`wipe`] (removal), [`rules`] (which files a provider has).
//! This module turns the wire calls into those operations: it resolves whose home the files live
//! in, which is the only allowed root, and who owns what is created.

pub mod confine;
pub mod rules;
pub mod watch;
pub mod wipe;
pub mod write;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use protocol::body::ChannelBody;
use protocol::creds::{
    CapturedCredential, CredentialFile as PutFile, CredsEvent, CredsKeyResponse, CredsPutRequest,
    CredsPutResponse, CredsPutSealedRequest, CredsScope, CredsWatch, CredsWipeResponse, SealTo,
    SealedCapture, WrittenFile,
};
use protocol::frame::DEFAULT_MAX_FRAME;
use protocol::sealed::{self, SealContext};
use protocol::{ErrorBody, ErrorCode};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::rpc::body::{error, open_stream, ResponseBody};
use crate::state::Agent;
use confine::{CredPathError, Owner};
use rules::CredentialFile;

/// Captures buffered per watch before the watcher waits for the caller.
const CAPTURE_DEPTH: usize = 16;

/// A call's scope, resolved against the guest: whose home, who owns new files, which files.
#[derive(Debug)]
struct Resolved {
    provider: String,
    home: PathBuf,
    owner: Owner,
    files: Vec<CredentialFile>,
}

impl Resolved {
    fn roots(&self) -> Vec<PathBuf> {
        vec![self.home.clone()]
    }
}

/// Whose home: the explicit `home`, else the named user's, else the `HOME` the CLIs the agent
/// spawns would see (their user's, configured or the agent's own), else the agent user's passwd
/// entry.
fn resolve(agent: &Agent, scope: &CredsScope) -> Result<Resolved, ErrorBody> {
    // The programs' user only where its HOME decides.
    let run_as = match (&scope.home, &scope.user) {
        (None, None) => agent.users().resolve(None).map_err(|e| e.to_error_body())?,
        _ => None,
    };
    let env: BTreeMap<String, String> = agent.process_env(&scope.env, run_as.as_ref());
    let home = match (&scope.home, &scope.user, env.get("HOME")) {
        (Some(home), _, _) => PathBuf::from(home),
        (None, Some(user), _) => {
            nix::unistd::User::from_name(user)
                .map_err(|e| {
                    ErrorBody::new(ErrorCode::Io, format!("looking up user {user:?}: {e}"))
                })?
                .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no user {user:?}")))?
                .dir
        }
        (None, None, Some(home)) if !home.is_empty() => PathBuf::from(home),
        (None, None, _) => nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
            .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, "the agent's user has no home"))?,
    };
    if !home.is_absolute() {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("home {home:?} is not absolute"),
        ));
    }
    let md = std::fs::metadata(&home).map_err(|e| {
        ErrorBody::new(
            ErrorCode::NotFound,
            format!("home {home:?} is not usable: {e}"),
        )
    })?;
    if !md.is_dir() {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("home {home:?} is not a directory"),
        ));
    }
    let files = rules::credential_rules(&agent.providers(), &scope.provider, &home, &env)
        .ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::BadRequest,
                format!("unknown provider {:?}", scope.provider),
            )
        })?;
    Ok(Resolved {
        provider: scope.provider.clone(),
        owner: Owner {
            uid: md.uid(),
            gid: md.gid(),
        },
        home,
        files,
    })
}

/// The wire error for a refused or failed path operation. Paths are not secrets; contents never
/// reach these messages.
/// A refused or failed path walk as the error answer it gets.
pub(crate) fn path_error(e: CredPathError) -> ErrorBody {
    let code = match &e {
        CredPathError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            ErrorCode::NotFound
        }
        CredPathError::Io { .. } => ErrorCode::Io,
        _ => ErrorCode::Forbidden,
    };
    ErrorBody::new(code, e.to_string())
}

fn blocking_failed(e: tokio::task::JoinError) -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, format!("credential task failed: {e}"))
}

/// Serves `creds_put`.
pub async fn put(
    agent: Arc<Agent>,
    request: CredsPutRequest,
) -> Result<CredsPutResponse, ErrorBody> {
    let resolved = resolve(&agent, &request.scope)?;
    tokio::task::spawn_blocking(move || put_blocking(&resolved, request))
        .await
        .map_err(blocking_failed)?
}

fn put_blocking(
    resolved: &Resolved,
    request: CredsPutRequest,
) -> Result<CredsPutResponse, ErrorBody> {
    if request.files.is_empty() {
        return Err(ErrorBody::new(ErrorCode::BadRequest, "no files to put"));
    }
    let roots = resolved.roots();
    // Check everything before writing anything, so a bad file does not leave a half-done push.
    let mut plan = Vec::with_capacity(request.files.len());
    for file in request.files {
        let path = under_home(&resolved.home, &file.path);
        confine::ConfinedPath::new(&roots, &path).map_err(path_error)?;
        if let Some(rule) = resolved.files.iter().find(|r| r.path == path) {
            let complete = serde_json::from_slice::<serde_json::Value>(&file.content)
                .map(|v| watch::has_required(&v, &rule.required_any_of))
                .unwrap_or(false);
            if !complete {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!(
                        "{} is not a complete {} credential file (JSON with the required fields)",
                        path.display(),
                        resolved.provider
                    ),
                ));
            }
        }
        plan.push((path, file.content));
    }
    // Every file staged (written whole beside its target) before any is put in place: a file
    // that cannot be written leaves all the old ones as they were.
    let staged = plan
        .iter()
        .map(|(path, content)| write::stage(&roots, path, content, resolved.owner))
        .collect::<Result<Vec<_>, _>>()
        .map_err(path_error)?;
    let mut written = Vec::with_capacity(staged.len());
    for file in staged {
        let out = file.commit().map_err(path_error)?;
        info!(provider = %resolved.provider, path = %out.path.display(), sha256 = %out.sha256, "credential file pushed");
        written.push(WrittenFile {
            path: out.path.display().to_string(),
            len: out.len as u64,
            sha256: out.sha256,
            created_dirs: out
                .created_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
        });
    }
    Ok(CredsPutResponse { written })
}

/// Serves `creds_key`.
pub async fn key(agent: Arc<Agent>) -> Result<CredsKeyResponse, ErrorBody> {
    let key = agent
        .seal_key()
        .ok_or_else(|| ErrorBody::new(ErrorCode::Internal, "this agent has no sealing key"))?;
    Ok(CredsKeyResponse {
        public_key: key.public().clone(),
    })
}

/// Serves `creds_put_sealed`: opens the envelope with this VM's key for exactly the request's
/// user, provider and version, refuses a version older than one already written, then writes as
/// `creds_put` does.
pub async fn put_sealed(
    agent: Arc<Agent>,
    request: CredsPutSealedRequest,
) -> Result<CredsPutResponse, ErrorBody> {
    let key = agent
        .seal_key()
        .ok_or_else(|| ErrorBody::new(ErrorCode::Internal, "this agent has no sealing key"))?;
    if request.version < 1 || request.owner.is_empty() {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "a sealed credential needs a user and a version of at least 1",
        ));
    }
    let resolved = resolve(&agent, &request.scope)?;
    let ctx = SealContext {
        user: &request.owner,
        provider: &resolved.provider,
        version: request.version,
    };
    let plaintext = key.open(&ctx, &request.sealed).map_err(|e| {
        let code = match e {
            sealed::SealError::TooLarge(_) => ErrorCode::TooLarge,
            sealed::SealError::Authentication => ErrorCode::Forbidden,
            _ => ErrorCode::BadRequest,
        };
        ErrorBody::new(code, e.to_string())
    })?;
    if let Err(later) =
        agent.claim_sealed_version(&resolved.home, &resolved.provider, request.version)
    {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "version {} of {} is older than version {later}, already written here",
                request.version, resolved.provider
            ),
        ));
    }
    let put = CredsPutRequest {
        scope: request.scope,
        files: vec![PutFile {
            path: request.path,
            content: plaintext.to_vec(),
        }],
    };
    tokio::task::spawn_blocking(move || put_blocking(&resolved, put))
        .await
        .map_err(blocking_failed)?
}

/// `~/x` and `x` are relative to the home; absolute paths stay as given (and must still be under
/// it).
fn under_home(home: &Path, path: &str) -> PathBuf {
    let rel = path.strip_prefix("~/").unwrap_or(path);
    if Path::new(rel).is_absolute() {
        PathBuf::from(rel)
    } else {
        home.join(rel)
    }
}

/// Serves `creds_wipe`.
pub async fn wipe(agent: Arc<Agent>, scope: CredsScope) -> Result<CredsWipeResponse, ErrorBody> {
    let resolved = resolve(&agent, &scope)?;
    tokio::task::spawn_blocking(move || {
        let roots = resolved.roots();
        let mut removed = Vec::new();
        for file in &resolved.files {
            for path in wipe::wipe_file(&roots, &file.path).map_err(path_error)? {
                removed.push(path.display().to_string());
            }
        }
        info!(provider = %resolved.provider, count = removed.len(), "credential files wiped");
        Ok(CredsWipeResponse { removed })
    })
    .await
    .map_err(blocking_failed)?
}

/// Serves one `creds_watch` call: a [`CredsEvent::Watching`] message, then a
/// [`CredsEvent::Captured`] message per capture, until the caller goes away.
pub async fn serve_watch(agent: Arc<Agent>, req: Request<Incoming>) -> Response<ResponseBody> {
    let (request, _input) = match open_stream::<CredsWatch>(req, DEFAULT_MAX_FRAME).await {
        Ok(opened) => opened,
        Err(e) => return error(&e),
    };
    let resolved = match resolve(&agent, &request.scope) {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let paths: Vec<String> = resolved
        .files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    let (capture_tx, mut captures) = mpsc::channel(CAPTURE_DEPTH);
    let watching = match watch::watch(
        resolved.roots(),
        resolved.files.clone(),
        request.include_existing,
        capture_tx,
    ) {
        Ok(w) => w,
        Err(watch::WatchError::Path(e)) => return error(&path_error(e)),
        Err(e) => return error(&ErrorBody::new(ErrorCode::Io, e.to_string())),
    };
    let (tx, body) = ChannelBody::channel(CAPTURE_DEPTH);
    let mut sealer = request.seal_to.map(|to| Sealer {
        next_version: to.first_version,
        to,
        rules: resolved.files.clone(),
    });
    let provider = resolved.provider;
    tokio::spawn(async move {
        let _watching = watching;
        if tx
            .send_message(&CredsEvent::Watching { paths })
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                capture = captures.recv() => {
                    let Some(c) = capture else { return };
                    let event = match &mut sealer {
                        None => CredsEvent::Captured(CapturedCredential {
                            provider: provider.clone(),
                            path: c.path.display().to_string(),
                            content: c.content.0,
                            sha256: c.sha256,
                            mtime_ms: c.mtime_ms,
                        }),
                        Some(sealer) => match sealer.seal(&provider, c) {
                            Ok(event) => event,
                            Err(e) => {
                                tracing::error!(%provider, error = %e, "sealing a capture failed; the watch ends");
                                return;
                            }
                        },
                    };
                    if tx.send_message(&event).await.is_err() {
                        return;
                    }
                }
                () = tx.closed() => {
                    debug!(%provider, "credential watch ended by the caller");
                    return;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .body(body.boxed())
        .unwrap_or_else(|_| error(&ErrorBody::new(ErrorCode::Internal, "response")))
}

/// Seals a watch's captures to the user's key, each with the next version.
struct Sealer {
    to: SealTo,
    next_version: i64,
    rules: Vec<CredentialFile>,
}

impl Sealer {
    fn seal(
        &mut self,
        provider: &str,
        capture: watch::Capture,
    ) -> Result<CredsEvent, sealed::SealError> {
        let version = self.next_version;
        let sealed = sealed::seal(
            &self.to.recipient,
            &SealContext {
                user: &self.to.user,
                provider,
                version,
            },
            &capture.content.0,
        )?;
        self.next_version += 1;
        let meta = self
            .rules
            .iter()
            .find(|r| r.path == capture.path)
            .map(|r| r.meta(&capture.content.0))
            .unwrap_or_default();
        Ok(CredsEvent::Sealed(SealedCapture {
            provider: provider.to_owned(),
            path: capture.path.display().to_string(),
            version,
            sealed,
            meta,
            mtime_ms: capture.mtime_ms,
        }))
    }
}
