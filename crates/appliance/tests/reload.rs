//! Live reload in memory (virtual clock): the appliance runs a
//! configuration file loaded as `run` loads it; the file is changed and
//! reloaded through `appliance::reload` (as SIGHUP and `tlsgate reload`
//! do), and the worker's inbox is read between two polls. A transfer
//! running across a reload that blocks its port and replaces the CA stays
//! byte-exact, while the next connection follows the new rules; a session
//! opened before a reload finishes its handshakes with the rules it started
//! under; a configuration that does not load is refused with its file and
//! key, and nothing changes; a reload that changes nothing live leaves the
//! worker's rules alone, while a CA file replaced in place is reloaded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use appliance::reload::{Reloader, WorkerInbox};
use appliance::Config;
use harness::connlog::LogFile;
use harness::tls::{client_tls, origin, try_drive, Scratch};
use harness::{assert_no_leaks, close_both, pattern, v4, Lab, SERVER_V4};
use mitm::CertificateAuthority;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConnection, ServerConfig, ServerConnection};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;

/// The appliance running a configuration file, and what reloads it.
struct Setup {
    lab: Lab,
    reloads: Reloads,
    origin: Arc<ServerConfig>,
    /// The origin's CA (what a client reaching the origin directly trusts).
    origin_ca: CertificateDer<'static>,
    log: LogFile,
    scratch: Scratch,
}

/// The configuration file, its reloader and the worker's inbox.
struct Reloads {
    reloader: Reloader,
    inbox: WorkerInbox,
    config: PathBuf,
}

/// A fresh appliance CA in `dir`: its certificate, and the `[tls]` keys
/// naming its files.
fn new_ca(dir: &Path, name: &str) -> (CertificateDer<'static>, String) {
    let ca = CertificateAuthority::generate(name, 1, time::OffsetDateTime::now_utc()).unwrap();
    let (cert, key) = ca.write(dir).unwrap();
    let keys = format!("ca_cert = \"{}\"\nca_key = \"{}\"\n", cert.display(), key.display());
    (ca.cert_der().clone(), keys)
}

/// The configuration file: TLS interception on 443 and 8443 with `ca`
/// (the `[tls]` keys of [`new_ca`]), then `rules`.
fn write_config(setup_dir: &Path, ca: &str, rules: &str) -> PathBuf {
    let dir = setup_dir.display();
    let text = format!(
        "[dataplane]\n[ports.client]\ndevice = \"net_ring0\"\n[ports.server]\ndevice = \"net_ring1\"\n\
         [intercept]\ntcp_ports = [443, 8443]\nmode = \"tls\"\n\
         [tcp]\nrx_buffer = 65536\ntx_buffer = 65536\n\
         [tls]\n{ca}upstream_trust = \"{dir}/trust.pem\"\n\
         [log]\nconnections = \"{dir}/connections.jsonl\"\n{rules}"
    );
    let path = setup_dir.join("tlsgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The appliance loaded from a configuration with CA 1 and no rule, as
/// `run` loads it (preflight, then one TLS context per worker).
fn setup(name: &str) -> (Setup, CertificateDer<'static>) {
    let scratch = Scratch::new(name);
    let (origin, origin_pem) = origin();
    std::fs::write(scratch.0.join("trust.pem"), &origin_pem).unwrap();
    let origin_ca = CertificateDer::from_pem_slice(origin_pem.as_bytes()).unwrap();
    let (ca, ca_keys) = new_ca(&scratch.0.join("ca1"), "tlsgate test CA 1");
    let config = write_config(&scratch.0, &ca_keys, "");
    let running = Config::load(&config).unwrap();
    let appliance::Preflight {
        policy: intercept,
        services,
    } = appliance::preflight(&running).unwrap();
    let log = LogFile::open(scratch.0.join("connections.jsonl"));
    let (reloader, mut inboxes) = Reloader::new(
        &running,
        Arc::new(services),
        Arc::clone(intercept.rules.learned()),
        None,
        Some(Arc::clone(&log.log)),
        log.writer().clone(),
        1,
    );
    let context = intercept.tls_context().unwrap().unwrap();
    let connection_log = Arc::clone(&log.log);
    let lab = Lab::with_engine(&intercept, |engine| {
        engine.with_tls(context).with_connection_log(connection_log)
    });
    let setup = Setup {
        lab,
        reloads: Reloads {
            reloader,
            inbox: inboxes.remove(0),
            config,
        },
        origin,
        origin_ca,
        log,
        scratch,
    };
    (setup, ca)
}

/// An HTTPS download from the origin through the appliance, moved on a
/// step at a time.
struct Download {
    socket: SocketHandle,
    listener: SocketHandle,
    client: ClientConnection,
    server: ServerConnection,
    request: Vec<u8>,
    response: Vec<u8>,
    at_server: Vec<u8>,
    at_client: Vec<u8>,
    answered: bool,
    /// The client's TLS error, if its handshake failed.
    failed: Option<rustls::Error>,
}

impl Download {
    /// Connects from `local_port` to `port` with a client trusting
    /// `trusted`; the request goes once the connection is open.
    fn start(
        lab: &mut Lab,
        origin: &Arc<ServerConfig>,
        port: u16,
        local_port: u16,
        trusted: &CertificateDer<'static>,
        body: usize,
    ) -> Download {
        // The origin's records go into its socket at once.
        let listener = lab.server.listen(port, body + 64 * 1024);
        let socket = lab.client.connect(v4(SERVER_V4, port), local_port, 256 * 1024);
        let mut server = ServerConnection::new(Arc::clone(origin)).unwrap();
        server.set_buffer_limit(None);
        let mut client = client_tls(trusted);
        let request = format!("GET /{port}/{local_port} HTTP/1.1\r\nHost: origin.test\r\n\r\n").into_bytes();
        client.writer().write_all(&request).unwrap();
        let body = pattern(body, local_port as u8);
        let mut response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        response.extend_from_slice(&body);
        Download {
            socket,
            listener,
            client,
            server,
            request,
            response,
            at_server: Vec::new(),
            at_client: Vec::new(),
            answered: false,
            failed: None,
        }
    }

    /// Moves the TLS records of both ends once.
    fn step(&mut self, lab: &mut Lab) {
        if self.failed.is_none() && lab.client.tcp(self.socket).state() == State::Established {
            if let Err(err) = try_drive(&mut lab.client, self.socket, &mut self.client, &mut self.at_client) {
                self.failed = Some(err);
            }
        }
        if lab.server.tcp(self.listener).state() == State::Established {
            // The origin's own failures show at the client.
            let _ = try_drive(&mut lab.server, self.listener, &mut self.server, &mut self.at_server);
        }
        if self.at_server == self.request && !self.answered {
            self.answered = true;
            self.server.writer().write_all(&self.response).unwrap();
        }
    }

    fn done(&self) -> bool {
        self.at_client.len() >= self.response.len()
    }

    /// Runs until the response arrived (whatever `during` does meanwhile,
    /// each millisecond), and checks it is byte-exact.
    fn finish(&mut self, lab: &mut Lab, mut during: impl FnMut(&mut Lab, usize)) {
        let done = lab.run_until(30_000, |lab| {
            self.step(lab);
            during(lab, self.at_client.len());
            self.done() || self.failed.is_some()
        });
        assert!(
            done && self.failed.is_none(),
            "{} of {} response bytes, {:?}",
            self.at_client.len(),
            self.response.len(),
            self.failed
        );
        assert!(self.at_client == self.response, "the response arrived byte-exact");
        close_both(lab, self.socket, self.listener);
    }

    /// Runs until the client's TLS handshake failed; returns the error.
    fn failure(&mut self, lab: &mut Lab) -> rustls::Error {
        let failed = lab.run_until(10_000, |lab| {
            self.step(lab);
            self.failed.is_some()
        });
        assert!(failed, "the handshake went through: {} bytes", self.at_client.len());
        self.failed.clone().unwrap()
    }
}

impl Reloads {
    /// Rewrites the configuration with `ca` and `rules` and reloads it;
    /// the worker of `lab` takes the new rules (between two polls).
    fn reload(&self, lab: &mut Lab, ca: &str, rules: &str) -> appliance::ReloadOutcome {
        write_config(self.config.parent().unwrap(), ca, rules);
        let outcome = self.reloader.reload(&self.config).unwrap();
        assert!(self.inbox.apply_to(&mut lab.engine), "the worker took the new rules");
        outcome
    }
}

impl Setup {
    fn records(&mut self, count: usize) -> Vec<serde_json::Value> {
        let log = &self.log;
        let written = self.lab.run_until(30_000, |_| log.records().len() >= count);
        assert!(written, "{:?}", log.records());
        log.records()
    }
}

#[test]
fn a_policy_change_mid_transfer_leaves_the_transfer_byte_exact_and_the_next_connection_follows_it() {
    let (mut setup, ca1) = setup("reload-mid-transfer");
    let (ca2, ca2_keys) = new_ca(&setup.scratch.0.join("ca2"), "tlsgate test CA 2");
    let origin = Arc::clone(&setup.origin);

    // A 1 MiB download on port 8443, intercepted with CA 1; a quarter of
    // the way, port 8443 is blocked and CA 2 replaces CA 1.
    let mut running = Download::start(&mut setup.lab, &origin, 8443, 40_001, &ca1, 1 << 20);
    let mut reloaded = None;
    let reloads = &setup.reloads;
    running.finish(&mut setup.lab, |lab, arrived| {
        if arrived >= 256 * 1024 && reloaded.is_none() {
            reloaded = Some(reloads.reload(lab, &ca2_keys, "[[policy]]\naction = \"block\"\nport = [8443]\n"));
        }
    });
    let outcome = reloaded.expect("reloaded mid-transfer");
    assert_eq!(outcome.generation, 1);
    assert_eq!(outcome.applied, ["policy", "tls.ca_cert", "tls.ca_key"]);
    assert!(outcome.needs_restart.is_empty(), "{outcome:?}");

    // The next connection to 8443 is refused at its SYN.
    let blocked = setup.lab.client.connect(v4(SERVER_V4, 8443), 40_002, 64 * 1024);
    let refused = setup
        .lab
        .run_until(2_000, |lab| lab.client.tcp(blocked).state() == State::Closed);
    assert!(refused, "client {:?}", setup.lab.client.tcp(blocked).state());
    assert_eq!(setup.lab.engine.splicer().counters().blocked, 1);
    // One to 443 gets a certificate forged by CA 2: a client trusting
    // only CA 1 rejects it, one trusting CA 2 downloads.
    let mut old_ca = Download::start(&mut setup.lab, &origin, 443, 40_003, &ca1, 1024);
    assert!(
        matches!(old_ca.failure(&mut setup.lab), rustls::Error::InvalidCertificate(_)),
        "{:?}",
        old_ca.failed
    );
    setup.lab.client.tcp(old_ca.socket).abort();
    Download::start(&mut setup.lab, &origin, 443, 40_004, &ca2, 64 * 1024).finish(&mut setup.lab, |_, _| {});

    let records = setup.records(4);
    let of = |port: u16| records.iter().find(|record| record["src_port"] == port).unwrap();
    assert_eq!(of(40_001)["decision"], "intercept", "{records:?}");
    assert_eq!(of(40_001)["ended"], "closed", "{records:?}");
    assert_eq!(of(40_002)["decision"], "block", "{records:?}");
    assert!(
        of(40_002)["reason"].as_str().unwrap().contains("policy rule 1"),
        "{records:?}"
    );
    assert_eq!(of(40_004)["decision"], "intercept", "{records:?}");
    assert_eq!(setup.reloads.reloader.totals().ok, 1);
    assert_no_leaks(&mut setup.lab);
}

#[test]
fn a_session_opened_before_a_reload_finishes_its_handshakes_with_the_rules_it_started_under() {
    let (mut setup, ca1) = setup("reload-handshake");
    let (_, ca2_keys) = new_ca(&setup.scratch.0.join("ca2"), "tlsgate test CA 2");
    let origin = Arc::clone(&setup.origin);
    let origin_ca = setup.origin_ca.clone();
    // Its TCP connection is open, its ClientHello not sent yet.
    let mut early = Download::start(&mut setup.lab, &origin, 443, 40_011, &ca1, 64 * 1024);
    let open = setup
        .lab
        .run_until(2_000, |lab| lab.client.tcp(early.socket).state() == State::Established);
    assert!(open);

    // Port 443 bypassed from now on, and CA 2 in force.
    setup.reloads.reload(
        &mut setup.lab,
        &ca2_keys,
        "[[policy]]\naction = \"bypass\"\nport = [443]\n",
    );
    // The early session is still intercepted with CA 1 ...
    early.finish(&mut setup.lab, |_, _| {});
    // ... while the next connection is bypassed: its client sees the
    // origin's own certificate.
    Download::start(&mut setup.lab, &origin, 443, 40_012, &origin_ca, 64 * 1024).finish(&mut setup.lab, |_, _| {});

    let records = setup.records(2);
    let of = |port: u16| records.iter().find(|record| record["src_port"] == port).unwrap();
    assert_eq!(of(40_011)["decision"], "intercept", "{records:?}");
    assert_eq!(of(40_012)["decision"], "bypass", "{records:?}");
    // The first generation's forging is still counted after it went.
    assert_eq!(setup.lab.engine.splicer().forge_counters().misses, 1);
    assert_no_leaks(&mut setup.lab);
}

#[test]
fn a_configuration_that_does_not_load_is_refused_and_the_running_one_stays() {
    let (mut setup, ca1) = setup("reload-refused");
    let ca1_keys = format!(
        "ca_cert = \"{0}/ca1/ca.pem\"\nca_key = \"{0}/ca1/ca.key\"\n",
        setup.scratch.0.display()
    );
    let missing_key = ca1_keys.replace("ca1/ca.key", "ca1/missing.key");
    for (ca, rules, named) in [
        // A CA key that is not there.
        (missing_key.as_str(), "", vec!["tls.ca_cert, tls.ca_key", "missing.key"]),
        // A rule that does not parse.
        (
            ca1_keys.as_str(),
            "[[policy]]\naction = \"block\"\ndst = [\"nowhere\"]\n",
            vec!["policy[1].dst", "nowhere"],
        ),
    ] {
        let reloads = &setup.reloads;
        write_config(&setup.scratch.0, ca, rules);
        let err = reloads.reloader.reload(&reloads.config).unwrap_err();
        let text = appliance::error_text(&err);
        assert!(text.contains(&reloads.config.display().to_string()), "{text}");
        for name in named {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
        assert!(
            !reloads.inbox.apply_to(&mut setup.lab.engine),
            "nothing reached the worker"
        );
    }
    assert_eq!(setup.reloads.reloader.totals().refused, 2);
    assert_eq!(setup.reloads.reloader.totals().ok, 0);

    // Still intercepted with CA 1, port 8443 included.
    let origin = Arc::clone(&setup.origin);
    Download::start(&mut setup.lab, &origin, 8443, 40_021, &ca1, 64 * 1024).finish(&mut setup.lab, |_, _| {});
    let records = setup.records(1);
    assert_eq!(records[0]["decision"], "intercept", "{records:?}");

    // A change only a restart applies is named, and left as it is.
    let config = write_config(&setup.scratch.0, &ca1_keys, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("rx_buffer = 65536", "rx_buffer = 131072");
    std::fs::write(&config, text).unwrap();
    let outcome = setup.reloads.reloader.reload(&config).unwrap();
    assert_eq!(outcome.needs_restart, ["tcp.rx_buffer"]);
    assert!(outcome.applied.is_empty(), "{outcome:?}");
    // Nothing live changed: the worker keeps its rules (and its caches).
    assert_eq!(outcome.generation, 0);
    assert!(!setup.reloads.inbox.apply_to(&mut setup.lab.engine));

    // A CA replaced in place (same paths) is a change: the next connection
    // gets certificates from the new one.
    let (ca3, _) = new_ca(&setup.scratch.0.join("ca3"), "tlsgate test CA 3");
    for file in ["ca.pem", "ca.key"] {
        std::fs::rename(
            setup.scratch.0.join("ca3").join(file),
            setup.scratch.0.join("ca1").join(file),
        )
        .unwrap();
    }
    let outcome = setup.reloads.reloader.reload(&config).unwrap();
    assert_eq!(outcome.generation, 1, "{outcome:?}");
    assert!(setup.reloads.inbox.apply_to(&mut setup.lab.engine));
    Download::start(&mut setup.lab, &origin, 443, 40_022, &ca3, 1024).finish(&mut setup.lab, |_, _| {});
    assert_no_leaks(&mut setup.lab);
}
