//! An appliance and a load generator wired together in memory (used by the
//! tests and the worker-scaling example): the generator's two sides on
//! in-memory ports of an `Engine` that intercepts TLS on 443, with an
//! origin certificate the appliance trusts and an appliance CA the clients
//! trust, on a virtual clock. Optionally a second generator plays the
//! origins (with its own plan) while the first one's clients connect.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use appliance::clock::{EngineStart, WallAnchor};
use appliance::engine::{Engine, EngineStats, InterceptPolicy};
use loadgen::{Generator, Hold, Plan, CLIENT_SIDE, SERVER_SIDE};
use mitm::{CertificateAuthority, Forger, InvalidUpstream, TlsContext, UpstreamTrust};
use netstack::{Duration, Instant, OutFrame, StackConfig};
use port::{MemPort, MemPortControl};
use rcgen::{CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `connections` from 198.18.1.0/24 to 198.18.0.2:443 at 5000/s, held or
/// closed as `hold` says, with nothing sent: tests add what they send.
pub fn plan(connections: u64, hold: Hold) -> Plan {
    let mut plan = Plan::new(
        &["198.18.1.0/24"],
        &["198.18.0.2:443".parse().unwrap()],
        connections,
        5_000,
    )
    .unwrap();
    plan.hold = hold;
    plan
}

pub struct Bench {
    pub now: Instant,
    pub generator: Generator,
    /// When set, this generator's server side answers on the server port
    /// (and what its own clients send is dropped); otherwise `generator`'s.
    pub origin: Option<Generator>,
    pub engine: Engine<MemPort>,
    /// The other ends of the engine's client and server ports.
    pub client_port: MemPortControl,
    pub server_port: MemPortControl,
    pub stats: EngineStats,
    out: Vec<OutFrame>,
    _dir: Dir,
}

pub struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bench(name: &str, plan: Plan) -> Bench {
    bench_with_origin(name, plan, None)
}

/// A bench whose origins are a second generator's server side, run with
/// `origin_plan`.
pub fn bench_with_origin(name: &str, plan: Plan, origin_plan: Option<Plan>) -> Bench {
    build(name, plan, origin_plan, 8 * 1024, 8 * 1024)
}

/// A bench whose appliance and generator flows have socket buffers (receive
/// and send, each) of the given sizes.
pub fn bench_with_buffers(name: &str, plan: Plan, appliance_buffer: usize, generator_buffer: usize) -> Bench {
    build(name, plan, None, appliance_buffer, generator_buffer)
}

fn build(name: &str, plan: Plan, origin_plan: Option<Plan>, appliance_buffer: usize, generator_buffer: usize) -> Bench {
    // The origin's own CA and certificate (what the appliance verifies).
    let origin_key = KeyPair::generate().unwrap();
    let mut origin_ca = CertificateParams::default();
    origin_ca
        .distinguished_name
        .push(DnType::CommonName, "Loadgen Origin Root");
    origin_ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let origin_ca_cert = origin_ca.self_signed(&origin_key).unwrap();
    let issuer = rcgen::Issuer::new(origin_ca, &origin_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["origin.test".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "origin.test");
    leaf.subject_alt_names
        .push(SanType::IpAddress("198.18.0.2".parse().unwrap()));
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), origin_ca_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();

    // The appliance: its CA, trusting the origin's CA.
    let dir = Dir(std::env::temp_dir().join(format!("loadgen-{name}-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let bundle = dir.0.join("origin-ca.pem");
    std::fs::write(&bundle, origin_ca_cert.pem()).unwrap();
    let ca = CertificateAuthority::generate("tlsgate loadgen CA", 1, time::OffsetDateTime::now_utc()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let context = TlsContext::new(
        Forger::new(ca, None, 16).unwrap(),
        UpstreamTrust::from_bundle(&bundle).unwrap(),
        InvalidUpstream::Refuse,
        None,
        mitm::WallClock::new(time::OffsetDateTime::now_utc()),
    )
    .unwrap();
    let client_config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let stack = |buffer| StackConfig {
        rx_buffer: buffer,
        tx_buffer: buffer,
        timeout: Duration::from_secs(5),
        max_flows: 100_000,
        ..StackConfig::default()
    };
    let policy = InterceptPolicy {
        tcp_ports: vec![443],
        stack: stack(appliance_buffer),
        hold_synack: true,
        ..InterceptPolicy::default()
    };
    let (client, client_port) = MemPort::new([2, 0, 0, 0, 0, 0xc]);
    let (server, server_port) = MemPort::new([2, 0, 0, 0, 0, 0x5]);
    let stats = EngineStats::default();
    let start = EngineStart {
        now: Instant::ZERO,
        wall: WallAnchor::new(std::time::SystemTime::now()),
        seed: 1,
    };
    let engine = Engine::new(client, server, stats.clone(), 64, &policy, start).with_tls(context);
    let (client_config, server_config) = (Arc::new(client_config), Arc::new(server_config));
    let generator = Generator::new(
        plan,
        stack(generator_buffer),
        Arc::clone(&client_config),
        Arc::clone(&server_config),
        Instant::ZERO,
        2,
    )
    .unwrap();
    let origin = origin_plan.map(|plan| {
        Generator::new(
            plan,
            stack(generator_buffer),
            client_config,
            server_config,
            Instant::ZERO,
            3,
        )
        .unwrap()
    });
    Bench {
        now: Instant::ZERO,
        generator,
        origin,
        engine,
        client_port,
        server_port,
        stats,
        out: Vec::new(),
        _dir: dir,
    }
}

impl Bench {
    /// One millisecond: the generator's frames to the appliance and back.
    pub fn step(&mut self) {
        self.step_around_engine(|poll| poll());
    }

    /// One millisecond, the engine's polls run through `around` (which may
    /// measure them: it must call it once).
    pub fn step_around_engine(&mut self, around: impl FnOnce(&mut dyn FnMut())) {
        self.generator.poll(self.now);
        self.generator.drain_output(&mut self.out);
        if let Some(origin) = &mut self.origin {
            origin.poll(self.now);
            // Only the second generator's origins take part.
            self.out.retain(|frame| frame.port == CLIENT_SIDE);
            let from_clients = self.out.len();
            origin.drain_output(&mut self.out);
            let mut index = 0;
            self.out.retain(|frame| {
                index += 1;
                index <= from_clients || frame.port == SERVER_SIDE
            });
        }
        for frame in self.out.drain(..) {
            match frame.port {
                CLIENT_SIDE => self.client_port.inject(frame.frame),
                _ => self.server_port.inject(frame.frame),
            }
        }
        let (engine, now) = (&mut self.engine, self.now);
        around(&mut || while engine.poll(now) > 0 {});
        for frame in self.client_port.take_transmitted() {
            self.generator.receive(CLIENT_SIDE, &frame, self.now);
        }
        let origin = self.origin.as_mut().unwrap_or(&mut self.generator);
        for frame in self.server_port.take_transmitted() {
            origin.receive(SERVER_SIDE, &frame, self.now);
        }
        self.now += Duration::from_millis(1);
    }

    pub fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&Bench) -> bool) -> bool {
        for _ in 0..limit_ms {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Runs until the generator finished (at most `limit_ms`), every step's
    /// engine polls through `around` (see [`Bench::step_around_engine`]).
    pub fn run_until_around_engine(&mut self, limit_ms: u64, mut around: impl FnMut(&mut dyn FnMut())) -> bool {
        for _ in 0..limit_ms {
            if self.generator.finished() {
                return true;
            }
            self.step_around_engine(&mut around);
        }
        self.generator.finished()
    }
}
