//! TLS interception in memory: a rustls client that trusts only the
//! appliance CA ⇄ [`TlsSession`] ⇄ a rustls origin whose certificate comes
//! from its own CA. No sockets: the test moves the bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::sync::Arc;

use mitm::{
    CertificateAuthority, Forger, InvalidUpstream, Pending, Rejection, TlsContext, TlsSession, UpstreamTrust, WallClock,
};
use rcgen::{CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use time::{Duration, OffsetDateTime};

struct Origin {
    ca_pem: String,
    config: Arc<ServerConfig>,
    /// Its certificate chain and key, to build other configs.
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An origin with a certificate for `names` from its own CA, valid from
/// `not_before` to `not_after` relative to now (in days).
fn origin(names: &[&str], valid_days: (i64, i64), alpn: &[&str]) -> Origin {
    origin_with(names, valid_days, alpn, rustls::DEFAULT_VERSIONS)
}

/// [`origin`] speaking only `versions`.
fn origin_with(
    names: &[&str],
    valid_days: (i64, i64),
    alpn: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Origin {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Origin Test Root");
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.distinguished_name.push(DnType::OrganizationName, "Origin Inc");
    params
        .subject_alt_names
        .push(SanType::IpAddress("198.18.0.2".parse().unwrap()));
    params.not_before = now + Duration::days(valid_days.0);
    params.not_after = now + Duration::days(valid_days.1);
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    let chain = vec![leaf.der().clone(), ca_cert.der().clone()];
    let key = leaf_key.serialize_der();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Origin {
        ca_pem: ca_cert.pem(),
        config: Arc::new(config),
        chain,
        key,
    }
}

struct Appliance {
    context: TlsContext,
    ca_der: CertificateDer<'static>,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn appliance(trusted_origin_ca: &str, invalid: InvalidUpstream) -> Appliance {
    let dir = std::env::temp_dir().join(format!(
        "mitm-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, trusted_origin_ca).unwrap();
    let ca = CertificateAuthority::generate("tlsgate test CA", 1, OffsetDateTime::now_utc()).unwrap();
    let ca_der = ca.cert_der().clone();
    let forger = Forger::new(ca, None, 16).unwrap();
    let trust = UpstreamTrust::from_bundle(&bundle).unwrap();
    Appliance {
        context: TlsContext::new(forger, trust, invalid, None, WallClock::new(OffsetDateTime::now_utc())).unwrap(),
        ca_der,
        _dir: tempdir::Dir(dir),
    }
}

fn client(
    ca: &CertificateDer<'static>,
    name: &str,
    alpn: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConnection {
    client_at(
        ca,
        name,
        alpn,
        versions,
        Arc::new(rustls::time_provider::DefaultTimeProvider),
    )
}

/// [`client`] living at the date `time` gives.
fn client_at(
    ca: &CertificateDer<'static>,
    name: &str,
    alpn: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
    time: Arc<dyn rustls::time_provider::TimeProvider>,
) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = ClientConfig::builder_with_details(provider(), time)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    ClientConnection::new(Arc::new(config), ServerName::try_from(name.to_owned()).unwrap()).unwrap()
}

/// Moves bytes until nothing moves, collecting the client's plaintext into
/// `received`; returns the first error.
fn pump_into(
    client: &mut ClientConnection,
    session: &mut TlsSession,
    cx: &mut TlsContext,
    origin: &mut ServerConnection,
    received: &mut Vec<u8>,
) -> Result<(), String> {
    for _ in 0..100 {
        let mut moved = false;
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            moved = true;
            session.from_client(&buf).map_err(|e| e.to_string())?;
            if let Some(Pending::Hello { .. }) = session.pending() {
                session.intercept(cx).map_err(|e| e.to_string())?;
            }
        }
        let to_server = std::mem::take(&mut session.queues().to_server);
        if !to_server.is_empty() {
            moved = true;
            let mut input = to_server.as_slice();
            while !input.is_empty() {
                origin.read_tls(&mut input).unwrap();
                origin.process_new_packets().map_err(|e| format!("origin: {e}"))?;
            }
        }
        let mut buf = Vec::new();
        while origin.wants_write() {
            origin.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            moved = true;
            session.from_server(cx, &buf).map_err(|e| e.to_string())?;
        }
        let to_client = std::mem::take(&mut session.queues().to_client);
        if !to_client.is_empty() {
            moved = true;
            let mut input = to_client.as_slice();
            while !input.is_empty() {
                client.read_tls(&mut input).unwrap();
                client.process_new_packets().map_err(|e| format!("client: {e}"))?;
                received.extend(read_all(&mut client.reader()));
            }
        }
        if !moved {
            return Ok(());
        }
    }
    Err("no quiescence".into())
}

fn pump(
    client: &mut ClientConnection,
    session: &mut TlsSession,
    cx: &mut TlsContext,
    origin: &mut ServerConnection,
) -> Result<(), String> {
    let mut ignored = Vec::new();
    pump_into(client, session, cx, origin, &mut ignored)
}

fn read_all(conn: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn intercepts_with_a_forged_certificate_and_the_servers_alpn() {
    let origin_side = origin(&["origin.test"], (-1, 30), &["h2", "http/1.1"]);
    let mut app = appliance(&origin_side.ca_pem, InvalidUpstream::Mirror);
    for round in 0..2 {
        let mut client = client(&app.ca_der, "origin.test", &["h2", "http/1.1"], rustls::ALL_VERSIONS);
        let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
        origin.set_buffer_limit(None);
        let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
        pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
        assert!(!client.is_handshaking(), "client handshake done");
        assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]), "the ALPN the server chose");

        // The client sees a certificate from the appliance CA with the real names.
        let leaf = &client.peer_certificates().unwrap()[0];
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).unwrap();
        assert!(
            parsed.issuer().to_string().contains("tlsgate test CA"),
            "{}",
            parsed.issuer()
        );
        assert!(parsed.subject().to_string().contains("origin.test"));
        assert!(parsed.subject().to_string().contains("Origin Inc"));
        let sans = format!(
            "{:?}",
            parsed.subject_alternative_name().unwrap().unwrap().value.general_names
        );
        assert!(
            sans.contains("origin.test") && sans.contains("198.18.0.2") || sans.contains("[198, 18, 0, 2]"),
            "{sans}"
        );

        // Plaintext both ways, byte-exact.
        client
            .writer()
            .write_all(b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n")
            .unwrap();
        pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
        assert_eq!(
            read_all(&mut origin.reader()),
            b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n"
        );
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        origin.writer().write_all(&body).unwrap();
        let mut received = Vec::new();
        pump_into(&mut client, &mut session, &mut app.context, &mut origin, &mut received).unwrap();
        assert!(
            received == body,
            "{} of {} bytes, or different bytes",
            received.len(),
            body.len()
        );

        let info = &session.info;
        assert_eq!(info.sni.as_deref(), Some("origin.test"));
        assert_eq!(info.alpn.as_deref(), Some("h2"));
        assert_eq!(info.upstream_verified, Some(Ok(())));
        assert_eq!(
            info.forged_cache_hit,
            round == 1,
            "the second connection reuses the forged certificate"
        );
        assert!(info.client_version.is_some() && info.server_version.is_some());
        assert_eq!(info.plaintext_server_to_client, 100_000);

        // Idle again: nothing is kept buffered for this connection.
        session.release_empty_buffers();
        assert_eq!(session.buffer_capacity(), 0, "an idle session holds no buffer");
    }
    let counters = app.context.forger().counters();
    assert_eq!((counters.misses, counters.hits), (1, 1));
}

#[test]
fn the_contexts_clock_dates_the_servers_verification_and_the_forged_certificate() {
    // Valid from a day ago for 30 days, on the machine's clock.
    let origin_side = origin(&["origin.test"], (-1, 30), &[]);
    let today = OffsetDateTime::now_utc();
    for (days, valid) in [(10, true), (60, false)] {
        // The appliance and the client live `days` ahead: the machine's
        // clock plays no part.
        let date = today + Duration::days(days);
        let mut app = appliance(&origin_side.ca_pem, InvalidUpstream::Refuse);
        app.context.clock().set(date);
        let mut client = client_at(
            &app.ca_der,
            "origin.test",
            &[],
            rustls::ALL_VERSIONS,
            Arc::new(WallClock::new(date)),
        );
        let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
        let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
        let outcome = pump(&mut client, &mut session, &mut app.context, &mut origin);
        if !valid {
            let err = outcome.unwrap_err();
            assert!(
                err.contains("not trusted") && err.contains("expired"),
                "day {days}: {err}"
            );
            continue;
        }
        outcome.unwrap();
        let leaf = &client.peer_certificates().unwrap()[0];
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).unwrap();
        assert_eq!(
            parsed.validity().not_before.timestamp(),
            (date - Duration::days(1)).unix_timestamp(),
            "day {days}: valid from a day before the context's date"
        );
    }
}

#[test]
fn tls12_clients_and_clients_without_sni_work() {
    let origin_side = origin(&["origin.test"], (-1, 30), &["http/1.1"]);
    let mut app = appliance(&origin_side.ca_pem, InvalidUpstream::Mirror);
    let mut client = client(&app.ca_der, "origin.test", &["http/1.1"], &[&rustls::version::TLS12]);
    let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
    assert_eq!(client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));

    // No SNI: the client names the server by IP; the forged certificate
    // carries the real certificate's IP address.
    let mut roots = RootCertStore::empty();
    roots.add(app.ca_der.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let ip: std::net::IpAddr = "198.18.0.2".parse().unwrap();
    let mut client = ClientConnection::new(Arc::new(config), ServerName::IpAddress(ip.into())).unwrap();
    let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
    let mut session = TlsSession::new(ip);
    pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
    assert!(!client.is_handshaking());
    assert_eq!(session.info.sni, None);
    assert_eq!(session.info.upstream_verified, Some(Ok(())));
}

#[test]
fn invalid_servers_are_never_hidden() {
    // Unknown issuer (the origin's CA is not trusted), expired, wrong name.
    let untrusted = origin(&["origin.test"], (-1, 30), &[]);
    let expired = origin(&["origin.test"], (-30, -1), &[]);
    let trusted_bundle = expired.ca_pem.clone() + &untrusted.ca_pem;
    let cases: [(&Origin, &str, &str, String); 3] = [
        (
            &untrusted,
            "origin.test",
            "unknown issuer",
            origin(&["x.test"], (-1, 1), &[]).ca_pem,
        ),
        (&expired, "origin.test", "expired", trusted_bundle.clone()),
        (&untrusted, "other.test", "wrong name", trusted_bundle),
    ];
    for (origin_side, name, case, bundle) in cases {
        // Mirror: the client gets a certificate it rejects.
        let mut app = appliance(&bundle, InvalidUpstream::Mirror);
        let mut client = client(&app.ca_der, name, &[], rustls::ALL_VERSIONS);
        let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
        let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
        let outcome = pump(&mut client, &mut session, &mut app.context, &mut origin);
        assert!(
            outcome.is_err(),
            "{case}: the client must reject the mirrored certificate"
        );
        assert!(client.is_handshaking(), "{case}");
        assert!(
            matches!(session.info.upstream_verified, Some(Err(_))),
            "{case}: {:?}",
            session.info.upstream_verified
        );

        // Refuse: the session fails before the client gets any certificate.
        let mut app = appliance(&bundle, InvalidUpstream::Refuse);
        let mut client = crate::client(&app.ca_der, name, &[], rustls::ALL_VERSIONS);
        let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
        let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
        let outcome = pump(&mut client, &mut session, &mut app.context, &mut origin);
        assert!(outcome.unwrap_err().contains("not trusted"), "{case}");
        assert!(client.peer_certificates().is_none(), "{case}");
    }
}

#[test]
fn ca_files_are_written_private_and_exposed_keys_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("mitm-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = CertificateAuthority::generate("tlsgate test CA", 1, OffsetDateTime::now_utc()).unwrap();
    let (cert, key) = ca.write(&dir).unwrap();
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let loaded = CertificateAuthority::load(&cert, &key).unwrap();
    assert_eq!(loaded.summary().sha256_fingerprint, ca.summary().sha256_fingerprint);
    assert!(ca.write(&dir).is_err(), "an existing CA is never overwritten");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = CertificateAuthority::load(&cert, &key).err().unwrap().to_string();
    assert!(refused.contains("chmod 600"), "{refused}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_ca_key_of_another_certificate_is_refused() {
    let dir = std::env::temp_dir().join(format!("mitm-ca-mismatch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let now = OffsetDateTime::now_utc();
    let (cert, _) = CertificateAuthority::generate("one", 1, now)
        .unwrap()
        .write(&dir.join("one"))
        .unwrap();
    let (_, other_key) = CertificateAuthority::generate("two", 1, now)
        .unwrap()
        .write(&dir.join("two"))
        .unwrap();
    let refused = CertificateAuthority::load(&cert, &other_key).err().unwrap();
    assert!(matches!(refused, mitm::MitmError::KeyMismatch { .. }), "{refused}");
    let text = refused.to_string();
    assert!(text.contains("two/ca.key") && text.contains("one/ca.pem"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_client_flooding_before_the_handshake_is_cut_off() {
    let origin_side = origin(&["origin.test"], (-1, 30), &[]);
    let app = appliance(&origin_side.ca_pem, InvalidUpstream::Mirror);
    let mut client = client(&app.ca_der, "origin.test", &[], rustls::ALL_VERSIONS);
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    session.from_client(&hello).unwrap();
    // The upstream handshake has not even started to answer; the client
    // keeps sending.
    let junk = vec![0x17u8; 16 * 1024];
    let outcome = (0..8).try_for_each(|_| session.from_client(&junk));
    assert!(outcome.is_err(), "unbounded buffering before the handshake");
}

#[test]
fn the_caller_decides_after_the_hello_and_can_bypass_with_the_raw_bytes() {
    let origin_side = origin(&["origin.test"], (-1, 30), &["h2"]);
    let app = appliance(&origin_side.ca_pem, InvalidUpstream::Mirror);
    let mut client = client(&app.ca_der, "bank.test", &["h2"], rustls::ALL_VERSIONS);
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    session.from_client(&hello).unwrap();
    assert_eq!(
        session.pending(),
        Some(Pending::Hello {
            sni: Some("bank.test".into()),
            alpn: vec!["h2".into()],
            ech: false,
        })
    );
    assert!(
        session.queues().to_server.is_empty(),
        "nothing goes upstream before the decision"
    );
    assert_eq!(
        session.bypass(),
        hello,
        "a bypass passes on exactly what the client sent"
    );

    // Plain HTTP and an SSLv3/TLS 1.0-only hello are rejected, for the
    // caller to bypass or block; neither is a crash or a hang.
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    session.from_client(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(
        matches!(session.pending(), Some(Pending::Rejected(Rejection::NotTls(_)))),
        "{:?}",
        session.pending()
    );
    // A TLS 1.0 ClientHello (no supported_versions extension, version 0x0301).
    let mut body = vec![0x03, 0x01];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // one suite: TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    session.from_client(&record).unwrap();
    assert!(
        matches!(
            session.pending(),
            Some(Pending::Rejected(Rejection::UnsupportedVersion(_)))
        ),
        "{:?}",
        session.pending()
    );
    assert_eq!(session.bypass(), record);
}

#[test]
fn repeat_clients_resume_on_both_legs() {
    let origin_side = origin(&["origin.test"], (-1, 30), &["http/1.1"]);
    let mut app = appliance(&origin_side.ca_pem, InvalidUpstream::Mirror);
    // One client configuration (with its session cache) used twice, as a
    // browser reconnecting would.
    let mut roots = RootCertStore::empty();
    roots.add(app.ca_der.clone()).unwrap();
    let config = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut resumed = Vec::new();
    for _ in 0..2 {
        let name = ServerName::try_from("origin.test".to_owned()).unwrap();
        let mut client = ClientConnection::new(Arc::clone(&config), name).unwrap();
        let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
        let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
        pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
        // TLS 1.3 tickets arrive after the handshake: let them through.
        client.writer().write_all(b"ping").unwrap();
        pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
        origin.writer().write_all(b"pong").unwrap();
        pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
        assert!(!client.is_handshaking());
        resumed.push((
            matches!(client.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
            session.info.resumed_client,
            session.info.resumed_server,
        ));
    }
    assert_eq!(
        resumed[0],
        (false, false, false),
        "the first connection is a full handshake"
    );
    assert_eq!(
        resumed[1],
        (true, true, true),
        "the second resumes with the client and with the server"
    );
}

#[test]
fn an_intermediate_appliance_ca_with_its_chain_verifies_against_the_root() {
    // root -> intermediate -> appliance CA; the client trusts only the root.
    let dir = std::env::temp_dir().join(format!("mitm-chain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca_params = |name: &str| {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
    };
    let root_key = KeyPair::generate().unwrap();
    let root = ca_params("Lab Root").self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(ca_params("Lab Root"), &root_key);
    let middle_key = KeyPair::generate().unwrap();
    let middle = ca_params("Lab Intermediate")
        .signed_by(&middle_key, &root_issuer)
        .unwrap();
    let middle_issuer = rcgen::Issuer::new(ca_params("Lab Intermediate"), &middle_key);
    let appliance_key = KeyPair::generate().unwrap();
    let appliance_ca = ca_params("tlsgate intermediate CA")
        .signed_by(&appliance_key, &middle_issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), appliance_ca.pem()).unwrap();
    std::fs::write(dir.join("chain.pem"), middle.pem()).unwrap();
    let key_path = dir.join("ca.key");
    std::fs::write(&key_path, appliance_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let origin_side = origin(&["origin.test"], (-1, 30), &[]);
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, &origin_side.ca_pem).unwrap();
    for with_chain in [true, false] {
        let mut ca = CertificateAuthority::load(&dir.join("ca.pem"), &key_path).unwrap();
        if with_chain {
            ca = ca.with_chain(&dir.join("chain.pem")).unwrap();
        }
        let forger = Forger::new(ca, None, 4).unwrap();
        let trust = UpstreamTrust::from_bundle(&bundle).unwrap();
        let mut context = TlsContext::new(
            forger,
            trust,
            InvalidUpstream::Mirror,
            None,
            WallClock::new(OffsetDateTime::now_utc()),
        )
        .unwrap();
        let mut client = client(root.der(), "origin.test", &[], rustls::ALL_VERSIONS);
        let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
        let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
        let outcome = pump(&mut client, &mut session, &mut context, &mut origin);
        if with_chain {
            outcome.unwrap();
            assert_eq!(
                client.peer_certificates().unwrap().len(),
                3,
                "leaf, appliance CA, intermediate"
            );
        } else {
            assert!(
                outcome.is_err(),
                "without the intermediate the root-only client cannot verify"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_server_asking_for_a_client_certificate_is_reported() {
    let origin_side = origin(&["origin.test"], (-1, 30), &[]);
    // The same origin, now requiring client certificates from its own CA.
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(origin_side.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    let config = |versions: &[&'static rustls::SupportedProtocolVersion]| {
        Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .unwrap()
                .with_client_cert_verifier(Arc::clone(&verifier))
                .with_single_cert(
                    origin_side.chain.clone(),
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(origin_side.key.clone())),
                )
                .unwrap(),
        )
    };
    // Whether the server proved its name is known although the handshake
    // fails, over TLS 1.3 and 1.2 and under either policy for invalid
    // servers; an origin the appliance does not trust has not proved it.
    let stranger = origin(&["origin.test"], (-1, 30), &[]);
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    for (trusted, invalid, versions) in [
        (&origin_side.ca_pem, InvalidUpstream::Mirror, rustls::ALL_VERSIONS),
        (&origin_side.ca_pem, InvalidUpstream::Refuse, tls12),
        (&stranger.ca_pem, InvalidUpstream::Refuse, rustls::ALL_VERSIONS),
        (&stranger.ca_pem, InvalidUpstream::Mirror, tls12),
    ] {
        let mut app = appliance(trusted, invalid);
        let mut client = client(&app.ca_der, "origin.test", &[], rustls::ALL_VERSIONS);
        let mut origin = ServerConnection::new(config(versions)).unwrap();
        let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
        let outcome = pump(&mut client, &mut session, &mut app.context, &mut origin);
        assert!(outcome.is_err(), "the appliance has no client certificate to give");
        assert!(session.info.client_cert_requested);
        let proved = std::ptr::eq(trusted, &origin_side.ca_pem);
        assert_eq!(
            session.info.upstream_verified.as_ref().map(Result::is_ok),
            Some(proved),
            "{invalid:?} {versions:?}: {:?}",
            session.info.upstream_verified
        );
    }
}

#[test]
fn an_rsa_leaf_key_can_be_loaded() {
    // ring cannot generate RSA keys: make one with openssl, as an operator would.
    let dir = std::env::temp_dir().join(format!("mitm-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_path = dir.join("leaf.key");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key_path)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let leaf_key = KeyPair::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();

    let origin_side = origin(&["origin.test"], (-1, 30), &[]);
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, &origin_side.ca_pem).unwrap();
    let ca = CertificateAuthority::generate("tlsgate test CA", 1, OffsetDateTime::now_utc()).unwrap();
    let ca_der = ca.cert_der().clone();
    let forger = Forger::new(ca, Some(leaf_key), 4).unwrap();
    let mut context = TlsContext::new(
        forger,
        UpstreamTrust::from_bundle(&bundle).unwrap(),
        InvalidUpstream::Mirror,
        None,
        WallClock::new(OffsetDateTime::now_utc()),
    )
    .unwrap();
    let mut client = client(&ca_der, "origin.test", &[], rustls::ALL_VERSIONS);
    let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    pump(&mut client, &mut session, &mut context, &mut origin).unwrap();
    let leaf = &client.peer_certificates().unwrap()[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).unwrap();
    assert_eq!(
        parsed.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.113549.1.1.1",
        "an RSA key"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exposed_plaintext_waits_for_the_caller_who_may_change_it() {
    let origin_side = origin(&["origin.test"], (-1, 30), &["http/1.1"]);
    let mut app = appliance(&origin_side.ca_pem, InvalidUpstream::Mirror);
    let mut client = client(&app.ca_der, "origin.test", &["http/1.1"], rustls::ALL_VERSIONS);
    let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
    origin.set_buffer_limit(None);
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    session.expose_plaintext();
    // Nothing can be passed on before the handshakes.
    assert!(session.send_to_server(b"early").is_err());
    client.writer().write_all(b"GET /lower HTTP/1.1\r\n\r\n").unwrap();
    pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
    assert!(!client.is_handshaking());

    // The request is held for the caller, and the server has nothing yet.
    assert_eq!(
        session.queues().plaintext_from_client.as_slice(),
        b"GET /lower HTTP/1.1\r\n\r\n"
    );
    assert!(read_all(&mut origin.reader()).is_empty());
    let held = std::mem::take(&mut session.queues().plaintext_from_client);
    session.send_to_server(&held.to_ascii_uppercase()).unwrap();
    pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
    assert_eq!(read_all(&mut origin.reader()), b"GET /LOWER HTTP/1.1\r\n\r\n");

    // The answer likewise.
    origin.writer().write_all(b"HTTP/1.1 200 OK\r\n\r\nbody").unwrap();
    let mut received = Vec::new();
    pump_into(&mut client, &mut session, &mut app.context, &mut origin, &mut received).unwrap();
    assert!(received.is_empty());
    let answer = std::mem::take(&mut session.queues().plaintext_from_server);
    assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\nbody");
    session.send_to_client(b"HTTP/1.1 403 No\r\n\r\n").unwrap();
    pump_into(&mut client, &mut session, &mut app.context, &mut origin, &mut received).unwrap();
    assert_eq!(received, b"HTTP/1.1 403 No\r\n\r\n");

    // close_notify is recorded, and passed on only when the caller says so.
    client.send_close_notify();
    pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
    assert!(session.client_finished());
    let mut probe = [0u8; 1];
    assert!(
        origin.reader().read(&mut probe).is_err(),
        "no close_notify reached the origin yet"
    );
    session.close_to_server();
    pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
    assert_eq!(
        origin.reader().read(&mut probe).unwrap(),
        0,
        "clean close reached the origin"
    );
    assert_eq!(session.info.plaintext_client_to_server, 23);
    assert_eq!(session.info.plaintext_server_to_client, 19);
}

/// The ClientHello the session sent upstream, read back.
fn upstream_offer(session: &mut TlsSession) -> mitm::hello::HelloOffer {
    mitm::hello::client_offer(&session.queues().to_server).expect("an upstream ClientHello")
}

#[test]
fn the_client_leg_mirrors_a_tls12_origin_and_both_legs_are_graded() {
    let origin_side = origin_with(&["origin.test"], (-1, 30), &[], &[&rustls::version::TLS12]);
    let mut app = appliance(&origin_side.ca_pem, InvalidUpstream::Mirror);
    // The client offers TLS 1.3 and 1.2; the origin speaks only 1.2.
    let mut client = client(&app.ca_der, "origin.test", &[], rustls::ALL_VERSIONS);
    let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
    assert!(!client.is_handshaking());
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2),
        "the client is shown the version the server gave"
    );
    let server_suite = origin.negotiated_cipher_suite().unwrap().suite();
    let client_suite = client.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(
        mitm::grade::bulk_cipher(client_suite),
        mitm::grade::bulk_cipher(server_suite),
        "the client leg uses the server's cipher"
    );
    let (server_grade, client_grade) = (session.info.server_grade.unwrap(), session.info.client_grade.unwrap());
    assert_eq!(server_grade.version, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(server_grade.suite, server_suite);
    assert_eq!(client_grade.version, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(client_grade.suite, client_suite);
    for grade in [server_grade, client_grade] {
        assert!(grade.forward_secrecy);
        assert_eq!(grade.grade, mitm::Grade::A);
    }
}

/// An intercepted session for origin.test, its handshakes done: the
/// client (any version), the origin and the appliance that holds it.
struct Established {
    app: Appliance,
    client: ClientConnection,
    origin: ServerConnection,
    session: TlsSession,
}

fn established() -> Established {
    let origin_side = origin(&["origin.test"], (-1, 30), &[]);
    let mut app = appliance(&origin_side.ca_pem, InvalidUpstream::Mirror);
    let mut client = client(&app.ca_der, "origin.test", &[], rustls::ALL_VERSIONS);
    let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
    Established {
        app,
        client,
        origin,
        session,
    }
}

#[test]
fn a_tls13_origin_gives_the_client_tls13_with_the_same_suite() {
    let Established { client, origin, .. } = established();
    assert_eq!(client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(
        client.negotiated_cipher_suite().unwrap().suite(),
        origin.negotiated_cipher_suite().unwrap().suite()
    );
}

#[test]
fn the_upstream_offer_is_never_weaker_than_the_clients() {
    let origin_side = origin(&["origin.test"], (-1, 30), &[]);
    let mut app = appliance(&origin_side.ca_pem, InvalidUpstream::Mirror);
    // A TLS 1.3-only client offering one suite and one group.
    let mut roots = RootCertStore::empty();
    roots.add(app.ca_der.clone()).unwrap();
    let ring = rustls::crypto::ring::default_provider();
    let narrow = rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384],
        kx_groups: vec![rustls::crypto::ring::kx_group::SECP384R1],
        ..ring
    };
    let config = ClientConfig::builder_with_provider(Arc::new(narrow))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = ClientConnection::new(Arc::new(config), ServerName::try_from("origin.test").unwrap()).unwrap();
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    session.from_client(&hello).unwrap();
    session.intercept(&app.context).unwrap();
    let offer = upstream_offer(&mut session);
    assert_eq!(
        offer.versions,
        [rustls::ProtocolVersion::TLSv1_3],
        "no TLS 1.2 upstream"
    );
    assert_eq!(
        offer
            .suites
            .iter()
            .filter(|suite| **suite != rustls::CipherSuite::TLS_EMPTY_RENEGOTIATION_INFO_SCSV)
            .collect::<Vec<_>>(),
        [&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384],
        "only the client's suite"
    );
    // And the connection works through.
    let mut origin = ServerConnection::new(Arc::clone(&origin_side.config)).unwrap();
    let mut input = std::mem::take(&mut session.queues().to_server);
    let mut slice = input.as_slice();
    while !slice.is_empty() {
        origin.read_tls(&mut slice).unwrap();
    }
    origin.process_new_packets().unwrap();
    input.clear();
    pump(&mut client, &mut session, &mut app.context, &mut origin).unwrap();
    assert_eq!(
        origin.negotiated_cipher_suite().unwrap().suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    assert_eq!(client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));

    // A client offering both versions gets both upstream.
    let mut client = client_with_all(&app.ca_der);
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    session.from_client(&hello).unwrap();
    session.intercept(&app.context).unwrap();
    assert_eq!(
        upstream_offer(&mut session).versions,
        [rustls::ProtocolVersion::TLSv1_3, rustls::ProtocolVersion::TLSv1_2]
    );
}

fn client_with_all(ca: &CertificateDer<'static>) -> ClientConnection {
    client(ca, "origin.test", &[], rustls::ALL_VERSIONS)
}

/// Feeds the session's ClientHello to a fake server that answers `answer`;
/// returns the session's error.
fn legacy_origin_answers(answer: &[u8]) -> (TlsSession, String) {
    let origin_side = origin(&["origin.test"], (-1, 30), &[]);
    let mut app = appliance(&origin_side.ca_pem, InvalidUpstream::Mirror);
    let mut client = client_with_all(&app.ca_der);
    let mut session = TlsSession::new("198.18.0.2".parse().unwrap());
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    session.from_client(&hello).unwrap();
    session.intercept(&app.context).unwrap();
    assert!(!session.queues().to_server.is_empty());
    let err = session.from_server(&mut app.context, answer).unwrap_err().to_string();
    assert_eq!(session.bypass(), hello, "the ClientHello is still there for a bypass");
    (session, err)
}

#[test]
fn an_origin_speaking_only_legacy_tls_is_named() {
    // A TLS 1.2 server with only CBC suites answers our offer with
    // handshake_failure.
    let (session, err) = legacy_origin_answers(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
    assert!(err.contains("HandshakeFailure"), "{err}");
    let cause = session.info.legacy_upstream.unwrap();
    assert!(
        cause.starts_with("origin speaks only legacy TLS: it refused an offer of [TLSv1_3, TLSv1_2]"),
        "{cause}"
    );
    assert!(cause.contains("HandshakeFailure alert"), "{cause}");

    // A TLS 1.0 server answers with a TLS 1.0 ServerHello.
    let mut body = vec![0x03, 0x01];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x2f, 0x00]); // TLS_RSA_WITH_AES_128_CBC_SHA, null compression
    let mut handshake = vec![0x02, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    let (session, _) = legacy_origin_answers(&record);
    assert_eq!(
        session.info.legacy_upstream.as_deref(),
        Some("origin speaks only legacy TLS: its ServerHello chose TLSv1_0 with TLS_RSA_WITH_AES_128_CBC_SHA")
    );
    let grade = session.info.server_grade.unwrap();
    assert_eq!((grade.grade, grade.forward_secrecy), (mitm::Grade::C, false));

    // Any other failure is not blamed on legacy TLS.
    let (session, _) = legacy_origin_answers(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]);
    assert_eq!(
        session.info.legacy_upstream, None,
        "unrecognized_name is no legacy sign"
    );
}

/// Carries what the session has for the client to `client`; returns the
/// plaintext the client read.
fn deliver_to_client(session: &mut TlsSession, client: &mut ClientConnection) -> Vec<u8> {
    let to_client = std::mem::take(&mut session.queues().to_client);
    let mut input = to_client.as_slice();
    let mut received = Vec::new();
    while !input.is_empty() {
        client.read_tls(&mut input).unwrap();
        client.process_new_packets().unwrap();
        received.extend(read_all(&mut client.reader()));
    }
    received
}

#[test]
fn ciphertext_read_in_place_leaves_a_partial_record_where_it_lies_unless_it_must_take_all() {
    let Established {
        mut app,
        mut client,
        mut origin,
        mut session,
    } = established();
    assert!(session.is_established());
    session.release_empty_buffers();

    // Three records from the origin: 16 KiB, 16 KiB and the rest.
    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    origin.set_buffer_limit(None);
    origin.writer().write_all(&body).unwrap();
    let mut wire = Vec::new();
    while origin.wants_write() {
        origin.write_tls(&mut wire).unwrap();
    }
    // TLS 1.3: header, plaintext, content type, tag.
    let full_record = 5 + 16_384 + 1 + 16;
    assert_eq!(wire.len(), 3 * (5 + 1 + 16) + body.len());

    // Two whole records and part of the third, with room to grow: the
    // whole ones are decrypted in place, the partial one is not taken and
    // nothing is copied into the session.
    let cut = wire.len() - 100;
    let mut lent = wire[..cut].to_vec();
    let consumed = session
        .from_server_in_place(&mut app.context, &mut lent, false)
        .unwrap();
    assert_eq!(consumed, 2 * full_record);
    // The emptied plaintext buffer keeps its capacity while data flows.
    session.release_empty_buffers();
    assert_eq!(session.buffer_capacity(), session.queues().to_client.capacity());
    let mut received = deliver_to_client(&mut session, &mut client);
    assert_eq!(received, &body[..2 * 16_384]);

    // The same partial record when nothing can grow behind it: taken.
    let mut lent = wire[consumed..cut].to_vec();
    let taken = session.from_server_in_place(&mut app.context, &mut lent, true).unwrap();
    assert_eq!(taken, lent.len());
    assert!(session.buffer_capacity() >= lent.len(), "the partial record is held");
    // The rest of it completes the record.
    let mut rest = wire[cut..].to_vec();
    let taken = session
        .from_server_in_place(&mut app.context, &mut rest, false)
        .unwrap();
    assert_eq!(taken, 100);
    received.extend(deliver_to_client(&mut session, &mut client));
    assert!(
        received == body,
        "{} of {} bytes, or different bytes",
        received.len(),
        body.len()
    );
    assert_eq!(session.info.plaintext_server_to_client, body.len() as u64);

    // The client's direction likewise, a whole record in place.
    client.writer().write_all(b"thanks").unwrap();
    let mut from_client = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut from_client).unwrap();
    }
    let consumed = session.from_client_in_place(&mut from_client, false).unwrap();
    assert_eq!(consumed, from_client.len());
    let to_server = std::mem::take(&mut session.queues().to_server);
    let mut input = to_server.as_slice();
    while !input.is_empty() {
        origin.read_tls(&mut input).unwrap();
        origin.process_new_packets().unwrap();
    }
    assert_eq!(read_all(&mut origin.reader()), b"thanks");
}

#[test]
fn records_encrypted_on_demand_go_into_lent_room_while_they_fit_and_never_ahead_of_the_queue() {
    let Established {
        mut app,
        mut client,
        mut origin,
        mut session,
    } = established();
    assert!(session.is_established());
    session.encrypt_on_demand();
    let from_origin = |origin: &mut ServerConnection, bytes: &[u8]| {
        origin.set_buffer_limit(None);
        origin.writer().write_all(bytes).unwrap();
        let mut wire = Vec::new();
        while origin.wants_write() {
            origin.write_tls(&mut wire).unwrap();
        }
        wire
    };

    // 40,000 bytes: records of 16 KiB, 16 KiB and the rest. They wait, as
    // plaintext, for room.
    let body: Vec<u8> = (0..41_000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = from_origin(&mut origin, &body[..40_000]);
    session
        .from_server_in_place(&mut app.context, &mut wire, false)
        .unwrap();
    assert!(session.queues().to_client.is_empty(), "nothing is encrypted yet");
    // Room for one record and a half: one goes in, whole.
    let mut room = vec![0u8; 25_000];
    let written = session.encrypt_to_client(&mut room).unwrap();
    assert_eq!(written, 5 + 16_384 + 1 + 16);
    let mut on_the_wire = room[..written].to_vec();
    // The rest into the queue, in order behind it.
    session.encrypt_waiting().unwrap();
    assert_eq!(session.queues().to_client.len(), 2 * (5 + 1 + 16) + 40_000 - 16_384);

    // While the queue holds bytes, nothing goes into lent room ahead of them.
    let mut wire = from_origin(&mut origin, &body[40_000..]);
    session
        .from_server_in_place(&mut app.context, &mut wire, false)
        .unwrap();
    let mut room = vec![0u8; 64 * 1024];
    assert_eq!(session.encrypt_to_client(&mut room).unwrap(), 0);
    session.encrypt_waiting().unwrap();
    on_the_wire.append(&mut session.queues().to_client);

    // The client reads it all, in order (TLS would refuse a record out of
    // its sequence).
    session.queues().to_client = on_the_wire;
    let received = deliver_to_client(&mut session, &mut client);
    assert!(
        received == body,
        "{} of {} bytes, or different bytes",
        received.len(),
        body.len()
    );
}
