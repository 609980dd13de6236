//! The shell syntax of operations for `twophase tx`:
//!
//! - `get P:KEY`
//! - `put P:KEY=TEXT`
//! - `del P:KEY`
//! - `add P:KEY=DELTA` or `add P:KEY=DELTA,floor=F` (integers; a missing key counts as 0)
//!
//! `P` names a participant as the coordinator's directory does (`p1`, ...).

use anyhow::{Context, bail};
use bytes::Bytes;
use twophase_engine::{Op, OpKind, ParticipantId};

/// An op as typed, before its participant name is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedOp {
    pub participant: String,
    pub key: String,
    pub kind: OpKind,
}

/// Parses `VERB SPEC VERB SPEC ...`.
pub fn parse_ops(words: &[String]) -> anyhow::Result<Vec<NamedOp>> {
    if words.is_empty() {
        bail!("no operations given; e.g. `add p1:alice=-10,floor=0 add p2:bob=10`");
    }
    if !words.len().is_multiple_of(2) {
        bail!("operation {:?} has no argument; each is VERB P:KEY[...]", words.last().unwrap());
    }
    words.chunks(2).map(|pair| parse_op(&pair[0], &pair[1])).collect()
}

fn parse_op(verb: &str, spec: &str) -> anyhow::Result<NamedOp> {
    let (target, argument) = match spec.split_once('=') {
        Some((target, argument)) => (target, Some(argument)),
        None => (spec, None),
    };
    let (participant, key) =
        target.split_once(':').with_context(|| format!("{verb} {spec}: expected PARTICIPANT:KEY, e.g. p1:alice"))?;
    if participant.is_empty() || key.is_empty() {
        bail!("{verb} {spec}: participant and key must not be empty");
    }
    let kind = match (verb, argument) {
        ("get", None) => OpKind::Get,
        ("del", None) => OpKind::Delete,
        ("put", Some(text)) => OpKind::Put(Bytes::copy_from_slice(text.as_bytes())),
        ("add", Some(argument)) => parse_add(verb, spec, argument)?,
        ("get" | "del", Some(_)) => bail!("{verb} {spec}: {verb} takes no =VALUE"),
        ("put" | "add", None) => bail!("{verb} {spec}: {verb} needs =VALUE"),
        _ => bail!("unknown operation {verb:?}; use get, put, del or add"),
    };
    Ok(NamedOp { participant: participant.to_string(), key: key.to_string(), kind })
}

fn parse_add(verb: &str, spec: &str, argument: &str) -> anyhow::Result<OpKind> {
    let (delta, floor) = match argument.split_once(",floor=") {
        Some((delta, floor)) => {
            (delta, floor.parse::<i64>().with_context(|| format!("{verb} {spec}: floor {floor:?} is not an integer"))?)
        }
        None => (argument, i64::MIN),
    };
    let delta = delta.parse::<i64>().with_context(|| format!("{verb} {spec}: delta {delta:?} is not an integer"))?;
    Ok(OpKind::Add { delta, floor })
}

/// Resolves participant names with `lookup`, naming the known ones when one is unknown.
pub fn resolve(ops: Vec<NamedOp>, known: &[(ParticipantId, String)]) -> anyhow::Result<Vec<Op>> {
    ops.into_iter()
        .map(|op| {
            let Some((id, _)) = known.iter().find(|(_, name)| *name == op.participant) else {
                let names: Vec<&str> = known.iter().map(|(_, name)| name.as_str()).collect();
                bail!("unknown participant {:?}; this coordinator knows: {}", op.participant, names.join(", "));
            };
            Ok(Op { participant: *id, key: Bytes::from(op.key.into_bytes()), kind: op.kind })
        })
        .collect()
}

/// How a stored value reads: an 8-byte value as its integer, UTF-8 as text, else hex.
pub fn show_value(value: &[u8]) -> String {
    if let Ok(bytes) = <[u8; 8]>::try_from(value) {
        return i64::from_le_bytes(bytes).to_string();
    }
    match std::str::from_utf8(value) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("0x{}", value.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn every_verb_parses() {
        let ops = parse_ops(&words("get p1:a put p2:b=hello del p1:c add p3:d=-10,floor=0 add p1:e=+5")).unwrap();
        assert_eq!(ops[0].kind, OpKind::Get);
        assert_eq!(ops[1].kind, OpKind::Put(Bytes::from_static(b"hello")));
        assert_eq!(ops[2].kind, OpKind::Delete);
        assert_eq!(ops[3].kind, OpKind::Add { delta: -10, floor: 0 });
        assert_eq!(ops[4].kind, OpKind::Add { delta: 5, floor: i64::MIN });
        assert_eq!((ops[3].participant.as_str(), ops[3].key.as_str()), ("p3", "d"));
    }

    #[test]
    fn mistakes_get_clear_errors() {
        let err = |text: &str| parse_ops(&words(text)).unwrap_err().to_string();
        assert!(err("").contains("no operations"));
        assert!(err("get").contains("has no argument"));
        assert!(err("frob p1:a").contains("unknown operation"));
        assert!(err("add p1:a=ten").contains("not an integer"));
        assert!(err("get p1a").contains("PARTICIPANT:KEY"));
        assert!(err("put p1:a").contains("needs =VALUE"));
    }

    #[test]
    fn unknown_participants_name_the_known_ones() {
        let known = vec![(ParticipantId(1), "p1".to_string()), (ParticipantId(2), "p2".to_string())];
        let ops = parse_ops(&words("get p9:a")).unwrap();
        let err = resolve(ops, &known).unwrap_err().to_string();
        assert_eq!(err, "unknown participant \"p9\"; this coordinator knows: p1, p2");
        let ops = resolve(parse_ops(&words("get p2:a")).unwrap(), &known).unwrap();
        assert_eq!(ops[0].participant, ParticipantId(2));
    }

    #[test]
    fn values_show_as_integers_text_or_hex() {
        assert_eq!(show_value(&42i64.to_le_bytes()), "42");
        assert_eq!(show_value(b"hi"), "\"hi\"");
        assert_eq!(show_value(&[0xff, 0x00, 0x01]), "0xff0001");
    }
}
