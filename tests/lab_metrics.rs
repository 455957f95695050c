//! The metrics endpoint in the namespace lab: `tlsgate run` in the
//! appliance namespace with `[metrics] listen` on its loopback, scraped
//! with curl there while curl in the client namespace makes intercepted
//! HTTPS requests. The counters and both histograms move, the exposition
//! passes `promtool check metrics` (both formats are served), the server
//! name is counted, the final
//! report agrees with the last scrape, and `tlsgate top --once` reads the
//! running instance. Needs root; run by scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{curl, tls_config, Appliance, Lab, Origin, GW};
use common::{output, text, Scratch};

const LISTEN: &str = "127.0.0.1:9464";
const URL: &str = "http://127.0.0.1:9464/metrics";

/// The value of the sample `name` (with its labels, if any, as written) in
/// a Prometheus text exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of the samples of `name` over its label sets.
fn summed(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One scrape from inside the appliance's namespace.
fn scrape(lab: &Lab, headers: &[&str]) -> String {
    let mut args = vec!["-sS", "--fail", "--max-time", "5"];
    for header in headers {
        args.extend(["-H", header]);
    }
    args.push(URL);
    lab.ok(GW, "curl", &args)
}

fn promtool_accepts(exposition: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, scripts/setup.sh)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("writes");
    let result = promtool.wait_with_output().expect("promtool finishes");
    assert!(
        result.status.success(),
        "promtool check metrics: {}{}",
        text(&result.stdout),
        text(&result.stderr)
    );
}

#[test]
#[ignore = "needs root and network namespaces: run scripts/test.sh"]
fn the_endpoint_serves_moving_counters_and_histograms_during_a_lab_run() {
    let lab = Lab::up();
    let scratch = Scratch::new("metrics");
    let origin = Origin::start(scratch.path("origin"), "origin.test", "valid");
    let (config, appliance_ca) = tls_config(&scratch, &origin.cert());
    let mut text_config = std::fs::read_to_string(&config).expect("config");
    text_config.push_str(&format!("\n[metrics]\nlisten = \"{LISTEN}\"\n"));
    std::fs::write(&config, text_config).expect("config");
    let appliance = Appliance::start(&lab, &scratch, &config);

    let before = scrape(&lab, &[]);
    assert_eq!(
        sample(&before, "tlsgate_tcp_sessions_opened_total"),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, "tlsgate_tcp_handshake_seconds_count"),
        Some(0.0),
        "{before}"
    );

    const REQUESTS: u32 = 3;
    for attempt in 0..REQUESTS {
        let result = curl(
            &lab,
            &appliance_ca,
            &[
                "--resolve",
                "origin.test:443:198.18.0.2",
                "https://origin.test/index.html",
            ],
        );
        assert!(result.status.success(), "request {attempt}: {}", text(&result.stderr));
        assert_eq!(text(&result.stdout).trim(), "hello from origin.test");
    }
    // A session's duration is observed when it ends (both directions closed).
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = scrape(&lab, &[]);
        if sample(&after, "tlsgate_tcp_connection_seconds_count") >= Some(f64::from(REQUESTS)) {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "the sessions did not end within 10 s:\n{after}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let requests = f64::from(REQUESTS);
    for counter in [
        "tlsgate_tcp_sessions_opened_total",
        "tlsgate_tcp_tls_intercepted_total",
        "tlsgate_tcp_handshake_seconds_count",
    ] {
        assert_eq!(sample(&after, counter), Some(requests), "{counter}:\n{after}");
    }
    let handshakes = sample(&after, "tlsgate_tcp_handshake_seconds_sum").expect("sum");
    assert!(handshakes > 0.0 && handshakes < 10.0, "{after}");
    assert_eq!(
        sample(&after, "tlsgate_tcp_handshake_seconds_bucket{le=\"+Inf\"}"),
        Some(requests),
        "{after}"
    );
    assert!(
        sample(&after, "tlsgate_tcp_bytes_server_to_client_total") > Some(0.0),
        "{after}"
    );
    assert!(
        summed(&after, "tlsgate_port_rx_total") > summed(&before, "tlsgate_port_rx_total"),
        "{after}"
    );
    assert!(
        summed(&after, "tlsgate_worker_busy_seconds_total") > summed(&before, "tlsgate_worker_busy_seconds_total"),
        "{after}"
    );
    assert!(after.contains("# TYPE tlsgate_tcp_sessions_live gauge"), "{after}");
    // Server names are published at most every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let named = "tlsgate_top_sni_count_total{sni=\"origin.test\"}";
    while sample(&scrape(&lab, &[]), named) != Some(requests) {
        assert!(Instant::now() < deadline, "{named} is not {requests}");
        std::thread::sleep(Duration::from_millis(50));
    }
    promtool_accepts(&after);
    let openmetrics = scrape(&lab, &["Accept: application/openmetrics-text; version=1.0.0"]);
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(
        openmetrics.contains(&format!("tlsgate_tcp_sessions_opened_total {REQUESTS}")),
        "{openmetrics}"
    );

    // `tlsgate top` on the running instance, through its configuration.
    let top = output(
        lab.cmd(GW, env!("CARGO_BIN_EXE_tlsgate"))
            .args(["top", "--once", "--interval", "0.2", "--config"])
            .arg(&config),
    );
    assert!(top.status.success(), "{}", text(&top.stderr));
    let view = text(&top.stdout);
    assert!(view.contains(&format!("(of {REQUESTS})")), "{view}");
    assert!(view.contains("worker 0"), "{view}");
    assert!(view.contains("server names origin.test"), "{view}");

    let last = scrape(&lab, &[]);
    let (status, report, _) = appliance.stop();
    assert!(status.success());
    assert_eq!(
        sample(&last, "tlsgate_tcp_sessions_opened_total"),
        report["tcp"]["sessions_opened"].as_f64(),
        "the endpoint and the final report count alike"
    );
    assert_eq!(report["tcp"]["handshake_seconds"]["count"], REQUESTS, "{report}");
    assert_eq!(
        report["top_sni"],
        serde_json::json!([{ "sni": "origin.test", "count": REQUESTS }]),
        "{report}"
    );
    assert!(
        !lab.succeeds(GW, "curl", &["-sS", "--max-time", "2", URL]),
        "the endpoint is gone with the instance"
    );
}
