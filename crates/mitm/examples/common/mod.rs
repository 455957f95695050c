//! What the in-memory TLS examples share: an origin CA and its leaves, the
//! origin's and the clients' rustls configurations, an appliance context,
//! and one intercepted connection driven to quiescence.
#![allow(dead_code)] // each example uses its own part

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mitm::{CertificateAuthority, Forger, InvalidUpstream, Pending, TlsContext, TlsSession, UpstreamTrust, WallClock};
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

/// Everything `conn` wants to send now.
pub fn output_of<D: rustls::SideData>(conn: &mut rustls::ConnectionCommon<D>) -> Res<Vec<u8>> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// Feeds all of `bytes` into `conn`, processing as it goes.
pub fn feed<D: rustls::SideData>(conn: &mut rustls::ConnectionCommon<D>, mut bytes: &[u8]) -> Res<()> {
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes)?;
        conn.process_new_packets()?;
    }
    Ok(())
}

/// The median (mean of the middle two for an even count; NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One direct handshake, client ⇄ server, until neither has anything to send.
pub fn direct(client: &mut ClientConnection, server: &mut ServerConnection) -> Res<()> {
    for _ in 0..50 {
        let to_server = output_of(client)?;
        feed(server, &to_server)?;
        let to_client = output_of(server)?;
        feed(client, &to_client)?;
        if to_server.is_empty() && to_client.is_empty() {
            return Ok(());
        }
    }
    Err("direct handshake: no quiescence".into())
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
        let from_client = output_of(client)?;
        if !from_client.is_empty() {
            let start = Instant::now();
            session.from_client(&from_client)?;
            if let Some(Pending::Hello { .. }) = session.pending() {
                session.intercept(cx)?;
            }
            appliance += start.elapsed();
        }
        let to_server = std::mem::take(&mut session.queues().to_server);
        feed(origin, &to_server)?;
        let from_origin = output_of(origin)?;
        if !from_origin.is_empty() {
            let start = Instant::now();
            session.from_server(cx, &from_origin)?;
            appliance += start.elapsed();
        }
        let to_client = std::mem::take(&mut session.queues().to_client);
        feed(client, &to_client)?;
        if from_client.is_empty() && to_server.is_empty() && from_origin.is_empty() && to_client.is_empty() {
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
        context: TlsContext::new(
            forger,
            trust,
            InvalidUpstream::Mirror,
            None,
            WallClock::new(OffsetDateTime::now_utc()),
        )?,
        ca_der,
    })
}
