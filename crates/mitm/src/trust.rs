//! Verifying the real server's certificate chain: against the system trust
//! store (Debian's `ca-certificates` bundle) or a configured PEM bundle. The
//! upstream handshake itself always checks the server's signature, but the
//! chain is judged after the handshake, so that an invalid server can be
//! mirrored to the client (who then rejects it) instead of being hidden.
//! The deferring verifier still judges the chain when rustls shows it and
//! records the outcome ([`take_chain_verdict`]), so that a handshake that
//! fails later (a server asking for a client certificate) is still known
//! to have come from a server that proved its name, or not.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::MitmError;

/// Debian's bundle of the system's trusted CAs.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The CAs real servers are verified against.
#[derive(Debug, Clone)]
pub struct UpstreamTrust {
    verifier: Arc<WebPkiServerVerifier>,
}

impl UpstreamTrust {
    /// Every certificate of the PEM bundle at `path` is a trust anchor.
    pub fn from_bundle(path: &Path) -> Result<Self, MitmError> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path).map_err(|err| MitmError::Pem {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        for cert in certs {
            let cert = cert.map_err(|err| MitmError::Pem {
                path: path.to_owned(),
                reason: err.to_string(),
            })?;
            // A bundle may hold a few certificates webpki cannot use.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(MitmError::Pem {
                path: path.to_owned(),
                reason: "holds no usable CA certificate".into(),
            });
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|err| MitmError::Config(err.to_string()))?;
        Ok(UpstreamTrust { verifier })
    }

    /// Verifies `chain` (leaf first) for `name` at `now`; the error says why
    /// it is not trusted (unknown issuer, expired, wrong name, ...).
    pub fn verify(&self, chain: &[CertificateDer<'_>], name: &ServerName<'_>, now: UnixTime) -> Result<(), String> {
        let (leaf, intermediates) = chain.split_first().ok_or_else(|| "no certificate".to_owned())?;
        self.verifier
            .verify_server_cert(leaf, intermediates, name, &[], now)
            .map(|_| ())
            .map_err(|err| err.to_string())
    }

    /// The verifier that judges the chain during the handshake (a chain
    /// that does not verify fails it): for a TLS leg with no client to
    /// show the server's certificate to (an upgraded connection).
    pub(crate) fn enforcing(&self) -> Arc<WebPkiServerVerifier> {
        Arc::clone(&self.verifier)
    }

    /// The verifier for the upstream handshake: signatures checked now, the
    /// chain later with [`UpstreamTrust::verify`].
    pub(crate) fn deferred(&self) -> Arc<DeferredChainVerifier> {
        Arc::new(DeferredChainVerifier {
            inner: Arc::clone(&self.verifier),
        })
    }
}

thread_local! {
    /// The verdict on the chain the upstream handshake being processed on
    /// this thread was shown (see [`take_chain_verdict`]).
    static CHAIN_VERDICT: RefCell<Option<Result<(), String>>> = const { RefCell::new(None) };
}

/// The verdict the deferring verifier reached on this thread since the last
/// call: `Ok` if the chain the server showed verified for the name, `None`
/// if no chain was shown. The session takes it after each step of its
/// upstream handshake.
pub(crate) fn take_chain_verdict() -> Option<Result<(), String>> {
    CHAIN_VERDICT.with(|slot| slot.borrow_mut().take())
}

#[derive(Debug)]
pub(crate) struct DeferredChainVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for DeferredChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The handshake goes on whatever the verdict: the session acts on it
        // once the handshake is over (mirror or refuse), never ignores it.
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ())
            .map_err(|err| err.to_string());
        CHAIN_VERDICT.with(|slot| *slot.borrow_mut() = Some(verdict));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
