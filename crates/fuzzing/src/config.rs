//! The `config` target: a configuration file's text through
//! [`Config::parse`] (TOML, then validation), and for an accepted one
//! everything the program derives from it: the compiled policy and its
//! verdicts, the engine's policy, the devices.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use appliance::engine::InterceptPolicy;
use appliance::{Config, ConfigError};
use wire::FlowTuple;

/// Parses `data` (as UTF-8, invalid sequences replaced) as a configuration
/// file. A refused one must say why, naming the key for a bad value; an
/// accepted one must compile without errors.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let config = match Config::parse(&text, Path::new("fuzz.toml")) {
        Ok(config) => config,
        Err(err) => {
            let key: &str = match &err {
                ConfigError::Invalid { key, .. } => key,
                ConfigError::InvalidRule { key, .. } => key,
                _ => return,
            };
            assert!(err.to_string().contains(key), "{err} does not name {key}");
            return;
        }
    };
    let policy = config
        .policy()
        .unwrap_or_else(|(key, reason)| panic!("a validated configuration's policy fails: {key}: {reason}"));
    let engine_policy =
        InterceptPolicy::from_config(&config).unwrap_or_else(|err| panic!("a validated configuration fails: {err}"));
    assert_eq!(engine_policy.tcp_ports, config.intercept.tcp_ports);
    let devices = config
        .devices()
        .unwrap_or_else(|err| panic!("a validated configuration's devices fail: {err}"));
    assert_eq!(devices.len(), config.ports.all().len());
    let _ = config.worst_case_buffer_bytes();
    for tuple in tuples() {
        let _ = policy.at_syn(&tuple);
        for sni in [None, Some("example.com"), Some("a.b.example.com"), Some("")] {
            let _ = policy.at_hello(&tuple, sni, netstack::Instant::ZERO);
            let _ = policy.on_ech(&tuple, sni);
        }
    }
}

/// A few connections, IPv4 and IPv6, to test the rules against.
fn tuples() -> [FlowTuple; 3] {
    let v4 = |last: u8| IpAddr::V4(Ipv4Addr::new(198, 18, 0, last));
    let v6 = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, last));
    [
        FlowTuple {
            src_ip: v4(1),
            dst_ip: v4(2),
            src_port: 40_000,
            dst_port: 443,
        },
        FlowTuple {
            src_ip: v6(1),
            dst_ip: v6(2),
            src_port: 40_001,
            dst_port: 8443,
        },
        FlowTuple {
            src_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst_ip: IpAddr::V4(Ipv4Addr::BROADCAST),
            src_port: 0,
            dst_port: 0,
        },
    ]
}
