//! Prompts run in the user's CLI VM: `POST /v1/jobs` starts the provider's CLI there (`claude -p`,
//! `codex exec`, `gemini -p`), `GET /v1/jobs/{id}/stream` streams its output as it comes (SSE,
//! replayed from the start for a late or returning client), then its exit.
//!
//! A client that disconnects from the stream does not stop the job: it runs to its end (or its
//! time limit) and can be streamed again; `DELETE /v1/jobs/{id}` kills it (its whole process group
//! in the VM). Jobs live in memory: a service restart ends them (their processes die with the
//! agent connection).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use bytes::Bytes;
use futures_util::Stream;
use orchestrator::client::StreamItem;
use protocol::frame::FrameKind;
use protocol::messages::{ExecEvent, ExecRequest};
use protocol::secret::EnvVars;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::app::{ApiJson, AppState};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::users::now_ms;

/// Output kept per job for replay (each piece counted with its bookkeeping); beyond it the
/// output is cut there and the stream's end says so.
const MAX_OUTPUT: usize = 1 << 20;
/// What one stored piece costs besides its bytes.
const CHUNK_OVERHEAD: usize = 64;
/// Jobs one user may run at once.
const MAX_RUNNING_PER_USER: usize = 4;
/// Finished jobs kept per user (oldest forgotten first).
const MAX_KEPT_PER_USER: usize = 50;
/// How long a finished job stays to be read.
const KEEP_FINISHED_MS: i64 = 3600 * 1000;
/// Longest prompt accepted.
const MAX_PROMPT: usize = 64 * 1024;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Reaching the CLI VM.
    Starting,
    /// The CLI runs.
    Running,
    /// The CLI exited (see `exit_code`).
    Exited,
    /// The job could not run or its VM went away (see `error`).
    Failed,
    /// Killed by `DELETE`.
    Killed,
    /// Killed at its time limit.
    TimedOut,
}

impl JobState {
    fn is_final(self) -> bool {
        !matches!(self, JobState::Starting | JobState::Running)
    }
}

/// What `GET /v1/jobs/{id}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    id: String,
    provider: String,
    state: JobState,
    exit_code: Option<i32>,
    error: Option<String>,
    created_at: i64,
    ended_at: Option<i64>,
    /// Output bytes so far (stdout and stderr).
    output_bytes: usize,
}

#[derive(Debug)]
struct Chunk {
    stream: &'static str,
    bytes: Bytes,
}

#[derive(Debug)]
struct JobLog {
    chunks: Vec<Chunk>,
    bytes: usize,
    truncated: bool,
    /// The start of a UTF-8 character cut at the end of the last piece, per stream (stdout,
    /// stderr): it goes in front of the next piece, so no character is split between events.
    tails: [Vec<u8>; 2],
    view: JobView,
}

/// One job.
#[derive(Debug)]
pub struct Job {
    user: String,
    log: Mutex<JobLog>,
    /// Bumped on every change; streams wait on it.
    changed: watch::Sender<u64>,
    kill: watch::Sender<bool>,
}

/// How much of `bytes` ends on a character boundary: all of it, but for the first bytes of a
/// multi-byte character cut at the end (invalid bytes are not held back: they show as U+FFFD).
fn complete_utf8_len(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => bytes.len(),
    }
}

impl Job {
    fn new(id: &str, user: &str, provider: &str) -> Self {
        Self {
            user: user.to_owned(),
            log: Mutex::new(JobLog {
                chunks: Vec::new(),
                bytes: 0,
                truncated: false,
                tails: [Vec::new(), Vec::new()],
                view: JobView {
                    id: id.to_owned(),
                    provider: provider.to_owned(),
                    state: JobState::Starting,
                    exit_code: None,
                    error: None,
                    created_at: now_ms(),
                    ended_at: None,
                    output_bytes: 0,
                },
            }),
            changed: watch::channel(0).0,
            kill: watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn output(&self, stream: &'static str, bytes: &[u8]) {
        {
            let mut log = self.lock();
            if log.truncated {
                return;
            }
            let tail = &mut log.tails[usize::from(stream == "stderr")];
            let mut joined = std::mem::take(tail);
            joined.extend_from_slice(bytes);
            let cut = complete_utf8_len(&joined);
            *tail = joined.split_off(cut);
            if joined.is_empty() {
                return;
            }
            if log.bytes + joined.len() + CHUNK_OVERHEAD > MAX_OUTPUT {
                // Cut here, for good: a replay never has holes in its middle.
                log.truncated = true;
            } else {
                log.bytes += joined.len() + CHUNK_OVERHEAD;
                log.view.output_bytes += joined.len();
                // Owned bytes: a piece never keeps the receive buffer it came in alive.
                log.chunks.push(Chunk {
                    stream,
                    bytes: Bytes::from(joined),
                });
            }
        }
        self.bump();
    }

    fn set(&self, state: JobState, exit_code: Option<i32>, error: Option<String>) {
        {
            let mut log = self.lock();
            if log.view.state.is_final() {
                return;
            }
            log.view.state = state;
            log.view.exit_code = exit_code;
            log.view.error = error;
            if state.is_final() {
                log.view.ended_at = Some(now_ms());
            }
        }
        self.bump();
    }

    fn view(&self) -> JobView {
        self.lock().view.clone()
    }
}

/// The jobs of this service.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl std::fmt::Debug for Jobs {
    /// A count: jobs' output is the users' and stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.jobs.lock().map(|j| j.len()).unwrap_or(0);
        f.debug_struct("Jobs").field("jobs", &n).finish()
    }
}

impl Jobs {
    fn owned(&self, user: &str, id: &str) -> Result<Arc<Job>, ApiError> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|j| j.user == user)
            .cloned()
            .ok_or_else(|| ApiError::not_found("job"))
    }

    /// Adds a job unless the user runs too many; forgets the user's oldest finished ones.
    fn add(&self, id: &str, job: Arc<Job>) -> Result<(), ApiError> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        jobs.retain(|_, j| {
            j.view()
                .ended_at
                .is_none_or(|ended| now - ended < KEEP_FINISHED_MS)
        });
        let mut mine: Vec<(String, JobView)> = jobs
            .iter()
            .filter(|(_, j)| j.user == job.user)
            .map(|(id, j)| (id.clone(), j.view()))
            .collect();
        if mine.iter().filter(|(_, v)| !v.state.is_final()).count() >= MAX_RUNNING_PER_USER {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_jobs",
                format!("at most {MAX_RUNNING_PER_USER} jobs run at once; wait or kill one"),
            ));
        }
        mine.retain(|(_, v)| v.state.is_final());
        mine.sort_by_key(|(_, v)| v.created_at);
        let excess = mine.len().saturating_sub(MAX_KEPT_PER_USER - 1);
        for (old, _) in mine.into_iter().take(excess) {
            jobs.remove(&old);
        }
        jobs.insert(id.to_owned(), job);
        Ok(())
    }
}

/// Body of `POST /v1/jobs`: a prompt for the provider's CLI, or the CLI's own arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    provider: String,
    #[serde(default)]
    prompt: Option<String>,
    /// The whole command line; its program must be the provider's CLI.
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    timeout_s: Option<u64>,
}

/// `POST /v1/jobs` → 201 with the job.
pub async fn create(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<NewJob>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let provider = crate::accounts::known_provider(&state, &body.provider)?;
    let Some(program) = provider.prompt_argv.first() else {
        return Err(ApiError::bad_request("this provider runs no prompts"));
    };
    let argv = match (body.prompt, body.argv) {
        (Some(prompt), None) if !prompt.trim().is_empty() && prompt.len() <= MAX_PROMPT => {
            let mut argv = provider.prompt_argv.clone();
            argv.push(prompt);
            argv
        }
        (None, Some(argv)) if argv.first() == Some(program) && argv.len() <= 256 => argv,
        (None, Some(_)) => {
            return Err(ApiError::bad_request(format!(
                "argv: must start with {program:?}"
            )))
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "give either prompt (1 to {MAX_PROMPT} bytes) or argv"
            )))
        }
    };
    let timeout = match body.timeout_s {
        None => state.config.job_timeout,
        Some(s) if s >= 1 && Duration::from_secs(s) <= state.config.job_timeout => {
            Duration::from_secs(s)
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "timeout_s: 1 to {}",
                state.config.job_timeout.as_secs()
            )))
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let job = Arc::new(Job::new(&id, &user.id, &provider.name));
    state.jobs.add(&id, job.clone())?;
    tracing::info!(job = %id, user = %user.id, provider = %provider.name, "job started");
    tokio::spawn(run(state.clone(), job.clone(), argv, timeout));
    Ok((StatusCode::CREATED, Json(job.view())))
}

async fn run(state: Arc<AppState>, job: Arc<Job>, argv: Vec<String>, timeout: Duration) {
    let provider = job.view().provider;
    let mut kill = job.kill.subscribe();
    // Reaching the CLI VM may boot it: that runs to its end in a task of its own (a kill must
    // not leave a VM half-recorded), and the job's time limit starts once the CLI runs.
    let reach = {
        let (login, user) = (state.login.clone(), job.user.clone());
        tokio::spawn(async move { login.cli_agent(&user).await })
    };
    let cli = tokio::select! {
        r = reach => match r {
            Ok(Ok(cli)) => cli,
            Ok(Err(e)) => return fail(&job, crate::error::ApiError::from(e).message),
            Err(e) => return fail(&job, format!("internal: {e}")),
        },
        _ = kill.wait_for(|k| *k) => {
            return job.set(JobState::Killed, None, Some("killed by request".into()));
        }
    };
    let mut started = job.changed.subscribe();
    let work = async {
        let mut call = cli
            .client
            .exec(&ExecRequest {
                argv,
                env: EnvVars(state.config.job_env.clone()),
                cwd: Some(cli.guest_home.clone()),
                stdin: false,
                user: None,
            })
            .await?;
        // No input: the agent finishes the call only once the request side is closed too.
        call.close_input();
        loop {
            match call.next().await? {
                Some(StreamItem::Event(ExecEvent::Started { .. })) => {
                    job.set(JobState::Running, None, None)
                }
                Some(StreamItem::Event(ExecEvent::Exited(status))) => {
                    return Ok::<_, orchestrator::ClientError>(Some(status.shell_code()))
                }
                Some(StreamItem::Data(FrameKind::Stdout, b)) => job.output("stdout", &b),
                Some(StreamItem::Data(FrameKind::Stderr, b)) => job.output("stderr", &b),
                Some(StreamItem::Data(..)) => {}
                None => return Ok(None),
            }
        }
    };
    let limit = async {
        while job.view().state == JobState::Starting {
            if started.changed().await.is_err() {
                break;
            }
        }
        tokio::time::sleep(timeout).await;
    };
    // Dropping `work` drops the exec call: the agent kills the process group.
    let (state_now, code, reason) = tokio::select! {
        r = work => match r {
            Ok(Some(code)) => (JobState::Exited, Some(code), None),
            Ok(None) => (JobState::Failed, None, Some("the CLI VM ended the job without an exit status".into())),
            Err(e) => (JobState::Failed, None, Some(format!("the job failed in the CLI VM: {e}"))),
        },
        _ = kill.wait_for(|k| *k) => (JobState::Killed, None, Some("killed by request".into())),
        () = limit => (JobState::TimedOut, None, Some(format!("killed after {} s", timeout.as_secs()))),
    };
    // Recorded before the end is announced: whoever sees the job end sees the account used.
    if let Err(e) = state.users.touch(&job.user, &provider).await {
        tracing::warn!(error = %e, "recording the account's use failed");
    }
    job.set(state_now, code, reason);
    tracing::info!(state = ?job.view().state, "job ended");
}

fn fail(job: &Job, reason: String) {
    job.set(JobState::Failed, None, Some(reason));
}

/// `GET /v1/jobs/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.jobs.owned(&user.id, &id)?.view()))
}

/// `DELETE /v1/jobs/{id}`: kills a running job (no-op for a finished one).
pub async fn kill(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.jobs.owned(&user.id, &id)?;
    job.kill.send_replace(true);
    let mut changed = job.changed.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while !job.view().state.is_final() {
            if changed.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    Ok(Json(job.view()))
}

/// `GET /v1/jobs/{id}/stream`: `output` events (`{stream, text}`), in order from the first byte,
/// then one `end` event with the job's final view (`state`, `exit_code`, `error`).
pub async fn stream(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job = state.jobs.owned(&user.id, &id)?;
    let changed = job.changed.subscribe();
    let stream = futures_util::stream::unfold(
        (job, changed, 0usize, false, false),
        |(job, mut changed, next, told_cut, done)| async move {
            if done {
                return None;
            }
            loop {
                let (item, final_view) = {
                    let log = job.lock();
                    let item = log.chunks.get(next).map(|c| {
                        // Whole characters (see `JobLog::tails`); invalid bytes show as U+FFFD.
                        serde_json::json!({
                            "stream": c.stream,
                            "text": String::from_utf8_lossy(&c.bytes),
                        })
                    });
                    let final_view = log.view.state.is_final().then(|| log.view.clone());
                    (item.map(|i| (i, log.truncated)), final_view)
                };
                if let Some((item, _)) = item {
                    let ev = Event::default().event("output").data(item.to_string());
                    return Some((Ok(ev), (job, changed, next + 1, told_cut, false)));
                }
                if let Some(view) = final_view {
                    let mut end = serde_json::to_value(&view).unwrap_or_default();
                    if job.lock().truncated && !told_cut {
                        end["output_truncated_after_bytes"] = MAX_OUTPUT.into();
                    }
                    let ev = Event::default().event("end").data(end.to_string());
                    return Some((Ok(ev), (job, changed, next, true, true)));
                }
                if changed.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_between_pieces_is_held_back_whole() {
        let s = "caf\u{e9} \u{1f600}".as_bytes();
        // Cut inside the four-byte emoji: the complete part is everything before it.
        let cut = s.len() - 2;
        assert_eq!(complete_utf8_len(&s[..cut]), s.len() - 4);
        assert_eq!(complete_utf8_len(s), s.len());
        // Invalid bytes are not held back (they would wait forever).
        assert_eq!(complete_utf8_len(b"a\xffb"), 3);
    }

    #[test]
    fn output_past_the_cap_is_cut_for_good_and_whole_characters_survive_splits() {
        let job = Job::new("j", "u", "p");
        let e = "\u{e9}".as_bytes();
        job.output("stdout", &e[..1]);
        job.output("stdout", &e[1..]);
        assert_eq!(&job.lock().chunks[0].bytes[..], e, "one whole character");
        job.output("stdout", &vec![b'x'; MAX_OUTPUT]);
        job.output("stdout", b"small, but after the cut");
        let log = job.lock();
        assert!(log.truncated);
        assert_eq!(log.chunks.len(), 1, "nothing after the cut is kept");
    }
}
