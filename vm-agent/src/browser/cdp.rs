//! Chromium's DevTools protocol over `--remote-debugging-pipe`: the browser reads commands on its
//! fd 3 and writes answers and events on its fd 4, each message a JSON object ended by a NUL byte.
//! No TCP port: nothing else in the VM can drive the browser.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::BrowserError;

/// The longest a DevTools message may be (a target list with long URLs is a few KiB).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// One browser process's DevTools pipe.
#[derive(Debug)]
pub struct Cdp {
    commands: Mutex<File>,
    pending: Pending,
    next: AtomicU64,
}

impl Cdp {
    /// Talks to the browser through `commands` (its fd 3) and `answers` (its fd 4); answers are
    /// read on a thread of their own until the browser closes the pipe.
    pub fn new(commands: File, answers: File) -> Cdp {
        let pending: Pending = Arc::default();
        let reading = pending.clone();
        std::thread::spawn(move || read_answers(answers, &reading));
        Cdp {
            commands: Mutex::new(commands),
            pending,
            next: AtomicU64::new(1),
        }
    }

    /// Sends `method` with `params` (to the target attached as `session`, if given) and waits up
    /// to `timeout` for its result.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        session: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        {
            let mut commands = self.commands.lock().unwrap_or_else(|p| p.into_inner());
            commands.write_all(&bytes).map_err(BrowserError::Pipe)?;
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(message))) => Err(BrowserError::Refused {
                method: method.to_owned(),
                message,
            }),
            Ok(Err(_)) => Err(BrowserError::Gone),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                Err(BrowserError::Timeout(method.to_owned()))
            }
        }
    }
}

/// Hands each answer to its caller; events are not used. Ends, failing every pending call, when
/// the browser closes its end.
fn read_answers(answers: File, pending: &Pending) {
    let mut reader = BufReader::new(answers);
    let mut message = Vec::new();
    loop {
        message.clear();
        match reader
            .by_ref()
            .take(MAX_MESSAGE as u64)
            .read_until(0, &mut message)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if message.last() != Some(&0) {
            // Over the limit or cut off: nothing after it can be framed.
            break;
        }
        message.pop();
        let Ok(value) = serde_json::from_slice::<Value>(&message) else {
            continue;
        };
        let Some(id) = value.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(waiter) = waiter {
            let answer = match value.get("error") {
                Some(error) => Err(error["message"].as_str().unwrap_or("error").to_owned()),
                None => Ok(value.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = waiter.send(answer);
        }
    }
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}
