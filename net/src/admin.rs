//! Admin requests for operators and the load generator's audit: a participant's whole state
//! (`Dump`, streamed in chunks and consumed as they arrive), a coordinator's participants
//! with their addresses (`Topology`) and a coordinator's replication status (`Status`).
//!
//! Both connect with the `admin` role: with TLS the certificate must be an admin's (a
//! client's is refused as `Forbidden`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use twophase_engine::ParticipantId;

use crate::client::{ClientError, ClientOptions, Connection, resolve};
use crate::frame::{AdminOp, DumpEnd, ErrorCode, Frame, ProtocolError, ReplicaStatus, Role};
use crate::tls::Security;

/// Give up on an admin request after this long without progress.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

fn connect(addr: impl ToSocketAddrs, cluster: &str, security: &Security) -> Result<Connection, ClientError> {
    let options = ClientOptions {
        cluster: cluster.to_string(),
        request_timeout: ADMIN_TIMEOUT,
        security: security.clone(),
        ..ClientOptions::default()
    };
    Connection::open(&resolve(addr)?, &options, &format!("client-{:016x}", rand::random::<u64>()), Role::Admin)
}

fn unexpected(frame: &Frame) -> ClientError {
    match frame {
        Frame::Error(error) => ClientError::Refused { code: error.code, message: error.message.clone() },
        other => ClientError::Protocol(ProtocolError::new(
            ErrorCode::UnexpectedFrame,
            format!("unexpected {:?} frame in an admin answer", other.kind()),
        )),
    }
}

/// Sends `op` and hands every answer frame to `take` until it returns true.
fn request(
    mut conn: Connection,
    op: AdminOp,
    mut take: impl FnMut(Frame) -> Result<bool, ClientError>,
) -> Result<(), ClientError> {
    conn.stream.send(&Frame::AdminRequest(op).to_bytes())?;
    let mut frames = Vec::new();
    let mut deadline = Instant::now() + ADMIN_TIMEOUT;
    loop {
        conn.read_frames(deadline, &mut frames)?;
        if frames.is_empty() && Instant::now() >= deadline {
            return Err(ClientError::Timeout { after: ADMIN_TIMEOUT });
        }
        for frame in frames.drain(..) {
            deadline = Instant::now() + ADMIN_TIMEOUT;
            if take(frame)? {
                return Ok(());
            }
        }
    }
}

/// Streams a participant's state: hands every key and value to `each` as its chunk arrives
/// (keeping none of them), and returns the participant's counts from the `DumpEnd` once the
/// number of entries received matched it.
///
/// The state read is consistent: a participant that applied a commit while the dump streamed
/// answers with `Error` (code 7) instead of `DumpEnd`, and this returns
/// [`ClientError::Refused`]; dump again. Take the dump once the load settled (no transaction
/// prepared, `DumpEnd::prepared == 0`), as the audit does.
pub fn dump_each(
    addr: impl ToSocketAddrs,
    cluster: &str,
    security: &Security,
    mut each: impl FnMut(&[u8], &[u8]),
) -> Result<DumpEnd, ClientError> {
    let mut received = 0u64;
    let mut end = None;
    request(connect(addr, cluster, security)?, AdminOp::Dump, |frame| match frame {
        Frame::DumpChunk(chunk) => {
            received += chunk.len() as u64;
            for (key, value) in &chunk {
                each(key, value);
            }
            Ok(false)
        }
        Frame::DumpEnd(last) => {
            end = Some(last);
            Ok(true)
        }
        other => Err(unexpected(&other)),
    })?;
    let end = end.expect("the request ends with DumpEnd");
    if end.keys != received {
        return Err(ClientError::Protocol(ProtocolError::new(
            ErrorCode::Malformed,
            format!("dump announced {} keys but sent {received}", end.keys),
        )));
    }
    Ok(end)
}

/// Every key and value a participant holds, and its counts at the time, collected in memory:
/// for small states (tests, operators). Large states: [`dump_each`].
pub fn dump(
    addr: impl ToSocketAddrs,
    cluster: &str,
    security: &Security,
) -> Result<(Vec<(Bytes, Bytes)>, DumpEnd), ClientError> {
    let mut entries = Vec::new();
    let end = dump_each(addr, cluster, security, |key, value| {
        entries.push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)));
    })?;
    Ok((entries, end))
}

/// A coordinator's participants: id, name and the address it reaches each at.
pub fn topology(
    addr: impl ToSocketAddrs,
    cluster: &str,
    security: &Security,
) -> Result<Vec<(ParticipantId, String, SocketAddr)>, ClientError> {
    let mut participants = Vec::new();
    request(connect(addr, cluster, security)?, AdminOp::Topology, |frame| match frame {
        Frame::Topology(list) => {
            participants = list;
            Ok(true)
        }
        other => Err(unexpected(&other)),
    })?;
    participants
        .into_iter()
        .map(|(id, name, addr)| {
            let parsed = addr.parse().map_err(|_| {
                ClientError::Protocol(ProtocolError::new(
                    ErrorCode::Malformed,
                    format!("bad address {addr:?} for {name}"),
                ))
            })?;
            Ok((id, name, parsed))
        })
        .collect()
}

/// Most members a `Status` answer may list (a group is a handful of replicas).
pub const STATUS_MEMBERS_MAX: usize = 64;

/// A coordinator's replication status as it reports it: its own row (role follower or
/// leader) and every other member of its group (role `Unreported`, to ask in turn). Empty
/// from a single coordinator.
pub fn status(addr: impl ToSocketAddrs, cluster: &str, security: &Security) -> Result<Vec<ReplicaStatus>, ClientError> {
    let malformed = |why: String| ClientError::Protocol(ProtocolError::new(ErrorCode::Malformed, why));
    let mut members = Vec::new();
    request(connect(addr, cluster, security)?, AdminOp::Status, |frame| match frame {
        Frame::DumpChunk(chunk) => {
            if members.len() + chunk.len() > STATUS_MEMBERS_MAX {
                return Err(malformed(format!("a status of more than {STATUS_MEMBERS_MAX} members")));
            }
            for (key, value) in &chunk {
                members.push(ReplicaStatus::from_entry(key, value).map_err(|why| malformed(format!("status: {why}")))?);
            }
            Ok(false)
        }
        Frame::DumpEnd(end) if end.keys == members.len() as u64 => Ok(true),
        Frame::DumpEnd(end) => {
            Err(malformed(format!("status announced {} members but sent {}", end.keys, members.len())))
        }
        other => Err(unexpected(&other)),
    })?;
    Ok(members)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use twophase_engine::ParticipantId;

    use crate::frame::{AdminOp, DumpEnd, Frame, FrameDecoder, NetLimits};

    #[test]
    fn admin_frames_round_trip_and_bad_ops_are_refused() {
        let frames = vec![
            Frame::AdminRequest(AdminOp::Dump),
            Frame::AdminRequest(AdminOp::Topology),
            Frame::AdminRequest(AdminOp::Status),
            Frame::DumpChunk(vec![(bytes::Bytes::from_static(b"k"), bytes::Bytes::from_static(b"v"))]),
            Frame::DumpChunk(vec![]),
            Frame::DumpEnd(DumpEnd { keys: 1, prepared: 2, in_doubt: 3, fsync: true }),
            Frame::Topology(vec![(ParticipantId(1), "p1".into(), "127.0.0.1:7101".into())]),
        ];
        let mut decoder = FrameDecoder::new(NetLimits::default());
        for frame in frames {
            let mut buf = BytesMut::from(&frame.to_bytes()[..]);
            assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame));
        }
        let mut bad = BytesMut::from(&[3u8, 0, 0, 0, 1, 32, 9][..]);
        assert!(decoder.decode(&mut bad).unwrap_err().message.contains("unknown admin op 9"));
        let mut huge = BytesMut::from(&[6u8, 0, 0, 0, 1, 33, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(decoder.decode(&mut huge).unwrap_err().message.contains("cannot fit"));
    }
}
