//! `twophase saga`: one saga from the shell.
//!
//! `twophase saga --step 'add p1:alice=-10,floor=0' --compensate 'add p1:alice=10'
//! --step 'add p2:bob=10'`: each `--step` is a local transaction (ops in `twophase tx`'s
//! syntax, all on one participant), and a `--compensate` right after it is that step's
//! compensation (on the same participant). A step without one is not undone. The steps run
//! in order; if one fails the compensations of those before it run in reverse order.
//! Exit status: 0 every step applied, 1 compensated (the failed step's reason is printed),
//! 2 the saga could not be run.

use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use twophase_engine::{Op, Outcome, ParticipantId};

use crate::opsyntax;
use crate::tx::ConnectArgs;

/// A step as typed: its ops and its compensation's, each a whitespace-separated op list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedStep {
    pub action: String,
    pub compensation: Option<String>,
}

pub struct SagaArgs {
    connect: ConnectArgs,
    steps: Vec<TypedStep>,
}

const STEP: &str = "step";
const COMPENSATE: &str = "compensate";

/// Written by hand rather than derived: a `--compensate` belongs to the `--step` before
/// it, and only the matches' indices tell that order.
impl Args for SagaArgs {
    fn augment_args(cmd: Command) -> Command {
        ConnectArgs::augment_args(cmd)
            .arg(
                Arg::new(STEP)
                    .long(STEP)
                    .value_name("OPS")
                    .action(ArgAction::Append)
                    .required(true)
                    .allow_hyphen_values(true)
                    .help("A step: ops on one participant, e.g. 'add p1:alice=-10,floor=0' (repeat, in order)"),
            )
            .arg(
                Arg::new(COMPENSATE)
                    .long(COMPENSATE)
                    .value_name("OPS")
                    .action(ArgAction::Append)
                    .allow_hyphen_values(true)
                    .help("The compensation of the --step just before it, on the same participant"),
            )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        SagaArgs::augment_args(cmd)
    }
}

impl FromArgMatches for SagaArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<SagaArgs, clap::Error> {
        let connect = ConnectArgs::from_arg_matches(matches)?;
        let steps = steps_in_order(indexed(matches, STEP), indexed(matches, COMPENSATE))
            .map_err(|message| clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{message}\n")))?;
        Ok(SagaArgs { connect, steps })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = SagaArgs::from_arg_matches(matches)?;
        Ok(())
    }
}

fn indexed(matches: &ArgMatches, id: &str) -> Vec<(usize, String)> {
    let (Some(indices), Some(values)) = (matches.indices_of(id), matches.get_many::<String>(id)) else {
        return Vec::new();
    };
    indices.zip(values.cloned()).collect()
}

/// Pairs each compensation with the step typed just before it.
fn steps_in_order(steps: Vec<(usize, String)>, compensations: Vec<(usize, String)>) -> Result<Vec<TypedStep>, String> {
    let mut typed: Vec<(usize, TypedStep)> =
        steps.into_iter().map(|(at, action)| (at, TypedStep { action, compensation: None })).collect();
    for (at, compensation) in compensations {
        let Some((_, step)) = typed.iter_mut().rev().find(|(step_at, _)| *step_at < at) else {
            return Err(format!("--compensate '{compensation}' comes before any --step"));
        };
        if step.compensation.is_some() {
            return Err(format!("--step '{}' has two --compensate", step.action));
        }
        step.compensation = Some(compensation);
    }
    Ok(typed.into_iter().map(|(_, step)| step).collect())
}

/// Resolves a typed op list; every op must name the same participant.
fn resolve_ops(typed: &str, known: &[(ParticipantId, String)]) -> anyhow::Result<(ParticipantId, Vec<Op>)> {
    let words: Vec<String> = typed.split_whitespace().map(str::to_string).collect();
    let ops = opsyntax::resolve(opsyntax::parse_ops(&words)?, known)?;
    let participant = ops[0].participant;
    if ops.iter().any(|op| op.participant != participant) {
        anyhow::bail!("'{typed}': a saga step runs on one participant");
    }
    Ok((participant, ops))
}

/// Exit status: 0 completed, 1 compensated, 2 the saga could not be run.
pub fn run(args: SagaArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.connect.connect()?;
    let known = client.directory().participants().to_vec();
    let mut resolved = Vec::with_capacity(args.steps.len());
    for step in &args.steps {
        let (participant, action) = resolve_ops(&step.action, &known)?;
        let compensation = step.compensation.as_deref().map(|typed| resolve_ops(typed, &known)).transpose()?;
        if let Some((other, _)) = &compensation
            && *other != participant
        {
            anyhow::bail!("the compensation of '{}' runs on another participant", step.action);
        }
        resolved.push((participant, action, compensation.map(|(_, ops)| ops)));
    }
    let mut saga = client.saga();
    for (participant, action, compensation) in resolved {
        saga = saga.step(participant, action);
        if let Some(ops) = compensation {
            saga = saga.compensate(participant, ops);
        }
    }
    match saga.run().map_err(|err| anyhow::anyhow!("{err}"))? {
        Outcome::Committed { .. } | Outcome::CommittedReadsUnavailable => {
            println!("completed");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Aborted { reason } => {
            println!("compensated: {reason}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pairs: &[(usize, &str)]) -> Vec<(usize, String)> {
        pairs.iter().map(|(i, s)| (*i, s.to_string())).collect()
    }

    #[test]
    fn a_compensation_belongs_to_the_step_before_it() {
        let steps = steps_in_order(at(&[(1, "a"), (5, "b"), (7, "c")]), at(&[(3, "undo a"), (6, "undo b")])).unwrap();
        let compensations: Vec<Option<&str>> = steps.iter().map(|s| s.compensation.as_deref()).collect();
        assert_eq!(compensations, vec![Some("undo a"), Some("undo b"), None]);
    }

    #[test]
    fn misplaced_compensations_are_refused() {
        assert!(steps_in_order(at(&[(3, "a")]), at(&[(1, "x")])).unwrap_err().contains("before any --step"));
        assert!(steps_in_order(at(&[(1, "a")]), at(&[(3, "x"), (5, "y")])).unwrap_err().contains("two --compensate"));
    }

    #[test]
    fn a_step_names_one_participant() {
        let known = vec![(ParticipantId(1), "p1".to_string()), (ParticipantId(2), "p2".to_string())];
        let (participant, ops) = resolve_ops("add p2:b=5 put p2:c=x", &known).unwrap();
        assert_eq!((participant, ops.len()), (ParticipantId(2), 2));
        assert!(resolve_ops("add p1:a=-5 add p2:b=5", &known).unwrap_err().to_string().contains("one participant"));
    }
}
