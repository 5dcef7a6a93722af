//! VMs from saved state: golden snapshots that browser VMs are cloned from, and CLI VMs paused to
//! a file and resumed.
//!
//! The state is QEMU's migration stream written to a file (`migrate fd:`, the file opened by the
//! host and handed over the monitor), not `savevm` into a
//! qcow2: one state file serves any number of clones at once, each on its own overlay over the
//! snapshot's frozen disk, read straight from the host's page cache; `savevm` would tie the state
//! to one disk image, which concurrent clones cannot share. Restoring a VM means starting QEMU with
//! the same command line and `-incoming defer`, loading the file through the monitor, `cont`, and
//! waiting for the agent's hello: the restore resets its vsock connections, and it says hello
//! again on its own. Then the `restored` call reseeds the guest and sets its clock, and a clone
//! takes a fresh identity ([`protocol::restore`]).
//!
//! A snapshot is valid only for the QEMU, command line and image files it was made with: its
//! `meta.json` records them, and [`QemuLauncher::open_snapshot`] refuses one that differs, naming
//! the difference. The state file's SHA-256 is checked once when a snapshot is opened, so a
//! corrupted file is refused before any VM runs from it (QEMU itself does not check guest memory).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use protocol::restore::{EntropyBytes, Restored, RestoredRequest, ENTROPY_BYTES};
use protocol::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{debug, info};

use super::{io, QemuConfig, QemuLauncher, QemuVm, Qmp, Start, UserNetwork, VmError};
use crate::client::AgentClient;
use crate::transport::HybridVsockConnector;

/// The state file in a snapshot or a paused VM's directory.
const STATE_FILE: &str = "state";
/// A snapshot's frozen disk (an overlay over the golden image, as it was at the save).
const DISK_FILE: &str = "disk.qcow2";
/// What a snapshot was made with.
const META_FILE: &str = "meta.json";
/// Bumped when the layout of a snapshot or the way it is made changes (2: the guest's free
/// memory is zeroed before the save).
const FORMAT: u32 = 2;
/// The name the state file's descriptor has in QEMU.
const STATE_FD: &str = "state";
/// How long the first connection to a restored agent may be refused (see `tell_restored`).
const RESTORED_CONNECT: Duration = Duration::from_secs(15);
/// How long the guest gets to finish closing the connections the host has just closed, before
/// it is stopped: a close cut by the save would leave a socket that refuses a later connection
/// on its port (the vsock backend numbers host ports from 0 again after a restore).
const CLOSE_SETTLE: Duration = Duration::from_secs(1);
/// How long saving the state may take (a 1 GiB guest writes ~650 MB).
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a snapshot cannot be used or made.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// There is none at that place.
    #[error("no snapshot in {0}")]
    Missing(PathBuf),
    /// It was made with something else than this launcher would use now.
    #[error(
        "snapshot {dir} was made with another {what} ({saved}; now {now}): it must be rebuilt"
    )]
    Mismatch {
        /// The snapshot.
        dir: PathBuf,
        /// What differs (`QEMU`, `command line`, `kernel`, ...).
        what: &'static str,
        /// What the snapshot has.
        saved: String,
        /// What the launcher has.
        now: String,
    },
    /// Its state file is not the one that was saved.
    #[error("snapshot {0}: the state file is corrupt (its digest differs from the one saved)")]
    Corrupt(PathBuf),
    /// Reading or writing it failed.
    #[error("snapshot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Its metadata cannot be read.
    #[error("snapshot {dir}: unreadable metadata: {detail}")]
    BadMeta {
        /// The snapshot.
        dir: PathBuf,
        /// Why.
        detail: String,
    },
    /// The VM the snapshot is made from failed.
    #[error(transparent)]
    Vm(#[from] VmError),
}

fn snap_io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let what = what.into();
    move |source| SnapshotError::Io { what, source }
}

/// A golden snapshot on disk, checked against the launcher that opened it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    dir: PathBuf,
    meta: SnapshotMeta,
    /// The state file as its digest was checked: a restore refuses a file changed since.
    state_id: FileId,
}

impl Snapshot {
    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of its state file.
    pub fn state_bytes(&self) -> u64 {
        self.meta.state_bytes
    }

    fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn disk(&self) -> Option<PathBuf> {
        self.meta.root.as_ref().map(|_| self.dir.join(DISK_FILE))
    }
}

/// A file the snapshot depends on, named by path, size and modification time (the image cache
/// rebuilds files rather than editing them in place, so these change with the contents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    path: PathBuf,
    bytes: u64,
    modified_ns: u128,
}

impl FileId {
    fn of(path: &Path) -> Result<Self, SnapshotError> {
        let meta = std::fs::metadata(path).map_err(snap_io(format!("read {}", path.display())))?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            path: path.to_path_buf(),
            bytes: meta.len(),
            modified_ns,
        })
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {} bytes, modified at {} ns",
            self.path.display(),
            self.bytes,
            self.modified_ns
        )
    }
}

/// What a snapshot was made with, and its state file's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotMeta {
    format: u32,
    qemu_version: String,
    command_line: String,
    kernel: FileId,
    initramfs: FileId,
    root: Option<FileId>,
    state_bytes: u64,
    state_sha256: String,
    made_unix_ms: u64,
}

impl SnapshotMeta {
    /// The fields this launcher would write now (state fields empty).
    async fn expected(cfg: &QemuConfig) -> Result<Self, SnapshotError> {
        Ok(Self {
            format: FORMAT,
            qemu_version: qemu_version(&cfg.qemu).await?,
            command_line: canonical_command_line(cfg),
            kernel: FileId::of(&cfg.kernel)?,
            initramfs: FileId::of(&cfg.initramfs)?,
            root: cfg.root_image.as_deref().map(FileId::of).transpose()?,
            state_bytes: 0,
            state_sha256: String::new(),
            made_unix_ms: 0,
        })
    }

    /// The first difference from `now` that makes the state invalid.
    fn differs(&self, now: &Self, dir: &Path) -> Result<(), SnapshotError> {
        let mismatch = |what, saved: String, now: String| SnapshotError::Mismatch {
            dir: dir.to_path_buf(),
            what,
            saved,
            now,
        };
        if self.format != now.format {
            return Err(mismatch(
                "format",
                self.format.to_string(),
                now.format.to_string(),
            ));
        }
        if self.qemu_version != now.qemu_version {
            return Err(mismatch(
                "QEMU",
                self.qemu_version.clone(),
                now.qemu_version.clone(),
            ));
        }
        if self.command_line != now.command_line {
            return Err(mismatch(
                "machine (command line)",
                self.command_line.clone(),
                now.command_line.clone(),
            ));
        }
        for (what, saved, current) in [
            ("kernel", Some(&self.kernel), Some(&now.kernel)),
            ("initramfs", Some(&self.initramfs), Some(&now.initramfs)),
            ("root image", self.root.as_ref(), now.root.as_ref()),
        ] {
            if saved != current {
                let show = |f: Option<&FileId>| f.map_or("none".to_owned(), |f| f.to_string());
                return Err(mismatch(what, show(saved), show(current)));
            }
        }
        Ok(())
    }
}

/// The command line without what differs between VMs of one launcher (their directory, the host
/// side of their forwards): what a state file is valid for.
fn canonical_command_line(cfg: &QemuConfig) -> String {
    let mut cfg = cfg.clone();
    if let Some(network) = &mut cfg.network {
        network.udp_forwards.clear();
    }
    let dir = Path::new("/VM");
    let disk = cfg.root_image.as_ref().map(|_| dir.join(super::OVERLAY));
    super::qemu_args(&cfg, dir, disk.as_deref()).join(" ")
}

async fn qemu_version(qemu: &Path) -> Result<String, SnapshotError> {
    let out = tokio::process::Command::new(qemu)
        .arg("--version")
        .output()
        .await
        .map_err(snap_io(format!("run {} --version", qemu.display())))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// SHA-256 of a file, hex, read off the async runtime.
async fn sha256_file(path: &Path) -> Result<String, SnapshotError> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use sha2::Digest;
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    })
    .await
    .map_err(|e| SnapshotError::Io {
        what: format!("hash {shown}"),
        source: std::io::Error::other(e.to_string()),
    })?
    .map_err(snap_io(format!("hash {shown}")))
}

impl QemuLauncher {
    /// Opens the snapshot in `dir` for VMs of this launcher (with `network`'s card, forwards
    /// aside): refused, naming the difference, when it was made with another QEMU, command line or
    /// image, or when its state file is not the one saved.
    pub async fn open_snapshot(
        &self,
        dir: &Path,
        network: Option<&UserNetwork>,
    ) -> Result<Snapshot, SnapshotError> {
        let text = match std::fs::read_to_string(dir.join(META_FILE)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::Missing(dir.to_path_buf()))
            }
            Err(e) => return Err(snap_io(format!("read {}", dir.display()))(e)),
        };
        let meta: SnapshotMeta =
            serde_json::from_str(&text).map_err(|e| SnapshotError::BadMeta {
                dir: dir.to_path_buf(),
                detail: e.to_string(),
            })?;
        let cfg = self.with_network(network);
        meta.differs(&SnapshotMeta::expected(&cfg).await?, dir)?;
        let state = dir.join(STATE_FILE);
        let bytes = std::fs::metadata(&state)
            .map_err(snap_io(format!("read {}", state.display())))?
            .len();
        // Taken before the digest is read: a write during the reading shows as a change.
        let state_id = FileId::of(&state)?;
        if bytes != meta.state_bytes || sha256_file(&state).await? != meta.state_sha256 {
            return Err(SnapshotError::Corrupt(dir.to_path_buf()));
        }
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            meta,
            state_id,
        })
    }

    /// Boots a VM (with `network`'s card), lets `ready` wait until it is in the state clones should
    /// start in, and saves it as the snapshot in `dir` (replacing what was there). The VM is
    /// destroyed afterwards; its identity is never used (every clone makes its own).
    pub async fn make_snapshot<F, Fut>(
        &self,
        dir: &Path,
        network: Option<UserNetwork>,
        ready: F,
    ) -> Result<Snapshot, SnapshotError>
    where
        F: FnOnce(HybridVsockConnector) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let cfg = self.with_network(network.as_ref());
        let expected = SnapshotMeta::expected(&cfg).await?;
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(snap_io(format!("create {}", parent.display())))?;
        let work = tempfile::Builder::new()
            .prefix(".snapshot")
            .tempdir_in(parent)
            .map_err(snap_io(format!(
                "create a directory in {}",
                parent.display()
            )))?;
        let disk = cfg.root_image.as_ref().map(|_| work.path().join(DISK_FILE));
        let started = Instant::now();
        let mut vm = self
            .start("snapshot", disk.as_deref(), network, Start::Cold)
            .await?;
        ready(vm.connector())
            .await
            .map_err(|e| VmError::State(format!("the VM to snapshot never got ready: {e}")))?;
        let booted = started.elapsed();
        let state = work.path().join(STATE_FILE);
        let saved = vm.save(&state).await;
        vm.destroy().await?;
        saved?;
        let state_bytes = std::fs::metadata(&state)
            .map_err(snap_io(format!("read {}", state.display())))?
            .len();
        let meta = SnapshotMeta {
            state_bytes,
            state_sha256: sha256_file(&state).await?,
            made_unix_ms: unix_ms(),
            ..expected
        };
        let meta_text =
            serde_json::to_string_pretty(&meta).map_err(|e| SnapshotError::BadMeta {
                dir: dir.to_path_buf(),
                detail: e.to_string(),
            })?;
        std::fs::write(work.path().join(META_FILE), meta_text)
            .map_err(snap_io("write the snapshot's metadata"))?;
        // Never written again; the disk readable by a VM account (`run_as`: QEMU opens it).
        for file in [Some(state.clone()), disk].into_iter().flatten() {
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o444))
                .map_err(snap_io(format!("protect {}", file.display())))?;
        }
        std::fs::set_permissions(
            work.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(snap_io("open the snapshot directory"))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(snap_io(format!("replace {}", dir.display())))?;
        }
        std::fs::rename(work.keep(), dir)
            .map_err(snap_io(format!("move into {}", dir.display())))?;
        info!(
            dir = %dir.display(),
            state_bytes,
            boot_ms = booted.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshot made"
        );
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            meta,
            state_id: FileId::of(&dir.join(STATE_FILE))?,
        })
    }

    /// A new VM cloned from `snapshot`, on its own overlay over the snapshot's disk, with
    /// `network`'s card (its own forwards): reseeded, its clock set and a fresh identity before
    /// this returns. Any number may be restored from one snapshot at once.
    pub async fn restore(
        &self,
        name: &str,
        snapshot: &Snapshot,
        network: Option<UserNetwork>,
    ) -> Result<QemuVm, VmError> {
        let state = snapshot.state();
        // QEMU does not check guest memory: a state written to since its digest was checked
        // (size or modification time) could run half-restored.
        let now = FileId::of(&state).map_err(|e| VmError::State(e.to_string()))?;
        if now != snapshot.state_id {
            return Err(VmError::State(format!(
                "{} changed since the snapshot was opened",
                state.display()
            )));
        }
        let backing = snapshot.disk();
        self.start(
            name,
            None,
            network,
            Start::Incoming {
                state: &state,
                backing: backing.as_deref(),
                clone: true,
            },
        )
        .await
    }

    /// Starts `paused` again where it stopped, with its processes and files as they were, and
    /// removes its state file once it runs. On failure the state file stays (for another try or
    /// for [`PausedVm::discard`]).
    pub async fn resume(&self, paused: PausedVm) -> Result<QemuVm, VmError> {
        let state = paused.dir.join(STATE_FILE);
        let vm = self
            .start(
                &paused.name,
                paused.disk.as_deref(),
                paused.network.clone(),
                Start::Incoming {
                    state: &state,
                    backing: None,
                    clone: false,
                },
            )
            .await?;
        paused.discard()?;
        Ok(vm)
    }

    fn with_network(&self, network: Option<&UserNetwork>) -> QemuConfig {
        QemuConfig {
            network: network.cloned(),
            ..self.config.clone()
        }
    }
}

/// A VM saved to a file and stopped ([`QemuVm::pause`]): it holds no memory until
/// [`QemuLauncher::resume`].
#[derive(Debug)]
pub struct PausedVm {
    name: String,
    dir: PathBuf,
    disk: Option<PathBuf>,
    network: Option<UserNetwork>,
    state_bytes: u64,
}

impl PausedVm {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of its saved state.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes
    }

    /// The directory holding its saved state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the saved state (the VM will boot afresh from its disk next time).
    pub fn discard(self) -> Result<(), VmError> {
        std::fs::remove_dir_all(&self.dir).map_err(io(format!("remove {}", self.dir.display())))
    }
}

impl QemuVm {
    /// Saves this VM's state (stopped first, so the disk and the state agree) to `state` through
    /// QEMU's monitor. The VM stays stopped.
    async fn save(&mut self, state: &Path) -> Result<(), VmError> {
        let qmp = self
            .qmp
            .as_mut()
            .ok_or_else(|| VmError::State("the VM has no monitor".into()))?;
        tokio::time::sleep(CLOSE_SETTLE).await;
        qmp.execute("stop", None).await?;
        events_on(qmp).await?;
        let started = Instant::now();
        // QEMU gets the open file, never the path (see `Qmp::send_fd`).
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(state)
            .map_err(io(format!("create {}", state.display())))?;
        qmp.send_fd(STATE_FD, std::os::fd::AsFd::as_fd(&file))
            .await?;
        qmp.execute("migrate", Some(json!({ "uri": format!("fd:{STATE_FD}") })))
            .await?;
        migration_done(qmp, SAVE_TIMEOUT).await?;
        file.sync_all()
            .map_err(io(format!("write {}", state.display())))?;
        info!(vm = %self.name, ms = started.elapsed().as_millis() as u64, "state saved");
        Ok(())
    }

    /// Saves the VM to `dir` (created; one paused VM per directory) and stops it, keeping its
    /// disk: the VM then costs no memory until [`QemuLauncher::resume`]. Only a VM whose disk lives
    /// outside its directory (a CLI VM's) can be paused.
    pub async fn pause(mut self, dir: &Path) -> Result<PausedVm, VmError> {
        let disk = self.disk.clone();
        if disk.as_ref().is_some_and(|d| d.starts_with(&self.dir)) {
            return Err(VmError::State(
                "a VM whose disk goes with it cannot be paused".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let state = dir.join(STATE_FILE);
        let saved = self.save(&state).await;
        let network = self.config.network.clone();
        let name = self.name.clone();
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(dir);
            return Err(e);
        }
        self.destroy().await?;
        let state_bytes = std::fs::metadata(&state)
            .map_err(io(format!("read {}", state.display())))?
            .len();
        Ok(PausedVm {
            name,
            dir: dir.to_path_buf(),
            disk,
            network,
            state_bytes,
        })
    }
}

async fn events_on(qmp: &mut Qmp) -> Result<(), VmError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "events", "state": true }] })),
    )
    .await?;
    Ok(())
}

/// Waits for the migration to complete; a failed one is an error with QEMU's reason.
async fn migration_done(qmp: &mut Qmp, timeout: Duration) -> Result<(), VmError> {
    let event = qmp
        .event("MIGRATION", timeout, |data| {
            matches!(
                data.get("status").and_then(Value::as_str),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .await?;
    let status = event["data"]["status"].as_str().unwrap_or_default();
    if status == "completed" {
        return Ok(());
    }
    let info = qmp.execute("query-migrate", None).await.unwrap_or_default();
    let reason = info
        .get("error-desc")
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    Err(VmError::State(format!("migration {status}: {reason}")))
}

/// Loads `state` into a QEMU started with `-incoming defer` and lets the VM run. A state that
/// does not load leaves the VM stopped (it never runs half-restored); the caller kills it.
pub(super) async fn load(qmp: &mut Qmp, state: &Path, timeout: Duration) -> Result<(), VmError> {
    let file = std::fs::File::open(state).map_err(io(format!("open {}", state.display())))?;
    events_on(qmp).await?;
    qmp.send_fd(STATE_FD, std::os::fd::AsFd::as_fd(&file))
        .await?;
    qmp.execute(
        "migrate-incoming",
        Some(json!({ "uri": format!("fd:{STATE_FD}") })),
    )
    .await?;
    migration_done(qmp, timeout)
        .await
        .map_err(|e| VmError::State(format!("restoring from {}: {e}", state.display())))?;
    // The state was saved from a stopped VM, so it loads stopped.
    if qmp.status().await? != "running" {
        qmp.execute("cont", None).await?;
    }
    Ok(())
}

/// Tells a restored VM's agent (once it has said hello again) to reseed, set its clock and, for a
/// clone, take a fresh identity; returns its hello afterwards.
pub(super) async fn tell_restored(
    connector: &HybridVsockConnector,
    clone: bool,
) -> Result<protocol::Hello, VmError> {
    let mut entropy = vec![0u8; ENTROPY_BYTES];
    rand_core::TryRngCore::try_fill_bytes(&mut rand_core::OsRng, &mut entropy)
        .map_err(|e| VmError::State(format!("no entropy for the restored VM: {e}")))?;
    let request = RestoredRequest {
        entropy: Secret::new(EntropyBytes(entropy)),
        unix_time_ms: unix_ms(),
        clone,
    };
    // A guest socket whose close was under way at the save lingers, reset, for a moment after
    // the load; a new connection that the backend happens to give its host port is refused.
    let started = Instant::now();
    let client = AgentClient::connect_with_retry(connector, RESTORED_CONNECT)
        .await
        .map_err(|e| VmError::State(format!("reaching the restored agent: {e}")))?;
    let connected_ms = started.elapsed().as_millis() as u64;
    let hello = client
        .call::<Restored>(&request)
        .await
        .map_err(|e| VmError::State(format!("the restored agent refused `restored`: {e}")))?;
    debug!(
        connected_ms,
        answered_ms = started.elapsed().as_millis() as u64,
        "restored call"
    );
    Ok(hello)
}

fn unix_ms() -> u64 {
    u64::try_from(crate::store::now_ms()).unwrap_or(0)
}
