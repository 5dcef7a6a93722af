//! HTTP/2 settings both ends use: windows large enough that one stream can fill a vsock link,
//! limits small enough that a peer cannot make either end buffer much.

/// Per-stream receive window.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection receive window.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame.
pub const MAX_FRAME: u32 = 256 * 1024;
/// Largest header block.
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Concurrent calls per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Bytes buffered per stream for sending before the writer waits.
pub const MAX_SEND_BUFFER: usize = 1024 * 1024;
