//! What the engine thread sees of its log: records and bytes appended, how long a record a
//! client waits on takes to become durable, and (counted on the wal's thread, in the
//! `on_durable` callback) how many groups became durable.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::DescriptorEncoder;
use twophase_engine::Lsn;

use super::encode;
use super::histogram::LatencyHistogram;

#[derive(Debug, Default)]
pub struct LogMetrics {
    export: LogExport,
    /// The one urgent record being timed: its LSN and when it was appended.
    timing: Option<(Lsn, Instant)>,
    groups: Arc<AtomicU64>,
}

/// The log's part of a node's published snapshot.
#[derive(Clone, Debug, Default)]
pub struct LogExport {
    records: u64,
    bytes: u64,
    sync: LatencyHistogram,
}

impl LogMetrics {
    /// A record was handed to the log. One urgent record at a time is timed until durable.
    pub fn appended(&mut self, lsn: Lsn, payload_bytes: usize, urgent: bool) {
        self.export.records += 1;
        self.export.bytes += payload_bytes as u64;
        if urgent && self.timing.is_none() {
            self.timing = Some((lsn, Instant::now()));
        }
    }

    /// The log is durable up to `durable` (called after every step).
    pub fn durable(&mut self, durable: Lsn) {
        if let Some((lsn, appended)) = self.timing
            && lsn <= durable
        {
            self.export.sync.observe(appended.elapsed());
            self.timing = None;
        }
    }

    /// The counter the wal's `on_durable` callback bumps once per durable group.
    pub fn groups_counter(&self) -> Arc<AtomicU64> {
        self.groups.clone()
    }

    pub fn export(&self) -> LogExport {
        self.export.clone()
    }
}

impl LogExport {
    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        encode::counter(encoder, "twophase_log_records", "Records appended to the log", self.records)?;
        encode::counter(encoder, "twophase_log_payload_bytes", "Payload bytes appended to the log", self.bytes)?;
        encode::histogram(
            encoder,
            "twophase_log_sync_seconds",
            "From appending a record a client waits on until the engine sees it durable (slot wait, write, fdatasync)",
            &self.sync,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_urgent_record_at_a_time_is_timed_until_durable() {
        let mut log = LogMetrics::default();
        log.appended(Lsn(1), 10, false);
        assert!(log.timing.is_none(), "a lazy record is not timed");
        log.appended(Lsn(2), 10, true);
        log.appended(Lsn(3), 10, true);
        log.durable(Lsn(1));
        assert_eq!(log.export.sync.count(), 0, "LSN 2 is not durable yet");
        log.durable(Lsn(3));
        assert_eq!(log.export.sync.count(), 1, "one sample: LSN 3 was not timed");
        assert_eq!((log.export.records, log.export.bytes), (3, 30));
    }
}
