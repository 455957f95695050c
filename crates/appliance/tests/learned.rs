//! Learned bypasses through the whole appliance, in memory: rustls clients
//! and origins on the lab's hosts, the engine intercepting TLS. Neither a
//! server that asks for a client certificate nor clients that reject
//! certificates can switch inspection off beyond what the rules allow: only
//! a server that proved its name is learned from, only for its own address
//! and port, fail-open needs several distinct clients, the mirror
//! certificate never counts, and what was learned expires.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod harness;

use std::sync::Arc;

use appliance::engine::InterceptPolicy;
use appliance::learned::{LearnedSettings, LearnedStore, LearnedTotals};
use appliance::policy::{Policy, PolicyRules};
use harness::tls::{provider, try_drive};
use harness::{policy, v4, Lab, SERVER_V4};
use mitm::{CertificateAuthority, Forger, InvalidUpstream, TlsContext, UpstreamTrust};
use netstack::Duration;
use rcgen::{CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use smoltcp::socket::tcp::State;

/// A CA that issues origin certificates.
struct Authority {
    params: CertificateParams,
    key: KeyPair,
    cert: CertificateDer<'static>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Authority {
            cert: cert.der().clone(),
            pem: cert.pem(),
            params,
            key,
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        roots
    }

    /// An origin for `name` with a certificate from this CA; with
    /// `client_auth`, it requires a client certificate (from this CA).
    fn origin(&self, name: &str, client_auth: bool) -> Arc<ServerConfig> {
        let issuer = rcgen::Issuer::new(self.params.clone(), &self.key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let leaf = params.signed_by(&key, &issuer).unwrap();
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()), provider())
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(
                vec![leaf.der().clone(), self.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        Arc::new(config)
    }
}

/// The appliance and the parties around it.
struct Setup {
    lab: Lab,
    /// The appliance CA: clients that trust it accept what it forges.
    appliance_ca: RootCertStore,
    /// The CA the appliance trusts for real servers.
    real: Authority,
    /// A CA nobody trusts but the attacker's own clients.
    attacker: Authority,
    /// A fresh local port for each connection.
    next_port: u16,
    _scratch: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._scratch);
    }
}

/// Intercepts TLS on ports 443 and 8443 with `invalid` for servers whose
/// certificate does not verify, and `learned` shared by the policy.
fn setup(name: &str, invalid: InvalidUpstream, learned: LearnedSettings) -> Setup {
    let scratch = std::env::temp_dir().join(format!("appliance-learned-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let real = Authority::new("Real Root");
    let attacker = Authority::new("Attacker Root");
    let bundle = scratch.join("trust.pem");
    std::fs::write(&bundle, &real.pem).unwrap();
    let ca = CertificateAuthority::generate("tlsgate test CA", 1, time::OffsetDateTime::now_utc()).unwrap();
    let mut appliance_ca = RootCertStore::empty();
    appliance_ca.add(ca.cert_der().clone()).unwrap();
    let context = TlsContext::new(
        Forger::new(ca, None, 16).unwrap(),
        UpstreamTrust::from_bundle(&bundle).unwrap(),
        invalid,
        None,
        mitm::WallClock::new(time::OffsetDateTime::now_utc()),
    )
    .unwrap();
    let intercept = InterceptPolicy {
        rules: Policy::new(&PolicyRules::default(), Arc::new(LearnedStore::new(learned)), true).unwrap(),
        ..policy(&[443, 8443])
    };
    let mut lab = Lab::with_engine(&intercept, |engine| engine.with_tls(context));
    lab.client.second_v4_for_v6([198, 18, 0, 3]);
    Setup {
        lab,
        appliance_ca,
        real,
        attacker,
        next_port: 40_000,
        _scratch: scratch,
    }
}

impl Setup {
    /// One TLS connection from the client address ending in `client` to
    /// `port` of the server, for `name`: the client trusts `roots`, the
    /// origin answers with `origin`. Ok once the client's handshake is
    /// done, else why it failed.
    fn connect(
        &mut self,
        client: u8,
        port: u16,
        name: &str,
        roots: &RootCertStore,
        origin: &Arc<ServerConfig>,
    ) -> Result<(), String> {
        let lab = &mut self.lab;
        self.next_port += 1;
        let listener = lab.server.listen(port, 64 * 1024);
        let socket = lab
            .client
            .connect_from(v4(SERVER_V4, port), v4([198, 18, 0, client], self.next_port), 64 * 1024);
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let mut tls = ClientConnection::new(Arc::new(config), ServerName::try_from(name.to_owned()).unwrap()).unwrap();
        let mut server = ServerConnection::new(Arc::clone(origin)).unwrap();
        let mut outcome: Option<Result<(), String>> = None;
        let mut server_failed = false;
        // Once the client knows, both ends go on for a while, so that an
        // alert reaches the appliance, and the origin's answer to the
        // client's last flight (a missing client certificate) too.
        let mut settled_at = None;
        lab.run_until(5_000, |lab| {
            let state = lab.client.tcp(socket).state();
            if state == State::SynSent {
                return false;
            }
            if outcome.is_none() {
                if let Err(err) = try_drive(&mut lab.client, socket, &mut tls, &mut Vec::new()) {
                    outcome = Some(Err(format!("client: {err}")));
                } else if !tls.is_handshaking() {
                    outcome = Some(Ok(()));
                } else if matches!(state, State::Closed | State::TimeWait) {
                    outcome = Some(Err(format!("connection {state}")));
                }
            }
            if !server_failed && lab.server.tcp(listener).state() == State::Established {
                server_failed = try_drive(&mut lab.server, listener, &mut server, &mut Vec::new()).is_err();
            }
            if outcome.is_some() && settled_at.is_none() {
                settled_at = Some(lab.now + Duration::from_millis(50));
            }
            settled_at.is_some_and(|at| lab.now >= at)
        });
        // Done with it: both ends reset, the appliance's legs with them.
        lab.client.tcp(socket).abort();
        lab.server.tcp(listener).abort();
        lab.run_for(50);
        lab.client.sockets.remove(socket);
        lab.server.sockets.remove(listener);
        outcome.unwrap_or_else(|| Err("no outcome within 5 s".into()))
    }

    /// What the policy learned so far.
    fn learned(&self) -> LearnedTotals {
        self.lab.engine.splicer().policy().learned().totals()
    }

    /// Whether a client that trusts only the appliance CA is intercepted
    /// (it accepts the forged certificate) at `port` for `name`.
    fn intercepted(&mut self, client: u8, port: u16, name: &str, origin: &Arc<ServerConfig>) -> bool {
        let roots = self.appliance_ca.clone();
        self.connect(client, port, name, &roots, origin).is_ok()
    }
}

fn short_ttl() -> LearnedSettings {
    LearnedSettings {
        ttl: Duration::from_secs(60),
        ..LearnedSettings::default()
    }
}

#[test]
fn a_server_asking_for_a_client_certificate_teaches_only_about_its_own_verified_destination() {
    let mut s = setup("client-auth", InvalidUpstream::Refuse, short_ttl());
    let bank = s.real.origin("bank.test", false);
    // An attacker's server at 8443 says it is bank.test, cannot prove it,
    // and asks for a client certificate: the handshake fails, nothing is
    // learned, and bank.test stays intercepted everywhere.
    let attacker_mtls = s.attacker.origin("bank.test", true);
    let attacker_roots = s.attacker.roots();
    for _ in 0..3 {
        assert!(s
            .connect(1, 8443, "bank.test", &attacker_roots, &attacker_mtls)
            .is_err());
    }
    assert_eq!(s.learned(), LearnedTotals::default());
    assert!(
        s.intercepted(3, 443, "bank.test", &bank),
        "bank.test at 443 is intercepted"
    );
    let attacker_plain = s.attacker.origin("bank.test", false);
    assert!(
        s.connect(1, 8443, "bank.test", &attacker_roots, &attacker_plain)
            .is_err(),
        "the attacker's server is not bypassed: the client never sees its certificate"
    );

    // A real mTLS server for bank.test at 8443 proves its name: that
    // destination (and only that one) is bypassed, for the time to live.
    let real_mtls = s.real.origin("bank.test", true);
    let appliance_ca = s.appliance_ca.clone();
    // (Over TLS 1.3 the client's handshake ends before the origin refuses.)
    let _ = s.connect(1, 8443, "bank.test", &appliance_ca, &real_mtls);
    let learned = s.learned();
    assert_eq!((learned.live, learned.added_client_auth), (1, 1));
    let real_roots = s.real.roots();
    let real_plain = s.real.origin("bank.test", false);
    assert!(
        s.connect(3, 8443, "bank.test", &real_roots, &real_plain).is_ok(),
        "bypassed: the client sees the real certificate"
    );
    assert!(
        s.intercepted(3, 443, "bank.test", &bank),
        "other ports of the name are not"
    );
    assert!(s.intercepted(1, 8443, "other.test", &s.real.origin("other.test", false)));
    let listed = s.lab.engine.splicer().policy().learned().list(s.lab.now);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].destination.to_string(), "bank.test at 198.18.0.2:8443");

    // On the virtual clock the entry expires after 60 s: intercepted again.
    s.lab.run_for(60_000);
    assert!(s.intercepted(3, 8443, "bank.test", &real_plain));
    let learned = s.learned();
    assert_eq!((learned.live, learned.expired), (0, 1));
}

#[test]
fn one_client_rejecting_or_any_number_rejecting_the_mirror_does_not_fail_open() {
    // Two distinct clients fail open here (the lab has two client addresses).
    let two_clients = LearnedSettings {
        fail_open_clients: 2,
        ..LearnedSettings::default()
    };
    let mut s = setup("fail-open", InvalidUpstream::Mirror, two_clients);
    let bank = s.real.origin("bank.test", false);
    let pinning = s.real.roots();
    // One client pins the real certificate and rejects the forged one, four
    // times: a second client is still intercepted, and so is the first.
    for attempt in 1..=4 {
        let outcome = s.connect(1, 443, "bank.test", &pinning, &bank);
        let error = outcome.expect_err("the forged certificate is rejected");
        assert!(error.contains("UnknownIssuer"), "attempt {attempt}: {error}");
    }
    assert!(
        s.intercepted(3, 443, "bank.test", &bank),
        "a second client is intercepted"
    );
    assert!(s.connect(1, 443, "bank.test", &pinning, &bank).is_err());
    assert_eq!((s.learned().live, s.learned().pending_live), (0, 1));

    // Clients shown the mirror certificate (the origin does not verify)
    // are meant to reject it: distinct clients doing so teach nothing.
    let evil = s.attacker.origin("evil.test", false);
    let attacker_roots = s.attacker.roots();
    for client in [1, 3, 1, 3] {
        assert!(
            !s.intercepted(client, 8443, "evil.test", &evil),
            "the mirror is rejected"
        );
    }
    assert!(
        s.connect(1, 8443, "evil.test", &attacker_roots, &evil).is_err(),
        "still the mirror: the attacker's own certificate never reaches the client"
    );
    assert_eq!(s.learned().pending_live, 1, "only bank.test's rejection counts");

    // A second distinct client pinning bank.test: that destination fails open.
    assert!(s.connect(3, 443, "bank.test", &pinning, &bank).is_err());
    let learned = s.learned();
    assert_eq!((learned.live, learned.added_fail_open, learned.pending_live), (1, 1, 0));
    assert!(s.connect(1, 443, "bank.test", &pinning, &bank).is_ok(), "bypassed now");
}

#[test]
fn a_full_table_forgets_the_least_recently_used_destination() {
    let two_entries = LearnedSettings {
        max_entries: 2,
        ..LearnedSettings::default()
    };
    let mut s = setup("bounded", InvalidUpstream::Refuse, two_entries);
    let appliance_ca = s.appliance_ca.clone();
    let real_roots = s.real.roots();
    // Three real mTLS servers (by name, at 8443) in turn: each is learned.
    for name in ["a.test", "b.test", "c.test"] {
        let _ = s.connect(1, 8443, name, &appliance_ca, &s.real.origin(name, true));
    }
    let learned = s.learned();
    assert_eq!((learned.live, learned.added_client_auth, learned.evicted), (2, 3, 1));
    // The oldest went: intercepted again; the newest is still bypassed.
    assert!(s.intercepted(1, 8443, "a.test", &s.real.origin("a.test", false)));
    assert!(s
        .connect(1, 8443, "c.test", &real_roots, &s.real.origin("c.test", false))
        .is_ok());
}
