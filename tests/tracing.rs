//! OpenTelemetry traces across real processes: an in-test OTLP/HTTP receiver collects the
//! spans of a coordinator, two participants and a client (`twophase tx`, or the load
//! generator `twophase bench` over its pipelines), all with `--trace-sample 1`, and the test
//! checks the tree one cross-participant transaction makes (also with a participant over
//! PostgreSQL), and what is left of it when a participant is killed mid-transaction; and
//! that spans reach a collector over HTTPS whose private CA `--otlp-ca` trusts.
//!
//! Fails when PostgreSQL is missing unless TWOPHASE_SKIP_DB_TESTS=1 (never in CI).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CLUSTER, Node, binary, certs_dir, eventually, make_cert};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use twophase_backends::testserver::{PgServer, or_skip};

/// OTLP's `Status.code` of an error.
const ERROR_STATUS_CODE: i32 = 2;

/// One span as received, with the process that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    node: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, any_value::Value>,
    /// Events (name, attributes) in the order recorded.
    events: Vec<(String, HashMap<String, any_value::Value>)>,
    /// The span's status message when its status is an error.
    error: Option<String>,
}

impl Received {
    fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(any_value::Value::IntValue(value)) => Some(*value),
            _ => None,
        }
    }

    fn text(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(any_value::Value::StringValue(value)) => Some(value),
            _ => None,
        }
    }

    /// The records of this span's `log sync` events, each checked for an LSN and a sync time.
    fn synced_records(&self) -> Vec<String> {
        let mut records = Vec::new();
        for (name, attributes) in self.events.iter().filter(|(name, _)| name == "log sync") {
            let int = |key: &str| match attributes.get(key) {
                Some(any_value::Value::IntValue(value)) => Some(*value),
                _ => None,
            };
            assert!(int("twophase.lsn").is_some_and(|lsn| lsn > 0), "{name} without an LSN: {self:?}");
            assert!(int("twophase.sync_us").is_some_and(|us| us >= 0), "{name} without a sync time: {self:?}");
            match attributes.get("twophase.record") {
                Some(any_value::Value::StringValue(record)) => records.push(record.clone()),
                other => panic!("a log sync event names no record ({other:?}): {self:?}"),
            }
        }
        records
    }
}

/// A tiny OTLP/HTTP receiver: every POST body is an `ExportTraceServiceRequest`.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    https: bool,
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::listen(None)
    }

    /// Over HTTPS, with a certificate for 127.0.0.1 signed by a CA made here, whose PEM is
    /// written to `ca_file` (no system root trusts it).
    fn start_https(ca_file: &std::path::Path) -> Receiver {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test collector CA");
        std::fs::write(ca_file, ca_params.self_signed(&ca_key).unwrap().pem()).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key.into())
            .unwrap();
        Receiver::listen(Some(Arc::new(config)))
    }

    fn listen(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let collected = spans.clone();
        let https = tls.is_some();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let collected = collected.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => serve_connection(stream, &collected),
                    Some(config) => {
                        let session = rustls::ServerConnection::new(config).unwrap();
                        serve_connection(rustls::StreamOwned::new(session, stream), &collected)
                    }
                });
            }
        });
        Receiver { addr, spans, https }
    }

    fn endpoint(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/v1/traces", self.addr)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

/// Answers each request on a keep-alive connection with 200 until the client closes it.
fn serve_connection(stream: impl Read + Write, spans: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut content_length = None;
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = Some(value.trim().parse::<usize>().expect("a content length"));
            }
        }
        assert!(request_line.starts_with("POST /v1/traces "), "unexpected request {request_line:?}");
        let mut body = vec![0; content_length.expect("the exporter sends a content length")];
        reader.read_exact(&mut body).unwrap();
        let request = ExportTraceServiceRequest::decode(&body[..]).expect("an OTLP trace export");
        spans.lock().unwrap().extend(received(request));
        let writer = reader.get_mut();
        writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        writer.flush().unwrap();
    }
}

fn received(request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = attributes(resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
        let text = |key: &str| match resource.get(key) {
            Some(any_value::Value::StringValue(value)) => value.clone(),
            _ => String::new(),
        };
        for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
            spans.push(Received {
                service: text("service.name"),
                node: text("service.instance.id"),
                name: span.name,
                trace_id: span.trace_id,
                span_id: span.span_id,
                parent_span_id: span.parent_span_id,
                attributes: attributes(span.attributes),
                events: span.events.into_iter().map(|event| (event.name, attributes(event.attributes))).collect(),
                error: span.status.filter(|status| status.code == ERROR_STATUS_CODE).map(|status| status.message),
            });
        }
    }
    spans
}

fn attributes(list: Vec<KeyValue>) -> HashMap<String, any_value::Value> {
    list.into_iter()
        .filter_map(|kv| match kv.value {
            Some(AnyValue { value: Some(value) }) => Some((kv.key, value)),
            _ => None,
        })
        .collect()
}

fn find<'a>(spans: &'a [Received], service: &str, name: &str) -> Vec<&'a Received> {
    spans.iter().filter(|span| span.service == service && span.name == name).collect()
}

/// How many spans `service` sent named `name`.
fn count(spans: &[Received], service: &str, name: &str) -> usize {
    find(spans, service, name).len()
}

/// The spans of trace `trace_id`.
fn of_trace(spans: &[Received], trace_id: &[u8]) -> Vec<Received> {
    spans.iter().filter(|span| span.trace_id == trace_id).cloned().collect()
}

/// The coordinator's span `name` (`prepare`, `commit`) for participant number `participant`.
fn coordinator_span_for(spans: &[Received], name: &str, participant: i64) -> Received {
    let found = find(spans, "twophase-coordinator", name);
    let span = found.into_iter().find(|span| span.int("twophase.participant") == Some(participant));
    span.cloned().unwrap_or_else(|| panic!("no coordinator {name} for participant {participant}"))
}

/// A coordinator and participants p1, p2, all tracing every transaction into `receiver`;
/// p2 runs with `p2_env` (a failpoint).
struct Traced {
    receiver: Receiver,
    endpoint: String,
    dir: tempfile::TempDir,
    _p1: Node,
    p2: Node,
    coordinator: Node,
}

impl Traced {
    fn start(p2_env: &[(&str, &str)]) -> Traced {
        let receiver = Receiver::start();
        let endpoint = receiver.endpoint();
        let flags = trace_flags(&endpoint);
        let dir = tempfile::tempdir().unwrap();
        let p1 = Node::participant_with("p1", dir.path(), &flags, &[]);
        let p2 = Node::participant_with("p2", dir.path(), &flags, p2_env);
        let coordinator = Node::coordinator(dir.path(), &[&p1, &p2], &flags, &[]);
        Traced { receiver, endpoint, dir, _p1: p1, p2, coordinator }
    }
}

/// Every transaction traced, its spans sent to `endpoint`.
fn trace_flags(endpoint: &str) -> [&str; 4] {
    ["--trace-sample", "1", "--otlp-endpoint", endpoint]
}

/// `twophase tx` with a client certificate of the test's cluster (made in `data_dir/certs`).
fn run_tx(coordinator: SocketAddr, data_dir: &std::path::Path, extra: &[&str], ops: &[&str]) -> Output {
    Command::new(binary())
        .args(["tx", "--coordinator", &coordinator.to_string()])
        .args(make_cert(&certs_dir(data_dir), CLUSTER, "client", "tracer"))
        .args(extra)
        .args(ops)
        .output()
        .expect("running twophase tx")
}

/// [`run_tx`], which must commit.
fn tx(coordinator: SocketAddr, data_dir: &std::path::Path, extra: &[&str], ops: &[&str]) {
    let out = run_tx(coordinator, data_dir, extra, ops);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "committed");
}

/// Every span a two-participant commit makes: the client's (from `client_service`, if
/// any), the coordinator's four kinds and each participant's two. Log syncs are events.
fn complete(spans: &[Received], trace_id: &[u8], client_service: Option<&str>) -> bool {
    let of_trace = of_trace(spans, trace_id);
    let count = |service: &str, name: &str| count(&of_trace, service, name);
    client_service.is_none_or(|service| count(service, "transaction") == 1)
        && count("twophase-coordinator", "submit") == 1
        && count("twophase-coordinator", "prepare") == 2
        && count("twophase-coordinator", "decision") == 1
        && count("twophase-coordinator", "commit") == 2
        && count("twophase-participant", "prepare") == 2
        && count("twophase-participant", "commit") == 2
}

/// The participants' spans hang under the coordinator's span for that participant; the
/// coordinator's log syncs (Staged, Commit) are events of its decision, each participant's
/// (Prepared) an event of its prepare.
fn check_tree(spans: &[Received], trace_id: &[u8]) {
    check_tree_over(spans, trace_id, &[]);
}

/// [`check_tree`] where the participants named in `databases` run over a database: their
/// Yes waits for the database's PREPARE, not for their own log, so their `prepare` has no
/// log sync.
fn check_tree_over(spans: &[Received], trace_id: &[u8], databases: &[&str]) {
    let of_trace = of_trace(spans, trace_id);
    assert!(of_trace.iter().all(|span| span.name != "log sync"), "log syncs are events, not spans");
    let submit = find(&of_trace, "twophase-coordinator", "submit")[0];
    assert_eq!(submit.text("twophase.outcome"), Some("committed"), "{submit:?}");
    assert!(submit.int("twophase.txid").is_some(), "{submit:?}");
    match submit.attributes.get("twophase.participants") {
        Some(any_value::Value::ArrayValue(array)) => assert_eq!(array.values.len(), 2, "{submit:?}"),
        other => panic!("participants attribute {other:?}"),
    }
    for span in of_trace.iter().filter(|span| span.service == "twophase-coordinator" && span.name != "submit") {
        assert_eq!(span.parent_span_id, submit.span_id, "{span:?} is not under submit");
    }
    let decision = find(&of_trace, "twophase-coordinator", "decision")[0];
    assert_eq!(decision.text("twophase.outcome"), Some("committed"), "{decision:?}");
    let mut synced = decision.synced_records();
    synced.sort();
    assert_eq!(synced, ["Commit", "Staged"], "{decision:?}");
    let coordinator_span = |name: &str, participant: i64| coordinator_span_for(&of_trace, name, participant);
    for (node, participant) in [("p1", 1), ("p2", 2)] {
        let mine = |name: &str| {
            let found = find(&of_trace, "twophase-participant", name);
            found.into_iter().find(|span| span.node == node).cloned().unwrap_or_else(|| panic!("no {name} from {node}"))
        };
        let prepare = coordinator_span("prepare", participant);
        assert_eq!(prepare.text("twophase.vote"), Some("yes"));
        assert_eq!(mine("prepare").parent_span_id, prepare.span_id, "{node}'s prepare");
        assert_eq!(mine("prepare").text("twophase.vote"), Some("yes"));
        let synced: &[&str] = if databases.contains(&node) { &[] } else { &["Prepared"] };
        assert_eq!(mine("prepare").synced_records(), synced, "{node}'s prepare");
        assert_eq!(mine("commit").parent_span_id, coordinator_span("commit", participant).span_id, "{node}'s commit");
    }
}

#[test]
fn a_sampled_transaction_is_one_trace_across_every_process() {
    let cluster = Traced::start(&[]);
    let Traced { receiver, endpoint, dir, coordinator, .. } = &cluster;
    let flags = trace_flags(endpoint);

    // The client starts the trace.
    tx(coordinator.addr, dir.path(), &flags, &["put", "p1:x=1", "put", "p2:y=2"]);
    let client_span = eventually("the client's span", Duration::from_secs(30), || {
        find(&receiver.spans(), "twophase-client", "transaction").first().map(|span| (*span).clone())
    });
    assert!(client_span.parent_span_id.is_empty(), "the client's span is the root");
    let trace_id = client_span.trace_id.clone();
    let spans = eventually("every process's spans", Duration::from_secs(30), || {
        let spans = receiver.spans();
        complete(&spans, &trace_id, Some("twophase-client")).then_some(spans)
    });
    let submit = find(&spans, "twophase-coordinator", "submit")[0];
    assert_eq!(submit.parent_span_id, client_span.span_id, "the coordinator's submit is the client's child");
    check_tree(&spans, &trace_id);

    // A client that sends no context: the coordinator's submit is the root.
    tx(coordinator.addr, dir.path(), &[], &["put", "p1:x=2", "put", "p2:y=3"]);
    let (spans, root) = eventually("a trace rooted at the coordinator", Duration::from_secs(30), || {
        let spans = receiver.spans();
        let root = find(&spans, "twophase-coordinator", "submit")
            .into_iter()
            .find(|span| span.parent_span_id.is_empty())
            .cloned()?;
        complete(&spans, &root.trace_id, None).then_some((spans, root))
    });
    assert_ne!(root.trace_id, trace_id);
    check_tree(&spans, &root.trace_id);
}

#[test]
fn spans_reach_an_https_collector_whose_private_ca_otlp_ca_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("collector-ca.pem");
    let receiver = Receiver::start_https(&ca_file);
    let endpoint = receiver.endpoint();
    let flags = ["--trace-sample", "1", "--otlp-endpoint", &endpoint, "--otlp-ca", ca_file.to_str().unwrap()];
    let p1 = Node::participant_with("p1", dir.path(), &flags, &[]);
    let p2 = Node::participant_with("p2", dir.path(), &flags, &[]);
    let coordinator = Node::coordinator(dir.path(), &[&p1, &p2], &flags, &[]);

    tx(coordinator.addr, dir.path(), &flags, &["put", "p1:x=1", "put", "p2:y=2"]);
    let client_span = eventually("the client's span over https", Duration::from_secs(30), || {
        find(&receiver.spans(), "twophase-client", "transaction").first().map(|span| (*span).clone())
    });
    let spans = eventually("every process's spans over https", Duration::from_secs(30), || {
        let spans = receiver.spans();
        complete(&spans, &client_span.trace_id, Some("twophase-client")).then_some(spans)
    });
    check_tree(&spans, &client_span.trace_id);
}

#[test]
fn the_load_generator_roots_the_traces_of_its_pipelined_transactions() {
    let cluster = Traced::start(&[]);
    let Traced { receiver, endpoint, dir, coordinator, .. } = &cluster;
    let flags = trace_flags(endpoint);
    let certs = certs_dir(dir.path());
    let client = make_cert(&certs, CLUSTER, "client", "loadgen");
    let admin = make_cert(&certs, CLUSTER, "admin", "auditor");
    // make_cert gives --ca CA --cert CERT --key KEY: the admin's go in as --admin-cert/-key.
    let reports = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(["bench", "--coordinator", &coordinator.addr.to_string(), "--cluster", CLUSTER])
        .args(&client)
        .args(["--admin-cert", &admin[3], "--admin-key", &admin[5]])
        .args(["--duration", "1s", "--accounts", "20", "--connections", "1", "--outstanding", "4", "--quiet"])
        .args(flags)
        .arg("--report")
        .arg(reports.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running twophase bench");
    assert!(out.status.success(), "bench failed: {out:?}");

    // Every transfer was traced at the load generator: one of them, committed, makes the
    // whole tree, rooted at the load generator's span.
    let (spans, root) = eventually("a complete trace rooted at the load generator", Duration::from_secs(30), || {
        let spans = receiver.spans();
        let root = find(&spans, "twophase-loadgen", "transaction")
            .into_iter()
            .filter(|span| span.text("twophase.outcome") == Some("committed"))
            .find(|span| complete(&spans, &span.trace_id, Some("twophase-loadgen")))
            .cloned()?;
        Some((spans, root))
    });
    assert!(root.parent_span_id.is_empty(), "the load generator's span is the root");
    let of_trace = of_trace(&spans, &root.trace_id);
    let submit = find(&of_trace, "twophase-coordinator", "submit")[0];
    assert_eq!(submit.parent_span_id, root.span_id, "the coordinator's submit is the load generator's child");
    check_tree(&spans, &root.trace_id);
    assert!(
        find(&spans, "twophase-loadgen", "transaction").len() > 10,
        "every transaction of the run is traced at rate 1"
    );
}

/// A participant over PostgreSQL traces as the built-in store's does: its spans join the
/// client's trace under the coordinator's, and its `prepare` ends when its Yes leaves.
#[test]
fn a_database_participants_spans_join_the_trace() {
    let Some(pg) = or_skip(PgServer::start()) else { return };
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let flags = trace_flags(&endpoint);
    let dir = tempfile::tempdir().unwrap();
    let dsn = pg.dsn();
    let mut database_flags = vec!["--backend", "postgres", "--dsn", &dsn];
    database_flags.extend(flags);
    let p1 = Node::participant_with("p1", dir.path(), &database_flags, &[]);
    let p2 = Node::participant_with("p2", dir.path(), &flags, &[]);
    let coordinator = Node::coordinator(dir.path(), &[&p1, &p2], &flags, &[]);

    // The first transaction of the coordinator's epoch: p1's Yes waits for the epoch's
    // record, whose log sync may carry its Prepared record too. The second's waits for
    // nothing in p1's log.
    for (round, ops) in [["put", "p1:x=1", "put", "p2:y=2"], ["put", "p1:x=2", "put", "p2:y=3"]].iter().enumerate() {
        tx(coordinator.addr, dir.path(), &flags, ops);
        let (spans, trace_id) = eventually("every process's spans", Duration::from_secs(30), || {
            let spans = receiver.spans();
            let clients = find(&spans, "twophase-client", "transaction");
            let trace_id = clients.get(round)?.trace_id.clone();
            complete(&spans, &trace_id, Some("twophase-client")).then_some((spans, trace_id))
        });
        if round == 1 {
            check_tree_over(&spans, &trace_id, &["p1"]);
        }
    }
}

#[test]
fn a_participant_killed_mid_transaction_leaves_a_trace_that_shows_it() {
    // p2 dies once its Prepared record is durable, before its vote leaves.
    let mut cluster = Traced::start(&[("TWOPHASE_FAILPOINT", "participant-prepared-durable")]);
    let Traced { receiver, endpoint, dir, coordinator, p2, .. } = &mut cluster;
    let out = run_tx(coordinator.addr, dir.path(), &trace_flags(endpoint), &["put", "p1:x=1", "put", "p2:y=2"]);
    assert_eq!(out.status.code(), Some(1), "the transaction aborts: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("aborted"), "{out:?}");
    p2.expect_killed(Duration::from_secs(30));

    // What outlived p2: the client's, the coordinator's and p1's spans of the transaction.
    let spans = eventually("the aborted transaction's spans", Duration::from_secs(30), || {
        let spans = receiver.spans();
        let root = find(&spans, "twophase-client", "transaction").first().map(|span| span.trace_id.clone())?;
        let of_trace = of_trace(&spans, &root);
        let count = |service: &str, name: &str| count(&of_trace, service, name);
        let whole = count("twophase-coordinator", "submit") == 1
            && count("twophase-coordinator", "prepare") == 2
            && count("twophase-coordinator", "decision") == 1
            && count("twophase-participant", "prepare") == 1;
        whole.then_some(of_trace)
    });
    let client = find(&spans, "twophase-client", "transaction")[0];
    assert_eq!(client.text("twophase.outcome"), Some("aborted"), "{client:?}");
    let submit = find(&spans, "twophase-coordinator", "submit")[0];
    assert_eq!(submit.parent_span_id, client.span_id);
    assert_eq!(submit.text("twophase.outcome"), Some("aborted"), "{submit:?}");
    let reason = submit.text("twophase.abort_reason").unwrap_or_else(|| panic!("no abort reason: {submit:?}"));
    assert!(submit.error.is_some(), "an aborted submit is an error: {submit:?}");
    let decision = find(&spans, "twophase-coordinator", "decision")[0];
    assert_eq!(decision.text("twophase.outcome"), Some("aborted"), "{decision:?}");

    // p1 voted Yes; its own span hangs under the coordinator's. It ends with its log sync,
    // or, when the coordinator's Abort (sent as soon as p2's connection dropped) overtook
    // that sync, with the abort. The coordinator saw p1's Yes unless the abort came first
    // (p1's sync overtaken, or its Yes crossing the Abort): then its span says no vote came.
    let (asked_p1, asked_p2) = (coordinator_span_for(&spans, "prepare", 1), coordinator_span_for(&spans, "prepare", 2));
    let no_vote = format!("no vote: {reason}");
    match asked_p1.text("twophase.vote") {
        Some("yes") => assert!(asked_p1.error.is_none(), "{asked_p1:?}"),
        Some("none") => assert_eq!(asked_p1.error.as_deref(), Some(no_vote.as_str()), "{asked_p1:?}"),
        _ => panic!("the coordinator's prepare for p1 has neither vote: {asked_p1:?}"),
    }
    let p1_prepare = find(&spans, "twophase-participant", "prepare")[0];
    assert_eq!(p1_prepare.node, "p1");
    assert_eq!(p1_prepare.parent_span_id, asked_p1.span_id);
    let synced = p1_prepare.synced_records();
    let aborted_first = p1_prepare.text("twophase.outcome") == Some("aborted");
    let voted = p1_prepare.text("twophase.vote");
    assert!(
        (synced == ["Prepared"] && voted == Some("yes")) || (synced.is_empty() && aborted_first && voted.is_none()),
        "a Yes is on the span only once it leaves: {p1_prepare:?}"
    );
    // p2 never answered: the coordinator's prepare for it ends with the abort, saying so,
    // and p2 (killed with its prepare open) sent nothing.
    assert_eq!(asked_p2.text("twophase.vote"), Some("none"), "{asked_p2:?}");
    assert_eq!(asked_p2.error.as_deref(), Some(no_vote.as_str()), "{asked_p2:?}");
    assert!(spans.iter().all(|span| span.node != "p2"), "p2 died before any span of it ended");
    assert!(spans.iter().all(|span| span.name != "commit"), "nothing committed");
}
