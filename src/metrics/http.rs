//! The metrics endpoint: `GET /metrics` (or `/`) renders the registry as OpenMetrics text.
//!
//! hyper's HTTP/1.1 server runs on a single-threaded tokio runtime on a thread of its own,
//! at a lower priority than the engine's threads, so a scrape never runs on an engine
//! thread and never takes a core from one. Connections are served concurrently, at most
//! [`CONNECTIONS_MAX`] at once: each has [`REQUEST_HEAD_TIMEOUT`] to send its request head
//! (however slowly the bytes trickle) and [`CONNECTION_TIME_MAX`] in all, then it is closed.
//! So idle, slow or hostile clients hold a slot for seconds at most and cannot make a
//! scrape wait for them; a flood beyond the bound waits in the kernel's accept queue.
//! Malformed requests get hyper's own 400 (431 for an oversized head).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

/// Connections served at once at most; more wait to be accepted.
const CONNECTIONS_MAX: usize = 64;
/// Longest a client may take to send its whole request head.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a connection lives, reading the request and writing the answer included.
const CONNECTION_TIME_MAX: Duration = Duration::from_secs(10);
/// A request head larger than this is refused (hyper's smallest read buffer).
const REQUEST_HEAD_BYTES_MAX: usize = 8192;
/// The server thread's nice value: below the engine's threads (0), never starved.
const THREAD_NICE: libc::c_int = 10;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `listen` and serves scrapes until the process ends. Returns the bound address.
pub fn spawn(listen: SocketAddr, registry: Registry) -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("binding the metrics listener to {listen}"))?;
    let addr = listener.local_addr().context("reading the metrics listener's address")?;
    listener.set_nonblocking(true).context("making the metrics listener non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("building the metrics server's runtime")?;
    let registry = Arc::new(registry);
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            lower_own_priority();
            runtime.block_on(serve(listener, registry));
        })
        .context("spawning the metrics thread")?;
    Ok(addr)
}

/// Gives the calling thread [`THREAD_NICE`] (on Linux a nice value is per thread).
fn lower_own_priority() {
    // SAFETY: gettid has no preconditions; setpriority only reads its arguments.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, THREAD_NICE) };
    if result != 0 {
        tracing::debug!("the metrics thread keeps its priority: {}", std::io::Error::last_os_error());
    }
}

async fn serve(listener: std::net::TcpListener, registry: Arc<Registry>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("the metrics listener cannot be served: {err}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!("accepting a metrics connection failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = answer(&request, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                .max_buf_size(REQUEST_HEAD_BYTES_MAX)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIME_MAX, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!("a metrics connection failed: {err}"),
                Err(_) => tracing::debug!("a metrics connection took longer than {CONNECTION_TIME_MAX:?}; closed"),
            }
            drop(slot);
        });
    }
}

/// The answer to `request`: the registry for GET or HEAD of `/metrics` or `/` (hyper sends
/// no body for HEAD), 404 for other paths, 405 for other methods.
fn answer(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served\n");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if !matches!(request.uri().path(), "/metrics" | "/") {
        return plain(StatusCode::NOT_FOUND, "only /metrics is served\n");
    }
    let mut body = String::with_capacity(32 * 1024);
    if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n");
    }
    with_body(StatusCode::OK, OPENMETRICS, body.into())
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    with_body(status, "text/plain; charset=utf-8", Bytes::from_static(text.as_bytes()))
}

fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    /// Sends `request` on a fresh connection and reads the whole answer (the server closes
    /// every connection after one).
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
    }

    fn registry_with_a_counter() -> Registry {
        let mut registry = Registry::default();
        let counter: prometheus_client::metrics::counter::Counter = Default::default();
        counter.inc();
        registry.register("twophase_test", "a test counter", counter);
        registry
    }

    #[test]
    fn a_scrape_gets_the_registry_and_other_paths_get_404() {
        let addr = spawn("127.0.0.1:0".parse().unwrap(), registry_with_a_counter()).unwrap();
        let metrics = get(addr, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains(&format!("content-type: {OPENMETRICS}\r\n")), "{metrics}");
        assert!(metrics.contains("twophase_test_total 1\n") && metrics.ends_with("# EOF\n"), "{metrics}");
        assert!(get(addr, "/metrics?x=1").contains("twophase_test_total 1\n"), "the query string is ignored");
        assert!(get(addr, "/").contains("twophase_test_total 1\n"));
        assert!(get(addr, "/other").starts_with("HTTP/1.1 404"));
        let old = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(old.starts_with("HTTP/1.0 200 OK\r\n") && old.contains("twophase_test_total 1\n"), "{old}");
    }

    #[test]
    fn head_gets_the_headers_only_and_other_methods_get_405() {
        let addr = spawn("127.0.0.1:0".parse().unwrap(), registry_with_a_counter()).unwrap();
        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n") && !head.contains("twophase_test_total"), "no body: {head}");
        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("allow: GET, HEAD\r\n"), "{post}");
    }

    #[test]
    fn garbage_and_oversized_heads_are_refused_and_the_server_keeps_serving() {
        let addr = spawn("127.0.0.1:0".parse().unwrap(), registry_with_a_counter()).unwrap();
        let garbage = exchange(addr, b"GARBAGE\r\n\r\n");
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
        let noise: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let answer = exchange(addr, &noise);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "{answer:?}");
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100_000));
        let answer = exchange(addr, huge.as_bytes());
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer:?}");
        assert!(get(addr, "/metrics").contains("twophase_test_total 1\n"));
    }

    #[test]
    fn idle_connections_do_not_hold_up_a_scrape() {
        let addr = spawn("127.0.0.1:0".parse().unwrap(), registry_with_a_counter()).unwrap();
        // Served one at a time, these would hold a scrape for 20 × 2 s.
        let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("twophase_test_total 1\n"), "{answer:?}");
        drop(idle);
    }

    #[test]
    fn more_idle_connections_than_slots_are_cut_off_and_a_scrape_still_gets_through() {
        let addr = spawn("127.0.0.1:0".parse().unwrap(), registry_with_a_counter()).unwrap();
        let mut idle: Vec<TcpStream> = (0..CONNECTIONS_MAX + 8).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // Every slot is held: the scrape waits in the accept queue until the head timeout
        // frees slots, not until the idle clients give up (they never do).
        let metrics = get(addr, "/metrics");
        assert!(metrics.contains("twophase_test_total 1\n"), "{metrics:?}");
        // The first idle connections were closed by the server: reading gets end of file.
        idle[0].set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(idle[0].read(&mut [0u8; 16]).unwrap(), 0, "the server closed an idle connection");
        idle.clear();
    }

    #[test]
    fn a_client_trickling_its_request_is_cut_off() {
        let addr = spawn("127.0.0.1:0".parse().unwrap(), Registry::default()).unwrap();
        // One byte every 100 ms, never a blank line: the head timeout counts from the first
        // wait, not from each byte, so the server closes the connection.
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
        let metrics = get(addr, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics:?}");
        let trickled = trickler.join().unwrap();
        assert!(trickled < Duration::from_secs(20), "the trickling client was never cut off");
    }
}
