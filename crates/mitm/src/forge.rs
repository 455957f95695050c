//! Forging leaf certificates: the same subject and subjectAltNames as the
//! real server's certificate (plus the SNI if missing), never valid beyond
//! the real certificate or the issuing CA, all signed for one reusable leaf
//! key and cached per (real certificate, SNI).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::ca::{fingerprint, to_datetime, CertificateAuthority};
use crate::error::MitmError;

/// A forged certificate ready for a rustls server.
#[derive(Clone)]
pub struct Forged {
    pub certified: Arc<CertifiedKey>,
    /// SHA-256 fingerprint of the forged leaf.
    pub fingerprint: String,
    pub cache_hit: bool,
}

/// Which issuer signs: the appliance CA (clients trust it) for a server
/// whose certificate verified, a throwaway issuer (nobody trusts it) for
/// one whose certificate did not, so the client rejects it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trust {
    Trusted,
    Untrusted,
}

/// Cache and forging statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ForgeCounters {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    /// Approximate bytes the cached certificates take.
    pub cache_bytes: u64,
}

impl std::ops::Add for ForgeCounters {
    type Output = ForgeCounters;

    /// The counters of two forgers together.
    fn add(self, other: ForgeCounters) -> ForgeCounters {
        ForgeCounters {
            hits: self.hits + other.hits,
            misses: self.misses + other.misses,
            entries: self.entries + other.entries,
            cache_bytes: self.cache_bytes + other.cache_bytes,
        }
    }
}

type CacheKey = (String, Option<String>, Trust);

/// Forges and caches leaf certificates.
pub struct Forger {
    ca: CertificateAuthority,
    /// The throwaway issuer of [`Trust::Untrusted`] certificates, made at
    /// the first one (with that forge's date: the forger reads no clock).
    untrusted: Option<CertificateAuthority>,
    leaf_key: KeyPair,
    leaf_signing: Arc<dyn rustls::sign::SigningKey>,
    cache: HashMap<CacheKey, Forged>,
    order: VecDeque<CacheKey>,
    capacity: usize,
    counters: ForgeCounters,
}

impl Forger {
    /// A forger signing with `ca`, for `leaf_key` (an ECDSA P-256 key is
    /// generated when `None`), caching at most `capacity` certificates.
    pub fn new(ca: CertificateAuthority, leaf_key: Option<KeyPair>, capacity: usize) -> Result<Self, MitmError> {
        let leaf_key = match leaf_key {
            Some(key) => key,
            None => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(MitmError::forge)?,
        };
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(MitmError::forge)?;
        Ok(Forger {
            ca,
            untrusted: None,
            leaf_key,
            leaf_signing,
            cache: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            counters: ForgeCounters::default(),
        })
    }

    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    pub fn counters(&self) -> ForgeCounters {
        self.counters
    }

    /// The forged certificate for `real` (the server's leaf) as reached with
    /// `sni`, from the cache when possible; a new one is valid from a day
    /// before `now` (never beyond the real certificate or the issuer).
    pub fn forge(
        &mut self,
        real: &CertificateDer<'_>,
        sni: Option<&str>,
        trust: Trust,
        now: OffsetDateTime,
    ) -> Result<Forged, MitmError> {
        let key = (fingerprint(real), sni.map(str::to_owned), trust);
        if let Some(hit) = self.cache.get(&key) {
            self.counters.hits += 1;
            return Ok(Forged {
                cache_hit: true,
                ..hit.clone()
            });
        }
        self.counters.misses += 1;
        if trust == Trust::Untrusted && self.untrusted.is_none() {
            self.untrusted = Some(CertificateAuthority::generate("tlsgate untrusted issuer", 10, now)?);
        }
        let forged = self.forge_uncached(real, sni, trust, now)?;
        self.remember(key, &forged);
        Ok(forged)
    }

    /// A certificate for a destination no real certificate is known of
    /// (TLS the appliance answers itself, in front of a plain server):
    /// named `sni` (else the destination address `ip`), signed by the
    /// appliance CA, valid from a day before `now` for a week (never beyond
    /// the CA); cached per name and day.
    pub fn forge_for_name(&mut self, sni: Option<&str>, ip: IpAddr, now: OffsetDateTime) -> Result<Forged, MitmError> {
        let day = now.unix_timestamp().div_euclid(86_400);
        let name = sni.map_or_else(|| ip.to_string(), str::to_owned);
        let key = (format!("name {name} day {day}"), sni.map(str::to_owned), Trust::Trusted);
        if let Some(hit) = self.cache.get(&key) {
            self.counters.hits += 1;
            return Ok(Forged {
                cache_hit: true,
                ..hit.clone()
            });
        }
        self.counters.misses += 1;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.subject_alt_names = vec![match sni {
            Some(sni) => SanType::DnsName(sni.try_into().map_err(MitmError::forge)?),
            None => SanType::IpAddress(ip),
        }];
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - time::Duration::days(1);
        params.not_after = (now + time::Duration::days(7)).min(self.ca.not_after());
        let serial = ring::digest::digest(
            &ring::digest::SHA256,
            format!("name|{name}|{}", now.unix_timestamp_nanos()).as_bytes(),
        );
        let mut serial_bytes = serial.as_ref().get(..16).map(<[u8]>::to_vec).unwrap_or_default();
        if let Some(first) = serial_bytes.first_mut() {
            *first &= 0x7f;
        }
        params.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        let issuer = self.ca.issuer()?;
        let leaf = params.signed_by(&self.leaf_key, &issuer).map_err(MitmError::forge)?;
        let forged = Forged {
            fingerprint: fingerprint(leaf.der()),
            certified: Arc::new(CertifiedKey::new(
                std::iter::once(leaf.der().clone())
                    .chain(self.ca.chain().cloned())
                    .collect(),
                Arc::clone(&self.leaf_signing),
            )),
            cache_hit: false,
        };
        self.remember(key, &forged);
        Ok(forged)
    }

    /// Caches `forged` under `key`, the oldest entry making way when full.
    fn remember(&mut self, key: CacheKey, forged: &Forged) {
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                if let Some(evicted) = self.cache.remove(&oldest) {
                    self.counters.cache_bytes -= cached_size(&evicted);
                }
            }
        }
        self.counters.cache_bytes += cached_size(forged);
        self.cache.insert(key.clone(), forged.clone());
        self.order.push_back(key);
        self.counters.entries = self.cache.len() as u64;
    }

    fn forge_uncached(
        &self,
        real: &CertificateDer<'_>,
        sni: Option<&str>,
        trust: Trust,
        now: OffsetDateTime,
    ) -> Result<Forged, MitmError> {
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(real)
            .map_err(|err| MitmError::forge(format!("the server's certificate does not parse: {err}")))?;
        let issuer_ca = match (trust, &self.untrusted) {
            (Trust::Trusted, _) => &self.ca,
            (Trust::Untrusted, Some(untrusted)) => untrusted,
            (Trust::Untrusted, None) => return Err(MitmError::forge("no untrusted issuer")),
        };

        let mut params = CertificateParams::default();
        params.distinguished_name = mirror_subject(&parsed);
        params.subject_alt_names = mirror_alt_names(&parsed, sni)?;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        // Never valid longer than the real certificate or the CA.
        let real_not_before = to_datetime(parsed.validity().not_before.timestamp())?;
        let real_not_after = to_datetime(parsed.validity().not_after.timestamp())?;
        params.not_before = real_not_before.max(now - time::Duration::days(1)).min(real_not_after);
        params.not_after = real_not_after.min(issuer_ca.not_after());
        let serial = ring::digest::digest(
            &ring::digest::SHA256,
            format!(
                "{}|{}|{:?}|{}",
                fingerprint(real),
                sni.unwrap_or(""),
                trust,
                now.unix_timestamp_nanos()
            )
            .as_bytes(),
        );
        // A positive 127-bit serial, unique per forged certificate.
        let mut serial_bytes = serial.as_ref().get(..16).map(<[u8]>::to_vec).unwrap_or_default();
        if let Some(first) = serial_bytes.first_mut() {
            *first &= 0x7f;
        }
        params.serial_number = Some(SerialNumber::from_slice(&serial_bytes));

        let issuer = issuer_ca.issuer()?;
        let leaf = params.signed_by(&self.leaf_key, &issuer).map_err(MitmError::forge)?;
        let fingerprint = fingerprint(leaf.der());
        let chain: Vec<_> = std::iter::once(leaf.der().clone())
            .chain(issuer_ca.chain().cloned())
            .collect();
        Ok(Forged {
            certified: Arc::new(CertifiedKey::new(chain, Arc::clone(&self.leaf_signing))),
            fingerprint,
            cache_hit: false,
        })
    }
}

fn cached_size(forged: &Forged) -> u64 {
    forged.certified.cert.iter().map(|der| der.len() as u64).sum::<u64>() + 256
}

/// The real subject's common attributes, in order.
fn mirror_subject(real: &x509_parser::certificate::X509Certificate<'_>) -> DistinguishedName {
    use x509_parser::oid_registry as oids;
    let mut name = DistinguishedName::new();
    for attribute in real.subject().iter_attributes() {
        let oid = attribute.attr_type();
        let kind = if *oid == oids::OID_X509_COMMON_NAME {
            DnType::CommonName
        } else if *oid == oids::OID_X509_ORGANIZATION_NAME {
            DnType::OrganizationName
        } else if *oid == oids::OID_X509_ORGANIZATIONAL_UNIT {
            DnType::OrganizationalUnitName
        } else if *oid == oids::OID_X509_COUNTRY_NAME {
            DnType::CountryName
        } else if *oid == oids::OID_X509_STATE_OR_PROVINCE_NAME {
            DnType::StateOrProvinceName
        } else if *oid == oids::OID_X509_LOCALITY_NAME {
            DnType::LocalityName
        } else {
            continue;
        };
        if let Ok(value) = attribute.as_str() {
            name.push(kind, value);
        }
    }
    name
}

/// The real DNS and IP subjectAltNames, plus the SNI when it is not among them.
fn mirror_alt_names(
    real: &x509_parser::certificate::X509Certificate<'_>,
    sni: Option<&str>,
) -> Result<Vec<SanType>, MitmError> {
    let mut names = Vec::new();
    if let Ok(Some(extension)) = real.subject_alternative_name() {
        for general in &extension.value.general_names {
            match general {
                GeneralName::DNSName(dns) => {
                    if let Ok(name) = (*dns).try_into() {
                        names.push(SanType::DnsName(name));
                    }
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(SanType::IpAddress(ip));
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(sni) = sni {
        let present = names
            .iter()
            .any(|name| matches!(name, SanType::DnsName(dns) if dns.as_str().eq_ignore_ascii_case(sni)));
        if !present {
            names.push(SanType::DnsName(sni.try_into().map_err(MitmError::forge)?));
        }
    }
    Ok(names)
}
