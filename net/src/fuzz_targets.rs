//! Fuzz target bodies for the wire: the streaming [`FrameDecoder`] over every frame kind,
//! and the handshake as each side decodes it. Shared by the cargo-fuzz crate (`fuzz/`) and
//! the stable harness (`net/tests/decode_random.rs`); the engine's `fuzz_targets` module
//! holds the generator ([`Gen`]) and the message builders these reuse.
//!
//! Properties checked, besides never panicking: a stream decodes to the same frames and
//! the same error however it is split into reads; every decoded frame re-encodes to
//! exactly the bytes it was decoded from; a valid frame within the limits decodes to
//! itself, one beyond them is refused; and `BatchWriter`, given whatever limits a server's
//! `Welcome` announced, writes frames that a decoder with those limits accepts, holding
//! every message it took.
//!
//! Not part of the API: hidden from the docs, free to change with the fuzz crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use twophase_engine::fuzz_targets::{
    Gen, Scale, gen_key, gen_op, gen_reply, gen_submit, gen_to_coordinator, gen_to_participant, gen_value, mutate,
};
use twophase_engine::message::{Interactive, SAGA_STEPS_MAX, SagaStep, SagaSubmit};
use twophase_engine::ops::Isolation;
use twophase_engine::record::RECORD_LIMITS;
use twophase_engine::threepc::{Message, PARTICIPANTS_MAX, Peer, ReportedState};
use twophase_engine::{ClientId, Epoch, Limits, ParticipantId, Submit, TxId};

use crate::frame::{
    AdminOp, BatchWriter, DumpEnd, ErrorCode, ErrorFrame, Frame, FrameDecoder, HEADER_BYTES, Hello,
    LEADER_NAME_BYTES_MAX, LeaderHint, MAX_HELLO_FRAME_BYTES, MAX_TRACEPARENT_BYTES, NetLimits, NotLeader,
    ProtocolError, Role, ThreePcItem, TraceEntry, TraceKey, Welcome,
};

/// Limits a target decodes against: the defaults (16 MiB frames), an accepted connection
/// before its handshake (`Hello`-sized frames), or small ones that batches hit often.
fn limits_for(selector: u8) -> NetLimits {
    match selector % 3 {
        0 => NetLimits::default(),
        1 => NetLimits { max_frame_bytes: MAX_HELLO_FRAME_BYTES, ..NetLimits::default() },
        _ => NetLimits {
            max_frame_bytes: 4096,
            max_batch: 8,
            engine: Limits { max_ops_per_tx: 4, max_key_bytes: 16, max_value_bytes: 64 },
        },
    }
}

fn gen_role(g: &mut Gen) -> Role {
    Role::from_u8(g.u8() % 4 + 1).expect("roles are 1..=4")
}

/// A count for a list whose length prefix is a `u16`.
fn gen_u16_count(g: &mut Gen) -> usize {
    g.count(u16::MAX as usize)
}

pub fn gen_hello(g: &mut Gen) -> Hello {
    Hello {
        role: gen_role(g),
        cluster: g.text(u16::MAX as usize),
        node: g.text(u16::MAX as usize),
        epoch: Epoch(g.u32()),
    }
}

pub fn gen_welcome(g: &mut Gen) -> Welcome {
    let (role, cluster, node) = (gen_role(g), g.text(u16::MAX as usize), g.text(u16::MAX as usize));
    let directory = (0..gen_u16_count(g)).map(|_| (ParticipantId(g.u16()), g.text(64))).collect();
    let limits = NetLimits {
        max_frame_bytes: g.u32(),
        max_batch: g.u32(),
        engine: Limits {
            max_ops_per_tx: g.u16() as usize,
            max_key_bytes: g.u16() as usize,
            max_value_bytes: g.u32() as usize,
        },
    };
    Welcome { role, cluster, node, directory, limits }
}

/// A follower's `NotLeader`: a leader with an IPv4 or IPv6 address (port above 0), or none.
pub fn gen_not_leader(g: &mut Gen) -> NotLeader {
    let term = g.u64();
    if g.u8().is_multiple_of(3) {
        return NotLeader { term, leader: None };
    }
    let port = g.u16().max(1);
    let ip: IpAddr = if g.u8().is_multiple_of(2) {
        Ipv4Addr::from(g.u32()).into()
    } else {
        Ipv6Addr::from((u128::from(g.u64()) << 64) | u128::from(g.u64())).into()
    };
    let name = g.text(LEADER_NAME_BYTES_MAX);
    NotLeader { term, leader: Some(LeaderHint { name, addr: SocketAddr::new(ip, port) }) }
}

/// An interactive request within `limits`.
pub fn gen_interactive(g: &mut Gen, limits: Limits) -> Interactive {
    let (client, seq, txid) = (ClientId(g.u64()), g.u64(), TxId(g.u64()));
    match g.u8() % 4 {
        0 => {
            let isolation = Isolation::from_tag(g.u8() % 3).expect("isolations are 0..=2");
            Interactive::Begin { client, seq, isolation, idle_timeout_ms: g.u32() }
        }
        1 => {
            let ops = (0..g.count(limits.max_ops_per_tx)).map(|_| gen_op(g, limits)).collect();
            Interactive::Execute { client, seq, txid, ops }
        }
        2 => Interactive::Commit { client, seq, txid },
        _ => Interactive::Rollback { client, seq, txid },
    }
}

/// A saga of up to [`SAGA_STEPS_MAX`] steps whose op lists respect `limits` (what the wire
/// decoder checks; the coordinator checks the rest, such as its size in bytes).
pub fn gen_saga(g: &mut Gen, limits: Limits) -> SagaSubmit {
    let (client, seq) = (ClientId(g.u64()), g.u64());
    let ops = |g: &mut Gen| (0..g.count(limits.max_ops_per_tx)).map(|_| gen_op(g, limits)).collect();
    let steps = (0..g.count(SAGA_STEPS_MAX)).map(|_| SagaStep { action: ops(g), compensation: ops(g) }).collect();
    SagaSubmit { client, seq, steps }
}

/// A trace context entry for a submit or a transaction, its traceparent up to the limit.
pub fn gen_trace_entry(g: &mut Gen) -> TraceEntry {
    let key = if g.u8().is_multiple_of(2) {
        TraceKey::Submit { client: ClientId(g.u64()), seq: g.u64() }
    } else {
        TraceKey::Tx(TxId(g.u64()))
    };
    let len = g.len(MAX_TRACEPARENT_BYTES);
    TraceEntry { key, traceparent: g.bytes(len) }
}

/// A 3PC peer: the coordinator or a participant.
fn gen_peer(g: &mut Gen) -> Peer {
    if g.u8().is_multiple_of(4) { Peer::Coordinator } else { Peer::Participant(ParticipantId(g.u16())) }
}

/// A 3PC message of any type within the engine's limits (a CanCommit's participants
/// strictly increasing, at most `PARTICIPANTS_MAX`; its payload short).
pub fn gen_threepc_item(g: &mut Gen) -> ThreePcItem {
    let txid = TxId(g.u64());
    let message = match g.u8() % 10 {
        0 => {
            let count = g.count(PARTICIPANTS_MAX);
            let mut participants: Vec<ParticipantId> = (0..count).map(|_| ParticipantId(g.u16())).collect();
            participants.sort_unstable();
            participants.dedup();
            let len = g.len(256);
            Message::CanCommit { txid, participants, payload: g.bytes(len).to_vec() }
        }
        1 => Message::Vote { txid, yes: g.u8().is_multiple_of(2) },
        2 => Message::PreCommit { txid, round: g.u32() },
        3 => Message::PreCommitAck { txid, round: g.u32() },
        4 => Message::Decision { txid, commit: g.u8().is_multiple_of(2) },
        5 => Message::DecisionAck { txid },
        6 => Message::Elect { txid, round: g.u32() },
        7 => Message::StateReq { txid, round: g.u32() },
        8 => {
            let state = match g.u8() % 5 {
                0 => ReportedState::Uncertain,
                1 => ReportedState::PreCommitted,
                2 => ReportedState::Committed,
                3 => ReportedState::Aborted,
                _ => ReportedState::Recovering,
            };
            Message::StateReport { txid, round: g.u32(), state }
        }
        _ => Message::DecisionReq { txid },
    };
    ThreePcItem { from: gen_peer(g), to: gen_peer(g), message }
}

/// A frame of any kind whose messages respect `limits.engine`; its batch count and size
/// may still exceed `limits` (see [`fits`]).
pub fn gen_frame(g: &mut Gen, limits: &NetLimits) -> Frame {
    let engine = limits.engine;
    let batch = |g: &mut Gen| g.count(limits.max_batch.min(1 << 16) as usize);
    match g.u8() % 17 {
        16 => Frame::ThreePc((0..batch(g)).map(|_| gen_threepc_item(g)).collect()),
        14 => Frame::Sagas((0..batch(g)).map(|_| gen_saga(g, engine)).collect()),
        15 => Frame::TraceContext((0..batch(g)).map(|_| gen_trace_entry(g)).collect()),
        0 => Frame::Hello(gen_hello(g)),
        1 => Frame::Welcome(gen_welcome(g)),
        2 => Frame::Error(ErrorFrame { code: ErrorCode::from_code(g.u16()), message: g.text(u16::MAX as usize) }),
        3 => Frame::Submits((0..batch(g)).map(|_| gen_submit(g, engine)).collect()),
        4 => Frame::Replies((0..batch(g)).map(|_| gen_reply(g, engine)).collect()),
        5 => Frame::ToParticipant {
            epoch: Epoch(g.u32()),
            messages: (0..batch(g)).map(|_| gen_to_participant(g, engine)).collect(),
        },
        6 => Frame::ToCoordinator((0..batch(g)).map(|_| gen_to_coordinator(g, engine)).collect()),
        7 => Frame::AdminRequest(match g.u8() % 3 {
            0 => AdminOp::Dump,
            1 => AdminOp::Topology,
            _ => AdminOp::Status,
        }),
        8 => Frame::DumpChunk((0..g.count(1 << 16)).map(|_| (gen_key(g, engine), gen_value(g, engine))).collect()),
        9 => Frame::DumpEnd(DumpEnd {
            keys: g.u64(),
            prepared: g.u32(),
            in_doubt: g.u32(),
            fsync: g.u8().is_multiple_of(2),
        }),
        10 => Frame::Interactive((0..batch(g)).map(|_| gen_interactive(g, engine)).collect()),
        11 => Frame::Raft(Bytes::from(g.text(1 << 12).into_bytes())),
        12 => Frame::NotLeader(gen_not_leader(g)),
        _ => Frame::Topology((0..gen_u16_count(g)).map(|_| (ParticipantId(g.u16()), g.text(64), g.text(64))).collect()),
    }
}

/// Whether an encoded `frame` is within `limits` (its messages are, by construction).
fn fits(frame: &Frame, encoded_bytes: usize, limits: &NetLimits) -> bool {
    let batch = match frame {
        Frame::Submits(items) => items.len(),
        Frame::Replies(items) => items.len(),
        Frame::ToParticipant { messages, .. } => messages.len(),
        Frame::ToCoordinator(items) => items.len(),
        Frame::Interactive(items) => items.len(),
        Frame::Sagas(items) => items.len(),
        Frame::ThreePc(items) => items.len(),
        Frame::TraceContext(items) => items.len(),
        _ => 0,
    };
    encoded_bytes - 4 <= limits.max_frame_bytes as usize && batch <= limits.max_batch as usize
}

/// What a stream decoded to: each frame with the bytes it came from, then the error that
/// ended it (if any) and how many bytes were left over.
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<(Frame, Vec<u8>)>,
    error: Option<ProtocolError>,
    leftover_bytes: usize,
}

/// Feeds `stream` to a decoder in reads of the given sizes (the rest in one read), taking
/// out every frame after each read, as the transport does.
fn decode_stream(stream: &[u8], limits: NetLimits, reads: &[usize]) -> Decoded {
    let mut decoder = FrameDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut decoded = Decoded { frames: Vec::new(), error: None, leftover_bytes: 0 };
    let mut fed = 0;
    let mut consumed = 0;
    let mut reads = reads.iter().copied().chain(std::iter::once(usize::MAX));
    while fed < stream.len() {
        let read = reads.next().unwrap_or(usize::MAX).max(1).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + read]);
        fed += read;
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let used = before - buf.len();
                    decoded.frames.push((frame, stream[consumed..consumed + used].to_vec()));
                    consumed += used;
                }
                Ok(None) => break,
                Err(err) => {
                    decoded.error = Some(err);
                    decoded.leftover_bytes = stream.len() - consumed;
                    return decoded;
                }
            }
        }
    }
    decoded.leftover_bytes = buf.len();
    decoded
}

/// Decodes `stream` split as `reads` and in one piece, asserts both agree, and that every
/// frame re-encodes to its bytes.
fn check_stream(stream: &[u8], limits: NetLimits, reads: &[usize]) -> Decoded {
    let split = decode_stream(stream, limits, reads);
    let whole = decode_stream(stream, limits, &[]);
    assert_eq!(split, whole, "the split points changed what the stream decoded to");
    for (frame, bytes) in &split.frames {
        assert_eq!(&frame.to_bytes()[..], &bytes[..], "a decoded frame re-encodes differently: {frame:?}");
        assert!(bytes.len() >= HEADER_BYTES);
    }
    split
}

fn gen_reads(g: &mut Gen) -> Vec<usize> {
    (0..g.u8() % 8).map(|_| g.u16() as usize).collect()
}

/// The streaming frame decoder over every frame kind. Input: `u8 selector` (bit 7:
/// structured; selector % 3 picks the limits), then `u8 count | u16 read size × count`
/// (how the stream is split into reads) and the stream (raw) or the generator's bytes
/// (structured, at `scale`: up to eight valid frames back to back, checked, then mutated).
pub fn net_frames(scale: Scale, data: &[u8]) {
    let mut g = Gen::at(scale, data);
    let selector = g.u8();
    let limits = limits_for(selector);
    let reads = gen_reads(&mut g);
    let stream = if selector & 0x80 != 0 {
        let frames: Vec<Frame> = (0..g.count(8)).map(|_| gen_frame(&mut g, &limits)).collect();
        let mut stream = Vec::new();
        let mut within = Vec::new();
        for frame in &frames {
            let start = stream.len();
            frame.encode(&mut stream);
            within.push(fits(frame, stream.len() - start, &limits));
        }
        let decoded = check_stream(&stream, limits, &reads);
        let good = within.iter().take_while(|fits| **fits).count();
        let expected: Vec<&Frame> = frames.iter().take(good).collect();
        let got: Vec<&Frame> = decoded.frames.iter().map(|(frame, _)| frame).collect();
        assert_eq!(got, expected, "valid frames decoded differently");
        assert_eq!(decoded.error.is_some(), good < frames.len(), "{:?}", decoded.error);
        mutate(&mut g, &mut stream);
        stream
    } else {
        g.rest().to_vec()
    };
    check_stream(&stream, limits, &reads);
}

/// The handshake, from both ends. Input: `u8 selector` (bit 7: structured), then either the
/// bytes a server reads from a new connection and a client from its server (raw: the same
/// bytes to both), or a generated `Hello` and `Welcome` (structured, then mutated). The
/// server decodes its first frame with the pre-handshake limit; the client decodes its
/// first frame with the defaults and, given a `Welcome`, sends generated submits through a
/// `BatchWriter` built from the announced limits, which a decoder with those limits must
/// accept whole. Structured values are built at `scale`.
pub fn net_handshake(scale: Scale, data: &[u8]) {
    let mut g = Gen::at(scale, data);
    let selector = g.u8();
    let (to_server, to_client) = if selector & 0x80 != 0 {
        let mut hello = Frame::Hello(gen_hello(&mut g)).to_bytes().to_vec();
        let mut welcome = if g.u8().is_multiple_of(8) {
            Frame::Error(ErrorFrame { code: ErrorCode::from_code(g.u16()), message: g.text(256) }).to_bytes().to_vec()
        } else {
            Frame::Welcome(gen_welcome(&mut g)).to_bytes().to_vec()
        };
        mutate(&mut g, &mut hello);
        mutate(&mut g, &mut welcome);
        (hello, welcome)
    } else {
        let bytes = g.rest().to_vec();
        (bytes.clone(), bytes)
    };
    let server_limits = NetLimits { max_frame_bytes: MAX_HELLO_FRAME_BYTES, ..NetLimits::default() };
    check_stream(&to_server, server_limits, &[]);
    let answer = check_stream(&to_client, NetLimits::default(), &[]);
    if let Some((Frame::Welcome(welcome), _)) = answer.frames.first() {
        let submits = (0..g.count(32)).map(|_| gen_submit(&mut g, Limits::default())).collect();
        send_within(&welcome.limits, submits);
    }
}

/// Sends `submits` through a writer built from a server's announced `limits` and checks
/// that a decoder with those limits gets every one the writer took back, in order.
fn send_within(limits: &NetLimits, submits: Vec<Submit>) {
    let mut writer = BatchWriter::<Submit>::new(limits);
    let mut sent = Vec::new();
    for submit in submits {
        if writer.push(&submit).is_ok() {
            sent.push(submit);
        }
    }
    let stream = writer.take();
    // The writer's floors (16-byte frames, one message) are what it can honour; the
    // messages are checked against the server's engine limits on the other side.
    let receiver = NetLimits {
        max_frame_bytes: limits.max_frame_bytes.max(16),
        max_batch: limits.max_batch.max(1),
        engine: RECORD_LIMITS,
    };
    let decoded = check_stream(&stream, receiver, &[]);
    assert_eq!(decoded.error, None, "the writer wrote a frame its receiver refuses");
    let received: Vec<Submit> = decoded
        .frames
        .into_iter()
        .flat_map(|(frame, _)| match frame {
            Frame::Submits(items) => items,
            other => panic!("the writer wrote a {:?} frame", other.kind()),
        })
        .collect();
    assert_eq!(received, sent, "the writer lost or reordered messages");
}

/// Raw-mode seeds from the sample frames: every frame kind (`net_frames`, default limits,
/// no split points) and each side's handshake frame (`net_handshake`).
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let limits = NetLimits::default();
    for kind in 0u8..16 {
        for pattern in [&[0u8, 1, 2, 3, 4, 5, 6, 7, 8][..], &[0x21; 48]] {
            let mut forced = vec![kind];
            forced.extend_from_slice(pattern);
            let mut g = Gen::new(&forced);
            let frame = gen_frame(&mut g, &limits);
            let mut input = vec![0, 0];
            frame.encode(&mut input);
            seeds.push(("net_frames", input));
        }
    }
    for pattern in [&[1u8, 5, 0x61, 0x62, 0x63, 0x64, 0x65][..], &[0x33; 32]] {
        let mut input = vec![0];
        Frame::Hello(gen_hello(&mut Gen::new(pattern))).encode(&mut input);
        seeds.push(("net_handshake", input));
        let mut input = vec![0];
        Frame::Welcome(Welcome { limits: NetLimits::default(), ..gen_welcome(&mut Gen::new(pattern)) })
            .encode(&mut input);
        seeds.push(("net_handshake", input));
    }
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_seeds_decode_without_error() {
        for (target, input) in seed_inputs() {
            let limits = if target == "net_frames" { limits_for(input[0]) } else { NetLimits::default() };
            let stream = if target == "net_frames" { &input[2..] } else { &input[1..] };
            let decoded = check_stream(stream, limits, &[]);
            assert_eq!((decoded.frames.len(), decoded.error), (1, None), "{target} seed {input:?}");
        }
    }

    #[test]
    fn a_split_stream_decodes_as_the_whole() {
        let mut stream = Vec::new();
        for (_, input) in seed_inputs().iter().filter(|(target, _)| *target == "net_frames") {
            stream.extend_from_slice(&input[2..]);
        }
        let whole = check_stream(&stream, NetLimits::default(), &[]);
        assert_eq!(whole.frames.len(), 32);
        let split = decode_stream(&stream, NetLimits::default(), &[1, 2, 3, 5, 7, 11, 13]);
        assert_eq!(split, whole);
    }

    #[test]
    fn a_writer_obeys_a_tiny_announced_frame_limit() {
        let tiny = NetLimits { max_frame_bytes: 42, max_batch: 2, ..NetLimits::default() };
        let submit = |seq| Submit { client: twophase_engine::ClientId(1), seq, ops: Vec::new() };
        let mut big = submit(9);
        big.ops.push(twophase_engine::Op {
            participant: ParticipantId(0),
            key: bytes::Bytes::from(vec![7; 30]),
            kind: twophase_engine::OpKind::Get,
        });
        // Two empty submits fill a frame of 42 bytes (6 + 2 × 18); one of 53 bytes never fits.
        send_within(&tiny, vec![submit(1), submit(2), submit(3), big.clone()]);
        let mut writer = BatchWriter::<Submit>::new(&tiny);
        for seq in 1..=3 {
            writer.push(&submit(seq)).unwrap();
        }
        assert_eq!(writer.push(&submit(4)).map(|()| writer.frames()), Ok(1));
        assert!(writer.push(&big).is_err());
    }
}
