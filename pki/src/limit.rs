//! How many connections a server holds at once, in total and from each remote address.
//! A connection counts from the moment it is accepted (so a handshake in progress counts)
//! until the server drops it; one over either limit is closed as soon as it is accepted,
//! before a byte of it is read.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// Caps on the connections a server holds at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub total: usize,
    /// From one remote IP address (an IPv4 client on an IPv6 socket counts as its IPv4
    /// address).
    pub per_peer: usize,
}

impl ConnectionLimits {
    /// As many as the process can hold.
    pub const NONE: ConnectionLimits = ConnectionLimits {
        total: usize::MAX,
        per_peer: usize::MAX,
    };
}

/// Which limit a refused connection was over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Over {
    #[error("{0} connections are open, the most this server holds")]
    Total(usize),
    #[error("{0} connections from this address are open, the most it may hold")]
    Peer(usize),
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// The connections held, shared by the accept loop and every connection's [`Slot`].
#[derive(Clone, Debug)]
pub(crate) struct Connections {
    limits: ConnectionLimits,
    held: Arc<Mutex<Held>>,
}

fn lock(held: &Mutex<Held>) -> MutexGuard<'_, Held> {
    // The counts are consistent between statements: a panic elsewhere leaves them usable.
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Connections {
    pub(crate) fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            held: Arc::default(),
        }
    }

    /// A place for a connection from `ip`, or the limit it is over.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Slot, Over> {
        let ip = ip.to_canonical();
        let mut held = lock(&self.held);
        if held.total >= self.limits.total {
            return Err(Over::Total(self.limits.total));
        }
        let from_peer = held.per_peer.get(&ip).copied().unwrap_or(0);
        if from_peer >= self.limits.per_peer {
            return Err(Over::Peer(self.limits.per_peer));
        }
        held.per_peer.insert(ip, from_peer + 1);
        held.total += 1;
        Ok(Slot {
            held: Arc::clone(&self.held),
            ip,
        })
    }
}

/// One connection's place in the count, given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    held: Arc<Mutex<Held>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        held.total -= 1;
        if let Entry::Occupied(mut peer) = held.per_peer.entry(self.ip) {
            *peer.get_mut() -= 1;
            if *peer.get() == 0 {
                peer.remove();
            }
        }
    }
}

/// How often refusals are logged at most: a flood of connections must not flood the log.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Logs refused connections, at most once per [`LOG_EVERY`], with how many went unlogged.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    logged: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    pub(crate) fn refused(&mut self, remote: SocketAddr, over: Over) {
        let now = Instant::now();
        if self.logged.is_some_and(|at| now - at < LOG_EVERY) {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(%remote, also_refused = self.unlogged, "connection closed at accept: {over}");
        (self.logged, self.unlogged) = (Some(now), 0);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    const C: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));

    #[test]
    fn each_address_and_the_total_are_capped_until_a_slot_is_given_back() {
        let connections = Connections::new(ConnectionLimits {
            total: 3,
            per_peer: 2,
        });
        let a1 = connections.admit(A).unwrap();
        let _a2 = connections.admit(A).unwrap();
        assert_eq!(connections.admit(A).unwrap_err(), Over::Peer(2));
        let _b = connections.admit(B).unwrap();
        assert_eq!(connections.admit(C).unwrap_err(), Over::Total(3));
        drop(a1);
        assert_eq!(
            connections.admit(B).map(drop),
            Ok(()),
            "A's closed connection freed a place in the total"
        );
        let _a3 = connections.admit(A).unwrap();
        assert_eq!(connections.admit(A).unwrap_err(), Over::Total(3));
        assert!(lock(&connections.held).per_peer.len() == 2, "no count of C");
    }

    /// An IPv4 client reaching an IPv6 socket is the same peer as over IPv4.
    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_peer() {
        let connections = Connections::new(ConnectionLimits {
            total: 10,
            per_peer: 1,
        });
        let _a = connections.admit(A).unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(connections.admit(mapped).unwrap_err(), Over::Peer(1));
        assert!(connections.admit(IpAddr::V6(Ipv6Addr::LOCALHOST)).is_ok());
    }
}
