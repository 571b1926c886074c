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

/// A notify socket and every message sent to it so far.
pub struct Notify {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    ready: Arc<Mutex<bool>>,
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
        let messages = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(Mutex::new(false));
        let reader = {
            let socket = socket.try_clone().expect("clone the notify socket");
            let (messages, ready) = (Arc::clone(&messages), Arc::clone(&ready));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                // Ends when `Drop` shuts the socket down.
                while let Ok(n) = socket.recv(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    for line in text.lines() {
                        if line == "READY=1" {
                            *ready.lock().unwrap() = true;
                        }
                        if let Some(status) = line.strip_prefix("STATUS=") {
                            messages.lock().unwrap().push(status.to_owned());
                        }
                    }
                }
            })
        };
        Self {
            path,
            messages,
            ready,
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
            if *self.ready.lock().unwrap() {
                return Ok(self.statuses());
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
        self.messages.lock().unwrap().clone()
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
