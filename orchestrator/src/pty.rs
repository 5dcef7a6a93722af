//! PTY calls on an [`AgentClient`](crate::AgentClient): [`AgentClient::pty`](crate::AgentClient::pty)
//! opens a session; [`control`] steers it (resize, signal, close).

use protocol::frame::Frame;
use protocol::pty::PtyControl;

use crate::ClientError;

/// Sends a control message on an open `pty` call.
pub async fn control(
    call: &crate::client::StreamCall<protocol::pty::Pty>,
    control: &PtyControl,
) -> Result<(), ClientError> {
    let frame = Frame::message(control)?;
    call.send_frame(frame).await
}
