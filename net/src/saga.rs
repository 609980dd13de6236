//! Sagas on a [`Client`]: `client.saga().step(p, ops).compensate(p, ops).step(...).run()`.
//!
//! The whole saga travels as one `SagaSubmit` in a `Sagas` frame (kind 24) under the
//! session's next `(client, seq)`, resent under the same pair until answered, so a retry
//! gets the recorded outcome, never a second run. The coordinator runs the steps and, if
//! one fails, the compensations of those before it in reverse order; the answer is one
//! outcome: `Committed` (no reads) when every step applied, `Aborted` with the failed
//! step's reason once the earlier steps were compensated.
//!
//! Sagas give up isolation: other transactions may see a step applied before the saga ends,
//! or a step applied and later compensated. Compensations must always be able to apply (an
//! `Add` that credits back, not one that could overdraw): the coordinator retries them until
//! they do.

use twophase_engine::message::{SAGA_STEPS_MAX, SagaStep, SagaSubmit};
use twophase_engine::{Op, Outcome, ParticipantId, Reply};

use crate::client::{Client, ClientError, unexpected_reply};
use crate::frame::BatchWriter;

/// A saga being built; [`run`](Self::run) sends it.
pub struct Saga<'a> {
    client: &'a mut Client,
    built: Builder,
}

/// The steps so far and the first mistake found while building (reported by `run`, before
/// anything is sent).
#[derive(Default)]
struct Builder {
    steps: Vec<SagaStep>,
    invalid: Option<String>,
}

impl Builder {
    fn step(mut self, participant: ParticipantId, ops: Vec<Op>) -> Builder {
        if self.steps.len() >= SAGA_STEPS_MAX {
            self.invalid.get_or_insert(format!("a saga has at most {SAGA_STEPS_MAX} steps"));
        }
        self.steps.push(SagaStep { action: on(participant, ops), compensation: Vec::new() });
        self
    }

    fn compensate(mut self, participant: ParticipantId, ops: Vec<Op>) -> Builder {
        match self.steps.last_mut() {
            None => {
                self.invalid.get_or_insert("compensate() before any step()".into());
            }
            Some(step) if step.participant() != Some(participant) => {
                self.invalid.get_or_insert(format!("a compensation on {participant}, not on its step's participant"));
            }
            Some(step) if !step.compensation.is_empty() => {
                self.invalid.get_or_insert("two compensations for one step".into());
            }
            Some(step) => step.compensation = on(participant, ops),
        }
        self
    }
}

impl Client {
    /// Starts building a saga on this client's session.
    pub fn saga(&mut self) -> Saga<'_> {
        Saga { client: self, built: Builder::default() }
    }
}

impl<'a> Saga<'a> {
    /// Adds a step: `ops` run as one local transaction on `participant` (every op's
    /// participant is set to it).
    pub fn step(self, participant: ParticipantId, ops: Vec<Op>) -> Saga<'a> {
        Saga { client: self.client, built: self.built.step(participant, ops) }
    }

    /// Sets the compensation of the step added last: `ops` on `participant`, which must be
    /// the step's own. A step without one needs no undoing (the last step, say).
    pub fn compensate(self, participant: ParticipantId, ops: Vec<Op>) -> Saga<'a> {
        Saga { client: self.client, built: self.built.compensate(participant, ops) }
    }

    /// Runs the saga to its outcome (see the module doc). Errors as for
    /// [`Client::submit`]; a saga the builder found malformed, or with ops beyond the
    /// coordinator's size limits, is [`SagaError::Invalid`] and is not sent (the coordinator
    /// checks the rest: its byte budget, participants).
    pub fn run(self) -> Result<Outcome, SagaError> {
        let Saga { client, built: Builder { steps, invalid } } = self;
        if let Some(detail) = invalid {
            return Err(SagaError::Invalid(detail));
        }
        crate::client::check_saga_sizes(&client.server_limits, &steps).map_err(SagaError::Invalid)?;
        let seq = client.next_seq();
        let mut writer = BatchWriter::<SagaSubmit>::new(&client.server_limits);
        writer.push(&SagaSubmit { client: client.client_id(), seq, steps }).map_err(ClientError::from)?;
        match client.exchange(seq, writer.finish(), None)? {
            Reply::Outcome { outcome, .. } => Ok(outcome),
            other => Err(unexpected_reply(&other).into()),
        }
    }
}

/// Why a saga has no outcome.
#[derive(Debug)]
pub enum SagaError {
    /// The builder was misused (a compensation before any step, on another participant,
    /// twice for one step; too many steps).
    Invalid(String),
    Client(ClientError),
}

impl From<ClientError> for SagaError {
    fn from(err: ClientError) -> SagaError {
        SagaError::Client(err)
    }
}

impl std::fmt::Display for SagaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SagaError::Invalid(detail) => write!(f, "invalid saga: {detail}"),
            SagaError::Client(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for SagaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SagaError::Invalid(_) => None,
            SagaError::Client(err) => Some(err),
        }
    }
}

fn on(participant: ParticipantId, mut ops: Vec<Op>) -> Vec<Op> {
    for op in &mut ops {
        op.participant = participant;
    }
    ops
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use twophase_engine::OpKind;

    use super::*;

    fn add(delta: i64) -> Op {
        Op { participant: ParticipantId(0), key: Bytes::from_static(b"k"), kind: OpKind::Add { delta, floor: 0 } }
    }

    /// The builder alone, without a connection: the steps it would send, or its complaint.
    fn build(steps: impl FnOnce(Builder) -> Builder) -> Result<Vec<SagaStep>, String> {
        let built = steps(Builder::default());
        match built.invalid {
            Some(detail) => Err(detail),
            None => Ok(built.steps),
        }
    }

    #[test]
    fn steps_and_compensations_land_on_their_participant() {
        let p = ParticipantId(3);
        let steps = build(|b| b.step(p, vec![add(-1)]).compensate(p, vec![add(1)]).step(p, vec![add(2)])).unwrap();
        assert_eq!(steps.len(), 2);
        assert!(steps.iter().flat_map(|s| s.action.iter().chain(&s.compensation)).all(|op| op.participant == p));
        assert_eq!(steps[0].compensation.len(), 1);
        assert!(steps[1].compensation.is_empty());
    }

    #[test]
    fn builder_mistakes_are_reported() {
        let (p, q) = (ParticipantId(1), ParticipantId(2));
        assert!(build(|b| b.compensate(p, vec![add(1)])).unwrap_err().contains("before any step"));
        assert!(build(|b| b.step(p, vec![add(1)]).compensate(q, vec![add(1)])).unwrap_err().contains("not on its"));
        let twice = build(|b| b.step(p, vec![add(1)]).compensate(p, vec![add(1)]).compensate(p, vec![add(1)]));
        assert!(twice.unwrap_err().contains("two compensations"));
        let many = build(|mut b| {
            for _ in 0..=SAGA_STEPS_MAX {
                b = b.step(p, vec![add(1)]);
            }
            b
        });
        assert!(many.unwrap_err().contains("at most"));
    }
}
