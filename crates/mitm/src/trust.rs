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
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::FromDer;

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

/// Chains that verified for a name, so that the resumed upstream
/// handshakes of one server (which show no certificate: the session's
/// stored chain is judged again) do not each verify the same chain again.
/// A verdict is reused only from the time it was reached until the chain's
/// first certificate expires, which is when it could change (the trust
/// anchors, the name and the chain are its key or fixed); a chain that did
/// not verify is judged again every time. Bounded: it starts again when
/// full.
#[derive(Debug)]
pub(crate) struct VerifiedChains {
    /// SHA-256 over the chain (each certificate's length and bytes) and the
    /// name → the seconds since the epoch from which and until which the
    /// verdict holds.
    entries: HashMap<([u8; 32], String), (u64, u64)>,
    capacity: usize,
}

impl VerifiedChains {
    pub(crate) fn new(capacity: usize) -> Self {
        VerifiedChains {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// `trust`'s verdict on `chain` for `name` at `now`, from an earlier
    /// verdict that still holds when there is one.
    pub(crate) fn verify(
        &mut self,
        trust: &UpstreamTrust,
        chain: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), String> {
        let key = (chain_digest(chain), name.to_str().into_owned());
        let secs = now.as_secs();
        if let Some(&(from, until)) = self.entries.get(&key) {
            if from <= secs && secs < until {
                return Ok(());
            }
        }
        trust.verify(chain, name, now)?;
        if let Some(until) = first_expiry(chain) {
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
            self.entries.insert(key, (secs, until));
        }
        Ok(())
    }
}

fn chain_digest(chain: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for cert in chain {
        context.update(&(cert.len() as u64).to_be_bytes());
        context.update(cert);
    }
    let mut digest = [0; 32];
    digest.copy_from_slice(context.finish().as_ref());
    digest
}

/// The earliest notAfter of the chain's certificates, in seconds since the
/// epoch (`None` if one does not parse or expired before 1970).
fn first_expiry(chain: &[CertificateDer<'_>]) -> Option<u64> {
    chain
        .iter()
        .map(|cert| {
            let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
            u64::try_from(parsed.validity().not_after.timestamp()).ok()
        })
        .try_fold(u64::MAX, |earliest, expiry| Some(earliest.min(expiry?)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use time::OffsetDateTime;

    /// A CA (its PEM) and a leaf for `name` it signed, valid from a day
    /// before `now` until an hour after it.
    fn ca_and_leaf(name: &str, now: OffsetDateTime) -> (String, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, format!("CA of {name}"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let mut leaf = CertificateParams::new(vec![name.to_owned()]).unwrap();
        leaf.not_before = now - time::Duration::days(1);
        leaf.not_after = now + time::Duration::hours(1);
        let leaf = leaf.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap();
        (ca_cert.pem(), leaf.der().clone())
    }

    fn trusting(pem: &str, file: &str) -> UpstreamTrust {
        let path = std::env::temp_dir().join(format!("mitm-trust-{file}-{}.pem", std::process::id()));
        std::fs::write(&path, pem).unwrap();
        let trust = UpstreamTrust::from_bundle(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        trust
    }

    #[test]
    fn a_chain_that_verified_is_not_verified_again_until_its_first_certificate_expires() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let (ca, leaf) = ca_and_leaf("origin.test", now);
        let trust = trusting(&ca, "own");
        // Trusts another CA only: whatever it is asked to verify here fails.
        let other = trusting(&ca_and_leaf("other.test", now).0, "other");
        let chain = [leaf];
        let name = ServerName::try_from("origin.test").unwrap();
        let at = |offset: i64| {
            UnixTime::since_unix_epoch(std::time::Duration::from_secs((now.unix_timestamp() + offset) as u64))
        };
        let mut chains = VerifiedChains::new(16);
        assert!(
            chains.verify(&other, &chain, &name, at(0)).is_err(),
            "a chain that did not verify is not kept"
        );
        assert_eq!(chains.verify(&trust, &chain, &name, at(0)), Ok(()));
        // The verdict is reused (the other trust would refuse the chain) ...
        assert_eq!(chains.verify(&other, &chain, &name, at(60)), Ok(()));
        // ... but not before it was reached, nor for another name, nor once the leaf expired.
        assert!(chains.verify(&other, &chain, &name, at(-1)).is_err());
        let wrong = ServerName::try_from("wrong.test").unwrap();
        assert!(chains.verify(&other, &chain, &wrong, at(60)).is_err());
        assert!(chains.verify(&trust, &chain, &name, at(3_600 + 1)).is_err(), "expired");
    }
}
