//! What a golden image tells its agent (`/etc/vm-agent/agent.toml`, written by the image recipe in
//! `rootfs/<image>/files`): the display it streams, the programs of its X session, and the
//! browser it drives. Read once at boot when the agent is the VM's init; an agent started any
//! other way (development, tests) reads no file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::warn;

/// Where the image puts the file.
pub const IMAGE_CONFIG_PATH: &str = "/etc/vm-agent/agent.toml";

/// The image's configuration of its agent.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// The X display the desktop streams and the browser shows on.
    pub display: Option<String>,
    /// The unprivileged user every exec and PTY program runs as unless a call names another.
    pub user: Option<String>,
    /// Programs started in order at boot, each once the one before is ready, restarted when they
    /// exit.
    #[serde(default)]
    pub service: Vec<ServiceConfig>,
    /// The browser the agent drives (the browser VM's Chromium).
    pub browser: Option<BrowserConfig>,
}

/// One program of the image's session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name, for logs.
    pub name: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment added to the agent's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The service counts as ready once this path exists (the X server's socket).
    #[serde(default)]
    pub ready_path: Option<PathBuf>,
    /// The user it runs as (default: the image's unprivileged [`ImageConfig::user`]).
    #[serde(default)]
    pub user: Option<String>,
}

/// The browser the agent starts and drives over Chromium's DevTools pipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserConfig {
    /// The program (default `chromium`).
    #[serde(default = "chromium")]
    pub program: String,
    /// The unprivileged user it runs as.
    pub user: String,
    /// The X display it shows on.
    pub display: String,
    /// Its flags (the agent adds the DevTools pipe and the profile directory).
    #[serde(default)]
    pub args: Vec<String>,
}

fn chromium() -> String {
    "chromium".to_owned()
}

impl ImageConfig {
    /// The file at `path`, or the empty configuration when there is none; a file that does not
    /// parse is logged and ignored (the agent still serves the host).
    pub fn load(path: &Path) -> ImageConfig {
        let Ok(text) = std::fs::read_to_string(path) else {
            return ImageConfig::default();
        };
        toml::from_str(&text).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "image configuration refused");
            ImageConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `agent.toml` of image `image`'s recipe, parsed strictly.
    fn recipe(image: &str) -> ImageConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../rootfs/{image}/files/etc/vm-agent/agent.toml"));
        let text = std::fs::read_to_string(path).expect("the recipe's file");
        toml::from_str(&text).expect("parses")
    }

    #[test]
    fn the_browser_images_file_parses() {
        let config = recipe("browser");
        assert_eq!(config.display.as_deref(), Some(":0"));
        assert_eq!(
            config.user.as_deref(),
            Some("user"),
            "programs run unprivileged"
        );
        let names: Vec<&str> = config.service.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["x-server", "window-manager", "terminal"]);
        let browser = config.browser.expect("a browser");
        assert_eq!(
            (browser.program.as_str(), browser.user.as_str()),
            ("chromium", "user")
        );
    }

    #[test]
    fn the_cli_images_file_names_its_unprivileged_user() {
        let config = recipe("cli");
        assert_eq!(config.user.as_deref(), Some("user"));
        assert!(config.browser.is_none() && config.display.is_none());
    }

    #[test]
    fn no_file_is_the_empty_configuration() {
        let config = ImageConfig::load(Path::new("/nonexistent/agent.toml"));
        assert!(config.display.is_none() && config.service.is_empty() && config.browser.is_none());
    }
}
