//! `twophase shell`: interactive transactions at a prompt, with line editing (rustyline),
//! so that a person can open two shells and watch locks wait and a deadlock be detected.
//!
//! Owns the read-eval-print loop and how results are shown; the statements are parsed in
//! [`parse`], the transactions run through `twophase_net::Transaction`. Outside a
//! transaction each GET/PUT/ADD/DELETE runs as a one-shot transaction (like autocommit).
//! Must not: decide anything about the protocol (an aborted statement is reported with the
//! coordinator's reason, and the transaction is over, as the coordinator says).

mod parse;

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use twophase_engine::ops::Isolation;
use twophase_engine::{Op, OpKind, Read};
use twophase_net::{Client, Rows, Transaction, TxError};

use self::parse::{HELP, Statement};
use crate::opsyntax::{self, NamedOp};
use crate::tx::ConnectArgs;

#[derive(Args)]
pub struct ShellArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Roll an open transaction back after this long without a statement, at most 60s
    /// [default: the coordinator's, 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
}

/// What the loop does after a statement.
enum Flow {
    Continue,
    Quit,
}

pub fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.connect.connect()?;
    let mut editor = DefaultEditor::new()?;
    let names: Vec<String> = client.directory().participants().iter().map(|(_, name)| name.clone()).collect();
    println!("connected; participants: {}. Type HELP for the statements.", names.join(", "));
    loop {
        let Some(line) = read_line(&mut editor, "twophase> ")? else { break };
        let statement = match parse::parse(&line) {
            Ok(statement) => statement,
            Err(err) => {
                println!("error: {err}");
                continue;
            }
        };
        let flow = match statement {
            Statement::Begin(isolation) => {
                let isolation = isolation.unwrap_or(Isolation::Serializable);
                match client.begin_with(isolation, args.idle_timeout) {
                    Ok(transaction) => in_transaction(&mut editor, transaction)?,
                    Err(err) => {
                        println!("error: {err}");
                        Flow::Continue
                    }
                }
            }
            Statement::Op(op) => {
                one_shot(&mut client, op);
                Flow::Continue
            }
            Statement::Sql { participant, sql } => {
                sql_alone(&mut client, args.idle_timeout, &participant, &sql);
                Flow::Continue
            }
            Statement::Commit | Statement::Rollback => {
                println!("no transaction is open (BEGIN opens one)");
                Flow::Continue
            }
            Statement::Help => {
                println!("{HELP}");
                Flow::Continue
            }
            Statement::Quit => Flow::Quit,
            Statement::Nothing => Flow::Continue,
        };
        if matches!(flow, Flow::Quit) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads one line; `None` at end of input (Ctrl-D). Ctrl-C discards the line being typed.
fn read_line(editor: &mut DefaultEditor, prompt: &str) -> anyhow::Result<Option<String>> {
    loop {
        match editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    // History is a convenience: a line it refuses is still run.
                    let _ = editor.add_history_entry(line.as_str());
                }
                return Ok(Some(line));
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => return Ok(None),
            Err(err) => return Err(err.into()),
        }
    }
}

/// Runs statements inside `transaction` until it ends (COMMIT, ROLLBACK, an abort, or the
/// end of input, which rolls it back).
fn in_transaction(editor: &mut DefaultEditor, mut transaction: Transaction<'_>) -> anyhow::Result<Flow> {
    let prompt = format!("twophase(tx {})*> ", transaction.txid());
    println!("began transaction {} ({})", transaction.txid(), transaction.isolation().label());
    loop {
        let Some(line) = read_line(editor, &prompt)? else {
            report_rollback(transaction.rollback());
            return Ok(Flow::Quit);
        };
        let statement = match parse::parse(&line) {
            Ok(statement) => statement,
            Err(err) => {
                println!("error: {err}");
                continue;
            }
        };
        match statement {
            Statement::Op(named) => {
                let op = match resolve(transaction.directory().participants(), named.clone()) {
                    Ok(op) => op,
                    Err(err) => {
                        println!("error: {err}");
                        continue;
                    }
                };
                match transaction.execute(vec![op]) {
                    Ok(reads) => print_reads(&named, &reads),
                    Err(err) if err.transaction_is_over() => {
                        println!("{err}");
                        println!("the transaction is over; BEGIN starts a new one");
                        return Ok(Flow::Continue);
                    }
                    Err(err) => println!("error: {err}"),
                }
            }
            Statement::Sql { participant, sql } => match transaction.sql(&participant, &sql, &[]) {
                Ok(rows) => print_rows(&rows),
                Err(err) if err.transaction_is_over() => {
                    println!("{err}");
                    println!("the transaction is over; BEGIN starts a new one");
                    return Ok(Flow::Continue);
                }
                Err(err) => println!("error: {err}"),
            },
            Statement::Commit => {
                match transaction.commit() {
                    Ok(()) => println!("committed"),
                    Err(err) => println!("{err}"),
                }
                return Ok(Flow::Continue);
            }
            Statement::Rollback => {
                report_rollback(transaction.rollback());
                return Ok(Flow::Continue);
            }
            Statement::Begin(_) => println!("transaction {} is open; COMMIT or ROLLBACK it first", transaction.txid()),
            Statement::Help => println!("{HELP}"),
            Statement::Quit => {
                report_rollback(transaction.rollback());
                return Ok(Flow::Quit);
            }
            Statement::Nothing => {}
        }
    }
}

fn report_rollback(result: Result<(), TxError>) {
    match result {
        Ok(()) => println!("rolled back"),
        Err(err) => println!("{err}"),
    }
}

fn one_shot(client: &mut Client, named: NamedOp) {
    let op = match resolve(client.directory().participants(), named.clone()) {
        Ok(op) => op,
        Err(err) => return println!("error: {err}"),
    };
    match client.submit(vec![op]) {
        Ok(outcome) => crate::tx::print_outcome(std::slice::from_ref(&named), &outcome),
        Err(err) => println!("error: {err}"),
    }
}

/// An SQL statement outside a transaction: in an interactive transaction of its own,
/// committed when the statement succeeded (SQL cannot run as a one-shot transaction).
fn sql_alone(client: &mut Client, idle_timeout: Option<Duration>, participant: &str, sql: &str) {
    let mut transaction = match client.begin_with(Isolation::Serializable, idle_timeout) {
        Ok(transaction) => transaction,
        Err(err) => return println!("error: {err}"),
    };
    let rows = match transaction.sql(participant, sql, &[]) {
        Ok(rows) => rows,
        Err(err) => return println!("{err}"),
    };
    match transaction.commit() {
        Ok(()) => print_rows(&rows),
        Err(err) => println!("{err}"),
    }
}

/// A statement's rows as a table (` | ` between columns), then the count.
fn print_rows(rows: &Rows) {
    if rows.columns.is_empty() {
        return println!("ok, {} rows affected", rows.affected);
    }
    println!("{}", rows.columns.join(" | "));
    for row in &rows.rows {
        let shown: Vec<String> = row.iter().map(ToString::to_string).collect();
        println!("{}", shown.join(" | "));
    }
    println!("({} rows)", rows.rows.len());
}

fn resolve(participants: &[(twophase_engine::ParticipantId, String)], named: NamedOp) -> anyhow::Result<Op> {
    let mut ops = opsyntax::resolve(vec![named], participants)?;
    Ok(ops.pop().expect("one op resolved"))
}

fn print_reads(named: &NamedOp, reads: &[Read]) {
    if !matches!(named.kind, OpKind::Get) {
        return println!("ok");
    }
    match reads.iter().find(|read| read.index == 0) {
        Some(Read { value: Some(value), .. }) => {
            println!("{} {} = {}", named.participant, named.key, opsyntax::show_value(value))
        }
        Some(Read { value: None, .. }) => println!("{} {} is absent", named.participant, named.key),
        None => println!("error: the coordinator returned no value for this GET"),
    }
}
