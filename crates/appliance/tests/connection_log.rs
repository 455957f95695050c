//! The connection log as tools read it, in memory: a record of every kind
//! the appliance writes (a spliced session, a bypass and a block at the
//! SYN; TLS sessions are in `tls_legs.rs`) matches the documented schema,
//! names its 5-tuple in separate fields and carries the Community ID that
//! Suricata and Zeek compute for the same connection.

mod harness;

use std::net::SocketAddr;
use std::sync::Arc;

use appliance::connlog;
use appliance::policy::{Action, Policy, PolicyRules, RuleConfig};
use harness::connlog::LogFile;
use harness::tls::Scratch;
use harness::{close_both, connect, policy, transfer, v4, v6, Lab, SERVER_V4, SERVER_V6};
use smoltcp::socket::tcp::State;

/// A rule deciding at the SYN: `action` for `dst` on `port`.
fn at_syn(action: Action, dst: &str, port: u16) -> RuleConfig {
    RuleConfig {
        action,
        dst: vec![dst.into()],
        src: vec![],
        port: vec![port],
        sni: vec![],
        no_sni: None,
        when: None,
        udp: None,
        server_port: None,
        server_name: None,
    }
}

#[test]
fn every_kind_of_record_matches_the_schema_and_joins_ids_events_by_community_id() {
    let scratch = Scratch::new("connlog-kinds");
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let mut splice = policy(&[80, 8080]);
    let rules = [
        at_syn(Action::Bypass, "198.18.0.2", 8080),
        at_syn(Action::Block, "2001:2::2", 80),
    ];
    splice.rules = Policy::new(&PolicyRules::from(rules.to_vec()), Arc::default(), false).unwrap();
    let mut lab = Lab::with_engine(&splice, |engine| engine.with_connection_log(Arc::clone(&log.log)));

    // A spliced session, logged when both directions closed.
    let (client, server) = connect(&mut lab, v4(SERVER_V4, 80), 41_000);
    transfer(
        &mut lab,
        client,
        server,
        b"GET / HTTP/1.0\r\n\r\n",
        b"HTTP/1.0 204 No Content\r\n\r\n",
        5_000,
    );
    close_both(&mut lab, client, server);
    assert!(lab.run_until(5_000, |_| !log.records().is_empty()));
    // A connection bypassed at its SYN: bridged, logged at once.
    let (client, server) = connect(&mut lab, v4(SERVER_V4, 8080), 41_001);
    close_both(&mut lab, client, server);
    // A SYN refused with a RST.
    let refused = lab.client.connect(v6(SERVER_V6, 80), 41_002, 4096);
    assert!(lab.run_until(2_000, |lab| lab.client.tcp(refused).state() == State::Closed));

    let records = log.records();
    let kinds: Vec<_> = records.iter().map(|r| r["event_type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["connection", "syn_bypass", "syn_block"], "{records:?}");
    let expected = [
        ("198.18.0.1:41000", "198.18.0.2:80", "splice"),
        ("198.18.0.1:41001", "198.18.0.2:8080", "bypass"),
        ("[2001:2::1]:41002", "[2001:2::2]:80", "block"),
    ];
    for (record, (client, server, decision)) in records.iter().zip(expected) {
        let (client, server): (SocketAddr, SocketAddr) = (client.parse().unwrap(), server.parse().unwrap());
        assert_eq!(record["src_ip"], client.ip().to_string(), "{record}");
        assert_eq!(record["src_port"], client.port(), "{record}");
        assert_eq!(record["dest_ip"], server.ip().to_string(), "{record}");
        assert_eq!(record["dest_port"], server.port(), "{record}");
        assert_eq!(record["proto"], "TCP", "{record}");
        assert_eq!(record["decision"], *decision, "{record}");
        // Suricata's id for the same connection, whichever way it saw it.
        let suricata = connlog::community_id(0, server, client, connlog::IPPROTO_TCP);
        assert_eq!(record["community_id"], suricata, "{record}");
    }
    let flow_ids: std::collections::BTreeSet<_> = records.iter().map(|r| r["flow_id"].as_u64().unwrap()).collect();
    assert_eq!(flow_ids.len(), 3, "one flow id per connection: {records:?}");
    assert_eq!(records[0]["bytes_client_to_server"], 18, "{}", records[0]);
}

/// The schema is strict: a record missing a field, with one it does not
/// document or with a 5-tuple written the old way fails it.
#[test]
fn the_schema_rejects_records_that_tools_could_not_read() {
    let validator = harness::connlog::validator();
    let scratch = Scratch::new("connlog-strict");
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let mut lab = Lab::with_engine(&policy(&[80]), |engine| {
        engine.with_connection_log(Arc::clone(&log.log))
    });
    let (client, server) = connect(&mut lab, v4(SERVER_V4, 80), 41_010);
    close_both(&mut lab, client, server);
    assert!(lab.run_until(5_000, |_| !log.records().is_empty()));
    let record = log.records().remove(0);
    assert!(validator.is_valid(&record));

    let mut missing = record.clone();
    missing.as_object_mut().unwrap().remove("community_id");
    let mut old_style = record.clone();
    old_style["src_ip"] = "198.18.0.1:41010".into();
    let mut undocumented = record.clone();
    undocumented["client"] = "198.18.0.1:41010".into();
    let mut bad_time = record;
    bad_time["timestamp"] = "2026-12-03 08:06:05".into();
    for broken in [missing, old_style, undocumented, bad_time] {
        assert!(!validator.is_valid(&broken), "{broken}");
    }
}
