//! Which coordinator connection a participant answers.
//!
//! A participant may hold several coordinator connections at once: the coordinator's
//! current one, a stale one of a previous incarnation whose close is not seen yet, or one
//! that connects and closes again at once. Its votes, acks and inquiries go to exactly
//! one: the live connection with the highest epoch, the latest accepted among equals (a
//! coordinator that reconnects keeps its epoch, and its old connection may still look
//! open). A connection that opens and closes therefore changes nothing once it is gone, and
//! when the serving one closes the next best live one serves, if any.
//!
//! Invariants: only connections the caller admitted as coordinators are here; the set is
//! bounded by the transport's connection limit (each entry is a live connection).

use twophase_engine::Epoch;
use twophase_net::ConnId;

#[derive(Clone, Copy, Debug)]
struct Link {
    conn: ConnId,
    epoch: Epoch,
    /// Order of acceptance, to prefer the latest among equal epochs.
    accepted: u64,
}

#[derive(Default, Debug)]
pub struct CoordinatorLinks {
    live: Vec<Link>,
    serving: Option<ConnId>,
    accepted: u64,
}

impl CoordinatorLinks {
    /// A coordinator connection completed its handshake claiming `epoch`. Returns whether it
    /// is now the one served.
    pub fn accept(&mut self, conn: ConnId, epoch: Epoch) -> bool {
        assert!(!self.contains(conn), "connection {conn} accepted twice");
        self.accepted += 1;
        self.live.push(Link { conn, epoch, accepted: self.accepted });
        self.choose();
        self.serving == Some(conn)
    }

    /// A connection closed (any connection: ones that are not here are ignored). Returns the
    /// connection served from now on when the serving one was closed.
    pub fn close(&mut self, conn: ConnId) -> Option<ConnId> {
        let before = self.live.len();
        self.live.retain(|link| link.conn != conn);
        if self.live.len() == before || self.serving != Some(conn) {
            return None;
        }
        self.choose();
        self.serving
    }

    pub fn contains(&self, conn: ConnId) -> bool {
        self.live.iter().any(|link| link.conn == conn)
    }

    /// Where messages for the coordinator go; `None` while no coordinator is connected.
    pub fn serving(&self) -> Option<ConnId> {
        self.serving
    }

    fn choose(&mut self) {
        self.serving = self.live.iter().max_by_key(|link| (link.epoch, link.accepted)).map(|link| link.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_opens_and_closes_changes_nothing() {
        let mut links = CoordinatorLinks::default();
        assert!(links.accept(1, Epoch(3)));
        // Claims a lower epoch: never served.
        assert!(!links.accept(2, Epoch(1)));
        assert_eq!(links.serving(), Some(1));
        assert_eq!(links.close(2), None);
        assert_eq!(links.serving(), Some(1));
        // Claims the same or a higher epoch: served while open, then back to the first.
        assert!(links.accept(3, Epoch(3)));
        assert_eq!(links.close(3), Some(1));
        assert_eq!(links.serving(), Some(1));
    }

    #[test]
    fn the_highest_epoch_serves_and_a_close_falls_back_to_the_best_live_one() {
        let mut links = CoordinatorLinks::default();
        links.accept(1, Epoch(1));
        links.accept(2, Epoch(2));
        links.accept(3, Epoch(2));
        assert!(!links.accept(4, Epoch(1)));
        assert_eq!(links.serving(), Some(3), "the latest of the highest epoch");
        assert_eq!(links.close(1), None, "closing one that does not serve changes nothing");
        assert_eq!(links.close(3), Some(2));
        assert_eq!(links.close(2), Some(4));
        assert_eq!(links.close(4), None);
        assert_eq!(links.serving(), None);
        assert_eq!(links.close(99), None, "an unknown connection is ignored");
    }

    #[test]
    fn a_restarted_coordinator_takes_over_before_the_old_connection_is_seen_closed() {
        let mut links = CoordinatorLinks::default();
        links.accept(1, Epoch(5));
        assert!(links.accept(2, Epoch(6)));
        assert_eq!(links.close(1), None);
        assert_eq!(links.serving(), Some(2));
        assert!(links.contains(2) && !links.contains(1));
    }
}
