//! Reads what rustls does not expose from the first handshake bytes of each
//! side: the versions a ClientHello offers and whether it carries Encrypted
//! Client Hello, and how a server first answered (an alert, or the version
//! and suite of its ServerHello). Never panics on any input; what cannot be
//! read gives `None`.

use rustls::{AlertDescription, CipherSuite, ProtocolVersion};

const HANDSHAKE: u8 = 22;
const ALERT: u8 = 21;
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
const SUPPORTED_VERSIONS: u16 = 43;
/// `encrypted_client_hello` (RFC 9849); its first byte is 0 in an outer hello.
const ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

/// What a ClientHello offers, beyond what rustls's `ClientHello` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloOffer {
    /// `supported_versions` if present, else the legacy version alone.
    pub versions: Vec<ProtocolVersion>,
    pub suites: Vec<CipherSuite>,
    /// It is the outer hello of Encrypted Client Hello (its SNI is the
    /// public name; the real one is encrypted).
    pub ech_outer: bool,
}

/// How a server first answered a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAnswer {
    Alert(AlertDescription),
    /// A ServerHello: the version it selected and its suite.
    Hello {
        version: ProtocolVersion,
        suite: CipherSuite,
    },
}

/// A cursor over bytes that fails instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..len)?, self.0.get(len..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
    }

    fn u24(&mut self) -> Option<usize> {
        let bytes = self.take(3)?;
        Some(usize::from(*bytes.first()?) << 16 | usize::from(*bytes.get(1)?) << 8 | usize::from(*bytes.get(2)?))
    }

    /// A vector with a `width`-byte length prefix.
    fn vector(&mut self, width: usize) -> Option<Reader<'a>> {
        let len = match width {
            1 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        self.take(len).map(Reader)
    }
}

/// The first record's type and the payload of the consecutive records of
/// that type at the start of `bytes` (a handshake message may span records).
fn first_records(bytes: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut reader = Reader(bytes);
    let mut kind = None;
    let mut payload = Vec::new();
    while let Some(header) = reader.take(5) {
        let this = *header.first()?;
        if kind.is_some_and(|kind| kind != this) {
            break;
        }
        kind = Some(this);
        let len = usize::from(u16::from_be_bytes([*header.get(3)?, *header.get(4)?]));
        match reader.take(len) {
            Some(fragment) => payload.extend_from_slice(fragment),
            None => {
                payload.extend_from_slice(reader.0);
                break;
            }
        }
    }
    Some((kind?, payload))
}

/// The body of the first handshake message if it is of type `wanted`.
fn handshake_body(payload: &[u8], wanted: u8) -> Option<Reader<'_>> {
    let mut reader = Reader(payload);
    if reader.u8()? != wanted {
        return None;
    }
    let len = reader.u24()?;
    reader.take(len).map(Reader)
}

/// Reads the ClientHello at the start of the client's bytes.
pub fn client_offer(bytes: &[u8]) -> Option<HelloOffer> {
    let (kind, payload) = first_records(bytes)?;
    if kind != HANDSHAKE {
        return None;
    }
    let mut body = handshake_body(&payload, CLIENT_HELLO)?;
    let legacy_version = ProtocolVersion::from(body.u16()?);
    body.take(32)?;
    body.vector(1)?;
    let mut suites_bytes = body.vector(2)?;
    let mut suites = Vec::new();
    while let Some(suite) = suites_bytes.u16() {
        suites.push(CipherSuite::from(suite));
    }
    body.vector(1)?;
    let mut versions = vec![legacy_version];
    let mut ech_outer = false;
    // Extensions are optional in a ClientHello.
    let mut extensions = body.vector(2).unwrap_or(Reader(&[]));
    while let (Some(kind), Some(mut data)) = (extensions.u16(), extensions.vector(2)) {
        match kind {
            SUPPORTED_VERSIONS => {
                let mut list = data.vector(1)?;
                versions.clear();
                while let Some(version) = list.u16() {
                    versions.push(ProtocolVersion::from(version));
                }
            }
            ENCRYPTED_CLIENT_HELLO => ech_outer = data.u8() == Some(0),
            _ => {}
        }
    }
    Some(HelloOffer {
        versions,
        suites,
        ech_outer,
    })
}

/// Reads how the server first answered, from the start of its bytes.
pub fn server_answer(bytes: &[u8]) -> Option<ServerAnswer> {
    let (kind, payload) = first_records(bytes)?;
    match kind {
        ALERT => Some(ServerAnswer::Alert(AlertDescription::from(*payload.get(1)?))),
        HANDSHAKE => {
            let mut body = handshake_body(&payload, SERVER_HELLO)?;
            let mut version = ProtocolVersion::from(body.u16()?);
            body.take(32)?;
            body.vector(1)?;
            let suite = CipherSuite::from(body.u16()?);
            body.u8()?;
            let mut extensions = body.vector(2).unwrap_or(Reader(&[]));
            while let (Some(kind), Some(mut data)) = (extensions.u16(), extensions.vector(2)) {
                if kind == SUPPORTED_VERSIONS {
                    version = ProtocolVersion::from(data.u16()?);
                }
            }
            Some(ServerAnswer::Hello { version, suite })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `kind` around `payload`.
    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 3, 1];
        out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn client_hello(suites: &[u16], extensions: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&u16::try_from(suites.len() * 2).unwrap().to_be_bytes());
        for suite in suites {
            body.extend_from_slice(&suite.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        let extensions: Vec<u8> = extensions.concat();
        body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&extensions);
        record(HANDSHAKE, &handshake(CLIENT_HELLO, &body))
    }

    #[test]
    fn reads_versions_suites_and_ech_of_a_client_hello() {
        let hello = client_hello(
            &[0x1301, 0xc02f],
            &[
                extension(SUPPORTED_VERSIONS, &[4, 3, 4, 3, 3]),
                extension(ENCRYPTED_CLIENT_HELLO, &[0, 0, 1, 0, 1]),
            ],
        );
        let offer = client_offer(&hello).unwrap();
        assert_eq!(offer.versions, [ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2]);
        assert_eq!(
            offer.suites,
            [
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            ]
        );
        assert!(offer.ech_outer);
        // An inner hello (type 1) is not an outer one; no extension: the
        // legacy version alone.
        let inner = client_hello(&[0x1301], &[extension(ENCRYPTED_CLIENT_HELLO, &[1])]);
        assert!(!client_offer(&inner).unwrap().ech_outer);
        assert_eq!(
            client_offer(&client_hello(&[0xc02f], &[])).unwrap().versions,
            [ProtocolVersion::TLSv1_2]
        );
        // Split over two records, as a client may send it.
        let payload = &hello[5..];
        let split = [record(HANDSHAKE, &payload[..40]), record(HANDSHAKE, &payload[40..])].concat();
        assert_eq!(client_offer(&split), Some(offer));
    }

    #[test]
    fn reads_a_servers_alert_or_hello() {
        assert_eq!(
            server_answer(&record(ALERT, &[2, 40])),
            Some(ServerAnswer::Alert(AlertDescription::HandshakeFailure))
        );
        let mut body = vec![3, 1];
        body.extend_from_slice(&[9; 32]);
        body.push(0);
        body.extend_from_slice(&[0x00, 0x2f, 0]);
        assert_eq!(
            server_answer(&record(HANDSHAKE, &handshake(SERVER_HELLO, &body))),
            Some(ServerAnswer::Hello {
                version: ProtocolVersion::TLSv1_0,
                suite: CipherSuite::TLS_RSA_WITH_AES_128_CBC_SHA,
            })
        );
    }

    #[test]
    fn never_panics_on_truncated_or_random_bytes() {
        let hello = client_hello(&[0x1301], &[extension(SUPPORTED_VERSIONS, &[2, 3, 4])]);
        for end in 0..hello.len() {
            let _ = client_offer(&hello[..end]);
            let _ = server_answer(&hello[..end]);
        }
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = client_offer(&bytes);
            let _ = server_answer(&bytes);
        }
    }
}
