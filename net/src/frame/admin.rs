//! Admin frames' bodies: what an admin connection asks for and the end of a dump.

/// What an admin connection asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AdminOp {
    /// A participant's whole key-value state: `DumpChunk` frames, then `DumpEnd`.
    Dump = 1,
    /// A coordinator's participants with their addresses: one `Topology` frame.
    Topology = 2,
}

/// Sent after the last `DumpChunk`: what the participant holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DumpEnd {
    pub keys: u64,
    pub prepared: u32,
    pub in_doubt: u32,
    /// Whether the participant fdatasyncs its log (false: it runs with `--unsafe-no-fsync`).
    pub fsync: bool,
}
