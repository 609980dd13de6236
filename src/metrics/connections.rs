//! Bytes and frames in and out per connection, as the transport counts them
//! ([`Reactor::connection_stats`]), copied into a node's export when it publishes.
//!
//! Labels: `peer` (the name the peer's certificate, or on plaintext its handshake, gives)
//! and `peer_role` (not `role`: every sample already carries the node's own `role`). Open
//! connections to the same peer and role are summed into one series; connections not yet
//! through their handshake count as `peer="unidentified"`, and every closed connection's
//! counts fold into `peer="closed"` (so totals never go backwards and the series stay
//! bounded by the connection limit).

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use twophase_net::Reactor;
use twophase_net::transport::{ConnCounters, ConnStats};

/// `peer` of connections whose handshake has not named the peer yet.
const UNIDENTIFIED: &str = "unidentified";
/// `peer` and `peer_role` of the counts of every closed connection.
const CLOSED: &str = "closed";

/// A counter family: its name, its help and which count it reads.
type Family = (&'static str, &'static str, fn(&ConnCounters) -> u64);

/// One series: the `peer` and `peer_role` labels and the counts of those connections.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Series {
    peer: String,
    peer_role: String,
    counters: ConnCounters,
}

/// The connection counters of one publish.
#[derive(Clone, Debug, Default)]
pub struct ConnectionsExport {
    series: Vec<Series>,
}

impl ConnectionsExport {
    /// Replaces the copy with the transport's current counts.
    pub fn update(&mut self, transport: &Reactor) {
        self.update_from(transport.connection_stats(), transport.closed_connections());
    }

    fn update_from<'a>(&mut self, open: impl Iterator<Item = ConnStats<'a>>, closed: ConnCounters) {
        self.series.clear();
        for conn in open {
            let peer = conn.peer.unwrap_or(UNIDENTIFIED);
            let peer_role = conn.role.map_or("unknown".to_string(), |role| role.to_string());
            match self.series.iter_mut().find(|series| series.peer == peer && series.peer_role == peer_role) {
                Some(series) => series.counters.add(&conn.counters),
                None => self.series.push(Series { peer: peer.to_string(), peer_role, counters: conn.counters }),
            }
        }
        self.series.sort_by(|a, b| (&a.peer, &a.peer_role).cmp(&(&b.peer, &b.peer_role)));
        self.series.push(Series { peer: CLOSED.into(), peer_role: CLOSED.into(), counters: closed });
    }

    pub fn encode(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let families: [Family; 4] = [
            (
                "twophase_connection_received_bytes",
                "Bytes read from the connection's socket (TLS records and handshakes included), by peer",
                |c| c.bytes_in,
            ),
            (
                "twophase_connection_sent_bytes",
                "Bytes written to the connection's socket (TLS records and handshakes included), by peer",
                |c| c.bytes_out,
            ),
            ("twophase_connection_received_frames", "Frames decoded from the connection, by peer", |c| c.frames_in),
            ("twophase_connection_sent_frames", "Frames queued for sending on the connection, by peer", |c| {
                c.frames_out
            }),
        ];
        for (name, help, value) in families {
            let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for series in &self.series {
                let labels = [("peer", series.peer.as_str()), ("peer_role", series.peer_role.as_str())];
                ConstCounter::new(value(&series.counters)).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use twophase_net::Role;

    use super::*;

    fn counts(bytes: u64, frames: u64) -> ConnCounters {
        ConnCounters { bytes_in: bytes, bytes_out: bytes * 2, frames_in: frames, frames_out: frames * 2 }
    }

    #[test]
    fn sums_connections_of_one_peer_and_folds_the_closed_ones() {
        let open = [
            ConnStats { peer: Some("p1"), role: Some(Role::Participant), counters: counts(100, 3) },
            ConnStats { peer: Some("cl"), role: Some(Role::Client), counters: counts(10, 1) },
            ConnStats { peer: Some("cl"), role: Some(Role::Client), counters: counts(20, 2) },
            ConnStats { peer: None, role: None, counters: counts(5, 0) },
        ];
        let mut export = ConnectionsExport::default();
        export.update_from(open.into_iter(), counts(7, 1));
        let labels: Vec<(&str, &str, u64)> = export
            .series
            .iter()
            .map(|series| (series.peer.as_str(), series.peer_role.as_str(), series.counters.bytes_in))
            .collect();
        assert_eq!(
            labels,
            [("cl", "client", 30), ("p1", "participant", 100), ("unidentified", "unknown", 5), ("closed", "closed", 7)]
        );
        assert_eq!(export.series[0].counters, counts(30, 3));

        // A later publish replaces, never appends.
        export.update_from(std::iter::empty(), counts(9, 1));
        assert_eq!(export.series.len(), 1);
        assert_eq!(export.series[0].counters, counts(9, 1));
    }
}
