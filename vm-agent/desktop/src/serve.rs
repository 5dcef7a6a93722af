//! The `desktop` call: answers a viewer's offer and relays its signalling for as long as it watches.
//!
//! The agent's rpc layer opens the call (reads the offer) and turns what [`serve`] returns into the
//! response; this crate knows frames and bodies, not HTTP.

use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;
use protocol::body::{ChannelBody, FrameReader};
use protocol::desktop::{DesktopEvent, DesktopOffer, DesktopSignal};
use protocol::frame::{Frame, FrameKind, DEFAULT_MAX_FRAME};
use protocol::{ErrorBody, ErrorCode};
use tokio::sync::mpsc;
use tracing::debug;

use super::encode::EncoderSettings;
use super::rtc::Session;
use super::Desktops;

/// Largest SDP or signal message accepted (a browser offer is a few KiB).
pub const MAX_SIGNAL_FRAME: usize = if 256 * 1024 < DEFAULT_MAX_FRAME {
    256 * 1024
} else {
    DEFAULT_MAX_FRAME
};

/// Serves one `desktop` call whose `offer` has been read: answers it and returns the body of
/// events (the answer first); `reader` yields the viewer's further signals.
pub async fn serve<B>(
    desktops: Arc<Desktops>,
    offer: DesktopOffer,
    mut reader: FrameReader<B>,
) -> Result<ChannelBody, ErrorBody>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Send,
{
    let display = offer
        .display
        .clone()
        .or_else(|| desktops.default_display().map(str::to_owned))
        .ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::NotFound,
                "no display: the offer names none and the agent has none configured",
            )
        })?;
    let settings = EncoderSettings::from_request(&offer.video);
    let called = std::time::Instant::now();
    let screen = {
        let desktops = desktops.clone();
        let display = display.clone();
        match tokio::task::spawn_blocking(move || desktops.screen(&display, settings)).await {
            Ok(Ok(screen)) => screen,
            Ok(Err(e)) => return Err(e.to_error_body()),
            Err(e) => return Err(ErrorBody::new(ErrorCode::Internal, e.to_string())),
        }
    };
    let screen_ms = called.elapsed().as_millis() as u64;
    let (session, answer) = Session::answer(screen, &offer.sdp, &offer.ice, desktops.dtls_cert())
        .await
        .map_err(|e| e.to_error_body())?;
    // Where a viewer's start goes (a slow guest makes each step visible).
    debug!(
        screen_ms,
        answer_ms = called.elapsed().as_millis() as u64,
        "desktop offer answered"
    );
    let (tx, body) = ChannelBody::channel(16);
    let (signals_tx, signals_rx) = mpsc::channel(64);
    let (events_tx, mut events_rx) = mpsc::channel::<DesktopEvent>(64);
    tokio::spawn(async move {
        if tx
            .send_message(&DesktopEvent::Answer { sdp: answer })
            .await
            .is_err()
        {
            return;
        }
        let session = tokio::spawn(session.run(signals_rx, events_tx));
        let relay_in = async {
            loop {
                match reader.next().await {
                    Ok(Some(frame)) if frame.kind == FrameKind::Message => {
                        match frame.json::<DesktopSignal>() {
                            Ok(signal) => {
                                if signals_tx.send(signal).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                debug!(error = %e, "malformed desktop signal");
                                let _ = tx.send(Frame::error(&e.to_error_body())).await;
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    // The caller finished sending (or reset its half): the session goes on until
                    // the whole call is dropped.
                    Ok(None) | Err(_) => std::future::pending::<()>().await,
                }
            }
        };
        let relay_out = async {
            while let Some(event) = events_rx.recv().await {
                if tx.send_message(&event).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = relay_in => {}
            () = relay_out => {}
            () = tx.closed() => {}
        }
        // Dropping the event receiver tells the session its caller is gone.
        drop(events_rx);
        if let Ok(reason) = session.await {
            let _ = tx.send_message(&DesktopEvent::Closed { reason }).await;
        }
    });
    Ok(body)
}
