//! The server side of TLS termination: a service's own certificate chains
//! and keys (no forging), chosen by the client's SNI, and the stateless
//! session-ticket keys that let every worker and every box loading the same
//! ticket file resume each other's sessions.
//!
//! Files are read only when a [`ServiceTls`] or [`TicketKeys`] is built (at
//! start and on reload); the handshakes themselves read nothing.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// What is wrong with a service's TLS material; `index` is the position of
/// the chain/key pair in the list given to [`ServiceTls::new`].
#[derive(Debug, Error)]
pub enum TerminateError {
    #[error("{path}: {reason}", path = path.display())]
    Chain {
        index: usize,
        path: PathBuf,
        reason: String,
    },
    #[error("{path}: {reason}", path = path.display())]
    Key {
        index: usize,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: does not match its certificate {chain} (their public keys differ)", key = key.display(), chain = chain.display())]
    KeyMismatch { index: usize, chain: PathBuf, key: PathBuf },
    #[error("no certificate chain given")]
    NoCertificates,
    #[error("no TLS version enabled")]
    NoVersions,
    #[error("{path}: {reason}", path = path.display())]
    TicketKey { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// One certificate chain (leaf first) and its private key, as PEM, with the
/// files they came from (named in errors).
#[derive(Clone)]
pub struct CertifiedKeyPem {
    pub chain_path: PathBuf,
    pub chain: Vec<u8>,
    pub key_path: PathBuf,
    pub key: Vec<u8>,
}

impl fmt::Debug for CertifiedKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKeyPem")
            .field("chain_path", &self.chain_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl CertifiedKeyPem {
    /// Reads the chain and key files; `index` is the pair's position (for errors).
    pub fn read(index: usize, chain_path: &Path, key_path: &Path) -> Result<Self, TerminateError> {
        let chain = std::fs::read(chain_path).map_err(|err| TerminateError::Chain {
            index,
            path: chain_path.to_owned(),
            reason: err.to_string(),
        })?;
        let key = std::fs::read(key_path).map_err(|err| TerminateError::Key {
            index,
            path: key_path.to_owned(),
            reason: err.to_string(),
        })?;
        Ok(CertifiedKeyPem {
            chain_path: chain_path.to_owned(),
            chain,
            key_path: key_path.to_owned(),
            key,
        })
    }
}

/// A TLS version a service may speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        }
    }
}

/// Certificates of one service, chosen by SNI (the SAN DNS names of each
/// leaf, exact names before wildcards), the first chain the default for an
/// unknown or absent name; its versions, ALPN and ticket keys.
#[derive(Clone)]
pub struct ServiceTls {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for ServiceTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceTls")
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl ServiceTls {
    /// Builds the server configuration. Refuses unreadable PEM and a key that
    /// is not its leaf's. `tickets` absent: a random key for this process.
    pub fn new(
        chains: &[CertifiedKeyPem],
        versions: &[TlsVersion],
        alpn: &[Vec<u8>],
        tickets: Option<Arc<TicketKeys>>,
    ) -> Result<ServiceTls, TerminateError> {
        if chains.is_empty() {
            return Err(TerminateError::NoCertificates);
        }
        if versions.is_empty() {
            return Err(TerminateError::NoVersions);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let entries = chains
            .iter()
            .enumerate()
            .map(|(index, pem)| SniEntry::load(index, pem, &provider))
            .collect::<Result<Vec<_>, _>>()?;
        let tickets = match tickets {
            Some(tickets) => tickets,
            None => Arc::new(TicketKeys::random()?),
        };
        let rustls_versions: Vec<_> = versions.iter().map(|version| version.rustls()).collect();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&rustls_versions)
            .map_err(|err| TerminateError::Config(err.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { entries }));
        config.alpn_protocols = alpn.to_vec();
        config.ticketer = tickets;
        // Stateless resumption only: a per-process cache would not be shared
        // with the other boxes, and would be a lock between the workers.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(ServiceTls {
            config: Arc::new(config),
        })
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }
}

/// One chain with the names its leaf answers.
#[derive(Debug)]
struct SniEntry {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

impl SniEntry {
    fn load(index: usize, pem: &CertifiedKeyPem, provider: &CryptoProvider) -> Result<SniEntry, TerminateError> {
        let chain_error = |reason: String| TerminateError::Chain {
            index,
            path: pem.chain_path.clone(),
            reason,
        };
        let key_error = |reason: String| TerminateError::Key {
            index,
            path: pem.key_path.clone(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(&pem.chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| chain_error(format!("not usable PEM: {err}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| chain_error("holds no certificate".into()))?;
        let names = leaf_dns_names(leaf).map_err(chain_error)?;
        let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|err| key_error(format!("not usable PEM: {err}")))?;
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|err| key_error(err.to_string()))?;
        let key = CertifiedKey::new(chain, signing_key);
        if key.keys_match().is_err() {
            return Err(TerminateError::KeyMismatch {
                index,
                chain: pem.chain_path.clone(),
                key: pem.key_path.clone(),
            });
        }
        Ok(SniEntry {
            names,
            key: Arc::new(key),
        })
    }
}

/// The SAN DNS names of `leaf`, lower-cased.
fn leaf_dns_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|err| format!("the first certificate does not parse: {err}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|err| format!("the first certificate's subjectAltName: {err}"))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Picks the chain whose leaf names the client's SNI: an exact name in any
/// chain first, then a wildcard (`*.example.com` covers one label), then the
/// first chain.
#[derive(Debug)]
struct SniResolver {
    entries: Vec<SniEntry>,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Option<&SniEntry> {
        let by_name = sni.and_then(|sni| {
            let exact = self
                .entries
                .iter()
                .find(|entry| entry.names.iter().any(|name| name.eq_ignore_ascii_case(sni)));
            exact.or_else(|| {
                self.entries
                    .iter()
                    .find(|entry| entry.names.iter().any(|name| wildcard_covers(name, sni)))
            })
        });
        by_name.or_else(|| self.entries.first())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
            .map(|entry| Arc::clone(&entry.key))
    }
}

/// Whether the wildcard `pattern` (`*.example.com`) covers `name`: exactly
/// one non-empty leftmost label in place of the star.
fn wildcard_covers(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    match name.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

/// The ticket-key file's accepted sizes, as nginx's `ssl_session_ticket_key`:
/// 16 bytes of key name, then 32 or 64 bytes of secret.
pub const TICKET_FILE_SIZES: [usize; 2] = [48, 80];
const TICKET_NAME_LEN: usize = 16;
/// The lifetime hint sent with each ticket; rotation (replace the file,
/// reload) is what really retires a key.
const TICKET_LIFETIME_SECS: u32 = 6 * 60 * 60;

/// One ticket key: its public name (sent in every ticket, to pick the key)
/// and the AES-256-GCM key derived from the file's secret.
#[derive(Clone)]
struct TicketKey {
    name: [u8; TICKET_NAME_LEN],
    key: LessSafeKey,
    /// The file's bytes hashed, to tell an unchanged file on reload.
    fingerprint: [u8; 32],
}

impl TicketKey {
    fn from_bytes(bytes: &[u8]) -> Option<TicketKey> {
        if !TICKET_FILE_SIZES.contains(&bytes.len()) {
            return None;
        }
        let (name, secret) = bytes.split_at(TICKET_NAME_LEN);
        let name: [u8; TICKET_NAME_LEN] = name.try_into().ok()?;
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"tlsgate session tickets");
        let prk = salt.extract(secret);
        let info = [&name[..]];
        let okm = prk.expand(&info, &AES_256_GCM).ok()?;
        let key = LessSafeKey::new(UnboundKey::from(okm));
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let fingerprint: [u8; 32] = digest.as_ref().try_into().ok()?;
        Some(TicketKey { name, key, fingerprint })
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let rest = ticket.strip_prefix(&self.name[..])?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut plain = sealed.to_vec();
        let length = self
            .key
            .open_in_place(nonce, Aad::from(&self.name), &mut plain)
            .ok()?
            .len();
        plain.truncate(length);
        Some(plain)
    }
}

/// Stateless resumption tickets under a key loaded from a file, shared by
/// all workers and by every box that loads the same file. Rotation: replace
/// the file and reload ([`TicketKeys::rotated`]); the previous key still
/// decrypts until the next rotation.
///
/// A ticket is the key's 16-byte name, a random 12-byte nonce and the
/// AES-256-GCM sealed session state (the name as associated data).
pub struct TicketKeys {
    current: TicketKey,
    previous: Option<TicketKey>,
    random: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("has_previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// Loads the key file: 48 or 80 bytes (`head -c 80 /dev/urandom >
    /// tickets.key`), readable by its owner only.
    pub fn from_file(path: &Path) -> Result<TicketKeys, TerminateError> {
        Ok(TicketKeys {
            current: read_ticket_key(path)?,
            previous: None,
            random: SystemRandom::new(),
        })
    }

    /// A random key for this process only (no file given).
    pub fn random() -> Result<TicketKeys, TerminateError> {
        let random = SystemRandom::new();
        let mut bytes = [0u8; 80];
        random
            .fill(&mut bytes)
            .map_err(|_| TerminateError::Config("no randomness for the ticket key".into()))?;
        let current = TicketKey::from_bytes(&bytes)
            .ok_or_else(|| TerminateError::Config("cannot derive the ticket key".into()))?;
        Ok(TicketKeys {
            current,
            previous: None,
            random,
        })
    }

    /// The keys after a reload of `path`: the file's key encrypts, this
    /// one's current key still decrypts. An unchanged file changes nothing.
    pub fn rotated(&self, path: &Path) -> Result<TicketKeys, TerminateError> {
        let loaded = read_ticket_key(path)?;
        let previous = if loaded.fingerprint == self.current.fingerprint {
            self.previous.clone()
        } else {
            Some(self.current.clone())
        };
        let current = if loaded.fingerprint == self.current.fingerprint {
            self.current.clone()
        } else {
            loaded
        };
        Ok(TicketKeys {
            current,
            previous,
            random: SystemRandom::new(),
        })
    }
}

fn read_ticket_key(path: &Path) -> Result<TicketKey, TerminateError> {
    let error = |reason: String| TerminateError::TicketKey {
        path: path.to_owned(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|err| error(err.to_string()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(error(format!(
            "can be read by other users (mode {mode:o}); whoever reads it can decrypt resumed sessions: `chmod 600`"
        )));
    }
    let bytes = std::fs::read(path).map_err(|err| error(err.to_string()))?;
    TicketKey::from_bytes(&bytes).ok_or_else(|| {
        error(format!(
            "holds {} bytes, a ticket key file holds 48 or 80 random bytes (`head -c 80 /dev/urandom > tickets.key`)",
            bytes.len()
        ))
    })
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.current.name),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = Vec::with_capacity(TICKET_NAME_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&self.current.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.current
            .open(cipher)
            .or_else(|| self.previous.as_ref().and_then(|previous| previous.open(cipher)))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, Connection, HandshakeKind, RootCertStore, ServerConnection};

    use super::*;

    /// A CA and leaves it signs, as the PEM a service is configured with.
    struct Pki {
        issuer: Issuer<'static, KeyPair>,
        ca_der: CertificateDer<'static>,
        dir: PathBuf,
    }

    impl Pki {
        fn new() -> Pki {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tlsgate-terminate-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().unwrap();
            let ca_der = params.self_signed(&key).unwrap().der().clone();
            Pki {
                issuer: Issuer::new(params, key),
                ca_der,
                dir,
            }
        }

        /// A leaf for `names` with its key; `file` names its files (in errors).
        fn leaf(&self, file: &str, names: &[&str]) -> (CertifiedKeyPem, CertificateDer<'static>) {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &self.issuer)
                .unwrap();
            let pem = CertifiedKeyPem {
                chain_path: self.dir.join(format!("{file}.pem")),
                chain: cert.pem().into_bytes(),
                key_path: self.dir.join(format!("{file}.key")),
                key: key.serialize_pem().into_bytes(),
            };
            (pem, cert.der().clone())
        }

        /// Writes a ticket key file (mode 0600) holding `bytes`.
        fn ticket_file(&self, file: &str, bytes: &[u8]) -> PathBuf {
            let path = self.dir.join(file);
            let _ = std::fs::remove_file(&path);
            let mut out = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&path)
                .unwrap();
            out.write_all(bytes).unwrap();
            path
        }

        fn client(&self, versions: &[TlsVersion]) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let versions: Vec<_> = versions.iter().map(|version| version.rustls()).collect();
            let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn transfer(from: &mut Connection, to: &mut Connection) {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut slice = bytes.as_slice();
        while !slice.is_empty() {
            to.read_tls(&mut slice).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    /// Completes a handshake of `client` with `service` for `name`, lets the
    /// client take the tickets, and returns how the server saw it and the
    /// leaf the client was shown.
    fn connect(
        client: &Arc<ClientConfig>,
        service: &ServiceTls,
        name: &str,
    ) -> (HandshakeKind, CertificateDer<'static>, Option<Vec<u8>>) {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut client = Connection::Client(ClientConnection::new(Arc::clone(client), name).unwrap());
        let mut server = Connection::Server(ServerConnection::new(service.server_config()).unwrap());
        for _ in 0..10 {
            transfer(&mut client, &mut server);
            transfer(&mut server, &mut client);
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(
            !client.is_handshaking() && !server.is_handshaking(),
            "the handshake completes"
        );
        transfer(&mut server, &mut client);
        let leaf = client.peer_certificates().unwrap()[0].clone();
        let alpn = server.alpn_protocol().map(<[u8]>::to_vec);
        (server.handshake_kind().unwrap(), leaf, alpn)
    }

    const BOTH: [TlsVersion; 2] = [TlsVersion::Tls12, TlsVersion::Tls13];

    #[test]
    fn sni_picks_the_chain_that_names_it_and_the_first_otherwise() {
        let pki = Pki::new();
        let (www, www_der) = pki.leaf("www", &["www.lab.test"]);
        let (api, api_der) = pki.leaf("api", &["api.lab.test", "*.wild.test"]);
        let service = ServiceTls::new(&[www.clone(), api.clone()], &BOTH, &[], None).unwrap();
        let client = pki.client(&BOTH);
        assert_eq!(connect(&client, &service, "www.lab.test").1, www_der);
        assert_eq!(connect(&client, &service, "api.lab.test").1, api_der);
        assert_eq!(connect(&client, &service, "x.wild.test").1, api_der);

        let provider = rustls::crypto::ring::default_provider();
        let resolver = SniResolver {
            entries: [www, api]
                .iter()
                .enumerate()
                .map(|(index, pem)| SniEntry::load(index, pem, &provider).unwrap())
                .collect(),
        };
        let picked = |sni| resolver.pick(sni).unwrap().names.clone();
        assert_eq!(picked(None), ["www.lab.test"], "no SNI: the first chain");
        assert_eq!(picked(Some("other.test")), ["www.lab.test"], "unknown: the first chain");
        assert_eq!(
            picked(Some("a.b.wild.test")),
            ["www.lab.test"],
            "a wildcard covers one label"
        );
        assert_eq!(
            picked(Some("API.lab.test"))[0],
            "api.lab.test",
            "names compare without case"
        );
    }

    #[test]
    fn an_exact_name_wins_over_an_earlier_wildcard() {
        let pki = Pki::new();
        let (wild, _) = pki.leaf("wild", &["*.lab.test"]);
        let (www, www_der) = pki.leaf("www", &["www.lab.test"]);
        let service = ServiceTls::new(&[wild, www], &BOTH, &[], None).unwrap();
        assert_eq!(connect(&pki.client(&BOTH), &service, "www.lab.test").1, www_der);
    }

    #[test]
    fn alpn_is_negotiated_as_configured() {
        let pki = Pki::new();
        let (www, _) = pki.leaf("www", &["www.lab.test"]);
        let service = ServiceTls::new(&[www], &BOTH, &[b"h2".to_vec(), b"http/1.1".to_vec()], None).unwrap();
        let mut client = (*pki.client(&BOTH)).clone();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        assert_eq!(
            connect(&Arc::new(client), &service, "www.lab.test").2.as_deref(),
            Some(&b"http/1.1"[..])
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_its_files() {
        let pki = Pki::new();
        let (www, _) = pki.leaf("www", &["www.lab.test"]);
        let (api, _) = pki.leaf("api", &["api.lab.test"]);
        let crossed = CertifiedKeyPem {
            key: www.key.clone(),
            key_path: www.key_path.clone(),
            ..api
        };
        let err = ServiceTls::new(&[www, crossed], &BOTH, &[], None).unwrap_err();
        assert!(matches!(err, TerminateError::KeyMismatch { index: 1, .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("www.key") && message.contains("api.pem"), "{message}");
    }

    #[test]
    fn unusable_pem_is_refused_naming_the_part() {
        let pki = Pki::new();
        let (www, _) = pki.leaf("www", &["www.lab.test"]);
        let no_key = CertifiedKeyPem {
            key: b"not a key".to_vec(),
            ..www.clone()
        };
        let err = ServiceTls::new(&[no_key], &BOTH, &[], None).unwrap_err();
        assert!(matches!(err, TerminateError::Key { index: 0, .. }), "{err:?}");
        let no_chain = CertifiedKeyPem {
            chain: Vec::new(),
            ..www.clone()
        };
        let err = ServiceTls::new(&[www, no_chain], &BOTH, &[], None).unwrap_err();
        assert!(matches!(err, TerminateError::Chain { index: 1, .. }), "{err:?}");
    }

    #[test]
    fn services_sharing_a_ticket_file_resume_each_others_sessions() {
        let pki = Pki::new();
        let (www, _) = pki.leaf("www", &["www.lab.test"]);
        let shared = pki.ticket_file("shared.key", &[7; 80]);
        let other = pki.ticket_file("other.key", &[9; 48]);
        for versions in [&[TlsVersion::Tls12][..], &[TlsVersion::Tls13]] {
            let from_file = |path: &Path| {
                let keys = Arc::new(TicketKeys::from_file(path).unwrap());
                ServiceTls::new(std::slice::from_ref(&www), versions, &[], Some(keys)).unwrap()
            };
            let (first, second, stranger) = (from_file(&shared), from_file(&shared), from_file(&other));
            let client = pki.client(versions);
            assert_eq!(connect(&client, &first, "www.lab.test").0, HandshakeKind::Full);
            assert_eq!(
                connect(&client, &second, "www.lab.test").0,
                HandshakeKind::Resumed,
                "{versions:?}: the same file resumes"
            );
            let client = pki.client(versions);
            connect(&client, &first, "www.lab.test");
            assert_eq!(
                connect(&client, &stranger, "www.lab.test").0,
                HandshakeKind::Full,
                "{versions:?}: another file does not"
            );
        }
    }

    #[test]
    fn a_rotation_still_accepts_the_previous_keys_tickets_once() {
        let pki = Pki::new();
        let (www, _) = pki.leaf("www", &["www.lab.test"]);
        let path = pki.ticket_file("tickets.key", &[1; 80]);
        let service = |keys: &Arc<TicketKeys>| {
            ServiceTls::new(std::slice::from_ref(&www), &BOTH, &[], Some(Arc::clone(keys))).unwrap()
        };
        let first_keys = Arc::new(TicketKeys::from_file(&path).unwrap());
        // Two clients holding tickets of the first key only (a resumed
        // connection brings tickets of the key then current).
        let (early, late) = (pki.client(&BOTH), pki.client(&BOTH));
        connect(&early, &service(&first_keys), "www.lab.test");
        connect(&late, &service(&first_keys), "www.lab.test");

        let unchanged = Arc::new(first_keys.rotated(&path).unwrap());
        assert!(unchanged.previous.is_none(), "an unchanged file is no rotation");

        pki.ticket_file("tickets.key", &[2; 80]);
        let second_keys = Arc::new(first_keys.rotated(&path).unwrap());
        assert_eq!(
            connect(&early, &service(&second_keys), "www.lab.test").0,
            HandshakeKind::Resumed,
            "the previous key still decrypts"
        );

        pki.ticket_file("tickets.key", &[3; 80]);
        let third_keys = Arc::new(second_keys.rotated(&path).unwrap());
        assert_eq!(
            connect(&late, &service(&third_keys), "www.lab.test").0,
            HandshakeKind::Full,
            "two rotations later the first key is gone"
        );
        assert_eq!(
            connect(&early, &service(&third_keys), "www.lab.test").0,
            HandshakeKind::Resumed,
            "the tickets issued under the second key still resume"
        );
    }

    #[test]
    fn bad_ticket_files_are_refused() {
        let pki = Pki::new();
        let short = pki.ticket_file("short.key", &[1; 32]);
        let err = TicketKeys::from_file(&short).unwrap_err().to_string();
        assert!(err.contains("holds 32 bytes") && err.contains("head -c 80"), "{err}");
        let exposed = pki.ticket_file("exposed.key", &[1; 80]);
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = TicketKeys::from_file(&exposed).unwrap_err().to_string();
        assert!(err.contains("other users"), "{err}");
        assert!(TicketKeys::from_file(&pki.dir.join("absent.key")).is_err());
    }

    #[test]
    fn forged_or_truncated_tickets_do_not_decrypt() {
        let keys = TicketKeys::random().unwrap();
        let ticket = keys.encrypt(b"session state").unwrap();
        assert_eq!(keys.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let mut flipped = ticket.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(keys.decrypt(&flipped), None);
        for length in 0..ticket.len() {
            assert_eq!(keys.decrypt(&ticket[..length]), None);
        }
        assert_eq!(TicketKeys::random().unwrap().decrypt(&ticket), None);
    }
}
