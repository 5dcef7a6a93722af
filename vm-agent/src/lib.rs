//! The VM agent: one static binary in the golden image.
//!
//! It accepts host connections on vsock (a Unix socket in development), speaks the [`protocol`]
//! crate's HTTP/2 calls on them, and dials the host to say hello the moment it is up. It never listens
//! on a network interface.
//!
//! Concerns, one module each: [`config`] (command line), [`transport`] (listeners and the hello
//! dialer), [`rpc`] (the HTTP/2 service and its routes), [`exec`] (processes), [`files`] (basic file
//! access), [`system`] (guest facts and usage), [`state`] (what the host configured).

#[cfg(feature = "desktop")]
pub mod browser;
pub mod config;
pub mod creds;
pub mod detect;
pub mod egress;
pub mod exec;
pub mod files;
pub mod image;
pub mod init;
pub mod procset;
pub mod providers;
pub mod pty;
pub mod restore;
pub mod rpc;
pub mod services;
pub mod shim;
pub mod shutdown;
pub mod state;
pub mod system;
pub mod transport;
pub mod users;

use std::sync::Arc;

use tracing::{info, warn};

pub use config::AgentConfig;
pub use state::Agent;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address as given.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No listener was configured.
    #[error("no listener configured")]
    NoListener,
}

/// Runs the agent until every listener fails: binds the listeners first, then says hello (so the host
/// can connect as soon as it hears from us), then serves.
pub async fn run(config: AgentConfig) -> Result<(), RunError> {
    // Before anything can be left behind: a stop signal from now on cleans up (not as PID 1).
    let mut stop = if config.under_init {
        None
    } else {
        shutdown::StopSignals::register()
            .inspect_err(|e| warn!(error = %e, "stop signals not handled"))
            .ok()
    };
    let mut agent = Agent::new(&config);
    let proxy = match config.egress.clone() {
        Some(host) => {
            start_egress(egress::EgressConfig {
                listen: config.egress_proxy,
                host,
                max_tunnels: egress::MAX_TUNNELS,
            })
            .await
        }
        None => None,
    };
    if let Some(proxy) = proxy {
        agent = agent.with_egress_proxy(proxy);
    }
    #[cfg(feature = "desktop")]
    if let Some(mut browser) = config.image.browser.clone() {
        if let Some(proxy) = proxy {
            browser.args.push(format!("--proxy-server=http://{proxy}"));
        }
        agent = agent.with_browser(browser::Browser::start(browser));
    }
    // The `$BROWSER`/`xdg-open` shim for PTY programs; without it URLs still come from the screen.
    match std::env::current_exe()
        .and_then(|exe| shim::ShimServer::start(&std::env::temp_dir(), &exe))
    {
        Ok(shim) => agent = agent.with_shim(shim),
        Err(e) => warn!(error = %e, "browser shim unavailable"),
    }
    let agent = Arc::new(agent);
    if agent.shim().is_some() {
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Some(shim) = agent.shim() {
                let opener = agent.clone();
                let open: Arc<shim::UrlOpener> =
                    Arc::new(move |provider, url| opener.open_login_url(provider, url));
                shim.serve(agent.pty().clone(), open).await;
            }
        });
    }
    if config.listen.is_empty() {
        return Err(RunError::NoListener);
    }
    // The image's session (the browser VM's X server, window manager, terminal), and the socket
    // its terminal shows the login session through.
    if config.under_init {
        // The terminal runs as the image's user: the socket is that user's.
        let owner = agent.users().resolve(None).ok().flatten();
        tokio::spawn(pty::terminal::serve(
            agent.pty().clone(),
            pty::terminal::LOGIN_SOCKET.into(),
            owner.map(|u| (u.uid, u.gid)),
        ));
    }
    services::start(config.image.service.clone(), agent.users());
    let mut listeners = Vec::new();
    for addr in &config.listen {
        let listener = transport::Listener::bind(addr).map_err(|source| RunError::Listen {
            addr: addr.to_string(),
            source,
        })?;
        info!(%addr, "listening");
        listeners.push(listener);
    }
    // The provider rules are built once the hello is out (or now, without a hello), off the path
    // the host waits on; a PTY or credentials call before that builds them itself.
    let hello = config.hello.clone();
    let warm = agent.clone();
    tokio::spawn(async move {
        let kept = match &hello {
            Some(addr) => transport::hello::say_hello(addr, &warm).await,
            None => None,
        };
        let rules = warm.clone();
        let _ = tokio::task::spawn_blocking(move || rules.providers()).await;
        // Start-up is over: its code need not stay resident in a small VM.
        match system::release_startup_code() {
            Ok(bytes) => tracing::debug!(bytes, "start-up code pages released"),
            Err(e) => warn!(error = %e, "start-up code pages not released"),
        }
        if let (Some(addr), Some(stream)) = (hello, kept) {
            transport::hello::keep(&addr, &warm, stream).await;
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let agent = agent.clone();
        tasks.spawn(async move { listener.serve(agent).await });
    }
    let serve = async {
        while let Some(res) = tasks.join_next().await {
            if let Ok(Err(e)) = res {
                warn!(error = %e, "listener stopped");
            }
        }
    };
    match stop.as_mut() {
        Some(stop) => tokio::select! {
            () = serve => {}
            signal = stop.wait() => info!(signal, "stopping"),
        },
        None => serve.await,
    }
    shutdown::clean_up(&agent);
    Ok(())
}

/// Starts the VM's egress proxy and returns where it listens. Without it programs in the VM cannot
/// reach anything, but the agent still serves the host: the failure is logged, not fatal.
async fn start_egress(config: egress::EgressConfig) -> Option<std::net::SocketAddr> {
    egress::raise_descriptor_limit();
    match egress::Proxy::bind(&config).await {
        Ok(proxy) => {
            let addr = proxy.local_addr().ok();
            tokio::spawn(proxy.serve());
            addr
        }
        Err(e) => {
            warn!(error = %e, "egress proxy not started");
            None
        }
    }
}
