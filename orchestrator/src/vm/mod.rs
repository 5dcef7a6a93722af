//! Running VMs for agents.
//!
//! - [`VmBackend`]: what the login flow needs from whatever runs VMs; the host service implements it
//!   over its VMM, or uses one of ours.
//! - [`qemu`]: boots a microVM with QEMU and reaches its agent through `vhost-device-vsock`'s hybrid
//!   vsock socket; [`QemuVmBackend`] is the [`VmBackend`] over it.
//! - [`WarmPool`]: browser VMs of any backend booted ahead of the logins that take them.
//!
//! Agents as local processes (no hypervisor) are the test kit's `local_backend` (tests/kit).

mod backend;
mod pool;
pub mod qemu;
mod qemu_backend;
pub mod qmp;
pub mod serial;
mod watch;

pub use backend::{
    BackendCause, BackendError, CleanupReport, VmBackend, VmHandle, VmKind, VmSpec, VmStart,
};
pub use pool::WarmPool;
pub use qemu::{
    Accel, DestroyReport, PausedVm, QemuConfig, QemuLauncher, QemuVm, Snapshot, SnapshotError,
    UdpForward, UserNetwork, VmError, VmUser,
};
pub use qemu_backend::{QemuVmBackend, GUEST_HOME};
