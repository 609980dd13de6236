//! twophase-wal: the durable log (segments, checksummed records, group commit).
//!
//! Not built yet: the log arrives with issue 3. This crate exports nothing so that no
//! caller can mistake it for a working log.
