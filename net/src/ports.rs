//! Free listening ports for processes a launcher starts later: every node `twophase
//! cluster` starts (a killed node restarts at the same address, and 3PC participants and
//! group members are given each other's up front), and the tests' processes.
//!
//! A port found by binding port 0 and releasing it lies in the kernel's ephemeral range,
//! which every outgoing connection and every other `bind(...:0)` draws from: on a busy
//! machine another socket may be handed it before the child binds it, and the child exits
//! ("Address already in use"). Ports here come from below that range, where only explicit
//! choices land: the next of a sequence that starts at a random offset per process, each
//! checked free when chosen. Two calls in one process never return the same port.
//!
//! Must not: hold the port (the child binds it), or loop without bound.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out: above the registered services most machines run.
const PORTS_LOW: u32 = 10_000;
/// Below this much room under the ephemeral range, the kernel picks (as before).
const PORTS_SPAN_MIN: u32 = 1_000;
/// Ports tried per call at most before giving up.
const ATTEMPTS_MAX: u32 = 256;

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A port on `ip` free now, for a process started later to listen on.
pub fn free_port(ip: IpAddr) -> io::Result<SocketAddr> {
    static OFFSET: OnceLock<u32> = OnceLock::new();
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    let span = ephemeral_low().saturating_sub(PORTS_LOW).min(u32::from(u16::MAX) - PORTS_LOW);
    if span < PORTS_SPAN_MIN {
        return TcpListener::bind(SocketAddr::new(ip, 0))?.local_addr();
    }
    let offset = *OFFSET.get_or_init(|| rand::random::<u32>() % span);
    for _ in 0..ATTEMPTS_MAX {
        let port = PORTS_LOW + (offset + TAKEN.fetch_add(1, Ordering::Relaxed)) % span;
        assert!((PORTS_LOW..PORTS_LOW + span).contains(&port));
        if let Ok(probe) = TcpListener::bind(SocketAddr::new(ip, port as u16)) {
            return probe.local_addr();
        }
    }
    let message = format!("no free port on {ip} in {ATTEMPTS_MAX} tries below {}", PORTS_LOW + span);
    Err(io::Error::new(io::ErrorKind::AddrInUse, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let ports: Vec<u16> = (0..50).map(|_| free_port(ip).unwrap().port()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice: {ports:?}");
        if ephemeral_low() >= PORTS_LOW + PORTS_SPAN_MIN {
            assert!(ports.iter().all(|&p| u32::from(p) >= PORTS_LOW && u32::from(p) < ephemeral_low()), "{ports:?}");
        }
        for port in ports {
            TcpListener::bind(SocketAddr::new(ip, port)).expect("a port handed out is free");
        }
    }
}
