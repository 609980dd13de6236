//! A replicated coordinator's state machine lives in `twophase-groupsim` (so the group
//! simulator drives the very code this binary runs): re-exported here.

pub use twophase_groupsim::applied::{AppliedState, BatchEncoder};
