//! Several viewers of one desktop, as when a user opens the desktop in a second tab or a helper
//! watches along: both see the same screen, only the viewer holding control drives it, control
//! moves on request and comes back when the holder leaves. Real agent, Xvfb, and two headless
//! Chromium viewers.

use std::time::Duration;

use orchestrator::desktop::DesktopSession;
use protocol::desktop::DesktopEvent;
use test_kit::desktop::chromium::Chromium;
use test_kit::desktop::relay::Relay;
use test_kit::desktop::xserver::{Canvas, Xvfb};
use test_kit::AgentProcess;

fn open_viewer(relay: &Relay) -> Chromium {
    Chromium::viewer(&format!("http://{}/", relay.addr))
}

/// Reads `session`'s events until it hears whether it holds control; returns that.
fn control_event(rt: &tokio::runtime::Runtime, session: &mut DesktopSession) -> bool {
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, session.next_event()).await {
                Ok(Ok(Some(DesktopEvent::Control { held }))) => return held,
                Ok(Ok(Some(_))) => {}
                other => panic!("no control event: {other:?}"),
            }
        }
    })
}

/// Clicks at `ignored` in the viewer without control, then (a second later) at `expected` in the
/// one with control; the X client's first click must be the expected one.
fn only_the_controller_clicks(
    canvas: &Canvas,
    without: &mut Chromium,
    ignored: (i16, i16),
    with: &mut Chromium,
    expected: (i16, i16),
) {
    without.click(f64::from(ignored.0), f64::from(ignored.1));
    std::thread::sleep(Duration::from_secs(1));
    with.click(f64::from(expected.0), f64::from(expected.1));
    let click = canvas
        .wait_click(Duration::from_secs(10))
        .expect("the X client saw no click");
    assert_eq!(
        (click.1, click.2),
        expected,
        "the first click the X client saw must come from the viewer in control \
         (the other viewer clicked at {ignored:?} first)"
    );
}

#[test]
fn two_viewers_watch_one_desktop_and_only_the_one_in_control_drives_it() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let x = Xvfb::start(1280, 720);
    let canvas = Canvas::open(&x.display, 0x202020);
    let (_agent, relay) = rt.block_on(async {
        let agent = AgentProcess::start_with(&[("DISPLAY", x.display.as_str())]).await;
        let relay = Relay::start(agent.client().await, None).await;
        (agent, relay)
    });
    let mut first = open_viewer(&relay);
    let mut second = open_viewer(&relay);
    let mut sessions: Vec<DesktopSession> = relay.sessions.lock().unwrap().drain(..).collect();
    assert_eq!(sessions.len(), 2, "two viewer sessions");
    let mut second_session = sessions.pop().expect("second");
    let mut first_session = sessions.pop().expect("first");

    // Both see what X clients paint.
    for rgb in [0x20c040, 0xd02060] {
        canvas.paint(rgb);
        first.wait_colour(640, 360, rgb, 40);
        second.wait_colour(640, 360, rgb, 40);
    }

    // The first viewer holds control; the second's clicks are ignored.
    assert!(
        control_event(&rt, &mut first_session),
        "first holds control"
    );
    assert!(!control_event(&rt, &mut second_session), "second watches");
    // The pages know it too: the watching one offers to take control.
    first.wait_for("viewer.control === true", Duration::from_secs(20));
    second.wait_for(
        "viewer.control === false && !document.getElementById('control').hidden",
        Duration::from_secs(20),
    );
    only_the_controller_clicks(&canvas, &mut second, (100, 100), &mut first, (900, 500));

    // The second takes control with the page's button: now the first's clicks are ignored.
    second.eval("document.getElementById('control').click(); true");
    assert!(
        control_event(&rt, &mut second_session),
        "second took control"
    );
    assert!(
        !control_event(&rt, &mut first_session),
        "first lost control"
    );
    second.wait_for("viewer.control === true", Duration::from_secs(20));
    first.wait_for("viewer.control === false", Duration::from_secs(20));
    only_the_controller_clicks(&canvas, &mut first, (200, 150), &mut second, (1000, 600));

    // The holder leaves: control comes back to the remaining viewer, which drives the desktop again
    // and still sees it.
    drop(second_session);
    drop(second);
    assert!(
        control_event(&rt, &mut first_session),
        "control returned to the first viewer"
    );
    first.wait_for("viewer.control === true", Duration::from_secs(20));
    first.click(640.0, 360.0);
    let click = canvas
        .wait_click(Duration::from_secs(10))
        .expect("the remaining viewer's click");
    assert_eq!((click.1, click.2), (640, 360));
    canvas.paint(0x1040e0);
    first.wait_colour(640, 360, 0x1040e0, 40);
}
