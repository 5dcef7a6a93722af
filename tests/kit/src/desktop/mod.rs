//! Real peers for the desktop tests and bench: an X server with a painting client, headless
//! Chromium driven over DevTools, the signalling relay a host service runs for the viewer, a
//! browserless WebRTC viewer (str0m) that sends keyframe requests on demand, and a real TURN
//! server (coturn).

pub mod chromium;
pub mod relay;
pub mod rtp_viewer;
pub mod turn;
pub mod xserver;
