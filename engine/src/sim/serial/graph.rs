//! The direct serialization graph of a [`History`] and the search for a cycle in it. Every
//! step is linear in the history's size (up to the logarithm of ordered maps): one pass over
//! the accesses, one over each key's versions (indexed by value, so pinning a read does not
//! scan them), a sort of the submit and hear times, one depth-first search.

use std::collections::{BTreeMap, BTreeSet};

use super::{Access, Anomaly, CYCLE, History, KeyRef, Seen, TxIndex, UNEXPLAINED_READ, key_name};
use crate::ops::Value;
use crate::participant::decode_int;
use crate::types::Time;

/// At most this many transactions of a cycle are named (the rest is counted).
const CYCLE_NAMED_MAX: usize = 16;

/// Why one transaction must precede another; keys by index into [`Graph::keys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edge {
    WriteWrite(usize),
    WriteRead(usize),
    ReadWrite(usize),
    RealTime,
}

/// Nodes `0..transactions` are the transactions; those after are real-time barriers.
struct Graph<'h> {
    transactions: usize,
    out: Vec<Vec<(usize, Edge)>>,
    keys: Vec<&'h KeyRef>,
}

impl<'h> Graph<'h> {
    fn new(transactions: usize) -> Graph<'h> {
        Graph { transactions, out: vec![Vec::new(); transactions], keys: Vec::new() }
    }

    fn add_barrier(&mut self) -> usize {
        self.out.push(Vec::new());
        self.out.len() - 1
    }

    fn add_key(&mut self, key: &'h KeyRef) -> usize {
        self.keys.push(key);
        self.keys.len() - 1
    }

    /// A transaction never has to precede itself: such an edge says nothing.
    fn edge(&mut self, from: usize, to: usize, edge: Edge) {
        if from != to {
            self.out[from].push((to, edge));
        }
    }

    /// Some cycle, as the nodes on it each with the edge leaving it, found by an iterative
    /// depth-first search (each node and edge visited once).
    fn find_cycle(&self) -> Option<Vec<(usize, Edge)>> {
        const UNSEEN: u8 = 0;
        const ON_PATH: u8 = 1;
        const DONE: u8 = 2;
        let mut state = vec![UNSEEN; self.out.len()];
        for start in 0..self.out.len() {
            if state[start] != UNSEEN {
                continue;
            }
            state[start] = ON_PATH;
            // The current path: each node with the index of its next edge to follow.
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            while let Some((node, next)) = path.last_mut() {
                let node = *node;
                let Some(&(to, _)) = self.out[node].get(*next) else {
                    state[node] = DONE;
                    path.pop();
                    continue;
                };
                *next += 1;
                match state[to] {
                    UNSEEN => {
                        state[to] = ON_PATH;
                        path.push((to, 0));
                    }
                    ON_PATH => {
                        let from = path.iter().position(|(n, _)| *n == to).expect("on the path");
                        let cycle = path[from..].iter().map(|&(n, next)| (n, self.out[n][next - 1].1)).collect();
                        return Some(cycle);
                    }
                    _ => {}
                }
            }
        }
        None
    }
}

/// What one transaction did to each key, as others can see it.
#[derive(Default)]
struct Effects<'h> {
    /// Reads of a key before the transaction wrote it: they saw another's version.
    external_reads: Vec<(&'h KeyRef, &'h Seen)>,
    /// The last value it wrote to each key: its version of that key.
    final_writes: BTreeMap<&'h KeyRef, &'h Option<Value>>,
}

/// The transactions' effects; a read of a key after the transaction's own write of it must
/// return that write.
fn effects<'h>(history: &'h History, anomalies: &mut Vec<Anomaly>) -> Vec<Effects<'h>> {
    let mut all = Vec::with_capacity(history.transactions.len());
    for transaction in &history.transactions {
        let mut effects = Effects::default();
        for access in &transaction.accesses {
            match access {
                Access::Write { key, value } => {
                    effects.final_writes.insert(key, value);
                }
                Access::Read { key, seen } => match effects.final_writes.get(key) {
                    None => effects.external_reads.push((key, seen)),
                    Some(own) if seen.matches(own) => {}
                    Some(own) => anomalies.push(Anomaly {
                        kind: UNEXPLAINED_READ,
                        message: format!(
                            "{} read {seen:?} from {} after writing {own:?} there itself",
                            transaction.name,
                            key_name(key)
                        ),
                    }),
                },
            }
        }
        all.push(effects);
    }
    all
}

/// The versions of one key in order (position 0 is the initial absent one, without a
/// writer), and where each value first and last occurs among them.
struct Versions {
    writers: Vec<Option<TxIndex>>,
    key: usize,
    by_bytes: BTreeMap<Option<Value>, (usize, usize)>,
    by_int: BTreeMap<i64, (usize, usize)>,
}

impl Versions {
    fn new(key: usize, versions: &[(TxIndex, &Option<Value>)]) -> Versions {
        let mut this = Versions { writers: vec![None], key, by_bytes: BTreeMap::new(), by_int: BTreeMap::new() };
        this.index(0, &None);
        for (writer, value) in versions {
            this.writers.push(Some(*writer));
            this.index(this.writers.len() - 1, value);
        }
        this
    }

    fn index(&mut self, position: usize, value: &Option<Value>) {
        let span = self.by_bytes.entry(value.clone()).or_insert((position, position));
        span.1 = position;
        if let Some(int) = decode_int(value.as_deref()) {
            let span = self.by_int.entry(int).or_insert((position, position));
            span.1 = position;
        }
    }

    /// The first and last position of a version the read may have seen.
    fn candidates(&self, seen: &Seen) -> Option<(usize, usize)> {
        match seen {
            Seen::Bytes(bytes) => self.by_bytes.get(bytes).copied(),
            Seen::Int(int) => self.by_int.get(int).copied(),
        }
    }
}

/// `ww` edges along each key's version order; returns each key's versions for the reads.
fn add_write_edges<'h>(
    history: &'h History,
    effects: &[Effects<'h>],
    graph: &mut Graph<'h>,
    anomalies: &mut Vec<Anomaly>,
) -> BTreeMap<&'h KeyRef, Versions> {
    let mut by_key = BTreeMap::new();
    for (key, writers) in &history.version_order {
        let key_index = graph.add_key(key);
        let mut installed = BTreeSet::new();
        let mut versions: Vec<(TxIndex, &Option<Value>)> = Vec::with_capacity(writers.len());
        for &writer in writers {
            if !installed.insert(writer) {
                continue; // Named twice (a repeated record): its first place counts.
            }
            match effects[writer].final_writes.get(key) {
                Some(value) => versions.push((writer, value)),
                None => anomalies.push(Anomaly {
                    kind: UNEXPLAINED_READ,
                    message: format!(
                        "{} installed a version of {} it never wrote",
                        history.transactions[writer].name,
                        key_name(key)
                    ),
                }),
            }
        }
        for pair in versions.windows(2) {
            graph.edge(pair[0].0, pair[1].0, Edge::WriteWrite(key_index));
        }
        by_key.insert(key, Versions::new(key_index, &versions));
    }
    by_key
}

/// `wr` and `rw` edges of every read that saw another transaction's version.
fn add_read_edges<'h>(
    history: &'h History,
    effects: &[Effects<'h>],
    versions: &BTreeMap<&'h KeyRef, Versions>,
    graph: &mut Graph<'h>,
    anomalies: &mut Vec<Anomaly>,
) {
    let never_written = Versions::new(usize::MAX, &[]);
    for (reader, effects) in effects.iter().enumerate() {
        for &(key, seen) in &effects.external_reads {
            let key_versions = versions.get(key).unwrap_or(&never_written);
            let Some((first, last)) = key_versions.candidates(seen) else {
                anomalies.push(Anomaly {
                    kind: UNEXPLAINED_READ,
                    message: format!(
                        "{} read {seen:?} from {}, a value no committed version of it holds",
                        history.transactions[reader].name,
                        key_name(key)
                    ),
                });
                continue;
            };
            // A key never written has only its initial version: no writer, no edge.
            let key_index = key_versions.key;
            if let Some(writer) = key_versions.writers[first] {
                graph.edge(writer, reader, Edge::WriteRead(key_index));
            }
            if let Some(&Some(next_writer)) = key_versions.writers.get(last + 1) {
                graph.edge(reader, next_writer, Edge::ReadWrite(key_index));
            }
        }
    }
}

/// A transaction whose client heard it committed precedes every transaction submitted
/// strictly later. Rather than an edge per such pair, heard events feed a chain of barrier
/// nodes and each submission hangs off the latest barrier: a path exists exactly when the
/// order holds, with O(transactions) edges.
fn add_real_time_edges(history: &History, graph: &mut Graph<'_>) {
    const SUBMITTED: u8 = 0; // Sorts first at equal times: equal is not "strictly later".
    const HEARD: u8 = 1;
    let mut events: Vec<(Time, u8, TxIndex)> = Vec::with_capacity(history.transactions.len() * 2);
    for (index, transaction) in history.transactions.iter().enumerate() {
        events.push((transaction.submitted_at, SUBMITTED, index));
        if let Some(heard_at) = transaction.heard_at {
            events.push((heard_at, HEARD, index));
        }
    }
    events.sort_unstable();
    let mut barrier: Option<usize> = None;
    let mut submitted_since_barrier = true;
    for (_, event, transaction) in events {
        if event == SUBMITTED {
            if let Some(barrier) = barrier {
                graph.edge(barrier, transaction, Edge::RealTime);
            }
            submitted_since_barrier = true;
            continue;
        }
        if submitted_since_barrier {
            let next = graph.add_barrier();
            if let Some(previous) = barrier {
                graph.edge(previous, next, Edge::RealTime);
            }
            barrier = Some(next);
            submitted_since_barrier = false;
        }
        graph.edge(transaction, barrier.expect("just made"), Edge::RealTime);
    }
}

/// Names the transactions of a cycle and the edges between them (a path through barriers
/// is the real-time edge its first step already says).
fn describe(history: &History, graph: &Graph<'_>, cycle: &[(usize, Edge)]) -> String {
    let is_transaction = |node: usize| node < graph.transactions;
    let steps: Vec<(usize, Edge)> = cycle.iter().copied().filter(|(node, _)| is_transaction(*node)).collect();
    let mut text = format!("a cycle of {} transactions: ", steps.len());
    for (node, edge) in steps.iter().take(CYCLE_NAMED_MAX) {
        text.push_str(&history.transactions[*node].name);
        text.push_str(&match edge {
            Edge::WriteWrite(key) => format!(" -ww {}-> ", key_name(graph.keys[*key])),
            Edge::WriteRead(key) => format!(" -wr {}-> ", key_name(graph.keys[*key])),
            Edge::ReadWrite(key) => format!(" -rw {}-> ", key_name(graph.keys[*key])),
            Edge::RealTime => " -heard committed before submit of-> ".to_string(),
        });
    }
    if steps.len() > CYCLE_NAMED_MAX {
        text.push_str(&format!("... ({} more) -> ", steps.len() - CYCLE_NAMED_MAX));
    }
    text.push_str(&history.transactions[steps[0].0].name);
    text
}

/// Checks a committed history: every read explained by a committed version, and the
/// serialization graph with real-time edges acyclic (the first cycle found is reported).
pub(in crate::sim) fn check(history: &History) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let effects = effects(history, &mut anomalies);
    let mut graph = Graph::new(history.transactions.len());
    let versions = add_write_edges(history, &effects, &mut graph, &mut anomalies);
    add_read_edges(history, &effects, &versions, &mut graph, &mut anomalies);
    add_real_time_edges(history, &mut graph);
    if let Some(cycle) = graph.find_cycle() {
        anomalies.push(Anomaly { kind: CYCLE, message: describe(history, &graph, &cycle) });
    }
    anomalies
}
