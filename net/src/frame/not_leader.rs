//! The `NotLeader` frame (kind 23): a follower of a replicated coordinator group answers a
//! client with it instead of serving, naming the leader it knows (if any) so the client can
//! reconnect there.
//!
//! Payload: `u64 term | u8 known`, then, when `known` is 1, `string name | string address`.
//! The address is an IP socket address in Rust's canonical text (`127.0.0.1:7000`,
//! `[::1]:7000`), parsed strictly: it must re-print to exactly the bytes sent, name a port
//! above 0, and both strings are bounded ([`LEADER_NAME_BYTES_MAX`],
//! [`LEADER_ADDRESS_BYTES_MAX`]) before they are read.

use std::fmt;
use std::net::SocketAddr;

use bytes::BufMut;
use twophase_engine::codec::{DecodeError, Reader, put_string};

/// Longest replica name a `NotLeader` may carry (a certificate name fits).
pub const LEADER_NAME_BYTES_MAX: usize = 255;
/// Longest address text: `[` + the longest IPv6 text with a scope id + `]:65535` fits.
pub const LEADER_ADDRESS_BYTES_MAX: usize = 64;

/// The leader a follower knows of.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LeaderHint {
    /// The replica's name (its `--id`).
    pub name: String,
    /// Where it serves clients.
    pub addr: SocketAddr,
}

/// A follower's answer: "not the leader; the leader of `term` is `leader` (or unknown)".
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NotLeader {
    /// The Raft term the follower is in.
    pub term: u64,
    /// The leader of that term, if the follower knows it.
    pub leader: Option<LeaderHint>,
}

impl fmt::Display for NotLeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.leader {
            Some(leader) => write!(
                f,
                "not the leader: coordinator {} at {} leads the group (term {})",
                leader.name, leader.addr, self.term
            ),
            None => write!(f, "not the leader, and no leader is known yet (term {})", self.term),
        }
    }
}

pub(super) fn encode(out: &mut Vec<u8>, not_leader: &NotLeader) {
    out.put_u64_le(not_leader.term);
    match &not_leader.leader {
        None => out.put_u8(0),
        Some(leader) => {
            assert!(leader.name.len() <= LEADER_NAME_BYTES_MAX, "a leader name beyond the NotLeader bound");
            out.put_u8(1);
            put_string(out, &leader.name);
            put_string(out, &leader.addr.to_string());
        }
    }
}

pub(super) fn decode(reader: &mut Reader) -> Result<NotLeader, DecodeError> {
    let term = reader.u64("term")?;
    let leader = match reader.u8("leader known flag")? {
        0 => None,
        1 => {
            let name = bounded_string(reader, LEADER_NAME_BYTES_MAX, "leader name")?;
            let text = bounded_string(reader, LEADER_ADDRESS_BYTES_MAX, "leader address")?;
            Some(LeaderHint { name, addr: parse_address(reader, &text)? })
        }
        other => return Err(reader.error(format!("leader known flag {other} is not 0 or 1"))),
    };
    Ok(NotLeader { term, leader })
}

/// A `string` whose length prefix is checked against `max` before its bytes are read.
fn bounded_string(reader: &mut Reader, max: usize, what: &str) -> Result<String, DecodeError> {
    let len = reader.u16(what)? as usize;
    if len > max {
        return Err(reader.error(format!("{what} of {len} bytes exceeds the limit of {max}")));
    }
    let bytes = reader.slice(len, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| reader.error(format!("{what} is not UTF-8")))
}

/// An address in canonical form only: what re-prints differently (leading zeros, a host
/// name, spaces) or names port 0 is refused.
fn parse_address(reader: &Reader, text: &str) -> Result<SocketAddr, DecodeError> {
    let addr: SocketAddr =
        text.parse().map_err(|_| reader.error(format!("leader address {text:?} is not an IP socket address")))?;
    if addr.to_string() != text {
        return Err(reader.error(format!("leader address {text:?} is not in canonical form ({addr})")));
    }
    if addr.port() == 0 {
        return Err(reader.error(format!("leader address {text:?} names port 0")));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::frame::{ErrorCode, Frame, FrameDecoder, FrameKind, NetLimits, PROTOCOL_VERSION};

    /// A NotLeader frame naming `name` at `address`, both written as given (unchecked).
    fn raw_frame(name: &[u8], address: &[u8]) -> BytesMut {
        let mut body = vec![PROTOCOL_VERSION, FrameKind::NotLeader as u8];
        body.put_u64_le(3);
        body.put_u8(1);
        body.put_u16_le(name.len() as u16);
        body.put_slice(name);
        body.put_u16_le(address.len() as u16);
        body.put_slice(address);
        let mut frame = BytesMut::new();
        frame.put_u32_le(body.len() as u32);
        frame.put_slice(&body);
        frame
    }

    fn decode(mut frame: BytesMut) -> Result<Frame, String> {
        match FrameDecoder::new(NetLimits::default()).decode(&mut frame) {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err("incomplete".into()),
            Err(err) => {
                assert_eq!(err.code, ErrorCode::Malformed);
                Err(err.message)
            }
        }
    }

    #[test]
    fn a_canonical_address_decodes_to_the_leader() {
        let frame = decode(raw_frame(b"c2", b"10.0.0.2:7000")).unwrap();
        let expected = LeaderHint { name: "c2".into(), addr: "10.0.0.2:7000".parse().unwrap() };
        assert_eq!(frame, Frame::NotLeader(NotLeader { term: 3, leader: Some(expected) }));
    }

    #[test]
    fn the_protocol_documents_example_decodes() {
        // docs/PROTOCOL.md, "NotLeader (kind 23)".
        let example = "1f 00 00 00 01 17 03 00 00 00 00 00 00 00 01 02 00 63 32 \
                       0e 00 31 32 37 2e 30 2e 30 2e 31 3a 37 30 30 32";
        let bytes: Vec<u8> = example.split_whitespace().map(|byte| u8::from_str_radix(byte, 16).unwrap()).collect();
        let expected = NotLeader {
            term: 3,
            leader: Some(LeaderHint { name: "c2".into(), addr: "127.0.0.1:7002".parse().unwrap() }),
        };
        assert_eq!(decode(BytesMut::from(&bytes[..])), Ok(Frame::NotLeader(expected.clone())));
        assert_eq!(&Frame::NotLeader(expected).to_bytes()[..], &bytes[..]);
    }

    #[test]
    fn addresses_that_are_not_canonical_ip_socket_addresses_are_refused() {
        for (address, why) in [
            (&b"localhost:7000"[..], "not an IP socket address"),
            (b"127.0.0.1", "not an IP socket address"),
            (b"127.0.0.1:07000", "not in canonical form"),
            (b" 127.0.0.1:7000", "not an IP socket address"),
            (b"[0:0:0:0:0:0:0:1]:7000", "not in canonical form"),
            (b"127.0.0.1:0", "names port 0"),
            (b"127.0.0.1:70000", "not an IP socket address"),
        ] {
            let err = decode(raw_frame(b"c2", address)).unwrap_err();
            assert!(err.contains(why), "{:?}: {err}", String::from_utf8_lossy(address));
        }
    }

    #[test]
    fn lengths_are_bounded_before_the_strings_are_read() {
        let long_name = vec![b'c'; LEADER_NAME_BYTES_MAX + 1];
        let err = decode(raw_frame(&long_name, b"127.0.0.1:7000")).unwrap_err();
        assert!(err.contains("leader name of 256 bytes exceeds the limit of 255"), "{err}");
        let long_address = vec![b'1'; LEADER_ADDRESS_BYTES_MAX + 1];
        let err = decode(raw_frame(b"c2", &long_address)).unwrap_err();
        assert!(err.contains("leader address of 65 bytes exceeds the limit of 64"), "{err}");
        // A length prefix promising more than the frame holds is a truncation, not a read.
        let mut truncated = raw_frame(b"c2", b"127.0.0.1:7000");
        truncated.truncate(truncated.len() - 3);
        let length = (truncated.len() - 4) as u32;
        truncated[..4].copy_from_slice(&length.to_le_bytes());
        assert!(decode(truncated).unwrap_err().contains("truncated"));
    }

    #[test]
    fn a_bad_known_flag_and_trailing_bytes_are_refused() {
        let mut frame = raw_frame(b"c2", b"127.0.0.1:7000");
        frame[14] = 2; // the known flag, after length, version, kind and term
        assert!(decode(frame).unwrap_err().contains("leader known flag 2 is not 0 or 1"));
        let mut unknown = Frame::NotLeader(NotLeader { term: 1, leader: None }).to_bytes().to_vec();
        unknown.push(0);
        unknown[0] += 1;
        assert!(decode(BytesMut::from(&unknown[..])).is_err());
    }

    #[test]
    fn display_names_the_leader_or_says_none_is_known() {
        let known =
            NotLeader { term: 4, leader: Some(LeaderHint { name: "c1".into(), addr: "127.0.0.1:1".parse().unwrap() }) };
        assert_eq!(known.to_string(), "not the leader: coordinator c1 at 127.0.0.1:1 leads the group (term 4)");
        assert_eq!(
            NotLeader { term: 4, leader: None }.to_string(),
            "not the leader, and no leader is known yet (term 4)"
        );
    }
}
