//! Health counters: what the agent delivered, what it knows it lost, and how much the spool
//! holds. The pipeline updates them; they are logged periodically and at exit, and served
//! in Prometheus text format on a local address.

use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use std::fmt::Write as _;

use tracing::{info, warn};

#[derive(Debug, Default)]
pub struct Health {
    /// Batches of kernel records the reader handed on: one per drain that found any.
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub tty_bytes: AtomicU64,
    pub lost_records: AtomicU64,
    pub lost_bytes: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_refused: AtomicU64,
}

/// `(name, type, help, value)` for each metric, in exposition order.
type Metric = (&'static str, &'static str, &'static str, u64);

impl Health {
    fn metrics(&self) -> [Metric; 7] {
        [
            (
                "recorder_batches_total",
                "counter",
                "Drains of the kernel's ring buffers that found records.",
                self.batches.load(Relaxed),
            ),
            (
                "recorder_events_total",
                "counter",
                "Events decoded from the kernel programs.",
                self.events.load(Relaxed),
            ),
            (
                "recorder_tty_bytes_total",
                "counter",
                "Terminal bytes captured.",
                self.tty_bytes.load(Relaxed),
            ),
            (
                "recorder_lost_records_total",
                "counter",
                "Records the kernel or decoder lost, counted exactly.",
                self.lost_records.load(Relaxed),
            ),
            (
                "recorder_lost_bytes_total",
                "counter",
                "Payload bytes of the lost records.",
                self.lost_bytes.load(Relaxed),
            ),
            (
                "recorder_spool_bytes",
                "gauge",
                "Bytes held in the spool.",
                self.spool_bytes.load(Relaxed),
            ),
            (
                "recorder_spool_refused_total",
                "counter",
                "Events refused because the spool was full.",
                self.spool_refused.load(Relaxed),
            ),
        ]
    }

    /// Logs what was delivered and what is known lost, at the end.
    pub fn log_totals(&self) {
        info!(
            batches = self.batches.load(Relaxed),
            events = self.events.load(Relaxed),
            tty_bytes = self.tty_bytes.load(Relaxed),
            lost_records = self.lost_records.load(Relaxed),
            lost_bytes = self.lost_bytes.load(Relaxed),
            spool_refused = self.spool_refused.load(Relaxed),
            "stopped"
        );
    }

    /// The Prometheus text exposition of every counter.
    #[must_use]
    pub fn exposition(&self) -> String {
        let mut text = String::new();
        for (name, kind, help, value) in self.metrics() {
            let _ = write!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
        text
    }
}

/// Logs the counters every `every`, with the event rate since the previous log, until the
/// task is dropped.
pub async fn report_every(every: Duration, health: Arc<Health>) {
    let mut ticks = tokio::time::interval(every);
    // The first tick is immediate; the first log comes one period after start.
    ticks.tick().await;
    let (mut last, mut last_events) = (Instant::now(), 0);
    loop {
        ticks.tick().await;
        let events = health.events.load(Relaxed);
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let rate = (events - last_events) as f64 / last.elapsed().as_secs_f64();
        info!(
            events_per_s = rate.round(),
            events,
            lost_records = health.lost_records.load(Relaxed),
            lost_bytes = health.lost_bytes.load(Relaxed),
            spool_bytes = health.spool_bytes.load(Relaxed),
            spool_refused = health.spool_refused.load(Relaxed),
            "health"
        );
        (last, last_events) = (Instant::now(), events);
    }
}

/// Bytes of a request's head (request line and headers) read at most: a scraper's is a few
/// hundred. A head that does not end within it is answered 431.
const MAX_HEAD_BYTES: usize = 8 << 10;
/// Time a client has to send its whole head, however it trickles it; then it is answered
/// 408.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Clients served at once; one more is answered 503 without being read.
const MAX_CLIENTS: usize = 4;
/// What is read and dropped of a refused request's unread bytes before closing, at most:
/// closing with unread bytes resets the connection, which can lose the answer before the
/// client reads it.
const DRAIN_BYTES: usize = 64 << 10;
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);

/// Serves `GET /metrics` on `addr`, each client on a thread of its own, at most
/// `MAX_CLIENTS` at once; returns the bound address. A client holds its thread for at most
/// `HEAD_DEADLINE` and `MAX_HEAD_BYTES` of reading.
pub fn serve(addr: SocketAddr, health: Arc<Health>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let clients = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(error) = admit(stream, &health, &clients) {
                    warn!(%error, "metrics request failed");
                }
            }
        })?;
    Ok(bound)
}

/// Answers the client on a thread of its own, or 503 when `MAX_CLIENTS` are being served.
fn admit(stream: TcpStream, health: &Arc<Health>, clients: &Arc<AtomicUsize>) -> io::Result<()> {
    if clients.fetch_add(1, Relaxed) >= MAX_CLIENTS {
        clients.fetch_sub(1, Relaxed);
        // Only what has arrived is drained: the accepting thread waits for no client.
        return refuse(
            stream,
            "503 Service Unavailable",
            "busy: try again\n",
            Duration::ZERO,
        );
    }
    let (health, served) = (Arc::clone(health), Arc::clone(clients));
    let spawned = std::thread::Builder::new()
        .name("metrics-client".into())
        .spawn(move || {
            if let Err(error) = respond(stream, &health) {
                warn!(%error, "metrics request failed");
            }
            served.fetch_sub(1, Relaxed);
        });
    if let Err(error) = spawned {
        clients.fetch_sub(1, Relaxed);
        return Err(error);
    }
    Ok(())
}

/// Why a request head was not read.
enum Unread {
    TooLarge,
    TooSlow,
    Failed(io::Error),
}

/// Reads a request head up to its blank line, within `MAX_HEAD_BYTES` and
/// `HEAD_DEADLINE`; returns its request line.
fn read_head(stream: &mut TcpStream) -> Result<String, Unread> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0; 1024];
    loop {
        // A bare LF ends lines too, as lenient HTTP/1.1 readers accept.
        let ends = |end: &[u8]| head.windows(end.len()).any(|w| w == end);
        if ends(b"\r\n\r\n") || ends(b"\n\n") {
            let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            return Ok(String::from_utf8_lossy(line).trim_end().to_owned());
        }
        if head.len() >= MAX_HEAD_BYTES {
            return Err(Unread::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Unread::TooSlow);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(Unread::Failed)?;
        let room = buf.len().min(MAX_HEAD_BYTES - head.len());
        match stream.read(&mut buf[..room]) {
            Ok(0) => {
                return Err(Unread::Failed(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Unread::TooSlow);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Unread::Failed(e)),
        }
    }
}

/// Answers one request: the exposition for `GET /metrics`, 404 for anything else, 431 for a
/// head too large and 408 for one too slow.
fn respond(mut stream: TcpStream, health: &Health) -> io::Result<()> {
    let request_line = match read_head(&mut stream) {
        Ok(line) => line,
        Err(Unread::TooLarge) => {
            return refuse(
                stream,
                "431 Request Header Fields Too Large",
                "the request head is over 8 KiB\n",
                DRAIN_DEADLINE,
            );
        }
        Err(Unread::TooSlow) => {
            return refuse(
                stream,
                "408 Request Timeout",
                "the request head took over 5 s\n",
                DRAIN_DEADLINE,
            );
        }
        Err(Unread::Failed(e)) => return Err(e),
    };
    let (status, body) = if request_line.starts_with("GET /metrics ") {
        ("200 OK", health.exposition())
    } else {
        (
            "404 Not Found",
            "not found: the metrics are at /metrics\n".to_owned(),
        )
    };
    answer(&mut stream, status, &body)
}

fn answer(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers a request that is not read, then closes: its write side first, and the rest of
/// what it sent is read and dropped (at most `DRAIN_BYTES`, for at most `drain`; zero:
/// only what has arrived), so that the client reads the answer rather than a reset.
fn refuse(mut stream: TcpStream, status: &str, body: &str, drain: Duration) -> io::Result<()> {
    answer(&mut stream, status, body)?;
    stream.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + drain;
    stream.set_nonblocking(drain.is_zero())?;
    let (mut drained, mut buf) = (0, [0; 4096]);
    while drained < DRAIN_BYTES {
        if !drain.is_zero() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stream.set_read_timeout(Some(left))?;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    fn server() -> SocketAddr {
        serve(([127, 0, 0, 1], 0).into(), Arc::new(Health::default())).unwrap()
    }

    /// The answer to `request`, read until the server closes.
    fn read_answer(stream: &mut TcpStream) -> String {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request).unwrap();
        read_answer(&mut stream)
    }

    const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";

    /// A request line that never ends is answered 431 once 8 KiB of it are read, not read
    /// on; the next request is served.
    #[test]
    fn a_head_that_never_ends_is_refused_after_8_kib() {
        let addr = server();
        let endless = [b"GET /metrics".as_slice(), &[b'x'; 2 * MAX_HEAD_BYTES]].concat();
        let answer = exchange(addr, &endless);
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{answer:?}"
        );
        assert!(exchange(addr, SCRAPE).starts_with("HTTP/1.1 200 OK\r\n"));
    }

    /// A client that sends its head a byte at a time, each well within any per-read timeout,
    /// is answered 408 when its time is up; others are served meanwhile.
    #[test]
    fn a_trickled_head_is_answered_408_and_holds_no_one_up() {
        let addr = server();
        let started = Instant::now();
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let mut trickle = slow.try_clone().unwrap();
        let trickling = thread::spawn(move || {
            for _ in 0..40 {
                thread::sleep(Duration::from_millis(500));
                if trickle.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        assert!(exchange(addr, SCRAPE).starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(
            started.elapsed() < HEAD_DEADLINE,
            "served while the slow client still had time"
        );
        let answer = read_answer(&mut slow);
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer:?}"
        );
        trickling.join().unwrap();
    }

    /// Past `MAX_CLIENTS` held at once, a client is answered 503 at once; once they leave,
    /// clients are served again.
    #[test]
    fn clients_past_the_cap_are_answered_503() {
        let addr = server();
        let held: Vec<TcpStream> = (0..MAX_CLIENTS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        // It sends nothing: the answer is all there is to read, and no reset loses it.
        let answer = read_answer(&mut TcpStream::connect(addr).unwrap());
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer:?}"
        );
        drop(held);
        let deadline = Instant::now() + HEAD_DEADLINE;
        while !exchange(addr, SCRAPE).starts_with("HTTP/1.1 200 OK\r\n") {
            assert!(
                Instant::now() < deadline,
                "not served after the others left"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn exposition_lists_every_counter_with_its_type() {
        let health = Health::default();
        health.events.store(7, Relaxed);
        let text = health.exposition();
        assert!(text.contains("# TYPE recorder_events_total counter\nrecorder_events_total 7\n"));
        assert!(text.contains("# TYPE recorder_spool_bytes gauge\nrecorder_spool_bytes 0\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 7);
    }
}
