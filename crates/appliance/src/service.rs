//! The `[[service]]` entries compiled for the data path: which destinations
//! and ports the appliance terminates TLS for ([`Services::owns`], asked at
//! the SYN), which service answers a ClientHello ([`Services::for_hello`]),
//! and for each its TLS server configuration, backend and header.
//!
//! Built once from the configuration (at start and by `tlsgate check`, which
//! load every certificate, key and ticket file and name the key at fault),
//! and again on reload over the running ones ([`Services::reloaded`]), which
//! keeps each ticket file's previous key for decryption.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use mitm::terminate::{CertifiedKeyPem, ServiceTls, TerminateError, TicketKeys, TlsVersion};
use thiserror::Error;
use wire::proxy::HeaderKind;
use wire::FlowTuple;

use crate::config::{BackendSource, ServiceConfig, ServiceHeader, ServiceTlsVersion};

/// A service that did not load, by its key (`service[0].certificates[1].key`).
#[derive(Debug, Error)]
#[error("service[{index}].{key}: {reason}")]
pub struct ServiceError {
    pub index: usize,
    pub key: String,
    pub reason: String,
}

/// Where a service's plaintext goes, and from which address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The server the client connected to, on another port, from the
    /// client's address and port.
    SamePeer { port: u16 },
    /// Another address, reached transparently from the client's address
    /// and port.
    Transparent { address: IpAddr, port: u16 },
    /// Another address, reached from an owned address of the server port
    /// (see [`crate::owned`]): a routed connection.
    FromAppliance { address: IpAddr, port: u16 },
}

/// One compiled `[[service]]`.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub backend: Backend,
    /// Written to the backend before the plaintext, if any.
    pub header: Option<HeaderKind>,
    pub tls: ServiceTls,
    /// The plaintext goes through the inspection pair and the capture.
    pub inspect: bool,
    destinations: Vec<IpNet>,
    port: u16,
    /// Lower-cased; empty: any name, and none.
    server_names: Vec<String>,
}

impl Service {
    fn owns(&self, tuple: &FlowTuple) -> bool {
        tuple.dst_port == self.port && self.destinations.iter().any(|net| net.contains(&tuple.dst_ip))
    }

    /// Whether `tuple` goes to this service's backend: its `{ port }` on one
    /// of its destinations, or its `{ address, port }`.
    fn backend_is(&self, tuple: &FlowTuple) -> bool {
        match self.backend {
            Backend::SamePeer { port } => {
                tuple.dst_port == port && self.destinations.iter().any(|net| net.contains(&tuple.dst_ip))
            }
            Backend::Transparent { address, port } | Backend::FromAppliance { address, port } => {
                tuple.dst_port == port && tuple.dst_ip == address
            }
        }
    }

    fn names(&self, sni: &str) -> bool {
        self.server_names.iter().any(|name| name.eq_ignore_ascii_case(sni))
    }
}

/// Every `[[service]]`, in configuration order.
#[derive(Debug)]
pub struct Services {
    list: Vec<Service>,
    /// Ticket keys by file, shared by the services naming the same file.
    tickets: HashMap<PathBuf, Arc<TicketKeys>>,
    /// The key of the services without a ticket file: one per process
    /// (made when a service first needs it), kept across reloads.
    process_tickets: Option<Arc<TicketKeys>>,
}

impl Services {
    /// Loads every certificate, key and ticket file of `list`.
    pub fn from_config(list: &[ServiceConfig]) -> Result<Services, ServiceError> {
        Services::build(list, &HashMap::new(), None)
    }

    /// `list` loaded over the running services: a ticket file they already
    /// use is rotated (its previous key still decrypts), the per-process
    /// key is kept.
    pub fn reloaded(&self, list: &[ServiceConfig]) -> Result<Services, ServiceError> {
        Services::build(list, &self.tickets, self.process_tickets.clone())
    }

    fn build(
        list: &[ServiceConfig],
        running: &HashMap<PathBuf, Arc<TicketKeys>>,
        mut process_tickets: Option<Arc<TicketKeys>>,
    ) -> Result<Services, ServiceError> {
        let mut tickets: HashMap<PathBuf, Arc<TicketKeys>> = HashMap::new();
        let mut compiled = Vec::with_capacity(list.len());
        for (index, config) in list.iter().enumerate() {
            let error = |err: TerminateError| ServiceError {
                index,
                key: terminate_key(&err),
                reason: err.to_string(),
            };
            let keys = match &config.ticket_key {
                None => match &process_tickets {
                    Some(keys) => Arc::clone(keys),
                    None => {
                        let keys = Arc::new(TicketKeys::random().map_err(error)?);
                        process_tickets = Some(Arc::clone(&keys));
                        keys
                    }
                },
                Some(path) => match tickets.get(path) {
                    Some(keys) => Arc::clone(keys),
                    None => {
                        let keys = match running.get(path) {
                            Some(running) => running.rotated(path),
                            None => TicketKeys::from_file(path),
                        }
                        .map(Arc::new)
                        .map_err(error)?;
                        tickets.insert(path.clone(), Arc::clone(&keys));
                        keys
                    }
                },
            };
            let chains = config
                .certificates
                .iter()
                .enumerate()
                .map(|(position, files)| CertifiedKeyPem::read(position, &files.chain, &files.key))
                .collect::<Result<Vec<_>, _>>()
                .map_err(error)?;
            let versions: Vec<TlsVersion> = config
                .tls_versions
                .iter()
                .map(|version| match version {
                    ServiceTlsVersion::Tls12 => TlsVersion::Tls12,
                    ServiceTlsVersion::Tls13 => TlsVersion::Tls13,
                })
                .collect();
            let alpn: Vec<Vec<u8>> = config
                .alpn
                .iter()
                .map(|protocol| protocol.as_bytes().to_vec())
                .collect();
            let tls = ServiceTls::new(&chains, &versions, &alpn, Some(keys)).map_err(error)?;
            compiled.push(Service {
                name: config.name.clone(),
                backend: match (config.backend.address, config.backend.source) {
                    (None, _) => Backend::SamePeer {
                        port: config.backend.port,
                    },
                    (Some(address), BackendSource::Client) => Backend::Transparent {
                        address,
                        port: config.backend.port,
                    },
                    (Some(address), BackendSource::Appliance) => Backend::FromAppliance {
                        address,
                        port: config.backend.port,
                    },
                },
                header: match config.header {
                    ServiceHeader::None => None,
                    ServiceHeader::ProxyV1 => Some(HeaderKind::ProxyV1),
                    ServiceHeader::ProxyV2 => Some(HeaderKind::ProxyV2),
                    ServiceHeader::WriteIp => Some(HeaderKind::WriteIp),
                },
                tls,
                inspect: config.inspect,
                destinations: config.destinations.iter().map(|destination| destination.0).collect(),
                port: config.port,
                server_names: config
                    .server_names
                    .iter()
                    .map(|name| name.to_ascii_lowercase())
                    .collect(),
            });
        }
        Ok(Services {
            list: compiled,
            tickets,
            process_tickets,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether a service answers `tuple`'s destination and port (at the
    /// SYN: the appliance then answers it as the server).
    pub fn owns(&self, tuple: &FlowTuple) -> bool {
        self.list.iter().any(|service| service.owns(tuple))
    }

    /// The service answering `sni` at `tuple`'s destination and port: the
    /// first that lists the name, else the first without `server_names`;
    /// none when every service there lists other names.
    pub fn for_hello(&self, tuple: &FlowTuple, sni: Option<&str>) -> Option<&Service> {
        let mut here = self.list.iter().filter(|service| service.owns(tuple));
        let named = sni.and_then(|sni| here.clone().find(|service| service.names(sni)));
        named.or_else(|| here.find(|service| service.server_names.is_empty()))
    }

    /// The service whose backend `tuple`'s destination and port are, if
    /// any. Only the appliance connects there (from the server port, the
    /// header first): a client that did would write its own header, which
    /// the backend trusts.
    pub fn backend_of(&self, tuple: &FlowTuple) -> Option<&Service> {
        self.list.iter().find(|service| service.backend_is(tuple))
    }
}

/// The key below `service[i]` a TLS loading error is about.
fn terminate_key(err: &TerminateError) -> String {
    match err {
        TerminateError::Chain { index, .. } => format!("certificates[{index}].chain"),
        TerminateError::Key { index, .. } | TerminateError::KeyMismatch { index, .. } => {
            format!("certificates[{index}].key")
        }
        TerminateError::NoCertificates | TerminateError::Config(_) => "certificates".into(),
        TerminateError::NoVersions => "tls_versions".into(),
        TerminateError::TicketKey { .. } => "ticket_key".into(),
    }
}

/// Service files on disk for the tests of this module and of `reload`.
#[cfg(test)]
pub(crate) mod test_files {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{CertificateParams, KeyPair};

    /// A scratch directory, removed when dropped.
    pub(crate) struct Scratch(pub(crate) PathBuf);

    impl Scratch {
        pub(crate) fn new() -> Scratch {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tlsgate-service-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// A self-signed leaf for `names`: (chain path, key path).
        pub(crate) fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
            let cert = CertificateParams::new(names).unwrap().self_signed(&key).unwrap();
            let (chain, key_path) = (self.0.join(format!("{file}.pem")), self.0.join(format!("{file}.key")));
            std::fs::write(&chain, cert.pem()).unwrap();
            self.private(&key_path, key.serialize_pem().as_bytes());
            (chain, key_path)
        }

        /// Writes `bytes` to `path` readable by its owner only (replacing it).
        pub(crate) fn private(&self, path: &Path, bytes: &[u8]) {
            let _ = std::fs::remove_file(path);
            let mut file = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(path)
                .unwrap();
            file.write_all(bytes).unwrap();
        }

        /// A `[[service]]` table named `name` with one chain.
        pub(crate) fn service_toml(&self, name: &str, destination: &str, names: &[&str], extra: &str) -> String {
            let (chain, key) = self.leaf(name, &["www.lab.test"]);
            format!(
                "[[service]]\nname = \"{name}\"\ndestinations = [\"{destination}\"]\nport = 443\nserver_names = {names:?}\n\
                 certificates = [ {{ chain = \"{}\", key = \"{}\" }} ]\nbackend = {{ port = 8080 }}\n{extra}\n",
                chain.display(),
                key.display()
            )
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustls::server::ProducesTickets;

    use super::test_files::Scratch;
    use super::*;
    use crate::config::Config;

    const BASE: &str = "[dataplane]\n[ports.client]\ndevice = \"net_ring0\"\n[ports.server]\ndevice = \"net_ring1\"\n";

    fn services_of(text: &str) -> Result<Services, ServiceError> {
        let config = Config::parse(&format!("{BASE}{text}"), Path::new("test.toml")).unwrap();
        Services::from_config(&config.service)
    }

    fn tuple(destination: &str, port: u16) -> FlowTuple {
        FlowTuple {
            src_ip: "198.18.0.2".parse().unwrap(),
            dst_ip: destination.parse().unwrap(),
            src_port: 40000,
            dst_port: port,
        }
    }

    #[test]
    fn services_own_their_destinations_and_answer_their_names() {
        let scratch = Scratch::new();
        let services = services_of(&format!(
            "{}{}{}",
            scratch.service_toml("www", "198.18.1.2", &["www.lab.test"], "header = \"proxy-v2\""),
            scratch.service_toml("api", "198.18.1.2", &["api.lab.test"], "inspect = false"),
            scratch
                .service_toml(
                    "any",
                    "198.18.2.0/24",
                    &[],
                    "backend = { address = \"198.18.3.3\", port = 443 }"
                )
                .replace("backend = { port = 8080 }\n", ""),
        ))
        .unwrap();
        assert!(services.owns(&tuple("198.18.1.2", 443)));
        assert!(services.owns(&tuple("198.18.2.77", 443)));
        assert!(!services.owns(&tuple("198.18.1.2", 80)), "another port");
        assert!(!services.owns(&tuple("198.18.1.3", 443)), "another address");

        let backend = |destination, port| services.backend_of(&tuple(destination, port)).map(|s| s.name.as_str());
        assert_eq!(
            backend("198.18.1.2", 8080),
            Some("www"),
            "a destination on the backend port"
        );
        assert_eq!(
            backend("198.18.2.77", 8080),
            None,
            "that service's backend is elsewhere"
        );
        assert_eq!(backend("198.18.3.3", 443), Some("any"), "a transparent backend");
        assert_eq!(backend("198.18.3.3", 8080), None);
        assert_eq!(backend("198.18.1.2", 443), None, "the service itself");

        let name = |destination, sni| {
            services
                .for_hello(&tuple(destination, 443), sni)
                .map(|s| s.name.as_str())
        };
        assert_eq!(name("198.18.1.2", Some("www.lab.test")), Some("www"));
        assert_eq!(name("198.18.1.2", Some("API.lab.test")), Some("api"));
        assert_eq!(
            name("198.18.1.2", Some("other.test")),
            None,
            "no service there answers it"
        );
        assert_eq!(name("198.18.1.2", None), None);
        assert_eq!(name("198.18.2.1", Some("other.test")), Some("any"));
        assert_eq!(name("198.18.2.1", None), Some("any"));

        let www = services
            .for_hello(&tuple("198.18.1.2", 443), Some("www.lab.test"))
            .unwrap();
        assert_eq!(www.header, Some(HeaderKind::ProxyV2));
        assert_eq!(www.backend, Backend::SamePeer { port: 8080 });
        assert!(www.inspect);
        let any = services.for_hello(&tuple("198.18.2.1", 443), None).unwrap();
        assert_eq!(
            any.backend,
            Backend::Transparent {
                address: "198.18.3.3".parse().unwrap(),
                port: 443
            }
        );
        assert_eq!(any.header, None);
        assert!(
            !services
                .for_hello(&tuple("198.18.1.2", 443), Some("api.lab.test"))
                .unwrap()
                .inspect
        );
    }

    #[test]
    fn unloadable_files_are_named_by_their_key() {
        let scratch = Scratch::new();
        let (chain, key) = scratch.leaf("second", &["second.lab.test"]);
        let (_, other_key) = scratch.leaf("third", &["third.lab.test"]);
        let with_second = |key: &Path| {
            scratch.service_toml("www", "198.18.1.2", &[], "").replace(
                " } ]\n",
                &format!(
                    " }}, {{ chain = \"{}\", key = \"{}\" }} ]\n",
                    chain.display(),
                    key.display()
                ),
            )
        };
        services_of(&with_second(&key)).unwrap();
        let err = services_of(&with_second(&other_key)).unwrap_err().to_string();
        assert!(
            err.starts_with("service[0].certificates[1].key: ") && err.contains("does not match its certificate"),
            "{err}"
        );
        let err = services_of(&with_second(&scratch.0.join("absent.key")))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("service[0].certificates[1].key: "), "{err}");
        let missing_chain = scratch
            .service_toml("www", "198.18.1.2", &[], "")
            .replace("www.pem", "absent.pem");
        let err = services_of(&missing_chain).unwrap_err().to_string();
        assert!(err.starts_with("service[0].certificates[0].chain: "), "{err}");
        let short_ticket = scratch.0.join("short.key");
        scratch.private(&short_ticket, &[0; 20]);
        let ticket = format!("ticket_key = \"{}\"", short_ticket.display());
        let err = services_of(&scratch.service_toml("www", "198.18.1.2", &[], &ticket))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("service[0].ticket_key: ") && err.contains("80"),
            "{err}"
        );
    }

    #[test]
    fn a_reload_rotates_a_replaced_ticket_file_and_keeps_the_process_key() {
        let scratch = Scratch::new();
        let ticket_path = scratch.0.join("tickets.key");
        scratch.private(&ticket_path, &[1; 80]);
        let ticket = format!("ticket_key = \"{}\"", ticket_path.display());
        let text = format!(
            "{}{}{}",
            scratch.service_toml("www", "198.18.1.2", &[], &ticket),
            scratch.service_toml("api", "198.18.1.3", &[], &ticket),
            scratch.service_toml("plain", "198.18.1.4", &[], ""),
        );
        let config = Config::parse(&format!("{BASE}{text}"), Path::new("test.toml")).unwrap();
        let running = Services::from_config(&config.service).unwrap();
        assert_eq!(
            running.tickets.len(),
            1,
            "one key per file, shared by the services naming it"
        );
        let old_ticket = running.tickets[&ticket_path].encrypt(b"state").unwrap();

        scratch.private(&ticket_path, &[2; 80]);
        let reloaded = running.reloaded(&config.service).unwrap();
        let keys = &reloaded.tickets[&ticket_path];
        assert_eq!(
            keys.decrypt(&old_ticket).as_deref(),
            Some(&b"state"[..]),
            "the previous key decrypts"
        );
        let new_ticket = keys.encrypt(b"state").unwrap();
        assert_eq!(
            running.tickets[&ticket_path].decrypt(&new_ticket),
            None,
            "the new key encrypts"
        );
        assert!(Arc::ptr_eq(
            running.process_tickets.as_ref().unwrap(),
            reloaded.process_tickets.as_ref().unwrap()
        ));

        let fresh = Services::from_config(&config.service).unwrap();
        assert_eq!(
            fresh.tickets[&ticket_path].decrypt(&old_ticket),
            None,
            "a fresh load has no previous key"
        );
    }
}
