//! Command-line configuration of the agent.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

/// Where the agent accepts host connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// AF_VSOCK on this port, any CID (`vsock:PORT`).
    Vsock(u32),
    /// A Unix socket path, for development and tests (`unix:/path`).
    Unix(PathBuf),
}

/// A host address the agent dials: to say hello, and for each egress tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAddr {
    /// AF_VSOCK `(cid, port)` (`vsock:CID:PORT`; the host is CID 2).
    Vsock {
        /// Context id of the host.
        cid: u32,
        /// Port the host listens on.
        port: u32,
    },
    /// A Unix socket path (`unix:/path`).
    Unix(PathBuf),
}

/// A malformed address.
#[derive(Debug, thiserror::Error)]
#[error("bad address {0:?}: expected {1}")]
pub struct AddrError(String, &'static str);

fn parse_u32(s: &str, whole: &str, expected: &'static str) -> Result<u32, AddrError> {
    s.parse()
        .map_err(|_| AddrError(whole.to_string(), expected))
}

impl FromStr for ListenAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, AddrError> {
        const EXPECTED: &str = "vsock:PORT or unix:/path";
        match s.split_once(':') {
            Some(("vsock", port)) => Ok(ListenAddr::Vsock(parse_u32(port, s, EXPECTED)?)),
            Some(("unix", path)) if !path.is_empty() => Ok(ListenAddr::Unix(path.into())),
            _ => Err(AddrError(s.to_string(), EXPECTED)),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Vsock(port) => write!(f, "vsock:{port}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for HostAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, AddrError> {
        const EXPECTED: &str = "vsock:CID:PORT or unix:/path";
        match s.split_once(':') {
            Some(("vsock", rest)) => {
                let (cid, port) = rest
                    .split_once(':')
                    .ok_or_else(|| AddrError(s.to_string(), EXPECTED))?;
                Ok(HostAddr::Vsock {
                    cid: parse_u32(cid, s, EXPECTED)?,
                    port: parse_u32(port, s, EXPECTED)?,
                })
            }
            Some(("unix", path)) if !path.is_empty() => Ok(HostAddr::Unix(path.into())),
            _ => Err(AddrError(s.to_string(), EXPECTED)),
        }
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            HostAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Where the agent accepts host connections by default: its vsock port.
pub const DEFAULT_LISTEN: ListenAddr = ListenAddr::Vsock(protocol::DEFAULT_AGENT_PORT);

/// Where the agent says hello by default: the host (CID 2) on the hello port.
pub const DEFAULT_HELLO: HostAddr = HostAddr::Vsock {
    cid: 2,
    port: protocol::DEFAULT_HELLO_PORT,
};

/// Where the agent opens egress tunnels by default: the host (CID 2) on the egress port.
pub const DEFAULT_EGRESS: HostAddr = HostAddr::Vsock {
    cid: 2,
    port: protocol::egress::DEFAULT_EGRESS_PORT,
};

/// Where the egress proxy listens by default.
fn default_proxy_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 3128))
}

/// The agent's command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "vm-agent",
    version,
    about = "The in-VM agent (vsock only, no network listener)"
)]
pub struct AgentConfig {
    /// Where to accept host connections (repeatable): `vsock:PORT` or `unix:/path`.
    #[arg(long = "listen", default_values_t = [DEFAULT_LISTEN])]
    pub listen: Vec<ListenAddr>,

    /// Where to say hello when up: `vsock:CID:PORT` or `unix:/path`.
    #[arg(long = "hello", default_value_t = DEFAULT_HELLO)]
    pub hello_addr: HostAddr,

    /// Do not dial the host at all.
    #[arg(long)]
    pub no_hello: bool,

    /// Where the egress proxy sends each connection (`vsock:CID:PORT` or `unix:/path`). Without it
    /// the agent runs no egress proxy (as the VM's init it always does, to the host's egress port).
    #[arg(long = "egress")]
    pub egress: Option<HostAddr>,

    /// Where the egress proxy listens: a loopback address (`127.0.0.1:3128`).
    #[arg(long = "egress-proxy", default_value_t = default_proxy_addr())]
    pub egress_proxy: std::net::SocketAddr,

    /// The X display the desktop streams by default (`:0`); else the `DISPLAY` the agent was
    /// started with. Without one the agent does not offer its desktop.
    #[arg(long)]
    pub display: Option<String>,

    /// The unprivileged user every exec and PTY program runs as unless the call names another
    /// (the agent must be root to switch). Without it programs run as the agent.
    #[arg(long)]
    pub user: Option<String>,

    /// Do not dial the host at all (set from `--no-hello`).
    #[arg(skip)]
    pub hello: Option<HostAddr>,

    /// When the agent process started (set by `main`), so the hello can report start-to-hello.
    #[arg(skip)]
    pub started_at: Option<std::time::Instant>,

    /// Whether this agent was started by its own PID 1 ([`crate::init`]): only then may it power off.
    #[arg(skip)]
    pub under_init: bool,

    /// What the image configures (read at boot as the VM's init; empty otherwise).
    #[arg(skip)]
    pub image: crate::image::ImageConfig,
}

impl AgentConfig {
    /// Parses the process arguments.
    pub fn from_args() -> Self {
        Self::from_parsed(Self::parse())
    }

    /// Parses the given arguments (first one is the program name).
    pub fn try_from_iter<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args).map(Self::from_parsed)
    }

    /// The configuration of an agent booted as the VM's init: defaults only (the kernel passes
    /// unknown boot parameters as arguments, which must not be parsed).
    ///
    /// Built without the argument parser: under emulation every code path run for the first time
    /// costs its translation, and nothing here needs parsing.
    pub fn for_init(started_at: std::time::Instant) -> Self {
        let image =
            crate::image::ImageConfig::load(std::path::Path::new(crate::image::IMAGE_CONFIG_PATH));
        AgentConfig {
            listen: vec![DEFAULT_LISTEN],
            hello_addr: DEFAULT_HELLO,
            no_hello: false,
            egress: Some(DEFAULT_EGRESS),
            egress_proxy: default_proxy_addr(),
            display: image.display.clone(),
            user: image.user.clone(),
            hello: Some(DEFAULT_HELLO),
            started_at: Some(started_at),
            under_init: true,
            image,
        }
    }

    fn from_parsed(mut cfg: Self) -> Self {
        cfg.hello = (!cfg.no_hello).then(|| cfg.hello_addr.clone());
        if cfg.display.is_none() {
            cfg.display = std::env::var("DISPLAY").ok();
        }
        cfg.display = cfg.display.filter(|d| !d.is_empty());
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_configuration_is_the_no_argument_one() {
        let started = std::time::Instant::now();
        let init = AgentConfig::for_init(started);
        let parsed = AgentConfig::try_from_iter(["vm-agent"]).expect("no arguments parse");
        assert_eq!(init.listen, parsed.listen);
        assert_eq!(init.hello, parsed.hello);
        assert_eq!(init.hello_addr, parsed.hello_addr);
        assert_eq!(init.egress_proxy, parsed.egress_proxy);
        assert_eq!(init.egress, Some(DEFAULT_EGRESS));
        assert_eq!(parsed.egress, None);
        assert!(init.under_init && !parsed.under_init);
    }

    #[test]
    fn addresses_parse_and_print_back() {
        for s in ["vsock:1024", "unix:/tmp/a.sock"] {
            assert_eq!(s.parse::<ListenAddr>().expect(s).to_string(), s);
        }
        for s in ["vsock:2:1025", "unix:/tmp/h.sock"] {
            assert_eq!(s.parse::<HostAddr>().expect(s).to_string(), s);
        }
        for bad in ["tcp:80", "vsock:x", "unix:", "vsock:2"] {
            assert!(bad.parse::<HostAddr>().is_err(), "{bad}");
        }
        assert!("tcp:0.0.0.0:80".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn defaults_are_vsock() {
        let cfg = AgentConfig::try_from_iter(["vm-agent"]).expect("parse");
        assert_eq!(cfg.listen, vec![ListenAddr::Vsock(1024)]);
        assert_eq!(cfg.hello, Some(HostAddr::Vsock { cid: 2, port: 1025 }));
        let cfg = AgentConfig::try_from_iter(["vm-agent", "--no-hello"]).expect("parse");
        assert_eq!(cfg.hello, None);
    }
}
