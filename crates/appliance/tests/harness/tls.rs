//! TLS helpers of the in-memory lab: an origin with its own CA, the
//! appliance's TLS context trusting it, a rustls client trusting the
//! appliance CA, and the pump of TLS records between a rustls connection
//! and a host's smoltcp socket.

use std::io::{Read, Write};
use std::sync::Arc;

use mitm::{CertificateAuthority, Forger, InvalidUpstream, TlsContext, UpstreamTrust};
use rcgen::{CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;

use super::connlog::LogFile;
use super::{Host, Lab, SERVER_V4};

/// A scratch directory removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("appliance-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a test of the intercepting appliance works with: the lab `L`, the
/// appliance CA its clients trust, the origin behind it, the connection log,
/// and the scratch folder they live in (removed on drop).
pub struct Intercepting<L> {
    pub lab: L,
    pub ca: CertificateDer<'static>,
    pub origin: Arc<ServerConfig>,
    pub log: LogFile,
    pub _scratch: Scratch,
}

impl<L> Intercepting<L> {
    pub fn new(lab: L, ca: CertificateDer<'static>, origin: Arc<ServerConfig>, log: LogFile, scratch: Scratch) -> Self {
        Intercepting {
            lab,
            ca,
            origin,
            log,
            _scratch: scratch,
        }
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The origin's TLS configuration and the PEM of its CA.
pub fn origin() -> (Arc<ServerConfig>, String) {
    origin_for(&["origin.test"], rustls::DEFAULT_VERSIONS)
}

/// An origin with a certificate for `names` (and the server's address)
/// speaking `versions`, and the PEM of its CA.
pub fn origin_for(
    names: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Arc<ServerConfig>, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "Origin Root");
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from(SERVER_V4)));
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (Arc::new(config), ca_cert.pem())
}

/// The appliance's TLS context trusting `origin_ca`, and its CA certificate.
pub fn interception(scratch: &Scratch, origin_ca: &str) -> (TlsContext, CertificateDer<'static>) {
    let (mut contexts, ca) = interceptions(scratch, origin_ca, 1);
    (contexts.remove(0), ca)
}

/// [`interception`] for `workers` workers: a context each, forging with
/// one CA (as the data plane's workers load the same files).
pub fn interceptions(scratch: &Scratch, origin_ca: &str, workers: usize) -> (Vec<TlsContext>, CertificateDer<'static>) {
    let bundle = scratch.0.join("trust.pem");
    std::fs::write(&bundle, origin_ca).unwrap();
    let ca = CertificateAuthority::generate("tlsgate test CA", 1, time::OffsetDateTime::now_utc()).unwrap();
    let (cert, key) = ca.write(&scratch.0.join("ca")).unwrap();
    let contexts = (0..workers)
        .map(|_| {
            let forger = Forger::new(CertificateAuthority::load(&cert, &key).unwrap(), None, 16).unwrap();
            TlsContext::new(
                forger,
                UpstreamTrust::from_bundle(&bundle).unwrap(),
                InvalidUpstream::Mirror,
                None,
                mitm::WallClock::new(time::OffsetDateTime::now_utc()),
            )
            .unwrap()
        })
        .collect();
    (contexts, ca.cert_der().clone())
}

pub fn client_tls(ca: &CertificateDer<'static>) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClientConnection::new(Arc::new(config), ServerName::try_from("origin.test").unwrap()).unwrap()
}

/// Sends what `tls` has to send on `socket`.
fn flush<D: rustls::SideData>(host: &mut Host, socket: SocketHandle, tls: &mut rustls::ConnectionCommon<D>) {
    let socket = host.tcp(socket);
    let mut records = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut records).unwrap();
    }
    if !records.is_empty() && socket.may_send() {
        assert_eq!(
            socket.send_slice(&records).unwrap(),
            records.len(),
            "socket buffer too small"
        );
    }
}

/// Moves TLS records between a rustls connection and a host socket, and
/// collects the plaintext it yields; true once the peer's close_notify
/// came. A TLS error is returned after the alert rustls has for the peer
/// was sent.
pub fn try_drive<D: rustls::SideData>(
    host: &mut Host,
    socket: SocketHandle,
    tls: &mut rustls::ConnectionCommon<D>,
    plaintext: &mut Vec<u8>,
) -> Result<bool, rustls::Error> {
    flush(host, socket, tls);
    let mut closed = false;
    while host.tcp(socket).can_recv() {
        let mut buf = vec![0u8; 16 * 1024];
        let read = host.tcp(socket).recv_slice(&mut buf).unwrap_or(0);
        if read == 0 {
            break;
        }
        let mut input = &buf[..read];
        while !input.is_empty() {
            tls.read_tls(&mut input).unwrap();
            if let Err(err) = tls.process_new_packets() {
                flush(host, socket, tls);
                return Err(err);
            }
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match tls.reader().read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => plaintext.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                }
            }
        }
    }
    Ok(closed)
}

/// [`try_drive`] for connections that must not fail.
pub fn drive<D: rustls::SideData>(
    host: &mut Host,
    socket: SocketHandle,
    tls: &mut rustls::ConnectionCommon<D>,
    plaintext: &mut Vec<u8>,
) -> bool {
    try_drive(host, socket, tls, plaintext).unwrap()
}

/// One request and its response over TLS through the lab's engine:
/// `client` on `socket` sends `request`, `server` on `listener` answers
/// `response` once it holds the whole request. Asserts that the client
/// holds the response byte-exact within `limit_ms`; returns what the client
/// and the server received.
pub fn tls_exchange(
    lab: &mut Lab,
    (socket, listener): (SocketHandle, SocketHandle),
    (client, server): (&mut ClientConnection, &mut ServerConnection),
    (request, response): (&[u8], &[u8]),
    limit_ms: u64,
) -> (Vec<u8>, Vec<u8>) {
    client.writer().write_all(request).unwrap();
    let (mut at_client, mut at_server) = (Vec::new(), Vec::new());
    let mut answered = false;
    let done = lab.run_until(limit_ms, |lab| {
        if lab.client.tcp(socket).state() == State::Established {
            drive(&mut lab.client, socket, client, &mut at_client);
        }
        if lab.server.tcp(listener).state() == State::Established {
            drive(&mut lab.server, listener, server, &mut at_server);
        }
        if at_server == request && !answered {
            answered = true;
            server.writer().write_all(response).unwrap();
        }
        at_client.len() >= response.len()
    });
    assert!(
        done,
        "{} of {} response bytes ({} of {} request bytes)",
        at_client.len(),
        response.len(),
        at_server.len(),
        request.len()
    );
    assert!(at_client == response, "the response arrived byte-exact");
    (at_client, at_server)
}
