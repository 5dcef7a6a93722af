//! Running VMs for agents.
//!
//! - [`VmBackend`]: what the login flow needs from whatever runs VMs; the host service implements it
//!   over its VMM, or uses one of ours.
//! - [`qemu`]: boots a microVM with QEMU and reaches its agent through `vhost-device-vsock`'s hybrid
//!   vsock socket; [`QemuVmBackend`] is the [`VmBackend`] over it.
//! - [`local`]: "VMs" that are agent processes on this machine, each with its own HOME (development,
//!   tests and benchmarks of the login flow without a hypervisor).

mod backend;
pub mod local;
pub mod qemu;
mod qemu_backend;
mod watch;

pub use backend::{BackendError, CleanupReport, VmBackend, VmHandle, VmKind, VmSpec};
pub use qemu::{
    Accel, DestroyReport, QemuBackend, QemuConfig, QemuVm, UdpForward, UserNetwork, VmError,
};
pub use qemu_backend::QemuVmBackend;
