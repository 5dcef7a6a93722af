//! The `desktop` call: answers a viewer's offer and relays its signalling for as long as it watches.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use protocol::body::ChannelBody;
use protocol::desktop::{Desktop, DesktopEvent, DesktopSignal};
use protocol::frame::{Frame, FrameKind, DEFAULT_MAX_FRAME};
use protocol::{ErrorBody, ErrorCode};
use tokio::sync::mpsc;
use tracing::debug;

use super::encode::EncoderSettings;
use super::rtc::Session;
use super::{default_display, DesktopError, Desktops};
use crate::rpc::body::{error, open_stream, ResponseBody};

/// Largest SDP or signal message accepted (a browser offer is a few KiB).
const MAX_SIGNAL_FRAME: usize = 256 * 1024;

/// Serves one `desktop` call.
pub async fn serve(desktops: Arc<Desktops>, req: Request<Incoming>) -> Response<ResponseBody> {
    let (offer, mut reader) =
        match open_stream::<Desktop>(req, MAX_SIGNAL_FRAME.min(DEFAULT_MAX_FRAME)).await {
            Ok(opened) => opened,
            Err(e) => return error(&e),
        };
    let display = offer.display.clone().unwrap_or_else(default_display);
    let settings = EncoderSettings::from_request(&offer.video);
    let screen = {
        let desktops = desktops.clone();
        let display = display.clone();
        match tokio::task::spawn_blocking(move || desktops.screen(&display, settings)).await {
            Ok(Ok(screen)) => screen,
            Ok(Err(e)) => return error(&e.to_error_body()),
            Err(e) => return error(&ErrorBody::new(ErrorCode::Internal, e.to_string())),
        }
    };
    let (session, answer) = match Session::answer(screen, &offer.sdp, &offer.ice).await {
        Ok(s) => s,
        Err(e) => return error(&e.to_error_body()),
    };
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
    Response::builder()
        .status(StatusCode::OK)
        .body(body.boxed())
        .unwrap_or_else(|_| error(&DesktopError::Rtc("response".into()).to_error_body()))
}
