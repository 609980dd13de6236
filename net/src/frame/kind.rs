//! What a connecting side is ([`Role`]) and what a frame is ([`FrameKind`]).

use std::fmt;

/// What a connecting side is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Role {
    Client = 1,
    Coordinator = 2,
    Participant = 3,
    Admin = 4,
}

impl Role {
    pub fn from_u8(tag: u8) -> Option<Role> {
        Some(match tag {
            1 => Role::Client,
            2 => Role::Coordinator,
            3 => Role::Participant,
            4 => Role::Admin,
            _ => return None,
        })
    }

    /// The role called `name` (as [`Role::name`] spells it).
    pub fn from_name(name: &str) -> Option<Role> {
        [Role::Client, Role::Coordinator, Role::Participant, Role::Admin].into_iter().find(|role| role.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Coordinator => "coordinator",
            Role::Participant => "participant",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The frame kinds. Data kinds are 16..=31; 32 and up are reserved for admin requests: add
/// a variant here, in [`Frame`], in [`FrameDecoder`]'s body parser and in `Frame::encode`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FrameKind {
    Hello = 1,
    Welcome = 2,
    Error = 3,
    Submits = 16,
    Replies = 17,
    ToParticipant = 18,
    ToCoordinator = 19,
    /// W3C trace context of sampled transactions (`trace_context`); a build older than
    /// this kind refuses it as unknown, like any kind it does not know.
    TraceContext = 20,
    /// A client's interactive-transaction requests (`Begin`, `Execute`, `Commit`,
    /// `Rollback`); answered in `Replies`.
    Interactive = 21,
    /// One Raft message between the replicas of a coordinator group (opaque to the
    /// transport; `twophase-replica` decodes and checks it).
    Raft = 22,
    /// A follower of a coordinator group to a client: not the leader, and which replica is
    /// (`not_leader`).
    NotLeader = 23,
    /// A client's saga requests (`SagaSubmit`); each answered with one outcome in `Replies`.
    Sagas = 24,
    /// Three-phase commit (`threepc`): a batch of 3PC messages with sender and receiver,
    /// coordinator ↔ participant and participant ↔ participant (kinds 26 and 27 are kept
    /// for it).
    ThreePc = 25,
    AdminRequest = 32,
    DumpChunk = 33,
    DumpEnd = 34,
    Topology = 35,
}

impl FrameKind {
    pub fn from_u8(tag: u8) -> Option<FrameKind> {
        Some(match tag {
            1 => FrameKind::Hello,
            2 => FrameKind::Welcome,
            3 => FrameKind::Error,
            16 => FrameKind::Submits,
            17 => FrameKind::Replies,
            18 => FrameKind::ToParticipant,
            19 => FrameKind::ToCoordinator,
            20 => FrameKind::TraceContext,
            21 => FrameKind::Interactive,
            22 => FrameKind::Raft,
            23 => FrameKind::NotLeader,
            24 => FrameKind::Sagas,
            25 => FrameKind::ThreePc,
            32 => FrameKind::AdminRequest,
            33 => FrameKind::DumpChunk,
            34 => FrameKind::DumpEnd,
            35 => FrameKind::Topology,
            _ => return None,
        })
    }

    /// Data frames are handed to the runtime; the others belong to the connection itself.
    pub fn is_data(self) -> bool {
        (self as u8) >= 16
    }
}
