//! Frames for participants a coordinator role has not reached yet.
//!
//! A role starts listening for clients while it is still dialing its participants; a group's
//! new leader even starts its whole network at once. A transaction submitted in those first
//! milliseconds would lose its Prepare (and wait out the prepare timeout, seconds) only
//! because the connection was not up yet. Until a participant's first connection, its frames
//! wait here, in the order they were built, and leave when it connects.
//!
//! Only the first connection is awaited, and only until a deadline (the prepare timeout,
//! past which every held Prepare's transaction has aborted anyway): once a participant was
//! connected, losing it makes the engine abort its transactions (`participant_unreachable`),
//! and frames to it are lost as before (prepares time out, commits are re-driven). Holding
//! is safe whatever is held: frames leave in order, so a held Prepare is followed by its
//! transaction's Abort if the coordinator gave up on it meanwhile.
//!
//! Invariants: a participant's frames leave in the order they were held, before anything
//! sent after its connection; at most `HELD_BYTES_MAX` per participant are held, beyond
//! which frames are dropped (their transactions time out, as without holding); nothing is
//! held past the deadline.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use twophase_engine::ParticipantId;

/// Most bytes held for one participant that has not connected yet: a few full batches.
pub const HELD_BYTES_MAX: usize = 8 << 20;

/// What is held for one participant not connected yet.
#[derive(Debug, Default)]
struct Waiting {
    frames: Vec<Bytes>,
    bytes: usize,
    dropped_frames: u64,
}

#[derive(Debug)]
pub struct HeldFrames {
    /// Participants never connected since this role started.
    waiting: HashMap<ParticipantId, Waiting>,
    /// When holding stops: what is still held then is dropped.
    until: Instant,
}

/// What became of a frame offered to [`HeldFrames::hold`].
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// Kept until the participant connects.
    Kept,
    /// The participant's holding is full: the frame is lost.
    Dropped,
    /// The participant was connected before: the caller's usual path applies.
    NotAwaited,
}

impl HeldFrames {
    /// Every participant in `participants` is awaited, until `until`.
    pub fn awaiting(participants: impl IntoIterator<Item = ParticipantId>, until: Instant) -> HeldFrames {
        HeldFrames { waiting: participants.into_iter().map(|p| (p, Waiting::default())).collect(), until }
    }

    /// Holds `frame` for `participant` if it has not connected yet.
    pub fn hold(&mut self, participant: ParticipantId, frame: Bytes, now: Instant) -> Held {
        self.expire(now);
        let Some(waiting) = self.waiting.get_mut(&participant) else { return Held::NotAwaited };
        if waiting.bytes + frame.len() > HELD_BYTES_MAX {
            waiting.dropped_frames += 1;
            if waiting.dropped_frames == 1 {
                // Once per participant: a full holding drops every frame of every step after.
                tracing::warn!(%participant, "no room to hold more frames for a participant not connected yet; dropping");
            }
            return Held::Dropped;
        }
        waiting.bytes += frame.len();
        waiting.frames.push(frame);
        assert!(waiting.bytes <= HELD_BYTES_MAX);
        Held::Kept
    }

    /// `participant` connected: it is awaited no more. Returns what was held for it, in
    /// order, and how many frames were dropped for want of room.
    pub fn release(&mut self, participant: ParticipantId, now: Instant) -> (Vec<Bytes>, u64) {
        self.expire(now);
        self.waiting.remove(&participant).map_or((Vec::new(), 0), |w| (w.frames, w.dropped_frames))
    }

    /// Past the deadline nothing is awaited any more, and what was held is dropped.
    fn expire(&mut self, now: Instant) {
        if now >= self.until && !self.waiting.is_empty() {
            let frames: usize = self.waiting.values().map(|w| w.frames.len()).sum();
            if frames > 0 {
                tracing::warn!(frames, "participants not connected in time; their held frames are dropped");
            }
            self.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    const P1: ParticipantId = ParticipantId(1);
    const P2: ParticipantId = ParticipantId(2);

    fn awaiting(participants: &[ParticipantId]) -> (HeldFrames, Instant) {
        let now = Instant::now();
        (HeldFrames::awaiting(participants.iter().copied(), now + Duration::from_secs(2)), now)
    }

    #[test]
    fn frames_wait_in_order_for_the_first_connection_only() {
        let (mut held, now) = awaiting(&[P1, P2]);
        assert_eq!(held.hold(P1, Bytes::from_static(b"a"), now), Held::Kept);
        assert_eq!(held.hold(P1, Bytes::from_static(b"b"), now), Held::Kept);
        assert_eq!(held.release(P1, now), (vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")], 0));
        // Connected once: nothing is held for it again.
        assert_eq!(held.hold(P1, Bytes::from_static(b"c"), now), Held::NotAwaited);
        assert_eq!(held.release(P1, now), (Vec::new(), 0));
        assert_eq!(held.hold(P2, Bytes::from_static(b"d"), now), Held::Kept);
    }

    #[test]
    fn holding_is_bounded_per_participant() {
        let (mut held, now) = awaiting(&[P1, P2]);
        let big = Bytes::from(vec![0u8; HELD_BYTES_MAX / 2]);
        assert_eq!(held.hold(P1, big.clone(), now), Held::Kept);
        assert_eq!(held.hold(P1, big.clone(), now), Held::Kept);
        assert_eq!(held.hold(P1, Bytes::from_static(b"x"), now), Held::Dropped);
        assert_eq!(held.hold(P2, big, now), Held::Kept, "another participant has room of its own");
        let (frames, dropped) = held.release(P1, now);
        assert_eq!((frames.len(), dropped), (2, 1));
    }

    #[test]
    fn a_participant_outside_the_topology_is_never_awaited() {
        let (mut held, now) = awaiting(&[P1]);
        assert_eq!(held.hold(P2, Bytes::from_static(b"a"), now), Held::NotAwaited);
    }

    #[test]
    fn nothing_is_held_past_the_deadline() {
        let (mut held, now) = awaiting(&[P1, P2]);
        assert_eq!(held.hold(P1, Bytes::from_static(b"a"), now), Held::Kept);
        let late = now + Duration::from_secs(2);
        assert_eq!(held.hold(P2, Bytes::from_static(b"b"), late), Held::NotAwaited);
        assert_eq!(held.release(P1, late), (Vec::new(), 0), "a frame held past the deadline left");
    }
}
