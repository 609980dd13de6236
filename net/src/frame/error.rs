//! Error codes of the `Error` frame and the protocol violation that carries one.

use std::fmt;

use twophase_engine::codec::DecodeError;

use super::{ErrorFrame, Frame};

/// Error codes of an `Error` frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorCode {
    Malformed,
    UnsupportedVersion,
    FrameTooLarge,
    BatchTooLarge,
    HandshakeRefused,
    UnexpectedFrame,
    Overloaded,
    /// A code this build does not know (sent by a newer peer).
    Other(u16),
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::UnsupportedVersion => 2,
            ErrorCode::FrameTooLarge => 3,
            ErrorCode::BatchTooLarge => 4,
            ErrorCode::HandshakeRefused => 5,
            ErrorCode::UnexpectedFrame => 6,
            ErrorCode::Overloaded => 7,
            ErrorCode::Other(code) => code,
        }
    }

    pub fn from_code(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::FrameTooLarge,
            4 => ErrorCode::BatchTooLarge,
            5 => ErrorCode::HandshakeRefused,
            6 => ErrorCode::UnexpectedFrame,
            7 => ErrorCode::Overloaded,
            other => ErrorCode::Other(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed frame",
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::BatchTooLarge => "batch too large",
            ErrorCode::HandshakeRefused => "handshake refused",
            ErrorCode::UnexpectedFrame => "unexpected frame",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Other(_) => "unknown error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// A protocol violation: what goes into the `Error` frame sent before closing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError { code, message: message.into() }
    }

    /// The `Error` frame that reports this violation to the peer.
    pub fn to_frame(&self) -> Frame {
        Frame::Error(ErrorFrame { code: self.code, message: self.message.clone() })
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for ProtocolError {}

impl From<DecodeError> for ProtocolError {
    fn from(err: DecodeError) -> ProtocolError {
        ProtocolError::new(ErrorCode::Malformed, err.to_string())
    }
}
