//! twophase-bench: the load generator harness (bank workload) and criterion benchmarks.
//!
//! Not built yet: the harness arrives with the load-generator issue (issue 5). This crate
//! exports nothing so that no caller can mistake it for a working load generator.
