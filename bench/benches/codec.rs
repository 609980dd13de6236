//! Encoding and decoding cost per message, reported by criterion as time per batch and as
//! messages per second (`Throughput::Elements`); divide the batch time by the batch size
//! (1 or 256) for nanoseconds per message.
//!
//! Every message is one typical bank transfer: two ops on keys like `acct/12345`, a debit
//! `Add { delta: -5, floor: 0 }` and a credit `Add { delta: 5, floor: i64::MIN }`.
//!
//! * `frame/<kind>/encode/<n>`: `BatchWriter::push` of `n` messages, then `take()` of the
//!   frame bytes, as the node and client send them (the buffer `take` allocates is counted).
//! * `frame/<kind>/decode/<n>`: `FrameDecoder::decode` of that frame back into messages. The
//!   input buffer is prepared and the decoded messages are dropped outside the timed part.
//! * `message/<kind>/encode/<n>` and `message/<kind>/decode/<n>`: the engine's message codec
//!   alone (`Encode::encode` into a reused buffer, `Decode::decode` from a `Reader`), no
//!   frame header, length patching or batch checks.
//!
//! `<kind>` is `submits` (client → coordinator `Submit`) or `to_participant` (coordinator →
//! participant `Prepare`, carrying both ops as for a transfer within one participant).

use std::fmt::Debug;
use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use twophase_engine::codec::{Decode, Encode, Reader};
use twophase_engine::{ClientId, Epoch, Key, Limits, LocalOp, Op, OpKind, ParticipantId, Submit, ToParticipant, TxId};
use twophase_net::{BatchItem, BatchWriter, Frame, FrameDecoder, NetLimits};

const BATCHES: [usize; 2] = [1, 256];
const EPOCH: Epoch = Epoch(1);

fn account_key(n: u64) -> Key {
    Bytes::from(format!("acct/{}", 10_000 + n % 90_000))
}

fn debit() -> OpKind {
    OpKind::Add { delta: -5, floor: 0 }
}

fn credit() -> OpKind {
    OpKind::Add { delta: 5, floor: i64::MIN }
}

/// The `i`-th transfer as a client submits it: debit on participant 1, credit on 2.
fn submit(i: u64) -> Submit {
    let ops = vec![
        Op { participant: ParticipantId(1), key: account_key(i * 7_919), kind: debit() },
        Op { participant: ParticipantId(2), key: account_key(i * 104_729 + 1), kind: credit() },
    ];
    Submit { client: ClientId(1_000 + i % 64), seq: i + 1, ops }
}

/// The `i`-th transfer as a participant holding both accounts is asked to prepare it.
fn prepare(i: u64) -> ToParticipant {
    let ops = vec![
        LocalOp { index: 0, key: account_key(i * 7_919), kind: debit() },
        LocalOp { index: 1, key: account_key(i * 104_729 + 1), kind: credit() },
    ];
    ToParticipant::Prepare { txid: TxId::new(EPOCH, i + 1), ops, sole: false }
}

fn encode_frame<T: BatchItem>(writer: &mut BatchWriter<T>, messages: &[T]) -> Bytes {
    for message in messages {
        writer.push(message).expect("a transfer fits in a frame");
    }
    writer.take()
}

/// A batched message type together with how to take its batch out of a decoded frame.
trait Framed: BatchItem + Clone + PartialEq + Debug + Sized {
    fn from_frame(frame: Frame) -> Vec<Self>;
}

impl Framed for Submit {
    fn from_frame(frame: Frame) -> Vec<Submit> {
        match frame {
            Frame::Submits(items) => items,
            other => panic!("expected a Submits frame, got {other:?}"),
        }
    }
}

impl Framed for ToParticipant {
    fn from_frame(frame: Frame) -> Vec<ToParticipant> {
        match frame {
            Frame::ToParticipant { epoch, messages } if epoch == EPOCH => messages,
            other => panic!("expected a ToParticipant frame of {EPOCH:?}, got {other:?}"),
        }
    }
}

fn decode_frame(decoder: &mut FrameDecoder, buf: &mut BytesMut) -> Frame {
    decoder.decode(buf).expect("valid frame").expect("a whole frame")
}

/// Checks outside the timed part that the batch is one frame that round-trips.
fn check_frame_round_trip<T: Framed>(messages: &[T]) -> Bytes {
    let limits = NetLimits::default();
    let mut writer = BatchWriter::new(&limits);
    writer.set_epoch(EPOCH);
    let bytes = encode_frame(&mut writer, messages);
    let mut buf = BytesMut::from(&bytes[..]);
    let frame = decode_frame(&mut FrameDecoder::new(limits), &mut buf);
    assert!(buf.is_empty(), "the batch is exactly one frame");
    assert_eq!(T::from_frame(frame), messages);
    bytes
}

fn bench_frames<T: Framed>(c: &mut Criterion, kind: &str, make: fn(u64) -> T) {
    let mut group = c.benchmark_group(format!("frame/{kind}"));
    for n in BATCHES {
        let messages: Vec<T> = (0..n as u64).map(make).collect();
        let bytes = check_frame_round_trip(&messages);
        group.throughput(Throughput::Elements(n as u64));
        let limits = NetLimits::default();
        let mut writer = BatchWriter::<T>::new(&limits);
        writer.set_epoch(EPOCH);
        group.bench_function(BenchmarkId::new("encode", n), |b| {
            b.iter(|| black_box(encode_frame(&mut writer, black_box(&messages))))
        });
        let mut decoder = FrameDecoder::new(limits);
        group.bench_function(BenchmarkId::new("decode", n), |b| {
            b.iter_batched(
                || BytesMut::from(&bytes[..]),
                |mut buf| decode_frame(&mut decoder, black_box(&mut buf)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn encode_messages<T: Encode>(out: &mut Vec<u8>, messages: &[T]) {
    out.clear();
    for message in messages {
        message.encode(out);
    }
}

fn decode_messages<T: Decode>(bytes: Bytes, n: usize) -> Vec<T> {
    let mut reader = Reader::new(bytes, Limits::default());
    let messages = (0..n).map(|_| T::decode(&mut reader).expect("valid message")).collect();
    reader.finish().expect("no trailing bytes");
    messages
}

fn bench_messages<T: Encode + Decode + PartialEq + Debug>(c: &mut Criterion, kind: &str, make: fn(u64) -> T) {
    let mut group = c.benchmark_group(format!("message/{kind}"));
    for n in BATCHES {
        let messages: Vec<T> = (0..n as u64).map(make).collect();
        let mut out = Vec::new();
        encode_messages(&mut out, &messages);
        let bytes = Bytes::from(out.clone());
        assert_eq!(decode_messages::<T>(bytes.clone(), n), messages);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("encode", n), |b| {
            b.iter(|| {
                encode_messages(&mut out, black_box(&messages));
                black_box(out.as_slice());
            })
        });
        group.bench_function(BenchmarkId::new("decode", n), |b| {
            b.iter_batched(|| bytes.clone(), |bytes| decode_messages::<T>(black_box(bytes), n), BatchSize::SmallInput)
        });
    }
    group.finish();
}

fn frames(c: &mut Criterion) {
    bench_frames(c, "submits", submit);
    bench_frames(c, "to_participant", prepare);
}

fn messages(c: &mut Criterion) {
    bench_messages(c, "submits", submit);
    bench_messages(c, "to_participant", prepare);
}

/// Short runs, and no plots: rendering them takes several seconds per benchmark on a small
/// machine, more than measuring. Estimates are still printed and saved under target/criterion.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = frames, messages
}
criterion_main!(benches);
