//! twophase-net: the binary frame protocol, codec, TCP transport and client library.
//!
//! Not built yet: the wire protocol arrives with the servers issue (issue 4). This crate
//! exports nothing so that no caller can mistake it for a working transport.
