//! Reading a node's metrics endpoint: an HTTP/1.1 GET of `/metrics` and a parser of the
//! Prometheus / OpenMetrics text format (what `twophase top` and the tests read).
//!
//! The parser is strict on what it accepts (a sample line is `name{labels} value`, labels
//! quoted with `\\`, `\"` and `\n` escapes; `# TYPE`/`# HELP`/`# UNIT`/`# EOF` comments)
//! so that a test using it also checks the exposition is well formed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// A scrape larger than this is refused (a node's is a few tens of KiB).
const BODY_BYTES_MAX: usize = 8 << 20;

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A parsed scrape: every sample, and the metric families with their declared type.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// `(family name, type)` from the `# TYPE` lines.
    pub types: Vec<(String, String)>,
}

impl Scrape {
    /// The value of the sample `name` whose labels include every pair of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).next().map(|sample| sample.value)
    }

    /// Every sample `name` whose labels include every pair of `labels`.
    pub fn find<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    /// The sum over every sample `name` matching `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|sample| sample.value).sum()
    }

    /// `(upper bound, cumulative count)` of histogram `family`, in bound order.
    pub fn buckets(&self, family: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let name = format!("{family}_bucket");
        let mut buckets: Vec<(f64, f64)> =
            self.find(&name, labels).filter_map(|s| Some((parse_float(s.label("le")?).ok()?, s.value))).collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }

    /// Whether a family of this name was declared (`# TYPE`).
    pub fn declares(&self, family: &str) -> bool {
        self.types.iter().any(|(name, _)| name == family)
    }
}

/// GETs `http://addr/metrics` and parses it.
pub fn fetch(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Scrape> {
    parse(&fetch_text(addr, timeout)?)
}

/// GETs `http://addr/metrics`; the body of a `200` answer. The whole exchange takes at most
/// `timeout` (a server that trickles its answer is cut off, not waited for read by read), so
/// a hung or hostile endpoint cannot stall a caller that scrapes several in turn (`top`).
pub fn fetch_text(addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let answer = read_by(&mut stream, deadline).with_context(|| format!("reading from {addr}"))?;
    let answer = String::from_utf8(answer).context("the metrics answer is not UTF-8")?;
    let (head, body) = answer.split_once("\r\n\r\n").context("the metrics answer has no HTTP head")?;
    let status = head.lines().next().unwrap_or_default();
    ensure!(status.split(' ').nth(1) == Some("200"), "{addr} answered {status:?}");
    Ok(body.to_string())
}

/// Reads to the end of the stream, at most [`BODY_BYTES_MAX`] bytes, by `deadline`.
fn read_by(stream: &mut TcpStream, deadline: Instant) -> anyhow::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "no complete answer within the timeout ({} bytes so far)", answer.len());
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(answer),
            Ok(read) => {
                ensure!(answer.len() + read <= BODY_BYTES_MAX, "the answer exceeds {BODY_BYTES_MAX} bytes");
                answer.extend_from_slice(&chunk[..read]);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                bail!("no complete answer within the timeout ({} bytes so far)", answer.len())
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Parses the text exposition format. Errors name the line.
pub fn parse(text: &str) -> anyhow::Result<Scrape> {
    let mut scrape = Scrape::default();
    for (number, line) in text.lines().enumerate() {
        let parsed = parse_line(line, &mut scrape);
        parsed.with_context(|| format!("line {}: {line:?}", number + 1))?;
    }
    Ok(scrape)
}

fn parse_line(line: &str, scrape: &mut Scrape) -> anyhow::Result<()> {
    if line.is_empty() {
        return Ok(());
    }
    if let Some(comment) = line.strip_prefix('#') {
        let mut words = comment.trim_start().splitn(3, ' ');
        if let (Some("TYPE"), Some(name), Some(kind)) = (words.next(), words.next(), words.next()) {
            check_name(name)?;
            scrape.types.push((name.to_string(), kind.trim().to_string()));
        }
        return Ok(());
    }
    let name_end = line.find(['{', ' ']).context("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.trim_start().split(' ');
    let value = parse_float(fields.next().context("no value")?)?;
    // An optional timestamp may follow; an exemplar (`# {...}`) too.
    scrape.samples.push(Sample { name: name.to_string(), labels, value });
    Ok(())
}

/// Parses `k="v",...}` and returns what follows the closing brace.
fn parse_labels<'a>(mut text: &'a str, labels: &mut Vec<(String, String)>) -> anyhow::Result<&'a str> {
    loop {
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let (key, rest) = text.split_once("=\"").context("a label without =\"")?;
        check_name(key)?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((at, '"')) => break at,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => bail!("bad escape {other:?} in label {key}"),
                },
                Some((_, c)) => value.push(c),
                None => bail!("label {key} is not closed"),
            }
        };
        labels.push((key.to_string(), value));
        text = &rest[end + 1..];
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let valid_start = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':');
    let valid_rest = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    ensure!(valid_start && valid_rest, "{name:?} is not a metric or label name");
    Ok(())
}

fn parse_float(text: &str) -> anyhow::Result<f64> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().with_context(|| format!("{text:?} is not a number")),
    }
}

/// The `quantile` (0..1) of a histogram from `(upper bound, cumulative count)` pairs (as
/// [`Scrape::buckets`] returns, or differences of two such), interpolated linearly inside
/// the bucket as Prometheus's `histogram_quantile` does. `None` with no observations.
pub fn quantile(buckets: &[(f64, f64)], quantile: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = quantile * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0); // Past the last finite bound: its bound is all we know.
            }
            let inside = count - lower.1;
            let share = if inside > 0.0 { (rank - lower.1) / inside } else { 1.0 };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP twophase_transactions Transactions.\n\
        # TYPE twophase_transactions counter\n\
        twophase_transactions_total{node=\"c1\",role=\"coordinator\",outcome=\"committed\"} 42\n\
        twophase_transactions_total{node=\"c1\",role=\"coordinator\",outcome=\"aborted\"} 3\n\
        # TYPE twophase_log_sync_seconds histogram\n\
        twophase_log_sync_seconds_sum{node=\"c1\"} 0.5\n\
        twophase_log_sync_seconds_count{node=\"c1\"} 10\n\
        twophase_log_sync_seconds_bucket{node=\"c1\",le=\"0.001\"} 4\n\
        twophase_log_sync_seconds_bucket{node=\"c1\",le=\"0.002\"} 8\n\
        twophase_log_sync_seconds_bucket{node=\"c1\",le=\"+Inf\"} 10\n\
        odd{x=\"a\\\"b\\\\c\\nd\"} 1.5e3\n\
        # EOF\n";

    #[test]
    fn samples_labels_and_types_are_read() {
        let scrape = parse(TEXT).unwrap();
        assert_eq!(scrape.value("twophase_transactions_total", &[("outcome", "committed")]), Some(42.0));
        assert_eq!(scrape.sum("twophase_transactions_total", &[("node", "c1")]), 45.0);
        assert!(scrape.declares("twophase_transactions") && scrape.declares("twophase_log_sync_seconds"));
        assert_eq!(scrape.value("odd", &[("x", "a\"b\\c\nd")]), Some(1500.0));
        let buckets = scrape.buckets("twophase_log_sync_seconds", &[]);
        assert_eq!(buckets, vec![(0.001, 4.0), (0.002, 8.0), (f64::INFINITY, 10.0)]);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for bad in ["1abc 3", "x{a=\"1\" 3", "x{a=\"\\q\"} 1", "x{a=1} 2", "x one", "x"] {
            let err = format!("{:#}", parse(&format!("ok 1\n{bad}\n")).unwrap_err());
            assert!(err.starts_with("line 2"), "{bad}: {err}");
        }
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let buckets = [(0.001, 4.0), (0.002, 8.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&buckets, 0.5), Some(0.00125)); // rank 5 of 10: a quarter into (1, 2] ms
        assert_eq!(quantile(&buckets, 0.2), Some(0.0005));
        assert_eq!(quantile(&buckets, 0.99), Some(0.002), "the +Inf bucket reports its lower bound");
        assert_eq!(quantile(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn an_endpoint_that_trickles_its_answer_is_cut_off_at_the_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            // A byte every 50 ms for at most 20 s: each read gets something before a
            // per-read timeout of 500 ms could fire.
            for byte in b"HTTP/1.1 200 OK\r\n".iter().cycle().take(400) {
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let err = fetch_text(addr, Duration::from_millis(500)).unwrap_err();
        assert!(format!("{err:#}").contains("within the timeout"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(15), "waited {:?} for a trickle", started.elapsed());
    }
}
