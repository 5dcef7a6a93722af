//! Running real VMs for agents: [`qemu`] boots a microVM with QEMU and reaches its agent through
//! `vhost-device-vsock`'s hybrid vsock socket.

pub mod qemu;
mod watch;

pub use qemu::{Accel, DestroyReport, QemuBackend, QemuConfig, QemuVm, VmError};
