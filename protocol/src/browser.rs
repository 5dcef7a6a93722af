//! `browser`: the browser the agent drives in the browser VM (Chromium beside the CLI, on the
//! VM's display). The agent opens a login URL in it when the CLI hands the URL to `$BROWSER` or
//! `xdg-open` and the URL is its provider's; this call says what the browser is doing.

use serde::{Deserialize, Serialize};

use crate::messages::Empty;
use crate::method::{Method, Streaming, Unary};

/// `browser`: the browser's state. `not_found` from an agent that drives no browser (the CLI VM).
#[derive(Debug)]
pub struct Browser;
impl Method for Browser {
    const NAME: &'static str = "browser";
}
impl Unary for Browser {
    type Request = Empty;
    type Response = BrowserState;
}

/// `browser_watch`: what happens to the browser from now on, as it happens (a crash, the restart
/// after it, a login URL's page committing), so the host learns of it without asking. The response
/// opens with [`BrowserEvent::Watching`]; the call lasts until the caller drops it. `not_found`
/// from an agent that drives no browser.
#[derive(Debug)]
pub struct BrowserWatch;
impl Method for BrowserWatch {
    const NAME: &'static str = "browser_watch";
}
impl Streaming for BrowserWatch {
    type Request = Empty;
    type Event = BrowserEvent;
}

/// Messages of a [`BrowserWatch`] response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BrowserEvent {
    /// The watch is in place; events after this one are news.
    Watching {
        /// A browser runs and answers now.
        ready: bool,
        /// How many times it was started so far.
        starts: u32,
    },
    /// The browser exited on its own; the agent starts it again.
    Crashed(BrowserCrash),
    /// A browser was started and answers on its DevTools pipe (after a crash: the restart).
    Started {
        /// Its process id.
        pid: u32,
        /// How many times it was started so far.
        starts: u32,
    },
    /// A login URL the agent opened committed its navigation, or failed to.
    Opened(OpenedUrl),
}

/// What the browser is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserState {
    /// A browser process runs and answers on its DevTools pipe.
    pub ready: bool,
    /// Its process id.
    #[serde(default)]
    pub pid: Option<u32>,
    /// How many times it was started (1, plus one per restart after a crash).
    #[serde(default)]
    pub starts: u32,
    /// Its last exits that were not asked for, oldest first (at most a few).
    #[serde(default)]
    pub crashes: Vec<BrowserCrash>,
    /// Its tabs.
    #[serde(default)]
    pub tabs: Vec<BrowserTab>,
    /// The URLs the agent opened in it, oldest first (at most a few).
    #[serde(default)]
    pub opened: Vec<OpenedUrl>,
}

/// A browser process that exited on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserCrash {
    /// When, in milliseconds of the agent's uptime.
    pub at_ms: u64,
    /// How it ended (`exit status: 1`, `signal: 11`).
    pub status: String,
}

/// One tab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserTab {
    /// The URL it has committed.
    pub url: String,
    /// Its title.
    pub title: String,
}

/// A URL the agent opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedUrl {
    /// The URL.
    pub url: String,
    /// The provider whose rules it matched.
    pub provider: String,
    /// When the CLI handed it over, in milliseconds of the agent's uptime.
    pub requested_ms: u64,
    /// When the tab committed the navigation (the page or its error page), if it has.
    #[serde(default)]
    pub navigated_ms: Option<u64>,
    /// Why the page did not load (the VM may have no network), if it did not.
    #[serde(default)]
    pub error: Option<String>,
}
