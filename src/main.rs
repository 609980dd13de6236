//! The `twophase` binary. The servers, the cluster launcher and the client commands arrive
//! with the servers issue; until then this binary says so and exits non-zero rather than
//! pretend to run anything.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "twophase {}: the coordinator and participant servers are not built yet.\n\
         What works today is the protocol core and its simulator:\n  \
         cargo run --release -p twophase-engine --example simulate -- --seeds 0..1000",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
