//! Kernel modules listed by the image (virtio, vsock), loaded with `finit_module` so no `insmod`
//! or module tools are needed.

use std::fs::File;
use std::path::Path;

use nix::kmod::{finit_module, ModuleInitFlags};
use tracing::{debug, warn};

/// The image's module list: one `.ko` file name per line, relative to `/lib/modules`, in load order.
pub const MODULE_ORDER_PATH: &str = "/lib/modules/load-order";

/// Loads every module named in `order` (a missing list means a kernel with everything built in).
/// Returns the names loaded; a module already present counts as loaded.
pub fn load_listed(order: &Path) -> Vec<String> {
    let Ok(list) = std::fs::read_to_string(order) else {
        debug!(path = %order.display(), "no module list");
        return Vec::new();
    };
    let dir = order.parent().unwrap_or(Path::new("/"));
    let mut loaded = Vec::new();
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                warn!(module = name, error = %e, "cannot open module");
                continue;
            }
        };
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => loaded.push(name.to_string()),
            Err(e) => warn!(module = name, error = %e, "cannot load module"),
        }
    }
    loaded
}
