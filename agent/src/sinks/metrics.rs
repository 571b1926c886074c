//! Health counters: what the agent delivered, what it knows it lost, and how much the spool
//! holds. The pipeline updates them; they are logged periodically and at exit, and served
//! in Prometheus text format on a local address.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use std::fmt::Write as _;

use tracing::{info, warn};

#[derive(Debug, Default)]
pub struct Health {
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
    fn metrics(&self) -> [Metric; 6] {
        [
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

/// Serves `GET /metrics` on `addr` from a thread of its own; returns the bound address.
pub fn serve(addr: SocketAddr, health: Arc<Health>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(error) = respond(stream, &health) {
                    warn!(%error, "metrics request failed");
                }
            }
        })?;
    Ok(bound)
}

/// Answers one request: the exposition for `GET /metrics`, 404 for anything else.
fn respond(stream: TcpStream, health: &Health) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Headers are read and ignored, so the client sees a complete exchange.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let (status, body) = if request_line.starts_with("GET /metrics ") {
        ("200 OK", health.exposition())
    } else {
        (
            "404 Not Found",
            "not found: the metrics are at /metrics\n".to_owned(),
        )
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lists_every_counter_with_its_type() {
        let health = Health::default();
        health.events.store(7, Relaxed);
        let text = health.exposition();
        assert!(text.contains("# TYPE recorder_events_total counter\nrecorder_events_total 7\n"));
        assert!(text.contains("# TYPE recorder_spool_bytes gauge\nrecorder_spool_bytes 0\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 6);
    }
}
