//! A seeded, deterministic hasher for the engine's maps: the simulator needs identical
//! iteration order for identical seeds, and a server picks a random seed at start so
//! clients cannot aim collisions at it.

use std::hash::BuildHasher;

#[derive(Clone, Debug)]
pub struct SeededState(foldhash::fast::FixedState);

impl SeededState {
    pub fn new(seed: u64) -> SeededState {
        SeededState(foldhash::fast::FixedState::with_seed(seed))
    }
}

impl BuildHasher for SeededState {
    type Hasher = <foldhash::fast::FixedState as BuildHasher>::Hasher;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}
