//! A throwaway PostgreSQL cluster for tests and benches: `initdb` into a fresh directory, `postgres`
//! listening on 127.0.0.1 at a free port (and a Unix socket inside the directory), trust auth, no
//! fsync. Nothing outside the directory is touched, and nothing listens beyond loopback.
//!
//! `cargo xtask test` starts one cluster for the whole run and passes its URL in
//! [`URL_ENV`]; a test binary run on its own (plain `cargo test`) starts its own cluster through
//! [`shared_url`], which is stopped and removed when that process exits. When the PostgreSQL server
//! binaries are missing the error says how to install them: nothing is skipped.

use std::fmt;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable carrying the URL of a running cluster's `postgres` database.
pub const URL_ENV: &str = "TEST_DATABASE_URL";

/// Why a cluster could not be started.
#[derive(Debug)]
pub enum Error {
    /// No `initdb`/`pg_ctl` found under `/usr/lib/postgresql/*/bin` or on `PATH`.
    NotInstalled,
    /// A command could not be run or exited with failure.
    Command {
        /// What was being done.
        step: &'static str,
        /// Its output or the I/O error.
        detail: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotInstalled => write!(
                f,
                "PostgreSQL server binaries not found (need initdb and pg_ctl): run `cargo xtask setup` \
                 or `apt-get install postgresql`, or set {URL_ENV} to a running server"
            ),
            Error::Command { step, detail } => write!(f, "test PostgreSQL: {step} failed: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

/// A running throwaway cluster. Dropping it stops the server and removes its directory.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as_postgres: bool,
}

impl Cluster {
    /// `initdb` + start a cluster in a new directory under `parent`.
    pub fn start(parent: &Path) -> Result<Cluster, Error> {
        let bin = find_bin_dir().ok_or(Error::NotInstalled)?;
        let run_as_postgres = is_root();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!("test-postgres-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| cmd_err("create directory", e))?;
        let mut cluster = Cluster {
            bin,
            dir,
            port: 0,
            run_as_postgres,
        };
        if run_as_postgres {
            // initdb refuses to run as root: the cluster belongs to the `postgres` user.
            cluster.run(
                "chown",
                Command::new("chown").arg("postgres:").arg(&cluster.dir),
            )?;
        }
        let data = cluster.dir.join("data");
        let mut initdb = cluster.pg_command("initdb");
        initdb.arg("-D").arg(&data).args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        cluster.run("initdb", &mut initdb)?;
        // A port that was free a moment ago may be taken by the time the server binds: retry.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port().map_err(|e| cmd_err("find a free port", e))?;
            let opts = format!(
                "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
                 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
                cluster.port,
                cluster.dir.display()
            );
            let mut start = cluster.pg_command("pg_ctl");
            start
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]);
            match cluster.run("pg_ctl start", &mut start) {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::Command {
            step: "pg_ctl start",
            detail: "no attempt".into(),
        }))
    }

    /// URL of the cluster's `postgres` database (trust auth, loopback).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The cluster's directory (data, server log, Unix socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server and removes the directory when `pid` is gone (a guard for processes that exit
    /// without running destructors, such as test binaries holding the cluster in a static).
    fn stop_when_gone(&self, pid: u32) -> Result<(), Error> {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        let stop = if self.run_as_postgres {
            format!(
                "runuser -u postgres -- {} -D {} stop -m immediate",
                pg_ctl.display(),
                data.display()
            )
        } else {
            format!(
                "{} -D {} stop -m immediate",
                pg_ctl.display(),
                data.display()
            )
        };
        let script = format!(
            "while [ -e /proc/{pid} ]; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {}",
            self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|e| cmd_err("start the cleanup watcher", e))
    }

    fn pg_command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, step: &'static str, cmd: &mut Command) -> Result<(), Error> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| cmd_err(step, e))?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        Err(Error::Command {
            step,
            detail: format!(
                "{}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            ),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let mut stop = self.pg_command("pg_ctl");
        stop.arg("-D").arg(&data).args(["stop", "-m", "immediate"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// URL of a PostgreSQL server for this test process: [`URL_ENV`] when set (as `cargo xtask test`
/// does), otherwise a cluster started once per process under the system temp directory and removed
/// after the process exits.
pub fn shared_url() -> Result<String, Error> {
    static SHARED: OnceLock<Result<String, String>> = OnceLock::new();
    if let Ok(url) = std::env::var(URL_ENV) {
        return Ok(url);
    }
    SHARED
        .get_or_init(|| {
            let cluster = Cluster::start(&std::env::temp_dir()).map_err(|e| e.to_string())?;
            cluster
                .stop_when_gone(std::process::id())
                .map_err(|e| e.to_string())?;
            let url = cluster.url();
            // The watcher owns the cleanup now.
            std::mem::forget(cluster);
            Ok(url)
        })
        .clone()
        .map_err(|detail| Error::Command {
            step: "start",
            detail,
        })
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // SAFETY-free check: /proc/self/status Uid line, avoiding a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn cmd_err(step: &'static str, e: std::io::Error) -> Error {
    Error::Command {
        step,
        detail: e.to_string(),
    }
}

/// Waits until `url`'s server accepts TCP connections (used after an external start).
pub fn wait_listening(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_stops() {
        let c = Cluster::start(&std::env::temp_dir()).expect("start");
        let out = Command::new("psql")
            .arg(c.url())
            .args(["-Atc", "select 41+1"])
            .output()
            .expect("psql");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
        let dir = c.dir().to_path_buf();
        drop(c);
        assert!(!dir.exists());
    }
}
