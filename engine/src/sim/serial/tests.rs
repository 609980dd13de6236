use bytes::Bytes;

use super::*;
use crate::participant::encode_int;

fn key(name: &'static str) -> KeyRef {
    (ParticipantId(1), Bytes::from_static(name.as_bytes()))
}

fn read(name: &'static str, value: Option<&'static str>) -> Access {
    Access::Read { key: key(name), seen: Seen::Bytes(value.map(|v| Bytes::from_static(v.as_bytes()))) }
}

fn write(name: &'static str, value: &'static str) -> Access {
    Access::Write { key: key(name), value: Some(Bytes::from_static(value.as_bytes())) }
}

/// An `Add`: read `before` as an integer, wrote `after`.
fn add(name: &'static str, before: i64, after: i64) -> [Access; 2] {
    [
        Access::Read { key: key(name), seen: Seen::Int(before) },
        Access::Write { key: key(name), value: Some(encode_int(after)) },
    ]
}

/// A transaction submitted at `submitted` and heard committed at `heard` (nanoseconds).
fn tx(name: &str, submitted: u64, heard: u64, accesses: Vec<Access>) -> Transaction {
    Transaction { name: name.into(), accesses, submitted_at: Time(submitted), heard_at: Some(Time(heard)) }
}

fn history(transactions: Vec<Transaction>, order: &[(&'static str, &[TxIndex])]) -> History {
    let version_order = order.iter().map(|(name, writers)| (key(name), writers.to_vec())).collect();
    History { transactions, version_order }
}

fn kinds(anomalies: &[Anomaly]) -> Vec<&'static str> {
    anomalies.iter().map(|a| a.kind).collect()
}

#[test]
fn a_serial_history_passes() {
    let h = history(
        vec![
            tx("A", 0, 10, vec![write("x", "a")]),
            tx("B", 20, 30, vec![read("x", Some("a")), write("y", "b")]),
            tx("C", 40, 50, vec![read("y", Some("b")), read("x", Some("a")), read("z", None)]),
        ],
        &[("x", &[0]), ("y", &[1])],
    );
    assert_eq!(check(&h), vec![]);
}

#[test]
fn a_lost_update_is_a_cycle_naming_both_transactions() {
    // S set 4; A and B both added 1 to it; B's 5 was installed after A's.
    let setup = Access::Write { key: key("k"), value: Some(encode_int(4)) };
    let h = history(
        vec![
            tx("S", 0, 1, vec![setup]),
            tx("A", 2, 10, add("k", 4, 5).to_vec()),
            tx("B", 2, 10, add("k", 4, 5).to_vec()),
        ],
        &[("k", &[0, 1, 2])],
    );
    let anomalies = check(&h);
    assert_eq!(kinds(&anomalies), vec![CYCLE], "{anomalies:?}");
    let message = &anomalies[0].message;
    assert!(message.contains("a cycle of 2 transactions"), "{message}");
    assert!(message.contains("B -rw p1 k-> A") && message.contains("A -ww p1 k-> B"), "{message}");
}

#[test]
fn write_skew_is_a_cycle_of_anti_dependencies() {
    let h = history(
        vec![
            tx("A", 0, 10, vec![read("x", None), write("y", "a")]),
            tx("B", 0, 10, vec![read("y", None), write("x", "b")]),
        ],
        &[("x", &[1]), ("y", &[0])],
    );
    let anomalies = check(&h);
    assert_eq!(kinds(&anomalies), vec![CYCLE]);
    assert!(anomalies[0].message.contains("-rw p1 x->") && anomalies[0].message.contains("-rw p1 y->"));
}

#[test]
fn a_stale_read_after_the_writer_was_heard_committed_breaks_real_time_order() {
    let stale = |submitted| {
        history(
            vec![tx("W", 0, 10, vec![write("x", "w")]), tx("R", submitted, 30, vec![read("x", None)])],
            &[("x", &[0])],
        )
    };
    let anomalies = check(&stale(20));
    assert_eq!(kinds(&anomalies), vec![CYCLE]);
    assert!(anomalies[0].message.contains("W -heard committed before submit of-> R -rw p1 x-> W"), "{anomalies:?}");
    // Submitted before W was heard committed (or at that very time): R may precede W.
    assert_eq!(check(&stale(5)), vec![]);
    assert_eq!(check(&stale(10)), vec![]);
}

#[test]
fn a_transaction_never_heard_orders_nothing_in_real_time() {
    let mut writer = tx("W", 0, 10, vec![write("x", "w")]);
    writer.heard_at = None;
    let h = history(vec![writer, tx("R", 20, 30, vec![read("x", None)])], &[("x", &[0])]);
    assert_eq!(check(&h), vec![]);
}

#[test]
fn a_read_no_committed_version_explains_is_reported() {
    let h = history(
        vec![tx("A", 0, 10, vec![write("x", "a")]), tx("B", 20, 30, vec![read("x", Some("zz"))])],
        &[("x", &[0])],
    );
    let anomalies = check(&h);
    assert_eq!(kinds(&anomalies), vec![UNEXPLAINED_READ]);
    assert!(anomalies[0].message.contains("B read"), "{anomalies:?}");
}

#[test]
fn interactive_transactions_read_their_own_writes() {
    // A reads x, writes it, reads its own write back, then writes y; B sees both.
    let a = vec![read("x", None), write("x", "1"), read("x", Some("1")), write("x", "2"), write("y", "3")];
    let h = history(
        vec![tx("A", 0, 10, a), tx("B", 20, 30, vec![read("y", Some("3")), read("x", Some("2"))])],
        &[("x", &[0]), ("y", &[0])],
    );
    assert_eq!(check(&h), vec![]);
    // Reading back something else than its own write is an anomaly, and only the last write
    // of a key is a version others may see.
    let a = vec![write("x", "1"), read("x", Some("0")), write("x", "2")];
    let h = history(vec![tx("A", 0, 10, a), tx("B", 20, 30, vec![read("x", Some("1"))])], &[("x", &[0])]);
    assert_eq!(kinds(&check(&h)), vec![UNEXPLAINED_READ, UNEXPLAINED_READ]);
}

#[test]
fn repeated_values_pin_a_read_to_their_span_without_false_cycles() {
    // x: 100 (A), 50 (B), 100 (C). R read 100: A's or C's version, either is serialisable.
    let writers = || {
        vec![
            tx("A", 0, 10, vec![write("x", "100")]),
            tx("B", 20, 30, vec![write("x", "50")]),
            tx("C", 40, 50, vec![write("x", "100")]),
        ]
    };
    let mut transactions = writers();
    transactions.push(tx("R", 15, 60, vec![read("x", Some("100"))]));
    assert_eq!(check(&history(transactions, &[("x", &[0, 1, 2])])), vec![]);
    // Heard committed before A was even submitted, R can have seen neither: whichever
    // version it saw, it follows A, which follows R in real time.
    let mut transactions = writers();
    transactions[0].submitted_at = Time(7);
    transactions.push(tx("R", 0, 5, vec![read("x", Some("100"))]));
    let anomalies = check(&history(transactions, &[("x", &[0, 1, 2])]));
    assert_eq!(kinds(&anomalies), vec![CYCLE], "{anomalies:?}");
}

#[test]
fn a_version_order_naming_a_transaction_that_never_wrote_the_key_is_reported() {
    let h = history(vec![tx("A", 0, 10, vec![read("x", None)])], &[("x", &[0])]);
    assert_eq!(kinds(&check(&h)), vec![UNEXPLAINED_READ]);
}

#[test]
fn long_histories_are_checked_without_recursion() {
    // 200,000 increments of one counter, each heard before the next was submitted: a path as
    // long as the history, which a recursive search would overflow the stack on.
    let count = 200_000u64;
    let transactions: Vec<Transaction> =
        (0..count).map(|i| tx(&format!("T{i}"), 2 * i, 2 * i + 1, add("k", i as i64, i as i64 + 1).to_vec())).collect();
    let writers: Vec<TxIndex> = (0..count as usize).collect();
    let h = History { transactions, version_order: [(key("k"), writers)].into_iter().collect() };
    assert_eq!(check(&h), vec![]);
}
