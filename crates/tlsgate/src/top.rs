//! `tlsgate top`: a live view of a running instance, read from its metrics
//! endpoint (`[metrics] listen`): connection and byte rates, live
//! connections, per-port frame rates, per-worker busy share, latency
//! quantiles and memory. Each view compares two readings an interval apart;
//! the live view redraws the terminal with ANSI codes, `--once` prints one
//! view as plain text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::output::say;

/// How long the endpoint may take to connect and to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read.
const MAX_ANSWER: u64 = 64 << 20;
/// The server names shown, most frequent first.
const TOP_NAMES_SHOWN: usize = 5;

/// One sample: its labels and value.
type Labels = Vec<(String, String)>;

/// One reading of the endpoint.
#[derive(Debug, Clone)]
pub struct Reading {
    at: Instant,
    /// Per metric name, its samples.
    samples: BTreeMap<String, Vec<(Labels, f64)>>,
}

impl Reading {
    /// Parses the Prometheus text format (comments skipped; a line that
    /// does not parse is an error).
    pub fn parse(text: &str, at: Instant) -> Result<Reading> {
        let mut samples: BTreeMap<String, Vec<(Labels, f64)>> = BTreeMap::new();
        for line in text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
            let (name, labels, value) = parse_line(line).with_context(|| format!("cannot read the sample {line:?}"))?;
            samples.entry(name).or_default().push((labels, value));
        }
        Ok(Reading { at, samples })
    }

    /// The sum of a metric over its label sets (0 when absent).
    fn total(&self, name: &str) -> f64 {
        self.samples
            .get(name)
            .map_or(0.0, |samples| samples.iter().map(|(_, value)| value).sum())
    }

    /// A metric's value per value of `label`.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut values = BTreeMap::new();
        for (labels, value) in self.samples.get(name).into_iter().flatten() {
            if let Some((_, key)) = labels.iter().find(|(key, _)| key == label) {
                *values.entry(key.clone()).or_insert(0.0) += value;
            }
        }
        values
    }

    /// A histogram's cumulative finite buckets and count.
    fn histogram(&self, name: &str) -> (Vec<(f64, u64)>, u64) {
        let mut buckets: Vec<(f64, u64)> = self
            .samples
            .get(&format!("{name}_bucket"))
            .into_iter()
            .flatten()
            .filter_map(|(labels, value)| {
                let bound: f64 = labels.iter().find(|(key, _)| key == "le")?.1.parse().ok()?;
                bound.is_finite().then_some((bound, *value as u64))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        (buckets, self.total(&format!("{name}_count")) as u64)
    }
}

/// `name{key="value",...} value` (a timestamp after the value is ignored).
fn parse_line(line: &str) -> Option<(String, Labels, f64)> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line.get(..name_end)?.to_owned();
    let mut rest = line.get(name_end..)?;
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let mut chars = inside.char_indices();
        let mut key = String::new();
        let close = loop {
            let (index, ch) = chars.next()?;
            match ch {
                '}' => break index,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        };
        rest = inside.get(close + 1..)?;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        value => value.parse().ok()?,
    };
    Some((name, labels, value))
}

/// Reads the endpoint at `address` once.
pub fn scrape(address: SocketAddr) -> Result<Reading> {
    let context = || format!("metrics endpoint {address}");
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT).with_context(context)?;
    stream.set_read_timeout(Some(TIMEOUT)).with_context(context)?;
    stream.set_write_timeout(Some(TIMEOUT)).with_context(context)?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\nAccept: text/plain\r\n\r\n");
    stream.write_all(request.as_bytes()).with_context(context)?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer).with_context(context)?;
    let at = Instant::now();
    let answer = String::from_utf8_lossy(&answer);
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        bail!("{}: not an HTTP answer", context());
    };
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{}: {status}", context());
    }
    Reading::parse(body, at).with_context(context)
}

/// One view from two readings.
pub fn view(address: SocketAddr, before: &Reading, now: &Reading) -> String {
    let seconds = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let rate = |name: &str| (now.total(name) - before.total(name)).max(0.0) / seconds;
    let mut out = String::new();
    let _ = writeln!(out, "tlsgate top: {address}, rates over the last {seconds:.2} s");
    let _ = writeln!(
        out,
        "connections  {} live ({} embryonic, {} with TLS state), {:.1} new/s, {:.1} resets/s",
        now.total("tlsgate_tcp_sessions_live"),
        now.total("tlsgate_tcp_embryonic_live"),
        now.total("tlsgate_tcp_tls_sessions_live"),
        rate("tlsgate_tcp_sessions_opened_total"),
        rate("tlsgate_tcp_resets_total"),
    );
    let _ = writeln!(
        out,
        "tls          {:.1} intercepted/s, {:.1} failed/s, {:.1} bypassed/s, {:.1} blocked/s",
        rate("tlsgate_tcp_tls_intercepted_total"),
        rate("tlsgate_tcp_tls_failed_total"),
        rate("tlsgate_tcp_bypassed_total"),
        rate("tlsgate_tcp_blocked_total"),
    );
    let _ = writeln!(
        out,
        "payload      {} client->server, {} server->client",
        per_second(rate("tlsgate_tcp_bytes_client_to_server_total")),
        per_second(rate("tlsgate_tcp_bytes_server_to_client_total")),
    );
    let (rx_before, rx_now) = (
        before.by("tlsgate_port_rx_total", "role"),
        now.by("tlsgate_port_rx_total", "role"),
    );
    let (tx_before, tx_now) = (
        before.by("tlsgate_port_tx_total", "role"),
        now.by("tlsgate_port_tx_total", "role"),
    );
    let (drop_before, drop_now) = (
        before.by("tlsgate_port_dropped_total", "role"),
        now.by("tlsgate_port_dropped_total", "role"),
    );
    let delta = |old: &BTreeMap<String, f64>, new: &BTreeMap<String, f64>, key: &str| {
        (new.get(key).copied().unwrap_or(0.0) - old.get(key).copied().unwrap_or(0.0)).max(0.0) / seconds
    };
    for role in rx_now.keys() {
        let _ = writeln!(
            out,
            "port {role:<7} {:.0} rx/s, {:.0} tx/s, {:.0} dropped/s (frames)",
            delta(&rx_before, &rx_now, role),
            delta(&tx_before, &tx_now, role),
            delta(&drop_before, &drop_now, role),
        );
    }
    let (busy_before, busy_now) = (
        before.by("tlsgate_worker_busy_seconds_total", "worker"),
        now.by("tlsgate_worker_busy_seconds_total", "worker"),
    );
    let (idle_before, idle_now) = (
        before.by("tlsgate_worker_idle_seconds_total", "worker"),
        now.by("tlsgate_worker_idle_seconds_total", "worker"),
    );
    let sessions = now.by("tlsgate_worker_sessions_live", "worker");
    let mut workers: Vec<&String> = busy_now.keys().collect();
    workers.sort_by_key(|worker| worker.parse::<u64>().unwrap_or(u64::MAX));
    for worker in workers {
        let busy = delta(&busy_before, &busy_now, worker);
        let idle = delta(&idle_before, &idle_now, worker);
        let share = if busy + idle > 0.0 {
            busy * 100.0 / (busy + idle)
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "worker {worker:<5} {share:5.1}% busy, {} connections live",
            sessions.get(worker).copied().unwrap_or(0.0)
        );
    }
    let (names_before, names_now) = (
        before.by("tlsgate_top_sni_count_total", "sni"),
        now.by("tlsgate_top_sni_count_total", "sni"),
    );
    let mut names: Vec<(f64, &String)> = names_now
        .keys()
        .map(|name| (delta(&names_before, &names_now, name), name))
        .collect();
    names.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    if !names.is_empty() {
        let shown: Vec<String> = names
            .iter()
            .take(TOP_NAMES_SHOWN)
            .map(|(rate, name)| format!("{name} {rate:.1}/s"))
            .collect();
        let _ = writeln!(out, "server names {}", shown.join(", "));
    }
    let quantiles = |name: &str| {
        let (buckets, count) = now.histogram(name);
        let show = |q: f64| match appliance::histogram::quantile_bound(&buckets, count, q) {
            None => "-".to_owned(),
            Some(bound) if bound.is_infinite() => "beyond the last bucket".to_owned(),
            Some(bound) if bound < 1.0 => format!("<= {} ms", (bound * 1e4).round() / 10.0),
            Some(bound) => format!("<= {bound} s"),
        };
        format!("p50 {}, p99 {} (of {count})", show(0.5), show(0.99))
    };
    let _ = writeln!(out, "handshakes   {}", quantiles("tlsgate_tcp_handshake_seconds"));
    let _ = writeln!(out, "durations    {}", quantiles("tlsgate_tcp_connection_seconds"));
    let _ = writeln!(
        out,
        "memory       {} flows, {} of socket buffers, {} of forged certificates, process resident {}",
        now.total("tlsgate_tcp_flows_live"),
        bytes(now.total("tlsgate_tcp_socket_buffer_bytes")),
        bytes(now.total("tlsgate_tcp_forged_cache_bytes")),
        bytes(now.total("tlsgate_rss_bytes")),
    );
    out
}

fn bytes(value: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = value;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS.get(unit).copied().unwrap_or("B"))
}

fn per_second(value: f64) -> String {
    format!("{}/s", bytes(value))
}

/// Shows views of the instance at `address` every `interval`, or one with
/// `once`.
pub fn run(address: SocketAddr, interval: Duration, once: bool) -> Result<()> {
    let mut before = scrape(address)?;
    loop {
        std::thread::sleep(interval);
        let now = scrape(address)?;
        let view = view(address, &before, &now);
        if once {
            return crate::output::write(format_args!("{view}"));
        }
        // Home, clear the screen, then the view.
        say!("\x1b[H\x1b[2J{view}")?;
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_labels_escapes_and_infinity() {
        let text = "# HELP x y\n# TYPE x counter\n\
                    plain_total 12\n\
                    labelled{role=\"client\",device=\"net_af_packet0,iface=a\\\"b\"} 3.5\n\
                    h_bucket{le=\"+Inf\"} 4 1700000000\n";
        let reading = Reading::parse(text, Instant::now()).expect("parses");
        assert_eq!(reading.total("plain_total"), 12.0);
        assert_eq!(reading.by("labelled", "role").get("client"), Some(&3.5));
        assert_eq!(
            reading.samples["labelled"][0].0[1],
            ("device".to_owned(), "net_af_packet0,iface=a\"b".to_owned())
        );
        assert_eq!(reading.total("h_bucket"), 4.0);
        assert!(Reading::parse("broken{le=\"1\" 2\n", Instant::now()).is_err());
        assert!(Reading::parse("name notanumber\n", Instant::now()).is_err());
    }

    /// Every metric the view reads is one the endpoint serves (the names
    /// are derived from the report, so a renamed field shows here).
    #[test]
    fn the_view_reads_metrics_the_endpoint_serves() {
        let source = include_str!("top.rs");
        let served = crate::metrics::tests::sample_exposition();
        let reading = Reading::parse(&served, Instant::now()).expect("parses");
        let mut read = 0;
        for quoted in source.split('"').skip(1).step_by(2) {
            if quoted.starts_with("tlsgate_") && !quoted.contains(' ') {
                let served =
                    reading.samples.contains_key(quoted) || reading.samples.contains_key(&format!("{quoted}_count"));
                assert!(served, "top reads {quoted}, which the endpoint does not serve");
                read += 1;
            }
        }
        assert!(read >= 15, "{read} names found");
    }

    #[test]
    fn a_view_shows_rates_workers_and_latency() {
        let at = Instant::now();
        let before = Reading::parse(
            "tlsgate_tcp_sessions_opened_total 10\n\
             tlsgate_tcp_bytes_server_to_client_total 0\n\
             tlsgate_port_rx_total{device=\"a\",role=\"client\"} 100\n\
             tlsgate_worker_busy_seconds_total{worker=\"0\"} 1\n\
             tlsgate_worker_idle_seconds_total{worker=\"0\"} 1\n\
             tlsgate_top_sni_count_total{sni=\"a.test\"} 10\n",
            at,
        )
        .expect("parses");
        let now = Reading::parse(
            "tlsgate_tcp_sessions_opened_total 30\n\
             tlsgate_tcp_sessions_live 7\n\
             tlsgate_tcp_bytes_server_to_client_total 4194304\n\
             tlsgate_port_rx_total{device=\"a\",role=\"client\"} 500\n\
             tlsgate_worker_busy_seconds_total{worker=\"0\"} 1.5\n\
             tlsgate_worker_idle_seconds_total{worker=\"0\"} 2.5\n\
             tlsgate_worker_sessions_live{worker=\"0\"} 7\n\
             tlsgate_tcp_handshake_seconds_bucket{le=\"0.01\"} 1\n\
             tlsgate_tcp_handshake_seconds_bucket{le=\"0.05\"} 4\n\
             tlsgate_tcp_handshake_seconds_bucket{le=\"+Inf\"} 4\n\
             tlsgate_tcp_handshake_seconds_count 4\n\
             tlsgate_top_sni_count_total{sni=\"a.test\"} 12\n\
             tlsgate_top_sni_count_total{sni=\"b.test\"} 8\n",
            at + Duration::from_secs(2),
        )
        .expect("parses");
        let view = view("127.0.0.1:9464".parse().expect("address"), &before, &now);
        assert!(view.contains("rates over the last 2.00 s"), "{view}");
        assert!(view.contains("7 live"), "{view}");
        assert!(view.contains("10.0 new/s"), "{view}");
        assert!(view.contains("2.0 MiB/s server->client"), "{view}");
        assert!(view.contains("port client  200 rx/s"), "{view}");
        assert!(view.contains("worker 0      25.0% busy, 7 connections live"), "{view}");
        assert!(
            view.contains("handshakes   p50 <= 50 ms, p99 <= 50 ms (of 4)"),
            "{view}"
        );
        assert!(view.contains("durations    p50 -"), "{view}");
        assert!(view.contains("server names b.test 4.0/s, a.test 1.0/s"), "{view}");
    }
}
