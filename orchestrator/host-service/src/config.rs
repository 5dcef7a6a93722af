//! The service's configuration: a TOML file, with every secret from the environment (never from
//! the file, which is easy to copy around).
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! host_id = "host-1"
//! pool_size = 1                    # browser VMs booted ahead
//! sealing = "user"                 # or "host" (default): who can open stored credentials
//!
//! [store]
//! sqlite = "/var/lib/host-service/state.db"   # or: postgres = true, URL in HOST_SERVICE_DATABASE_URL
//!
//! [egress]
//! first_port = 20000
//! last_port = 29999
//! proxy_host = "proxy.example:3128"  # user in proxy_user; password in HOST_SERVICE_PROXY_PASSWORD
//! proxy_user = "tenant"
//!
//! [vm]                               # the QEMU backend (the `host-service` binary)
//! kernel = "..."
//! browser_initramfs = "..."
//! browser_image = "..."              # optional golden disk
//! cli_initramfs = "..."
//! cli_image = "..."
//! vhost_device_vsock = "..."
//! disks = "/var/lib/host-service/disks"
//! ```
//!
//! Environment: `HOST_SERVICE_VAULT_KEY` (`id:base64 of 32 bytes`, required; to rotate, put the
//! new key first and keep the old ones after it, comma-separated: records under an old key are
//! re-sealed to the first at start), `HOST_SERVICE_DATABASE_URL`, `HOST_SERVICE_PROXY_PASSWORD`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use orchestrator::egress::{EgressPorts, PortRange, ProxyConfig};
use orchestrator::login::{LoginConfig, LoginService};
use orchestrator::store::{Store, StoreConfig};
use orchestrator::vault::{Keyring, Vault};
use orchestrator::vm::VmBackend;
use protocol::Secret;
use serde::Deserialize;

use crate::app::{AppState, ServiceConfig};
use crate::users::Users;

/// Variable holding the vault key.
pub const VAULT_KEY_ENV: &str = "HOST_SERVICE_VAULT_KEY";
/// Variable holding the PostgreSQL URL.
pub const DATABASE_URL_ENV: &str = "HOST_SERVICE_DATABASE_URL";
/// Variable holding the upstream proxy's password.
pub const PROXY_PASSWORD_ENV: &str = "HOST_SERVICE_PROXY_PASSWORD";

/// The file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// This host's id in the store.
    #[serde(default = "default_host")]
    pub host_id: String,
    /// Browser VMs booted ahead.
    #[serde(default)]
    pub pool_size: usize,
    /// Minutes a login may take.
    #[serde(default = "default_login_minutes")]
    pub login_minutes: u64,
    /// Seconds a VM's agent may take to say hello.
    #[serde(default = "default_hello")]
    pub hello_timeout_s: u64,
    /// Who can open stored credentials: `host` (the vault key) or `user` (zero-knowledge: only
    /// the user's page holds the key).
    #[serde(default)]
    pub sealing: orchestrator::login::Sealing,
    /// Environment of every job (an API base URL, say).
    #[serde(default)]
    pub job_env: std::collections::BTreeMap<String, String>,
    /// Where state lives.
    pub store: StoreSection,
    /// Egress.
    #[serde(default)]
    pub egress: EgressSection,
    /// The QEMU backend (used by the binary).
    #[serde(default)]
    pub vm: Option<VmSection>,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// SQLite file.
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// Use PostgreSQL at `HOST_SERVICE_DATABASE_URL`.
    #[serde(default)]
    pub postgres: bool,
}

/// `[egress]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSection {
    /// First port of the users' egress range.
    pub first_port: Option<u16>,
    /// Last port of the range.
    pub last_port: Option<u16>,
    /// Upstream proxy `host:port`; none: VMs have no way out.
    pub proxy_host: Option<String>,
    /// Upstream proxy user.
    pub proxy_user: Option<String>,
}

/// `[vm]`: images of the QEMU backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSection {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Browser VM initramfs.
    pub browser_initramfs: PathBuf,
    /// Browser VM golden disk.
    #[serde(default)]
    pub browser_image: Option<PathBuf>,
    /// CLI VM initramfs.
    pub cli_initramfs: PathBuf,
    /// CLI VM golden disk.
    #[serde(default)]
    pub cli_image: Option<PathBuf>,
    /// `vhost-device-vsock`.
    pub vhost_device_vsock: PathBuf,
    /// The QEMU binary. Default: `qemu-system-x86_64` on `PATH`. Saving VMs (golden snapshots,
    /// paused CLI VMs) needs one that can migrate the vhost-user vsock device (`cargo xtask image`
    /// builds Debian's with that patch; Debian's own cannot).
    #[serde(default)]
    pub qemu: Option<PathBuf>,
    /// Where the CLI VMs' disks live.
    pub disks: PathBuf,
    /// Browser VM memory, MiB.
    #[serde(default = "default_browser_mib")]
    pub browser_memory_mib: u32,
    /// CLI VM memory, MiB.
    #[serde(default = "default_cli_mib")]
    pub cli_memory_mib: u32,
    /// A dedicated unprivileged account of this host QEMU runs as (`QemuConfig::run_as`; the
    /// service must be root, the images readable by the account). Default: QEMU runs as the
    /// service.
    #[serde(default)]
    pub qemu_user: Option<String>,
    /// Where the golden browser snapshot lives: browser VMs are restored from it instead of
    /// booting (`QemuVmBackend::with_browser_snapshot`; made on first use when missing or made
    /// by another QEMU, machine or image; needs a `qemu` that can save these VMs). Default:
    /// browser VMs boot.
    #[serde(default)]
    pub browser_snapshot: Option<PathBuf>,
    /// Seconds after which a CLI VM the service has not used, and whose agent runs nothing, is
    /// paused to its disk (`QemuVmBackend::pause_idle_cli`): it holds no memory until the user's
    /// next request resumes it as it was. At least 60. Needs a `qemu` that can save these VMs.
    /// Default: CLI VMs run until destroyed.
    #[serde(default)]
    pub cli_pause_idle_s: Option<u64>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_host() -> String {
    "host-1".into()
}
fn default_login_minutes() -> u64 {
    10
}
fn default_hello() -> u64 {
    120
}
fn default_browser_mib() -> u32 {
    1024
}
fn default_cli_mib() -> u32 {
    512
}

impl FileConfig {
    /// Reads and checks the file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Where the store is.
    pub fn store_config(&self) -> Result<StoreConfig> {
        match (&self.store.sqlite, self.store.postgres) {
            (Some(path), false) => Ok(StoreConfig::Sqlite { path: path.clone() }),
            (None, true) => Ok(StoreConfig::Postgres {
                url: Secret::new(std::env::var(DATABASE_URL_ENV).with_context(|| {
                    format!("[store] postgres = true needs {DATABASE_URL_ENV}")
                })?),
                max_connections: 16,
            }),
            _ => bail!("[store]: set exactly one of sqlite = \"path\" or postgres = true"),
        }
    }

    /// The library's login settings.
    pub fn login_config(&self) -> Result<LoginConfig> {
        let proxy =
            match &self.egress.proxy_host {
                Some(host) => Some(ProxyConfig {
                    host: host.clone(),
                    username: self.egress.proxy_user.clone().unwrap_or_default(),
                    password: Secret::new(std::env::var(PROXY_PASSWORD_ENV).with_context(
                        || format!("[egress] proxy_host needs {PROXY_PASSWORD_ENV}"),
                    )?),
                }),
                None => None,
            };
        Ok(LoginConfig {
            timeout: Duration::from_secs(self.login_minutes * 60),
            hello_timeout: Duration::from_secs(self.hello_timeout_s),
            proxy,
            sealing: self.sealing,
            ..LoginConfig::default()
        })
    }

    fn port_range(&self) -> Result<PortRange> {
        let default = PortRange::default();
        let first = self.egress.first_port.unwrap_or(default.first());
        let last = self.egress.last_port.unwrap_or(default.last());
        PortRange::new(first, last)
            .with_context(|| format!("[egress] bad port range {first}..{last}"))
    }
}

/// The vault from `HOST_SERVICE_VAULT_KEY`.
pub fn vault_from_env() -> Result<Arc<Vault>> {
    let spec = std::env::var(VAULT_KEY_ENV).with_context(|| {
        format!("{VAULT_KEY_ENV} must hold the vault key (id:base64 of 32 bytes)")
    })?;
    let id = spec.split(':').next().unwrap_or_default().to_owned();
    let keyring = Keyring::from_spec(&spec, &id).context("the vault key")?;
    Ok(Arc::new(Vault::new(keyring)))
}

/// Everything the service runs on, around `backend`: store (migrated), users' tables, the login
/// service (what a previous run left is closed first) and the routes' state.
pub async fn build(
    file: &FileConfig,
    backend: Arc<dyn VmBackend>,
    vault: Arc<Vault>,
    service: ServiceConfig,
) -> Result<Arc<AppState>> {
    let store_config = file.store_config()?;
    let store = Store::open(&store_config, &file.host_id)
        .await
        .context("opening the store")?;
    let users = Users::open(&store_config)
        .await
        .context("opening the users' tables")?;
    let login = LoginService::new(
        backend,
        store.clone(),
        vault,
        EgressPorts::new(store, file.port_range()?),
        file.login_config()?,
    );
    let recovered = login
        .recover()
        .await
        .context("closing what the previous run left")?;
    if !recovered.sessions.is_empty() {
        tracing::warn!(sessions = ?recovered.sessions, "logins interrupted by the restart ended as failed");
    }
    login
        .reseal_retired()
        .await
        .context("re-sealing credentials under retired vault keys")?;
    let service = ServiceConfig {
        job_env: file.job_env.clone(),
        ..service
    };
    Ok(Arc::new(AppState::new(login, users, service)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen = "127.0.0.1:9090"
pool_size = 2
[store]
sqlite = "/var/lib/host-service/state.db"
[egress]
first_port = 20000
last_port = 20099
[vm]
kernel = "/k"
browser_initramfs = "/b"
cli_initramfs = "/c"
vhost_device_vsock = "/v"
disks = "/d"
"#;

    #[test]
    fn the_documented_shape_parses_and_defaults_fill_the_rest() {
        let c: FileConfig = toml::from_str(EXAMPLE).expect("parses");
        assert_eq!(c.listen, "127.0.0.1:9090");
        assert_eq!(c.pool_size, 2);
        assert_eq!(c.host_id, "host-1");
        assert!(matches!(c.store_config(), Ok(StoreConfig::Sqlite { .. })));
        let range = c.port_range().expect("range");
        assert_eq!((range.first(), range.last()), (20000, 20099));
        let vm = c.vm.expect("vm section");
        assert_eq!((vm.browser_memory_mib, vm.cli_memory_mib), (1024, 512));
    }

    #[test]
    fn bad_files_are_refused_with_what_is_wrong() {
        let unknown = toml::from_str::<FileConfig>("[store]\nsqlite = \"x\"\npasword = \"oops\"\n");
        assert!(unknown.is_err(), "unknown keys are refused");
        let both: FileConfig =
            toml::from_str("[store]\nsqlite = \"x\"\npostgres = true\n").expect("parses");
        let err = both.store_config().expect_err("one store only").to_string();
        assert!(err.contains("exactly one"), "{err}");
        let backwards: FileConfig = toml::from_str(
            "[store]\nsqlite = \"x\"\n[egress]\nfirst_port = 30000\nlast_port = 20000\n",
        )
        .expect("parses");
        assert!(backwards.port_range().is_err());
    }
}
