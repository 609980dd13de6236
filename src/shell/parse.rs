//! The statements of `twophase shell`, one per line, keywords in any case:
//!
//! - `BEGIN [serializable | read-committed | optimistic]`
//! - `GET P KEY`, `PUT P KEY VALUE...`, `ADD P KEY DELTA [FLOOR]`, `DELETE P KEY`
//! - `SQL P STATEMENT...` (a database participant; the statement is the rest of the line)
//! - `COMMIT`, `ROLLBACK`, `HELP`, `QUIT` (or `EXIT`)
//!
//! `P` names a participant as the coordinator's directory does (`p1`, ...). A `PUT`'s value
//! is the rest of the line after the key, spaces included. A trailing `;` is ignored.

use anyhow::{Context, bail};
use bytes::Bytes;
use twophase_engine::OpKind;
use twophase_engine::ops::Isolation;

use crate::opsyntax::NamedOp;

/// One line of shell input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    /// `None`: the coordinator's default level (serializable).
    Begin(Option<Isolation>),
    Op(NamedOp),
    /// An SQL statement (without parameters: the person types the values) for participant
    /// `participant`.
    Sql {
        participant: String,
        sql: String,
    },
    Commit,
    Rollback,
    Help,
    Quit,
    /// A blank line or a comment (`--` ...).
    Nothing,
}

pub const HELP: &str = "\
statements (keywords in any case; a trailing ; is ignored):
  BEGIN [serializable | read-committed | optimistic]   open a transaction
  GET P KEY                 read KEY on participant P
  PUT P KEY VALUE...        write the text VALUE (the rest of the line)
  ADD P KEY DELTA [FLOOR]   add DELTA to the integer at KEY; abort if it would go below FLOOR
  DELETE P KEY              delete KEY
  SQL P STATEMENT...        run an SQL statement on database participant P and show its rows
  COMMIT | ROLLBACK         end the open transaction
  HELP | QUIT
outside a transaction, GET/PUT/ADD/DELETE each run as a one-shot transaction, and SQL as an
interactive transaction of its own (committed when it succeeds).";

/// Parses one line.
pub fn parse(line: &str) -> anyhow::Result<Statement> {
    let line = line.trim();
    let line = line.strip_suffix(';').unwrap_or(line).trim_end();
    if line.is_empty() || line.starts_with("--") {
        return Ok(Statement::Nothing);
    }
    let (verb, rest) = split_word(line);
    let verb = verb.to_ascii_lowercase();
    match verb.as_str() {
        "begin" => parse_begin(rest),
        "commit" => no_arguments(Statement::Commit, "COMMIT", rest),
        "rollback" | "abort" => no_arguments(Statement::Rollback, "ROLLBACK", rest),
        "help" | "?" => Ok(Statement::Help),
        "quit" | "exit" | "\\q" => no_arguments(Statement::Quit, "QUIT", rest),
        "get" | "put" | "add" | "delete" | "del" => parse_op(&verb, rest).map(Statement::Op),
        "sql" => parse_sql(rest),
        _ => bail!("unknown statement {verb:?}; type HELP for the list"),
    }
}

fn parse_begin(rest: &str) -> anyhow::Result<Statement> {
    let level = match rest.to_ascii_lowercase().as_str() {
        "" => None,
        "serializable" => Some(Isolation::Serializable),
        "read-committed" | "read committed" | "read_committed" => Some(Isolation::ReadCommitted),
        "optimistic" => Some(Isolation::Optimistic),
        other => bail!("unknown isolation level {other:?}; use serializable, read-committed or optimistic"),
    };
    Ok(Statement::Begin(level))
}

fn no_arguments(statement: Statement, name: &str, rest: &str) -> anyhow::Result<Statement> {
    if !rest.is_empty() {
        bail!("{name} takes no arguments (got {rest:?})");
    }
    Ok(statement)
}

fn parse_op(verb: &str, rest: &str) -> anyhow::Result<NamedOp> {
    let usage = match verb {
        "get" => "GET P KEY",
        "put" => "PUT P KEY VALUE",
        "add" => "ADD P KEY DELTA [FLOOR]",
        _ => "DELETE P KEY",
    };
    let (participant, rest) = split_word(rest);
    let (key, rest) = split_word(rest);
    if participant.is_empty() || key.is_empty() {
        bail!("usage: {usage}");
    }
    let kind = match verb {
        "get" | "delete" | "del" => {
            if !rest.is_empty() {
                bail!("usage: {usage} (unexpected {rest:?})");
            }
            if verb == "get" { OpKind::Get } else { OpKind::Delete }
        }
        "put" => {
            if rest.is_empty() {
                bail!("usage: {usage} (no value)");
            }
            OpKind::Put(Bytes::copy_from_slice(rest.as_bytes()))
        }
        _ => parse_add(usage, rest)?,
    };
    Ok(NamedOp { participant: participant.to_string(), key: key.to_string(), kind })
}

fn parse_sql(rest: &str) -> anyhow::Result<Statement> {
    let (participant, sql) = split_word(rest);
    if participant.is_empty() || sql.is_empty() {
        bail!("usage: SQL P STATEMENT");
    }
    Ok(Statement::Sql { participant: participant.to_string(), sql: sql.to_string() })
}

fn parse_add(usage: &str, rest: &str) -> anyhow::Result<OpKind> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let integer = |word: &str, what: &str| {
        word.parse::<i64>().with_context(|| format!("usage: {usage} ({what} {word:?} is not an integer)"))
    };
    match words.as_slice() {
        [delta] => Ok(OpKind::Add { delta: integer(delta, "delta")?, floor: i64::MIN }),
        [delta, floor] => Ok(OpKind::Add { delta: integer(delta, "delta")?, floor: integer(floor, "floor")? }),
        _ => bail!("usage: {usage}"),
    }
}

/// The first whitespace-separated word and the rest of the line after it (trimmed).
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], text[end..].trim()),
        None => (text, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(line: &str) -> NamedOp {
        match parse(line).unwrap() {
            Statement::Op(op) => op,
            other => panic!("{line}: expected an op, got {other:?}"),
        }
    }

    fn error(line: &str) -> String {
        parse(line).unwrap_err().to_string()
    }

    #[test]
    fn begin_takes_an_optional_isolation_level_in_any_case() {
        assert_eq!(parse("BEGIN").unwrap(), Statement::Begin(None));
        assert_eq!(parse("begin serializable;").unwrap(), Statement::Begin(Some(Isolation::Serializable)));
        assert_eq!(parse("Begin Read-Committed").unwrap(), Statement::Begin(Some(Isolation::ReadCommitted)));
        assert_eq!(parse("begin read committed").unwrap(), Statement::Begin(Some(Isolation::ReadCommitted)));
        assert_eq!(parse("BEGIN OPTIMISTIC").unwrap(), Statement::Begin(Some(Isolation::Optimistic)));
        assert!(error("begin snapshot").contains("unknown isolation level \"snapshot\""));
    }

    #[test]
    fn every_op_parses() {
        assert_eq!(op("GET p1 acct/1"), NamedOp { participant: "p1".into(), key: "acct/1".into(), kind: OpKind::Get });
        assert_eq!(op("put p2 name  hello world ;").kind, OpKind::Put(Bytes::from_static(b"hello world")));
        assert_eq!(op("DELETE p1 k").kind, OpKind::Delete);
        assert_eq!(op("del p1 k").kind, OpKind::Delete);
        assert_eq!(op("ADD p2 acct/2 5").kind, OpKind::Add { delta: 5, floor: i64::MIN });
        assert_eq!(op("add p2 acct/2 -10 0").kind, OpKind::Add { delta: -10, floor: 0 });
        let put = op("PUT p3 k v");
        assert_eq!((put.participant.as_str(), put.key.as_str()), ("p3", "k"));
    }

    #[test]
    fn control_statements_parse_and_blank_lines_do_nothing() {
        assert_eq!(parse("commit").unwrap(), Statement::Commit);
        assert_eq!(parse(" ROLLBACK ; ").unwrap(), Statement::Rollback);
        assert_eq!(parse("help").unwrap(), Statement::Help);
        assert_eq!(parse("exit").unwrap(), Statement::Quit);
        assert_eq!(parse("   ").unwrap(), Statement::Nothing);
        assert_eq!(parse("-- a comment").unwrap(), Statement::Nothing);
    }

    #[test]
    fn mistakes_get_clear_errors() {
        assert!(error("frob p1 k").contains("unknown statement \"frob\""));
        assert!(error("get p1").contains("usage: GET P KEY"));
        assert!(error("get p1 k extra").contains("unexpected \"extra\""));
        assert!(error("put p1 k").contains("no value"));
        assert!(error("add p1 k ten").contains("delta \"ten\" is not an integer"));
        assert!(error("add p1 k 1 low").contains("floor \"low\" is not an integer"));
        assert!(error("add p1 k").contains("usage: ADD P KEY DELTA [FLOOR]"));
        assert!(error("add p1 k 1 2 3").contains("usage: ADD"));
        assert!(error("commit now").contains("COMMIT takes no arguments"));
        assert!(error("sql p1").contains("usage: SQL P STATEMENT"));
    }

    #[test]
    fn sql_takes_the_rest_of_the_line() {
        let statement = parse("sql p1 SELECT id, balance FROM accounts WHERE id = 7;").unwrap();
        let expected = "SELECT id, balance FROM accounts WHERE id = 7".to_string();
        assert_eq!(statement, Statement::Sql { participant: "p1".into(), sql: expected });
    }
}
