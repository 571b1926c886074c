//! How far a tail may read. A tail follows row ids, and reads a row only once it is
//! settled (`store::Reach`): one that commits after a higher id was read would otherwise be
//! passed over for good. One task per collector reads how far the rows are settled, after
//! each of its commits and every `OTHERS_EVERY` for other collectors' rows, for all its
//! tails at once.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::store::{Reach, Store, blocking};

/// How often the settled rows are read for rows stored by another collector on the same
/// store; this collector's own commits have them read at once.
const OTHERS_EVERY: Duration = Duration::from_millis(250);

/// Reaches read but not yet settled, kept at most; past it the newest is moved forward
/// instead, which only holds its rows back a little longer.
const PENDING_MAX: usize = 64;

/// The row ids up to which every row is settled, from the reaches read so far.
#[derive(Debug, Default)]
pub(super) struct Settled {
    /// Reaches not yet settled, oldest first: (`settled_by`, `row`).
    pending: VecDeque<(u64, i64)>,
    row: i64,
}

impl Settled {
    /// Takes in a reach just read; returns the row up to which every row is now settled.
    pub(super) fn take(&mut self, reach: Reach) -> i64 {
        let full = self.pending.len() >= PENDING_MAX;
        match self.pending.back_mut() {
            Some(last) if full || last.0 == reach.settled_by => {
                *last = (reach.settled_by, reach.row);
            }
            _ => self.pending.push_back((reach.settled_by, reach.row)),
        }
        while let Some(&(by, row)) = self.pending.front() {
            if by > reach.oldest_running {
                break;
            }
            self.row = self.row.max(row);
            self.pending.pop_front();
        }
        self.row
    }
}

/// Starts the task that publishes the row up to which every row is settled, while any tail
/// listens. `commits` is marked after each of this collector's commits.
pub(super) fn follow_store(
    store: Arc<dyn Store>,
    mut commits: watch::Receiver<()>,
) -> watch::Sender<i64> {
    let (publish, _) = watch::channel(0);
    let settled_rows = publish.clone();
    tokio::spawn(async move {
        let mut settled = Settled::default();
        let mut others = tokio::time::interval(OTHERS_EVERY);
        others.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = commits.changed() => if changed.is_err() {
                    return;
                },
                _ = others.tick() => {}
            }
            if publish.receiver_count() == 0 {
                continue;
            }
            let s = Arc::clone(&store);
            // A failed read is logged by `blocking`; the tails wait for the next one.
            if let Ok(reach) = blocking(move || s.reach()).await {
                let row = settled.take(reach);
                publish.send_if_modified(|published| {
                    let moved = row > *published;
                    *published = (*published).max(row);
                    moved
                });
            }
        }
    });
    settled_rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(row: i64, settled_by: u64, oldest_running: u64) -> Reach {
        Reach {
            row,
            settled_by,
            oldest_running,
        }
    }

    /// Rows read while an older transaction runs wait for it; rows read when none does
    /// settle at once, as every row of a store with one writer does.
    #[test]
    fn rows_settle_once_every_older_transaction_has_ended() {
        let mut settled = Settled::default();
        assert_eq!(settled.take(reach(10, 0, 0)), 10);
        // Transaction 100 runs: rows up to 20 wait for every one older than 105.
        assert_eq!(settled.take(reach(20, 105, 100)), 10);
        assert_eq!(settled.take(reach(30, 107, 100)), 10);
        // 100 ended, 106 still runs: the first reach is settled, the second not yet.
        assert_eq!(settled.take(reach(30, 108, 106)), 20);
        assert_eq!(settled.take(reach(31, 110, 110)), 31);
        assert!(settled.pending.is_empty());
    }

    /// However long a transaction runs, what is kept stays bounded, and nothing settles
    /// early for it.
    #[test]
    fn a_long_transaction_holds_rows_back_in_bounded_memory() {
        let mut settled = Settled::default();
        for n in 0..10_000 {
            assert_eq!(settled.take(reach(n, 1 + n.unsigned_abs(), 1)), 0);
        }
        assert!(settled.pending.len() <= PENDING_MAX);
        assert_eq!(settled.take(reach(10_000, 20_000, 20_000)), 10_000);
    }
}
