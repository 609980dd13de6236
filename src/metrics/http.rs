//! A tiny HTTP/1.1 server on a thread of its own: `GET /metrics` renders the registry.
//! One connection at a time, each bounded in size and in total time (reading its request
//! and writing the answer each have one deadline, however slowly the bytes trickle), so a
//! slow or hostile client costs this thread a few seconds at most and never touches the
//! engine thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::registry::Registry;

/// A request head larger than this is refused.
const REQUEST_BYTES_MAX: usize = 8192;
/// Longest a client may take to send its whole request, and again to read the whole answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `listen` and serves scrapes until the process ends. Returns the bound address.
pub fn spawn(listen: SocketAddr, registry: Registry) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding the metrics listener to {listen}"))?;
    let addr = listener.local_addr().context("reading the metrics listener's address")?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || serve(&listener, &registry))
        .context("spawning the metrics thread")?;
    Ok(addr)
}

fn serve(listener: &TcpListener, registry: &Registry) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(err) = answer(stream, registry) {
                    tracing::debug!("a metrics request failed: {err}");
                }
            }
            Err(err) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!("accepting a metrics connection failed: {err}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let head = read_head(&mut stream, Instant::now() + IO_TIMEOUT)?;
    let response = match parse_request_line(&head) {
        Some(("GET", "/metrics" | "/")) => {
            let mut body = String::with_capacity(16 * 1024);
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => response("200 OK", CONTENT_TYPE, &body),
                Err(_) => response("500 Internal Server Error", "text/plain", "encoding the metrics failed\n"),
            }
        }
        Some(("GET", _)) => response("404 Not Found", "text/plain", "only /metrics is served\n"),
        Some(_) => response("405 Method Not Allowed", "text/plain", "only GET is served\n"),
        None => response("400 Bad Request", "text/plain", "not an HTTP request\n"),
    };
    write_all_by(&mut stream, response.as_bytes(), Instant::now() + IO_TIMEOUT)
}

/// What is left until `deadline`, as a socket timeout; an error once it passed. A
/// per-call timeout alone would let a client that sends a byte now and then hold the
/// thread for as long as it likes.
fn time_left(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client was too slow"));
    }
    Ok(left)
}

/// Writes all of `bytes` by `deadline`.
fn write_all_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.set_write_timeout(Some(time_left(deadline)?))?;
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Reads until the blank line that ends the request head, at most [`REQUEST_BYTES_MAX`],
/// by `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<String> {
    let mut head = vec![0u8; REQUEST_BYTES_MAX];
    let mut len = 0;
    while len < head.len() {
        stream.set_read_timeout(Some(time_left(deadline)?))?;
        let read = stream.read(&mut head[len..])?;
        if read == 0 {
            break;
        }
        len += read;
        if head[..len].windows(4).any(|window| window == b"\r\n\r\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&head[..len]).into_owned())
}

/// `(method, path)` of `METHOD PATH HTTP/1.x`; the query string is ignored.
fn parse_request_line(head: &str) -> Option<(&str, &str)> {
    let mut parts = head.lines().next()?.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    parts.next()?.starts_with("HTTP/1.").then_some((method, target.split('?').next().unwrap_or(target)))
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_parsed_and_junk_is_refused() {
        assert_eq!(parse_request_line("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(parse_request_line("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(parse_request_line("POST / HTTP/1.1\r\n\r\n"), Some(("POST", "/")));
        assert_eq!(parse_request_line("hello"), None);
        assert_eq!(parse_request_line(""), None);
    }

    #[test]
    fn a_scrape_gets_the_registry_and_other_paths_get_404() {
        let mut registry = Registry::default();
        let counter: prometheus_client::metrics::counter::Counter = Default::default();
        counter.inc();
        registry.register("twophase_test", "a test counter", counter);
        let addr = spawn("127.0.0.1:0".parse().unwrap(), registry).unwrap();
        let get = |path: &str| {
            let mut stream = TcpStream::connect(addr).unwrap();
            write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let metrics = get("/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains("twophase_test_total 1\n") && metrics.ends_with("# EOF\n"), "{metrics}");
        assert!(get("/other").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn a_client_trickling_its_request_cannot_hold_the_listener() {
        let addr = spawn("127.0.0.1:0".parse().unwrap(), Registry::default()).unwrap();
        // One byte every 100 ms, never a blank line: before, each read restarted the timeout,
        // and this client would have kept the only serving thread for 8192 bytes' worth.
        let trickler = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if stream.write_all(b"G").is_err() {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        write!(stream, "GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
        let trickled = trickler.join().unwrap();
        assert!(trickled < Duration::from_secs(20), "the trickling client was never cut off");
    }
}
