//! Readiness as a service manager sees it: a binary under test is given `NOTIFY_SOCKET`, and
//! its `sd_notify` messages (`READY=1`, `STATUS=…`) are collected here. Tests wait on these,
//! never on log text.

use std::{
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Child, Command},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::Scratch;

/// What the child said so far.
#[derive(Default)]
struct Seen {
    ready: bool,
    /// Every `STATUS=`, oldest first.
    statuses: Vec<String>,
}

/// A notify socket and every message sent to it so far.
pub struct Notify {
    path: PathBuf,
    seen: Arc<Mutex<Seen>>,
    reader: Option<JoinHandle<()>>,
    socket: UnixDatagram,
    _dir: Scratch,
}

impl Notify {
    #[must_use]
    pub fn new() -> Self {
        let dir = Scratch::new("notify");
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind a notify socket");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = {
            let socket = socket.try_clone().expect("clone the notify socket");
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                // Ends when `Drop` shuts the socket down.
                while let Ok(n) = socket.recv(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    // One datagram is taken whole, under one lock: `READY=1` comes before
                    // its `STATUS=` line, and a waiter woken between the two would read
                    // the statuses without the one sent with readiness.
                    let mut seen = seen.lock().unwrap();
                    for line in text.lines() {
                        if line == "READY=1" {
                            seen.ready = true;
                        }
                        if let Some(status) = line.strip_prefix("STATUS=") {
                            seen.statuses.push(status.to_owned());
                        }
                    }
                }
            })
        };
        Self {
            path,
            seen,
            reader: Some(reader),
            socket,
            _dir: dir,
        }
    }

    /// Gives `cmd` this socket.
    pub fn pass_to(&self, cmd: &mut Command) {
        cmd.env("NOTIFY_SOCKET", &self.path);
    }

    /// Waits until the child says `READY=1`, and returns its statuses so far; `Err` with why
    /// when it exits first or takes longer than `timeout`.
    pub fn wait_ready(&self, child: &mut Child, timeout: Duration) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                if seen.ready {
                    return Ok(seen.statuses.clone());
                }
            }
            if let Some(status) = child.try_wait().expect("wait") {
                return Err(format!("it exited with {status} before it was ready"));
            }
            if Instant::now() > deadline {
                return Err(format!("it was not ready within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every `STATUS=` the child sent, oldest first.
    #[must_use]
    pub fn statuses(&self) -> Vec<String> {
        self.seen.lock().unwrap().statuses.clone()
    }

    /// Waits until a status holding `text` arrives.
    #[must_use]
    pub fn wait_status(&self, timeout: Duration, text: &str) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.statuses().iter().any(|s| s.contains(text)) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Default for Notify {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        // A datagram to ourselves wakes the reader if shutdown did not.
        let _ = UnixDatagram::unbound().and_then(|s| s.send_to(b"", &self.path));
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
