//! Participant names (`p1`, `shard-a`) and the numeric ids the protocol uses. The id must
//! never change for a name: commit records store ids, and a restarted coordinator re-drives
//! commits by id. So it is derived from the name alone: `p<N>` is N, anything else a stable
//! hash; two names with one id are refused.

use anyhow::{Context, bail};
use twophase_engine::ParticipantId;

pub fn participant_id(name: &str) -> anyhow::Result<ParticipantId> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("participant name {name:?} must be 1 to 64 characters of letters, digits, '-' or '_'");
    }
    if let Some(number) = name.strip_prefix('p').and_then(|rest| rest.parse::<u16>().ok())
        && number > 0
        && name == format!("p{number}")
    {
        return Ok(ParticipantId(number));
    }
    // FNV-1a, folded into 1..=65535 (0 is never an id).
    let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    Ok(ParticipantId(((hash % 65535) + 1) as u16))
}

/// Parses `NAME=ADDR` pairs and checks that no two names share an id.
pub fn parse_participants(specs: &[String]) -> anyhow::Result<Vec<(ParticipantId, String, String)>> {
    let mut out: Vec<(ParticipantId, String, String)> = Vec::new();
    for spec in specs {
        let (name, addr) =
            spec.split_once('=').with_context(|| format!("--participant {spec:?}: expected NAME=HOST:PORT"))?;
        let id = participant_id(name)?;
        if let Some((_, other, _)) = out.iter().find(|(existing, _, _)| *existing == id) {
            bail!("participants {other:?} and {name:?} map to the same id {}; rename one", id.0);
        }
        out.push((id, name.to_string(), addr.to_string()));
    }
    if out.is_empty() {
        bail!("a coordinator needs at least one --participant NAME=HOST:PORT");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_p_numbers_map_directly() {
        assert_eq!(participant_id("p1").unwrap(), ParticipantId(1));
        assert_eq!(participant_id("p42").unwrap(), ParticipantId(42));
        assert_ne!(participant_id("p01").unwrap(), ParticipantId(1), "only the canonical spelling");
        assert_eq!(participant_id("shard-a").unwrap(), participant_id("shard-a").unwrap());
        assert_ne!(participant_id("p0").unwrap(), ParticipantId(0));
        assert!(participant_id("bad name").is_err());
        assert!(participant_id("").is_err());
    }

    #[test]
    fn participant_lists_are_checked() {
        let list = parse_participants(&["p1=127.0.0.1:1".into(), "p2=127.0.0.1:2".into()]).unwrap();
        assert_eq!(list[1], (ParticipantId(2), "p2".into(), "127.0.0.1:2".into()));
        assert!(parse_participants(&["p1".into()]).unwrap_err().to_string().contains("NAME=HOST:PORT"));
        assert!(parse_participants(&["p1=a".into(), "p1=b".into()]).unwrap_err().to_string().contains("same id"));
        assert!(parse_participants(&[]).is_err());
    }
}
