//! Regenerates the `seed-*` files of `fuzz/corpus/<target>/`: frames of
//! `pcap-fixtures/`, real rustls ClientHellos and server answers,
//! `configs/*.toml` and a configuration with every kind of rule, and engine
//! sessions in each setup and with each kind of operation.
//! `cargo run -p fuzzing --example write_seeds`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use fuzzing::{files_in, fuzz_dir};

/// Writes `seed-<name>` into `fuzz/corpus/<target>/`.
fn write_seed(target: &str, name: &str, data: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

/// The frames of the classic pcap fixtures, by file stem.
fn fixture_frames() -> Vec<(String, Vec<Vec<u8>>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pcap-fixtures");
    files_in(&dir)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "pcap"))
        .map(|path| {
            let file = std::fs::File::open(&path).unwrap();
            let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
            let mut frames = Vec::new();
            while let Some(packet) = reader.next_packet() {
                frames.push(packet.unwrap().data.into_owned());
            }
            (path.file_stem().unwrap().to_string_lossy().into_owned(), frames)
        })
        .collect()
}

/// The first flight of a rustls client: its ClientHello.
fn client_hello(versions: &[&'static rustls::SupportedProtocolVersion], name: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    hello
}

/// A rustls server's answer to `hello`: its first flight.
fn server_flight(hello: &[u8], versions: &[&'static rustls::SupportedProtocolVersion]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["origin.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(config)).unwrap();
    server.read_tls(&mut &hello[..]).unwrap();
    server.process_new_packets().unwrap();
    let mut flight = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut flight).unwrap();
    }
    flight
}

/// A `tls_hello` input: pieces of `piece` bytes, flags, the client's bytes,
/// the server's.
fn tls_input(piece: u8, flags: u8, client: &[u8], server: &[u8]) -> Vec<u8> {
    let mut input = vec![piece, flags];
    input.extend_from_slice(&u16::try_from(client.len()).unwrap().to_be_bytes());
    input.extend_from_slice(client);
    input.extend_from_slice(server);
    input
}

/// The operations of the `engine` target (see its module docs).
mod op {
    pub const STEP: u8 = 0;
    pub const CONNECT: u8 = 1;
    pub const RAW: u8 = 2;
    pub const MUTATE: u8 = 3;
    pub const SEGMENT: u8 = 4;
    pub const LOSSY: u8 = 5;
    pub const ORIGIN: u8 = 6;
    pub const APP: u8 = 7;
    pub const BOX_MODE: u8 = 8;
    pub const JUMP: u8 = 9;
}

/// `ms` milliseconds of steps, 64 at a time.
fn steps(ms: u32) -> Vec<u8> {
    let mut ops = Vec::new();
    let mut left = ms;
    while left > 0 {
        let step = left.min(64);
        ops.extend_from_slice(&[op::STEP, (step - 1) as u8]);
        left -= step;
    }
    ops
}

/// A connection that sends a request and more, then closes.
fn session(v6: bool) -> Vec<u8> {
    let mut ops = vec![op::CONNECT, u8::from(v6)];
    ops.extend(steps(300));
    ops.extend_from_slice(&[op::APP, 0, 0, 200]);
    ops.extend(steps(200));
    ops.extend_from_slice(&[op::APP, 0, 1, 0]);
    ops.extend(steps(300));
    ops
}

/// A configuration with TLS interception and rules of every kind.
const POLICY_CONFIG: &str = r#"[dataplane]
eal_args = ["--no-huge"]
workers = 2
[ports.client]
device = "net_af_packet0,iface=gwc0"
[ports.server]
device = "0000:03:00.0"
[intercept]
tcp_ports = [443, 8443]
mode = "tls"
[tcp]
timeout_ms = 5000
max_connections = 1000
[tls]
ca_cert = "/etc/tlsgate/ca/ca.pem"
ca_key = "/etc/tlsgate/ca/ca.key"
upstream_trust = "system"
invalid_upstream = "refuse"
fail_open_after = 3
fail_open_window_secs = 60
[[policy]]
action = "bypass"
sni = ["*.bank.example", "pinned.example"]
[[policy]]
action = "block"
dst = ["198.18.9.0/24", "2001:2::/48"]
src = ["198.18.0.1"]
port = [8443]
[[policy]]
action = "intercept"
no_sni = true
[[policy]]
action = "bypass"
when = "non_tls"
[[policy]]
action = "block"
when = "unsupported_tls"
"#;

fn main() {
    // wire: every frame of the pcap fixtures.
    let fixtures = fixture_frames();
    for (stem, frames) in &fixtures {
        for (index, frame) in frames.iter().enumerate() {
            write_seed("wire", &format!("{stem}-{index:02}"), frame);
        }
    }

    // tls_hello: real ClientHellos (and servers' answers), and not TLS.
    let all: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let hellos = [
        ("tls13-h2", client_hello(all, "origin.test", &[b"h2", b"http/1.1"]), all),
        ("tls12-only", client_hello(tls12, "origin.test", &[]), tls12),
        (
            "tls13-only",
            client_hello(tls13, "www.origin.test", &[b"http/1.1"]),
            tls13,
        ),
        ("no-sni", client_hello(all, "198.18.0.2", &[]), all),
    ];
    for (name, hello, versions) in &hellos {
        write_seed("tls_hello", &format!("{name}-whole"), &tls_input(0, 0, hello, &[]));
        write_seed("tls_hello", &format!("{name}-pieces"), &tls_input(7, 1, hello, &[]));
        let flight = server_flight(hello, versions);
        write_seed(
            "tls_hello",
            &format!("{name}-answered"),
            &tls_input(0, 0, hello, &flight),
        );
    }
    write_seed(
        "tls_hello",
        "http",
        &tls_input(0, 0, b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n", &[]),
    );
    // An SSL 3.0 record with a TLS 1.0 ClientHello header, truncated.
    write_seed(
        "tls_hello",
        "tls10-record",
        &tls_input(0, 0, &[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x03], &[]),
    );

    // config: the shipped configurations.
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    for path in files_in(&configs) {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        write_seed("config", &name, &std::fs::read(&path).unwrap());
    }

    appliance::Config::parse(POLICY_CONFIG, Path::new("tls-policy.toml")).unwrap();
    write_seed("config", "tls-policy", POLICY_CONFIG.as_bytes());

    // engine: sessions in each setup, and each kind of operation.
    let tcp_session = &fixtures.iter().find(|(stem, _)| stem == "tcp-session").unwrap().1;
    for (name, setup) in [
        ("plain", 0x00u8),
        ("tls", 0x01),
        ("tls-box", 0x03),
        ("plain-box-rewrite", 0x0a),
        ("tls-box-stopped-fail-open", 0x27),
        ("tls-refuse-hold", 0x51),
    ] {
        let mut input = vec![setup];
        input.extend(session(false));
        write_seed("engine", &format!("{name}-v4"), &input);
        let mut input = vec![setup];
        input.extend(session(true));
        write_seed("engine", &format!("{name}-v6"), &input);
    }
    let mut tampered = vec![0x03];
    tampered.extend_from_slice(&[op::CONNECT, 0]);
    tampered.extend(steps(20));
    tampered.extend_from_slice(&[op::MUTATE, 0, 0, 3, 1, 0, 3, 0, 47, 0x04, 1]);
    tampered.extend_from_slice(&[op::SEGMENT, 2, 0, 2, 1, 0, 0, 0, 10, 5, b'R', b'E', b'S', b'E', b'T']);
    tampered.extend_from_slice(&[op::SEGMENT, 0, 0, 1, 4, 0xff, 0xff, 0, 0, 0]);
    tampered.extend_from_slice(&[op::LOSSY, 1, 20, 30]);
    tampered.extend(steps(200));
    tampered.extend_from_slice(&[op::ORIGIN, op::APP, 0, 0, 100]);
    tampered.extend(steps(100));
    tampered.extend_from_slice(&[op::ORIGIN, op::BOX_MODE, 3, op::APP, 0, 0, 10]);
    tampered.extend(steps(100));
    tampered.extend_from_slice(&[op::JUMP, 5, op::APP, 0, 3, 0]);
    tampered.extend(steps(100));
    write_seed("engine", "tampered", &tampered);
    let mut raw = vec![0x02];
    for (index, frame) in tcp_session.iter().enumerate() {
        raw.extend_from_slice(&[op::RAW, index as u8]);
        raw.extend_from_slice(&u16::try_from(frame.len()).unwrap().to_be_bytes());
        raw.extend_from_slice(frame);
        raw.extend(steps(1));
    }
    write_seed("engine", "raw-tcp-session", &raw);
}
