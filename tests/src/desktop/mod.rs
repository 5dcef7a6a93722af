//! Real peers for the desktop tests and bench: an X server with a painting client, headless
//! Chromium driven over DevTools, and the signalling relay a host service runs for the viewer.

pub mod chromium;
pub mod relay;
pub mod xserver;
