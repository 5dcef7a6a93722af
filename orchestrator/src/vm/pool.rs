//! [`WarmPool`]: browser VMs booted ahead, so a login never waits on a cold boot.
//!
//! A [`VmBackend`] around another one. It keeps `size` fresh browser VMs whose agents have said
//! hello and whose browser is up (where the image has one: the agent's `browser` call says
//! `ready`, so a login's desktop shows Chromium at once); `create_vm` for a browser VM hands one out (each serves exactly one login and is
//! destroyed after it, like any browser VM) and boots a replacement in the background. CLI VMs,
//! destruction and an empty pool go straight to the inner backend. A VM that failed to boot is
//! logged and retried after a pause, so a broken image does not spin.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tracing::{debug, info, warn};

use protocol::browser::Browser;
use protocol::messages::Empty;

use super::backend::{BackendError, CleanupReport, VmBackend, VmHandle, VmKind, VmSpec};
use crate::client::{AgentClient, ClientError};
use protocol::error::ErrorCode;

/// The owner recorded for a pooled VM before a login takes it.
const POOL_USER: &str = "warm-pool";
/// Pause after a failed boot before the pool tries again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Browser VMs booted ahead (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct WarmPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    backend: Arc<dyn VmBackend>,
    size: usize,
    hello_timeout: Duration,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    ready: VecDeque<VmHandle>,
    booting: usize,
    closed: bool,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("WarmPool")
            .field("size", &self.inner.size)
            .field("ready", &state.ready.len())
            .field("booting", &state.booting)
            .finish()
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // Dropped without `shutdown`: the waiting VMs must not outlive the pool.
        let ready: Vec<VmHandle> = self.lock().ready.drain(..).collect();
        if ready.is_empty() {
            return;
        }
        let backend = self.backend.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for vm in ready {
                    let _ = backend.destroy_vm(&vm.id).await;
                }
            });
        } else {
            warn!(
                vms = ready.len(),
                "warm pool dropped outside a runtime; its VMs stay until the backend goes"
            );
        }
    }
}

impl PoolInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WarmPool {
    /// A pool of `size` browser VMs from `backend`, each waited on until its agent says hello
    /// (at most `hello_timeout`). Starts filling at once; must be called within a Tokio runtime.
    pub fn new(backend: Arc<dyn VmBackend>, size: usize, hello_timeout: Duration) -> Self {
        let pool = Self {
            inner: Arc::new(PoolInner {
                backend,
                size,
                hello_timeout,
                state: Mutex::new(PoolState::default()),
            }),
        };
        refill(&pool.inner);
        pool
    }

    /// How many VMs are booted and waiting.
    pub fn ready(&self) -> usize {
        self.inner.lock().ready.len()
    }

    /// Waits until `n` VMs are waiting (or `timeout` passes); returns how many are.
    pub async fn wait_ready(&self, n: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.ready() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.ready()
    }

    /// Stops refilling and destroys the waiting VMs (VMs being booted are destroyed when they
    /// come up). Returns what was removed.
    pub async fn shutdown(&self) -> Vec<CleanupReport> {
        let ready: Vec<VmHandle> = {
            let mut state = self.inner.lock();
            state.closed = true;
            state.ready.drain(..).collect()
        };
        let mut reports = Vec::new();
        for vm in ready {
            match self.inner.backend.destroy_vm(&vm.id).await {
                Ok(r) => reports.push(r),
                Err(e) => warn!(vm = %vm.id, error = %e, "destroying a pooled VM failed"),
            }
        }
        reports
    }
}

/// Boots VMs until ready + booting reaches the size.
fn refill(inner: &Arc<PoolInner>) {
    let missing = {
        let mut state = inner.lock();
        if state.closed {
            return;
        }
        let missing = inner.size.saturating_sub(state.ready.len() + state.booting);
        state.booting += missing;
        missing
    };
    for _ in 0..missing {
        let weak = Arc::downgrade(inner);
        tokio::spawn(boot_one(weak));
    }
}

/// Counts one boot in `booting` until dropped (a boot that panics or is cancelled included).
struct Booting(Weak<PoolInner>);

impl Drop for Booting {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            let mut state = inner.lock();
            state.booting = state.booting.saturating_sub(1);
        }
    }
}

async fn boot_one(weak: Weak<PoolInner>) {
    let booting = Booting(weak.clone());
    let Some((backend, hello_timeout)) = weak
        .upgrade()
        .map(|inner| (inner.backend.clone(), inner.hello_timeout))
    else {
        return;
    };
    let spec = VmSpec {
        user_id: POOL_USER.to_owned(),
        kind: VmKind::Browser,
        session_id: None,
    };
    let booted = async {
        let mut vm = backend.create_vm(spec).await?;
        let up = async {
            if let Some(hello) = vm.hello.take() {
                hello.wait(hello_timeout).await.map_err(|e| e.to_string())?;
            }
            browser_ready(&*vm.connector, hello_timeout).await
        };
        if let Err(e) = up.await {
            let _ = backend.destroy_vm(&vm.id).await;
            return Err(BackendError::Create(e.into()));
        }
        Ok::<_, BackendError>(vm)
    }
    .await;
    let vm = match booted {
        Ok(vm) => vm,
        Err(e) => {
            warn!(error = %e, "booting a pooled browser VM failed; retrying later");
            tokio::time::sleep(RETRY_AFTER).await;
            drop(booting);
            // A pool dropped meanwhile is not refilled.
            if let Some(inner) = weak.upgrade() {
                refill(&inner);
            }
            return;
        }
    };
    let unwanted = match weak.upgrade() {
        Some(inner) => {
            let mut state = inner.lock();
            if state.closed {
                Some(vm)
            } else {
                debug!(vm = %vm.id, "pooled browser VM ready");
                state.ready.push_back(vm);
                None
            }
        }
        None => Some(vm),
    };
    drop(booting);
    if let Some(vm) = unwanted {
        let _ = backend.destroy_vm(&vm.id).await;
    }
}

/// Waits until the VM's browser answers, if its agent drives one (an image without a browser
/// answers the call with an error: nothing to wait for).
pub(crate) async fn browser_ready(
    connector: &dyn crate::transport::Connector,
    timeout: Duration,
) -> Result<(), String> {
    let client = AgentClient::connect_with_retry(connector, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match client.call::<Browser>(&Empty {}).await {
            Ok(state) if state.ready => return Ok(()),
            Ok(_) => {}
            // The agent drives no browser (an image without one, or an older agent).
            Err(ClientError::Agent(body))
                if matches!(body.code, ErrorCode::NotFound | ErrorCode::UnknownMethod) =>
            {
                return Ok(())
            }
            // Not up yet, or a hiccup: ask again until the deadline.
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("the browser did not come up within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl VmBackend for WarmPool {
    fn create_vm(&self, spec: VmSpec) -> BoxFuture<'_, Result<VmHandle, BackendError>> {
        async move {
            if spec.kind != VmKind::Browser {
                return self.inner.backend.create_vm(spec).await;
            }
            let taken = self.inner.lock().ready.pop_front();
            refill(&self.inner);
            match taken {
                Some(vm) => {
                    info!(vm = %vm.id, user = %spec.user_id, "browser VM taken from the warm pool");
                    Ok(vm)
                }
                None => self.inner.backend.create_vm(spec).await,
            }
        }
        .boxed()
    }

    fn ensure_cli_vm<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<VmHandle, BackendError>> {
        self.inner.backend.ensure_cli_vm(user_id)
    }

    fn destroy_vm<'a>(
        &'a self,
        vm_id: &'a str,
    ) -> BoxFuture<'a, Result<CleanupReport, BackendError>> {
        self.inner.backend.destroy_vm(vm_id)
    }
}
