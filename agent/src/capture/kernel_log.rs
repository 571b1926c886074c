//! The kernel programs' own log messages (aya-log): the few rare anomalies a record cannot
//! tell, such as who wrote past the terminal step budget (docs/capture.md, "Kernel log
//! messages"). aya-log hands them to the `log` crate, which `init_logging` bridges into
//! `tracing`, so they reach the agent's log beside its own lines.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

/// Takes the programs' log ring out of `ebpf`, before the programs load (they need the ring
/// open then), and returns the task that forwards its messages, to run on the agent's
/// runtime for as long as the programs do. Without the ring the agent captures all the
/// same, only without those messages.
pub fn forwarder(ebpf: &mut Ebpf) -> Option<impl Future<Output = ()> + Send + use<>> {
    let logger = EbpfLogger::init(ebpf)
        .inspect_err(|e| warn!(error = %e, "kernel log messages are not forwarded"))
        .ok()?;
    Some(async move {
        // SAFETY: the fd is the log ring's, which the logger owns and keeps open, unchanged,
        // until it is dropped, with the `AsyncFd` that owns it.
        let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
        let mut logger = match registered {
            Ok(logger) => logger,
            Err(e) => {
                warn!(error = %e, "kernel log messages are not forwarded");
                return;
            }
        };
        while let Ok(mut ready) = logger.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    })
}
