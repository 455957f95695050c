//! The certificates of the TLS targets, made once per process: an origin
//! CA and the origin's certificate for `origin.test` (and the server
//! address of the in-memory lab), the trust bundle the appliance verifies
//! the origin against, and a fresh appliance [`TlsContext`] per input.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use mitm::{CertificateAuthority, Forger, InvalidUpstream, TlsContext, UpstreamTrust};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// The name the origin's certificate is for.
pub const ORIGIN_NAME: &str = "origin.test";

/// The origin: its certificate chain and key, and the appliance's trust in it.
struct Origin {
    config: Arc<ServerConfig>,
    trust: UpstreamTrust,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Panics with `what` if making a certificate fails: the fixed inputs here
/// cannot make it fail, so it is a broken setup, not a finding.
fn setup<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|err| panic!("fuzz setup: {what}: {err}"))
}

fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let ca_key = setup(KeyPair::generate(), "origin CA key");
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Fuzz Origin Root");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = setup(ca_params.self_signed(&ca_key), "origin CA");
        let issuer = Issuer::new(ca_params, &ca_key);
        let key = setup(KeyPair::generate(), "origin key");
        let mut params = setup(CertificateParams::new(vec![ORIGIN_NAME.to_owned()]), "origin name");
        params.distinguished_name.push(DnType::CommonName, ORIGIN_NAME);
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::from(crate::engine::SERVER_V4)));
        let leaf = setup(params.signed_by(&key, &issuer), "origin certificate");
        let config = setup(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map(|builder| builder.with_no_client_auth())
                .and_then(|builder| {
                    builder.with_single_cert(
                        vec![leaf.der().clone(), ca_cert.der().clone()],
                        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                    )
                }),
            "origin TLS configuration",
        );
        let bundle = std::env::temp_dir().join(format!("tlsgate-fuzz-trust-{}.pem", std::process::id()));
        setup(std::fs::write(&bundle, ca_cert.pem()), "trust bundle");
        let trust = setup(UpstreamTrust::from_bundle(&bundle), "upstream trust");
        let _ = std::fs::remove_file(&bundle);
        Origin {
            config: Arc::new(config),
            trust,
        }
    })
}

/// The appliance's TLS context, with a new CA, trusting the origin; and
/// that CA's certificate, for the client to trust.
pub fn appliance(invalid_upstream: InvalidUpstream) -> (TlsContext, CertificateDer<'static>) {
    let now = time::OffsetDateTime::now_utc();
    let ca = setup(
        CertificateAuthority::generate("tlsgate fuzz CA", 1, now),
        "appliance CA",
    );
    let ca_der = ca.cert_der().clone();
    let forger = setup(Forger::new(ca, None, 16), "forger");
    let context = setup(
        TlsContext::new(
            forger,
            origin().trust.clone(),
            invalid_upstream,
            None,
            mitm::WallClock::new(now),
        ),
        "TLS context",
    );
    (context, ca_der)
}

/// A TLS connection of the origin.
pub fn origin_connection() -> ServerConnection {
    setup(ServerConnection::new(Arc::clone(&origin().config)), "origin connection")
}

/// A client to `origin.test` that trusts `ca` and offers `alpn`.
pub fn client_connection(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    setup(roots.add(ca.clone()), "client trust");
    let mut config = setup(
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions(),
        "client TLS configuration",
    )
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let name = setup(ServerName::try_from(ORIGIN_NAME), "origin name");
    setup(ClientConnection::new(Arc::new(config), name), "client connection")
}
