//! The metrics endpoint of `tlsgate run` (`[metrics] listen`): a kernel TCP
//! listener on the host, served by one thread outside the workers, that
//! answers `GET /metrics` in the Prometheus text format (or OpenMetrics when
//! the scraper asks for it) with prometheus-client's encoders.
//!
//! The metric families come from the counters' one declaration
//! (`appliance::counters::declare!`): [`Report::visit`] lists every field
//! with its kind (counter, gauge, histogram) and help text, under the path
//! of its object (`tcp.sessions_opened` →
//! `tlsgate_tcp_sessions_opened_total`) and with the labels of its list
//! entry (`ports[]` by `role` and `device`, `workers[i]` → `worker="i"`);
//! `*_ns` fields are exposed in seconds. So a counter declared in the
//! report appears here with no edit, typed as declared.
//!
//! A scrape makes a fresh report from the workers' published counters
//! ([`ReportSource`]), the same reading the periodic stats take: the
//! workers never wait for the endpoint.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use appliance::counters::Value;
use appliance::histogram::Histogram;
use appliance::Report;
use dataplane::ReportSource;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The prefix of every metric name.
const PREFIX: &str = "tlsgate";

/// The content type of the OpenMetrics text format.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The largest request head read, and how long a peer may take.
const MAX_REQUEST: usize = 8 * 1024;
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The value of one sample.
#[derive(Debug, Clone, PartialEq)]
enum Sample {
    /// A count, as the report has it.
    Integer(u64),
    /// Seconds (converted from nanoseconds) or another fraction.
    Number(f64),
    Histogram {
        count: u64,
        sum: f64,
        /// Per bucket (not cumulative), `+Inf` last.
        buckets: Vec<(f64, u64)>,
    },
}

/// One metric family: its samples with their labels, in report order.
#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: MetricType,
    samples: Vec<(Vec<(String, String)>, Sample)>,
}

/// The families of one report, ready to encode.
#[derive(Debug)]
struct ReportCollector(Vec<Family>);

/// The exposition formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (what `promtool check metrics` reads).
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The exposition of `report` in `format`.
pub fn exposition(report: &Report, format: Format) -> Result<String> {
    let families = families(report);
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(ReportCollector(families)));
    let mut text = String::new();
    match format {
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut text, &registry),
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry),
    }
    .context("cannot encode the metrics")?;
    Ok(text)
}

/// The families of `report`, in its order.
fn families(report: &Report) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    report.visit(&mut |object, labels, field| {
        let (name, nanoseconds) = match field.name.strip_suffix("_ns") {
            Some(stem) => (format!("{stem}_seconds"), true),
            None => (field.name.to_owned(), false),
        };
        let name = if object.is_empty() {
            name
        } else {
            format!("{object}_{name}")
        };
        let number = |value: u64| {
            if nanoseconds {
                Sample::Number(value as f64 / 1e9)
            } else {
                Sample::Integer(value)
            }
        };
        let (kind, sample) = match field.value {
            Value::Counter(value) => (MetricType::Counter, number(value)),
            Value::Gauge(value) => (MetricType::Gauge, number(value)),
            Value::Histogram(histogram) => (MetricType::Histogram, self::histogram(histogram)),
        };
        let labels = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect();
        match families.iter_mut().find(|family| family.name == name) {
            Some(family) => family.samples.push((labels, sample)),
            None => families.push(Family {
                name,
                help: field.help.to_owned(),
                kind,
                samples: vec![(labels, sample)],
            }),
        }
    });
    families
}

/// A histogram's sample: per-bucket counts (not cumulative), `+Inf` last.
fn histogram(histogram: &Histogram) -> Sample {
    let mut buckets = Vec::new();
    let mut below = 0;
    for (bound, total) in histogram.cumulative() {
        buckets.push((bound, total.saturating_sub(below)));
        below = total;
    }
    buckets.push((f64::INFINITY, histogram.count().saturating_sub(below)));
    Sample::Histogram {
        count: histogram.count(),
        sum: histogram.sum_seconds(),
        buckets,
    }
}

impl Collector for ReportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let mut metric = encoder.encode_descriptor(&family.name, &family.help, None, family.kind)?;
            for (labels, sample) in &family.samples {
                let mut sample_encoder = metric.encode_family(labels)?;
                match (sample, family.kind) {
                    (Sample::Integer(value), MetricType::Counter) => {
                        sample_encoder.encode_counter::<NoLabelSet, _, f64>(value, None)?
                    }
                    (Sample::Number(value), MetricType::Counter) => {
                        sample_encoder.encode_counter::<NoLabelSet, _, f64>(value, None)?
                    }
                    (Sample::Integer(value), _) => sample_encoder.encode_gauge(value)?,
                    (Sample::Number(value), _) => sample_encoder.encode_gauge(value)?,
                    (Sample::Histogram { count, sum, buckets }, _) => {
                        sample_encoder.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// The running endpoint; dropping it stops and joins its thread (which
/// holds the ports open through its [`ReportSource`]).
pub struct MetricsServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept; a thread that cannot be woken is left
        // (the process is ending) rather than waited for.
        match TcpStream::connect_timeout(&reachable(self.address), PEER_TIMEOUT) {
            Ok(_) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            Err(err) => tracing::warn!("metrics endpoint: cannot stop its thread: {err}"),
        }
    }
}

/// The address a local client connects to for a listener on `address`.
fn reachable(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), address.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), address.port()),
        _ => address,
    }
}

/// Listens on `address` and serves the reports of `source` on a thread of
/// its own, one connection at a time.
pub fn serve(address: SocketAddr, source: ReportSource) -> Result<MetricsServer> {
    serve_reports(address, move || source.report())
}

/// [`serve`] with the report made by `report` at each scrape.
fn serve_reports(address: SocketAddr, report: impl Fn() -> Report + Send + 'static) -> Result<MetricsServer> {
    let listener = TcpListener::bind(address).with_context(|| format!("metrics.listen {address}"))?;
    let address = listener
        .local_addr()
        .with_context(|| format!("metrics.listen {address}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("tlsgate-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                match stream {
                    Ok(stream) => {
                        if let Err(err) = answer_one(stream, &report) {
                            tracing::debug!("metrics endpoint: {err}");
                        }
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: not in a busy loop.
                        tracing::warn!("metrics endpoint: {err}");
                        std::thread::sleep(ACCEPT_BACKOFF);
                    }
                }
            }
        })
        .context("cannot start the metrics thread")?;
    tracing::info!("metrics endpoint listening on http://{address}/metrics");
    Ok(MetricsServer {
        address,
        stop,
        thread: Some(thread),
    })
}

/// Reads one request and answers it (`report` is made only for a scrape).
fn answer_one(mut stream: TcpStream, report: impl FnOnce() -> Report) -> std::io::Result<()> {
    stream.set_read_timeout(Some(PEER_TIMEOUT))?;
    stream.set_write_timeout(Some(PEER_TIMEOUT))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(chunk.get(..read).unwrap_or_default());
    }
    let head = String::from_utf8_lossy(&head);
    let (status, content_type, body) = respond(&head, report);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    if !head.starts_with("HEAD ") {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// Status, content type and body for a request head.
fn respond(head: &str, report: impl FnOnce() -> Report) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        request_line.next().unwrap_or_default(),
        request_line.next().unwrap_or_default(),
    );
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "only GET /metrics\n".into());
    }
    if target.split('?').next() != Some("/metrics") {
        return ("404 Not Found", TEXT, "tlsgate serves GET /metrics\n".into());
    }
    let openmetrics = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("accept:") && line.contains("application/openmetrics-text")
    });
    let format = if openmetrics {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    };
    match exposition(&report(), format) {
        Ok(body) => ("200 OK", format.content_type(), body),
        Err(err) => ("500 Internal Server Error", TEXT, format!("{err}\n")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use appliance::counters::{PortReport, PortTotals, TcpTotals, WorkerTotals};

    /// A report with a value in every kind of field.
    fn sample_report() -> Report {
        let mut tcp = TcpTotals {
            flows_live: 4,
            flows_created: 10,
            memory_per_flow: 11_000,
            ..TcpTotals::default()
        };
        tcp.splice.sessions_opened = 5;
        tcp.splice.sessions_live = 2;
        tcp.splice.handshake_seconds.observe(3_000);
        tcp.splice.handshake_seconds.observe(40_000);
        tcp.splice.connection_seconds.observe(7_200_000_000);
        let port = |role, device: &str, rx| PortReport {
            role,
            device: device.into(),
            totals: PortTotals {
                rx,
                bridged: rx,
                ..PortTotals::default()
            },
            driver: Default::default(),
        };
        Report {
            ports: vec![port("client", "net_af_packet0", 7), port("server", "net_af_packet1", 9)],
            workers: vec![
                WorkerTotals {
                    busy_ns: 1_500_000_000,
                    polls: 3,
                    sessions_live: 2,
                    ..WorkerTotals::default()
                },
                WorkerTotals::default(),
            ],
            tcp,
            learned: Default::default(),
            reloads: Default::default(),
            capture: None,
            writer: Default::default(),
            pcap_over_ip: Some(appliance::pcap_stream::StreamTotals {
                clients: 2,
                clients_accepted: 5,
                ..Default::default()
            }),
            mirror: None,
            top_sni: vec![appliance::topnames::NameCount {
                sni: "origin.test".into(),
                count: 3,
            }],
            rss_bytes: Some(1 << 20),
        }
    }

    /// The exposition of a report with a value in every kind of field.
    pub(crate) fn sample_exposition() -> String {
        exposition(&sample_report(), Format::Prometheus).expect("encodes")
    }

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in\n{text}"))
    }

    /// The type of the family `name` (the last word of its `# TYPE` line).
    fn type_of<'a>(text: &'a str, name: &str) -> &'a str {
        let line = line(text, &format!("# TYPE {name} "));
        line.rsplit(' ').next().unwrap_or_default()
    }

    #[test]
    fn every_report_number_is_a_sample_with_its_kind_and_labels() {
        let report = sample_report();
        let text = exposition(&report, Format::Prometheus).expect("encodes");
        assert_eq!(type_of(&text, "tlsgate_tcp_sessions_opened_total"), "counter");
        assert_eq!(
            line(&text, "tlsgate_tcp_sessions_opened_total "),
            "tlsgate_tcp_sessions_opened_total 5"
        );
        assert_eq!(type_of(&text, "tlsgate_tcp_sessions_live"), "gauge");
        assert_eq!(type_of(&text, "tlsgate_tcp_memory_per_flow"), "gauge");
        assert_eq!(line(&text, "tlsgate_rss_bytes "), "tlsgate_rss_bytes 1048576");
        assert_eq!(
            line(&text, "tlsgate_port_rx_total{device=\"net_af_packet1\""),
            "tlsgate_port_rx_total{device=\"net_af_packet1\",role=\"server\"} 9"
        );
        assert!(text.contains("tlsgate_port_driver_rx_missed_total{device=\"net_af_packet0\",role=\"client\"} 0"));
        assert_eq!(
            line(&text, "tlsgate_worker_busy_seconds_total{worker=\"0\"}"),
            "tlsgate_worker_busy_seconds_total{worker=\"0\"} 1.5"
        );
        assert!(text.contains("# TYPE tlsgate_worker_sessions_live gauge"));
        assert!(text.contains("# TYPE tlsgate_learned_live gauge"));
        assert_eq!(
            line(&text, "tlsgate_top_sni_count_total{"),
            "tlsgate_top_sni_count_total{sni=\"origin.test\"} 3"
        );
        assert!(
            !text.lines().any(|line| !line.starts_with('#') && line.contains("_ns")),
            "nanoseconds are exposed as seconds"
        );
        assert!(!text.contains("tlsgate_capture_"), "an absent capture has no samples");
        assert!(text.contains("tlsgate_writer_capture_frames_dropped_total 0"));
        // Typed as declared, not by name: a count of sessions that once
        // carried on is a counter, the clients connected now a gauge.
        assert_eq!(type_of(&text, "tlsgate_tcp_inspect_failed_open_live_total"), "counter");
        assert_eq!(type_of(&text, "tlsgate_pcap_over_ip_clients"), "gauge");
        // The help is the field's doc comment.
        for expected in [
            "tlsgate_pcap_over_ip_clients 2",
            "# HELP tlsgate_tcp_tls_sessions_live Sessions holding TLS state now (both rustls connections).",
        ] {
            assert!(
                text.lines().any(|line| line == expected),
                "no line {expected:?} in\n{text}"
            );
        }
        // Every number of the JSON report is there, under its path.
        let json = serde_json::to_value(&report).expect("json");
        for (key, value) in json["tcp"].as_object().expect("object") {
            if value.is_number() {
                assert!(text.contains(&format!("tlsgate_tcp_{key}")), "tcp.{key} missing");
            }
        }
        for key in json["learned"].as_object().expect("object").keys() {
            assert!(
                text.contains(&format!("tlsgate_learned_{key}")),
                "learned.{key} missing"
            );
        }
    }

    #[test]
    fn histograms_have_cumulative_buckets_sum_and_count() {
        let text = exposition(&sample_report(), Format::Prometheus).expect("encodes");
        assert_eq!(type_of(&text, "tlsgate_tcp_handshake_seconds"), "histogram");
        assert_eq!(
            line(&text, "tlsgate_tcp_handshake_seconds_count"),
            "tlsgate_tcp_handshake_seconds_count 2"
        );
        assert_eq!(
            line(&text, "tlsgate_tcp_handshake_seconds_sum"),
            "tlsgate_tcp_handshake_seconds_sum 0.043"
        );
        assert_eq!(
            line(&text, "tlsgate_tcp_handshake_seconds_bucket{le=\"0.001\"}"),
            "tlsgate_tcp_handshake_seconds_bucket{le=\"0.001\"} 0"
        );
        assert_eq!(
            line(&text, "tlsgate_tcp_handshake_seconds_bucket{le=\"0.005\"}"),
            "tlsgate_tcp_handshake_seconds_bucket{le=\"0.005\"} 1"
        );
        assert_eq!(
            line(&text, "tlsgate_tcp_handshake_seconds_bucket{le=\"0.05\"}"),
            "tlsgate_tcp_handshake_seconds_bucket{le=\"0.05\"} 2"
        );
        assert_eq!(
            line(&text, "tlsgate_tcp_connection_seconds_bucket{le=\"3600\"}"),
            "tlsgate_tcp_connection_seconds_bucket{le=\"3600\"} 0"
        );
        assert_eq!(
            line(&text, "tlsgate_tcp_connection_seconds_bucket{le=\"+Inf\"}"),
            "tlsgate_tcp_connection_seconds_bucket{le=\"+Inf\"} 1"
        );
    }

    #[test]
    fn promtool_accepts_the_exposition() {
        let text = exposition(&sample_report(), Format::Prometheus).expect("encodes");
        let mut promtool = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus, scripts/setup.sh) runs");
        promtool
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writes");
        let output = promtool.wait_with_output().expect("promtool finishes");
        assert!(
            output.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn the_server_answers_scrapes_until_dropped() {
        let server = serve_reports("127.0.0.1:0".parse().expect("address"), sample_report).expect("listens");
        let address = server.address;
        for _ in 0..2 {
            let reading = crate::top::scrape(address).expect("scrapes");
            let view = crate::top::view(address, &reading, &reading);
            assert!(view.contains("connections  2 live"), "{view}");
        }
        let mut raw = TcpStream::connect(address).expect("connects");
        raw.write_all(b"GET /nothing HTTP/1.0\r\n\r\n").expect("asks");
        let mut answer = String::new();
        raw.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        drop(server);
        assert!(
            TcpStream::connect(address).is_err(),
            "the listener is closed once dropped"
        );
    }

    #[test]
    fn openmetrics_when_asked_and_only_get_metrics() {
        let report = sample_report;
        let (status, content_type, body) = respond(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
            report,
        );
        assert_eq!((status, content_type), ("200 OK", OPENMETRICS_CONTENT_TYPE));
        assert!(body.ends_with("# EOF\n"), "{body}");
        let (status, content_type, body) = respond("GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n", report);
        assert_eq!((status, content_type), ("200 OK", Format::Prometheus.content_type()));
        assert!(!body.contains("# EOF"));
        assert_eq!(respond("GET / HTTP/1.1\r\n\r\n", report).0, "404 Not Found");
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n\r\n", report).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("garbage", report).0, "405 Method Not Allowed");
    }
}
