//! Client sessions with real processes: an identity that opens far more sessions than it may
//! keep expires its oldest idle ones, and a retry on an expired session is refused as such,
//! never run a second time. An identity is what a client's certificate names.

mod common;

use std::time::Duration;

use std::path::Path;

use common::{CLUSTER, Cluster, add, certs_dir, read_ints, security};
use twophase_engine::ClientId;
use twophase_net::{Client, ClientError, ClientOptions};

const IDENTITY: &str = "sessions-test";
/// The coordinator's default bound of sessions per identity is 64.
const SESSIONS_OPENED: usize = 100;

/// A client holding the certificate of `identity`, resuming `session` (a new one when None).
fn options_of(data_dir: &Path, identity: &str, session: Option<ClientId>) -> ClientOptions {
    ClientOptions {
        client_id: session,
        request_timeout: Duration::from_secs(20),
        max_attempts: 3,
        security: security(&certs_dir(data_dir), CLUSTER, "client", identity),
        ..ClientOptions::default()
    }
}

#[test]
fn an_early_sessions_retry_after_its_identity_opened_many_more_never_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, dir.path());
    let mut early = Client::connect(cluster.coordinator, options_of(dir.path(), IDENTITY, None)).expect("registering");
    let session = early.client_id();
    let transfer = vec![add(1, "a", -10, i64::MIN), add(2, "b", 10, i64::MIN)];
    assert!(early.submit(transfer.clone()).unwrap().is_committed());
    drop(early);

    let mut sessions = vec![session];
    for _ in 0..SESSIONS_OPENED {
        let client = Client::connect(cluster.coordinator, options_of(dir.path(), IDENTITY, None))
            .expect("registering another session");
        sessions.push(client.client_id());
    }
    sessions.sort_unstable();
    sessions.dedup();
    assert_eq!(sessions.len(), SESSIONS_OPENED + 1, "every session id is new");

    // The early client comes back and retries its request 1.
    let mut retry =
        Client::connect(cluster.coordinator, options_of(dir.path(), IDENTITY, Some(session))).expect("connecting");
    match retry.submit(transfer) {
        Err(ClientError::SessionExpired { client, seq: 1 }) => assert_eq!(client, session),
        other => panic!("expected SessionExpired, got {other:?}"),
    }
    let mut reader = cluster.client();
    assert_eq!(read_ints(&mut reader, &[(1, "a"), (2, "b")]), vec![Some(-10), Some(10)], "the transfer ran once");

    // Another identity cannot use a live session of this one.
    let newest = *sessions.last().unwrap();
    let foreign = options_of(dir.path(), "someone-else", Some(newest));
    let mut foreign = Client::connect(cluster.coordinator, foreign).expect("connecting");
    match foreign.submit(vec![add(1, "a", 1, i64::MIN)]) {
        Err(ClientError::NotSessionOwner { client }) => assert_eq!(client, newest),
        other => panic!("expected NotSessionOwner, got {other:?}"),
    }
    assert_eq!(read_ints(&mut reader, &[(1, "a")]), vec![Some(-10)], "nothing ran for the foreign identity");
    cluster.stop();
}
