//! `tlsgate top --once` against a stand-in metrics endpoint (a kernel TCP
//! listener in the test that serves two readings whose counters moved by
//! known amounts), and its refusals. The lab test `tests/lab_metrics.rs`
//! runs it against a real instance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::{output, repo, text, tlsgate, Scratch};

/// The text of reading `n` (0, 1, ...): per reading, 40 more sessions,
/// 10 MiB more from the servers, 1000 more frames on the client port, and
/// worker 1 busy a quarter of the time.
fn reading(n: u64) -> String {
    format!(
        "# HELP tlsgate_tcp_sessions_opened_total x\n# TYPE tlsgate_tcp_sessions_opened_total counter\n\
         tlsgate_tcp_sessions_opened_total {}\n\
         tlsgate_tcp_sessions_live 12\n\
         tlsgate_tcp_bytes_server_to_client_total {}\n\
         tlsgate_port_rx_total{{device=\"net_af_packet0\",role=\"client\"}} {}\n\
         tlsgate_worker_busy_seconds_total{{worker=\"1\"}} {}\n\
         tlsgate_worker_idle_seconds_total{{worker=\"1\"}} {}\n\
         tlsgate_worker_sessions_live{{worker=\"1\"}} 12\n",
        40 * n,
        10 * (n << 20),
        1000 * n,
        0.25 * n as f64,
        0.75 * n as f64,
    )
}

#[test]
fn top_once_shows_the_rates_between_two_readings() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listens");
    let address = listener.local_addr().expect("address");
    let endpoint = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for n in 0..2 {
            let (mut stream, _) = listener.accept().expect("accepts");
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).expect("request") == 1 {
                request.push(byte[0]);
            }
            requests.push(String::from_utf8_lossy(&request).into_owned());
            let body = reading(n);
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .expect("answers");
        }
        requests
    });
    let interval = 0.5;
    let result = output(
        tlsgate()
            .args(["top", "--once", "--interval", &interval.to_string(), "--endpoint"])
            .arg(address.to_string()),
    );
    assert!(result.status.success(), "{}", text(&result.stderr));
    let view = text(&result.stdout);
    let requests = endpoint.join().expect("endpoint thread");
    assert!(
        requests.iter().all(|request| request.starts_with("GET /metrics HTTP/")),
        "{requests:?}"
    );
    assert!(!view.contains('\x1b'), "--once prints plain text: {view:?}");
    // The rates are over the time between the readings, at least the interval.
    let seconds: f64 = view
        .split("rates over the last ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or_else(|| panic!("no time span in {view}"));
    assert!((interval..interval + 2.0).contains(&seconds), "{view}");
    // Each rate times the span gives back what the counter moved (within
    // the rounding of what is printed).
    for (after, moved) in [(" new/s", 40.0), (" MiB/s server->client", 10.0), (" rx/s", 1000.0)] {
        let rate = number_before(&view, after);
        assert!(
            (rate * seconds - moved).abs() <= moved * 0.02,
            "{after}: {rate} over {seconds} s in\n{view}"
        );
    }
    for needle in [
        "12 live",
        "port client ",
        "worker 1      25.0% busy, 12 connections live",
    ] {
        assert!(view.contains(needle), "{needle:?} missing from:\n{view}");
    }
}

/// The number printed right before `after` in `view`.
fn number_before(view: &str, after: &str) -> f64 {
    let head = view.split(after).next().filter(|head| head.len() < view.len());
    head.and_then(|head| head.rsplit(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no number before {after:?} in\n{view}"))
}

#[test]
fn top_needs_an_endpoint() {
    let scratch = Scratch::new("top");
    let lab = std::fs::read_to_string(repo().join("configs/lab.toml")).expect("lab.toml");
    let path = scratch.path("no-metrics.toml");
    std::fs::write(&path, &lab).expect("write");
    let result = output(tlsgate().args(["top", "--once", "--config"]).arg(&path));
    assert!(!result.status.success());
    assert!(
        text(&result.stderr).contains("no [metrics] listen"),
        "{}",
        text(&result.stderr)
    );
    // Nothing listens on a port just released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("listens")
        .local_addr()
        .expect("address");
    let result = output(tlsgate().args(["top", "--once", "--endpoint"]).arg(closed.to_string()));
    assert!(!result.status.success());
    let stderr = text(&result.stderr);
    assert!(
        stderr.contains(&format!("metrics endpoint {closed}")) && stderr.contains("refused"),
        "{stderr}"
    );
}
