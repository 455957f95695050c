//! What the in-memory TLS examples share: an origin CA and its leaves, the
//! origin's and the clients' rustls configurations, an appliance context,
//! and one intercepted connection driven to quiescence.
#![allow(dead_code)] // each example uses its own part

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mitm::{CertificateAuthority, Forger, InvalidUpstream, Pending, TlsContext, TlsSession, UpstreamTrust};
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, SupportedProtocolVersion};
use time::OffsetDateTime;

pub type Res<T> = Result<T, Box<dyn Error>>;

pub const ORIGIN: &str = "origin.test";

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The origin's own CA, able to sign any number of leaf certificates.
pub struct OriginCa {
    pub pem: String,
    pub der: CertificateDer<'static>,
    pub issuer: Issuer<'static, KeyPair>,
}

pub fn origin_ca() -> Res<OriginCa> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "Origin Bench Root");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok(OriginCa {
        pem: cert.pem(),
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    })
}

/// A leaf for `name` (and the lab origin's IP) signed by `ca`, with its key.
pub fn leaf(ca: &OriginCa, name: &str) -> Res<(CertificateDer<'static>, KeyPair)> {
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationName, "Origin Inc");
    params.subject_alt_names.push(SanType::IpAddress("198.18.0.2".parse()?));
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(30);
    let cert = params.signed_by(&key, &ca.issuer)?;
    Ok((cert.der().clone(), key))
}

/// The origin's server configuration: with `tickets`, rustls' defaults (TLS
/// 1.3 tickets, a session cache); without, no resumption of any kind.
pub fn origin_config(ca: &OriginCa, tickets: bool) -> Res<Arc<ServerConfig>> {
    let (cert, key) = leaf(ca, ORIGIN)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert, ca.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    if !tickets {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client trusting only `root`, speaking `versions`, never resuming.
pub fn client_config(
    root: &CertificateDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
) -> Res<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone())?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub fn new_client(config: &Arc<ClientConfig>) -> Res<ClientConnection> {
    Ok(ClientConnection::new(
        Arc::clone(config),
        ServerName::try_from(ORIGIN)?,
    )?)
}

/// One intercepted connection, client ⇄ session ⇄ origin, until nothing
/// moves; returns the time spent inside the session's calls.
pub fn intercepted(
    client: &mut ClientConnection,
    session: &mut TlsSession,
    cx: &mut TlsContext,
    origin: &mut ServerConnection,
) -> Res<Duration> {
    let mut appliance = Duration::ZERO;
    for _ in 0..50 {
        let mut moved = false;
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf)?;
        }
        if !buf.is_empty() {
            moved = true;
            let start = Instant::now();
            session.from_client(&buf)?;
            if let Some(Pending::Hello { .. }) = session.pending() {
                session.intercept(cx)?;
            }
            appliance += start.elapsed();
        }
        let to_server = std::mem::take(session.to_server());
        if !to_server.is_empty() {
            moved = true;
            let mut input = to_server.as_slice();
            while !input.is_empty() {
                origin.read_tls(&mut input)?;
                origin.process_new_packets()?;
            }
        }
        let mut buf = Vec::new();
        while origin.wants_write() {
            origin.write_tls(&mut buf)?;
        }
        if !buf.is_empty() {
            moved = true;
            let start = Instant::now();
            session.from_server(cx, &buf)?;
            appliance += start.elapsed();
        }
        let to_client = std::mem::take(session.to_client());
        if !to_client.is_empty() {
            moved = true;
            let mut input = to_client.as_slice();
            while !input.is_empty() {
                client.read_tls(&mut input)?;
                client.process_new_packets()?;
            }
        }
        if !moved {
            return Ok(appliance);
        }
    }
    Err("intercepted connection: no quiescence".into())
}

/// A temporary directory removed on drop (the upstream trust bundle).
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Appliance {
    pub context: TlsContext,
    pub ca_der: CertificateDer<'static>,
}

pub fn appliance(trusted: &str, dir: &TempDir, cache: usize) -> Res<Appliance> {
    let bundle = dir.0.join("bundle.pem");
    std::fs::write(&bundle, trusted)?;
    let ca = CertificateAuthority::generate("tlsgate bench CA", 1, OffsetDateTime::now_utc())?;
    let ca_der = ca.cert_der().clone();
    let forger = Forger::new(ca, None, cache)?;
    let trust = UpstreamTrust::from_bundle(&bundle)?;
    Ok(Appliance {
        context: TlsContext::new(forger, trust, InvalidUpstream::Mirror, None)?,
        ca_der,
    })
}
