//! The security grade of one TLS leg, from its protocol version and cipher
//! suite, on the scale of Durumeric et al., "The Security Impact of HTTPS
//! Interception" (NDSS 2017):
//!
//! - **A**: modern: TLS 1.3, or TLS 1.2 with an AEAD cipher (AES-GCM,
//!   AES-CCM, ChaCha20-Poly1305) and forward secrecy (ECDHE or DHE);
//! - **B**: suboptimal, no known practical attack: forward secrecy, but a
//!   CBC (non-AEAD) cipher, or TLS 1.1;
//! - **C**: known attacks: no forward secrecy (RSA or static DH key
//!   exchange), 3DES (Sweet32), or TLS 1.0 (BEAST);
//! - **F**: broken: SSL 2/3, NULL, anonymous or export suites, RC4, DES.
//!
//! The weakest property decides. A suite rustls does not know is graded by
//! what its IANA name says, and C when it has none (nothing known about it).

use rustls::{CipherSuite, ProtocolVersion};

/// A leg's grade, A (best) to F (broken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grade {
    A,
    B,
    C,
    F,
}

impl Grade {
    pub fn letter(self) -> &'static str {
        match self {
            Grade::A => "A",
            Grade::B => "B",
            Grade::C => "C",
            Grade::F => "F",
        }
    }
}

/// Parts of a suite name that make a leg broken.
const BROKEN: [&str; 6] = ["NULL", "EXPORT", "anon", "RC4", "_DES_", "RC2"];
/// Parts of a suite name that mean an AEAD cipher.
const AEAD: [&str; 3] = ["_GCM", "_CCM", "CHACHA20_POLY1305"];

/// What one leg negotiated, graded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegGrade {
    pub version: ProtocolVersion,
    pub suite: CipherSuite,
    /// The key exchange is ephemeral (ECDHE/DHE; always with TLS 1.3).
    pub forward_secrecy: bool,
    pub grade: Grade,
}

impl LegGrade {
    /// Grades `version` with `suite`.
    pub fn of(version: ProtocolVersion, suite: CipherSuite) -> LegGrade {
        let name = suite_name(suite);
        // The key exchange is what stands between "TLS_" and "_WITH_";
        // TLS 1.3 suites name none, its key exchange is always ephemeral.
        let exchange = name
            .strip_prefix("TLS_")
            .and_then(|rest| rest.split_once("_WITH_"))
            .map_or("", |(exchange, _)| exchange);
        let forward_secrecy =
            name.starts_with("TLS13_") || exchange.starts_with("ECDHE") || exchange.starts_with("DHE");
        let aead = AEAD.iter().any(|mode| name.contains(mode));
        let number = u16::from(version);
        let grade = if number < u16::from(ProtocolVersion::TLSv1_0) || BROKEN.iter().any(|weak| name.contains(weak)) {
            Grade::F
        } else if suite.as_str().is_none()
            || !forward_secrecy
            || name.contains("3DES")
            || number < u16::from(ProtocolVersion::TLSv1_1)
        {
            Grade::C
        } else if !aead || number < u16::from(ProtocolVersion::TLSv1_2) {
            Grade::B
        } else {
            Grade::A
        };
        LegGrade {
            version,
            suite,
            forward_secrecy,
            grade,
        }
    }

    /// The version as the connection log writes it (`TLSv1_2`).
    pub fn version_name(&self) -> String {
        format!("{:?}", self.version)
    }

    /// The suite's IANA name (rustls spelling), or its number.
    pub fn suite_name(&self) -> String {
        suite_name(self.suite)
    }
}

/// The IANA name of `suite` as rustls spells it, or `0x....`.
pub fn suite_name(suite: CipherSuite) -> String {
    suite
        .as_str()
        .map_or_else(|| format!("0x{:04x}", u16::from(suite)), str::to_owned)
}

/// The bulk cipher of `suite` (`AES_128_GCM_SHA256` of
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`), to compare suites across key
/// exchanges and versions.
pub fn bulk_cipher(suite: CipherSuite) -> String {
    let name = suite_name(suite);
    match name.split_once("_WITH_") {
        Some((_, bulk)) => bulk.to_owned(),
        None => name.strip_prefix("TLS13_").unwrap_or(&name).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grade(version: ProtocolVersion, suite: u16) -> (Grade, bool) {
        let graded = LegGrade::of(version, CipherSuite::from(suite));
        (graded.grade, graded.forward_secrecy)
    }

    #[test]
    fn modern_legs_get_an_a() {
        use ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(grade(TLSv1_3, 0x1301), (Grade::A, true), "TLS13_AES_128_GCM_SHA256");
        assert_eq!(grade(TLSv1_3, 0x1303), (Grade::A, true), "TLS13_CHACHA20_POLY1305");
        assert_eq!(grade(TLSv1_2, 0xc02b), (Grade::A, true), "ECDHE_ECDSA AES_128_GCM");
        assert_eq!(grade(TLSv1_2, 0xcca8), (Grade::A, true), "ECDHE_RSA CHACHA20");
        assert_eq!(grade(TLSv1_2, 0x009e), (Grade::A, true), "DHE_RSA AES_128_GCM");
    }

    #[test]
    fn cbc_or_tls11_with_forward_secrecy_get_a_b() {
        use ProtocolVersion::{TLSv1_1, TLSv1_2};
        assert_eq!(grade(TLSv1_2, 0xc013), (Grade::B, true), "ECDHE_RSA AES_128_CBC_SHA");
        assert_eq!(grade(TLSv1_2, 0xc027), (Grade::B, true), "ECDHE_RSA AES_128_CBC_SHA256");
        assert_eq!(grade(TLSv1_1, 0xc014), (Grade::B, true), "TLS 1.1 ECDHE CBC");
    }

    #[test]
    fn no_forward_secrecy_3des_or_tls10_get_a_c() {
        use ProtocolVersion::{TLSv1_0, TLSv1_2};
        assert_eq!(grade(TLSv1_2, 0x009c), (Grade::C, false), "RSA AES_128_GCM: no FS");
        assert_eq!(grade(TLSv1_2, 0x002f), (Grade::C, false), "RSA AES_128_CBC_SHA");
        assert_eq!(grade(TLSv1_2, 0xc012), (Grade::C, true), "ECDHE_RSA 3DES: Sweet32");
        assert_eq!(grade(TLSv1_0, 0xc013), (Grade::C, true), "TLS 1.0: BEAST");
        assert_eq!(grade(TLSv1_2, 0x5a5a), (Grade::C, false), "a suite nobody knows");
    }

    #[test]
    fn broken_legs_get_an_f() {
        use ProtocolVersion::{SSLv3, TLSv1_2};
        assert_eq!(grade(TLSv1_2, 0x0005).0, Grade::F, "RSA RC4_128_SHA");
        assert_eq!(grade(TLSv1_2, 0x0002).0, Grade::F, "RSA NULL_SHA");
        assert_eq!(grade(TLSv1_2, 0x0003).0, Grade::F, "EXPORT RC4_40");
        assert_eq!(grade(TLSv1_2, 0x0009).0, Grade::F, "RSA DES_CBC_SHA");
        assert_eq!(grade(TLSv1_2, 0x0034).0, Grade::F, "DH_anon AES_128_CBC_SHA");
        assert_eq!(grade(SSLv3, 0xc013).0, Grade::F, "SSL 3");
    }

    #[test]
    fn names_and_bulk_ciphers() {
        let suite = CipherSuite::from(0xc02f);
        assert_eq!(suite_name(suite), "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        assert_eq!(bulk_cipher(suite), "AES_128_GCM_SHA256");
        assert_eq!(bulk_cipher(CipherSuite::from(0x1301)), "AES_128_GCM_SHA256");
        assert_eq!(suite_name(CipherSuite::from(0x5a5a)), "0x5a5a");
        assert_eq!(LegGrade::of(ProtocolVersion::TLSv1_2, suite).version_name(), "TLSv1_2");
    }
}
