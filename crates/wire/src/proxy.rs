//! The headers a terminating appliance writes to its backend before the
//! plaintext, so the backend learns who the client is: HAProxy's PROXY
//! protocol in its text (v1) and binary (v2) forms, and stud's `--write-ip`
//! octets. Encoders only; the backend parses.
//!
//! Formats (HAProxy's "proxy-protocol.txt", stud's `--write-ip`):
//! - v1: `PROXY TCP4 <src> <dst> <srcport> <dstport>\r\n` (`TCP6` for IPv6).
//! - v2: the 12-byte signature, version/command `0x21` (v2, PROXY), family
//!   `0x11` (TCP over IPv4) or `0x21` (TCP over IPv6), a big-endian length,
//!   the addresses and ports, then TLVs: `PP2_TYPE_ALPN`,
//!   `PP2_TYPE_AUTHORITY` (the SNI) and `PP2_TYPE_SSL` with its
//!   `PP2_SUBTYPE_SSL_VERSION` and `PP2_SUBTYPE_SSL_CIPHER` sub-TLVs.
//! - write-ip: one octet with the Linux address family (`AF_INET` = 2,
//!   `AF_INET6` = 10), then the client's 4 or 16 address bytes; no port.
//!
//! Both addresses of a v1/v2 header share one family: a pair of mixed
//! families (which a transparent flow never has) is written as IPv6 with the
//! IPv4 address mapped (`::ffff:a.b.c.d`).

use std::net::{IpAddr, SocketAddr};

/// Which header goes to the backend before the plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderKind {
    /// HAProxy PROXY protocol version 1 (one text line).
    ProxyV1,
    /// HAProxy PROXY protocol version 2 (binary, with the TLS TLVs).
    ProxyV2,
    /// stud's `--write-ip`: the address family octet and the client's address.
    WriteIp,
}

/// What the TLS handshake with the client settled, for the v2 TLVs.
#[derive(Clone, Copy, Debug)]
pub struct TlsFacts<'a> {
    /// The protocol version as OpenSSL names it, e.g. `TLSv1.3`.
    pub version: &'a str,
    /// The negotiated cipher suite's name.
    pub cipher: &'a str,
    /// The server name the client asked for, if it sent one.
    pub sni: Option<&'a str>,
    /// The negotiated application protocol, if any.
    pub alpn: Option<&'a [u8]>,
}

const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
const V2_VERSION_PROXY: u8 = 0x21;
const V2_TCP_OVER_IPV4: u8 = 0x11;
const V2_TCP_OVER_IPV6: u8 = 0x21;
const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// `pp2_tlv_ssl.client`: the client connected over TLS (no client certificate).
const PP2_CLIENT_SSL: u8 = 0x01;
const LINUX_AF_INET: u8 = 2;
const LINUX_AF_INET6: u8 = 10;

/// The header of `kind` for a connection from `client` to `server`; `tls`
/// adds the v2 TLVs (ignored by v1 and write-ip, which have no room for it).
pub fn encode(kind: HeaderKind, client: SocketAddr, server: SocketAddr, tls: Option<&TlsFacts>) -> Vec<u8> {
    match kind {
        HeaderKind::ProxyV1 => encode_v1(client, server),
        HeaderKind::ProxyV2 => encode_v2(client, server, tls),
        HeaderKind::WriteIp => encode_write_ip(client.ip()),
    }
}

/// Both addresses in one family: IPv6 (IPv4 mapped) when they differ.
fn same_family(client: SocketAddr, server: SocketAddr) -> (IpAddr, IpAddr) {
    match (client.ip(), server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => (IpAddr::V4(c), IpAddr::V4(s)),
        (c, s) => (IpAddr::V6(mapped(c)), IpAddr::V6(mapped(s))),
    }
}

fn mapped(address: IpAddr) -> std::net::Ipv6Addr {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn encode_v1(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(client, server);
    let protocol = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {protocol} {source} {destination} {} {}\r\n",
        client.port(),
        server.port()
    )
    .into_bytes()
}

fn encode_v2(client: SocketAddr, server: SocketAddr, tls: Option<&TlsFacts>) -> Vec<u8> {
    let (source, destination) = same_family(client, server);
    let mut body = Vec::with_capacity(128);
    let family = match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            V2_TCP_OVER_IPV4
        }
        (s, d) => {
            body.extend_from_slice(&mapped(s).octets());
            body.extend_from_slice(&mapped(d).octets());
            V2_TCP_OVER_IPV6
        }
    };
    body.extend_from_slice(&client.port().to_be_bytes());
    body.extend_from_slice(&server.port().to_be_bytes());
    if let Some(tls) = tls {
        if let Some(alpn) = tls.alpn {
            push_tlv(&mut body, PP2_TYPE_ALPN, alpn);
        }
        if let Some(sni) = tls.sni {
            push_tlv(&mut body, PP2_TYPE_AUTHORITY, sni.as_bytes());
        }
        // pp2_tlv_ssl: client flags, a 32-bit verify result (0: no client
        // certificate to fail), then the sub-TLVs.
        let mut ssl = vec![PP2_CLIENT_SSL, 0, 0, 0, 0];
        push_tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, tls.version.as_bytes());
        push_tlv(&mut ssl, PP2_SUBTYPE_SSL_CIPHER, tls.cipher.as_bytes());
        push_tlv(&mut body, PP2_TYPE_SSL, &ssl);
    }
    let mut header = Vec::with_capacity(16 + body.len());
    header.extend_from_slice(&V2_SIGNATURE);
    header.push(V2_VERSION_PROXY);
    header.push(family);
    header.extend_from_slice(&clamped_length(body.len()).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

/// A TLV whose value is cut to the 16-bit length field (no SNI, ALPN or
/// cipher name comes near it: a ClientHello's names are far shorter).
fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let length = clamped_length(value.len());
    out.push(kind);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(value.get(..usize::from(length)).unwrap_or(value));
}

fn clamped_length(length: usize) -> u16 {
    u16::try_from(length).unwrap_or(u16::MAX)
}

fn encode_write_ip(client: IpAddr) -> Vec<u8> {
    match client {
        IpAddr::V4(v4) => [&[LINUX_AF_INET][..], &v4.octets()].concat(),
        IpAddr::V6(v6) => [&[LINUX_AF_INET6][..], &v6.octets()].concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> (SocketAddr, SocketAddr) {
        ("198.18.0.2:51234".parse().unwrap(), "198.18.1.2:443".parse().unwrap())
    }

    fn v6() -> (SocketAddr, SocketAddr) {
        ("[2001:2::1]:51234".parse().unwrap(), "[2001:2::2]:443".parse().unwrap())
    }

    const FACTS: TlsFacts<'static> = TlsFacts {
        version: "TLSv1.3",
        cipher: "TLS13_AES_128_GCM_SHA256",
        sni: Some("www.lab.test"),
        alpn: Some(b"h2"),
    };

    #[test]
    fn v1_ipv4_is_the_exact_line() {
        let (client, server) = v4();
        assert_eq!(
            encode(HeaderKind::ProxyV1, client, server, Some(&FACTS)),
            b"PROXY TCP4 198.18.0.2 198.18.1.2 51234 443\r\n"
        );
    }

    #[test]
    fn v1_ipv6_is_the_exact_line_and_parses_back() {
        let (client, server) = v6();
        let line = encode(HeaderKind::ProxyV1, client, server, None);
        assert_eq!(line, b"PROXY TCP6 2001:2::1 2001:2::2 51234 443\r\n");
        let text = std::str::from_utf8(&line).unwrap();
        let parsed = ppp::v1::Header::try_from(text).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v1::Addresses::new_tcp6(
                "2001:2::1".parse::<std::net::Ipv6Addr>().unwrap(),
                "2001:2::2".parse::<std::net::Ipv6Addr>().unwrap(),
                51234,
                443
            )
        );
    }

    #[test]
    fn v1_mixed_families_are_written_as_mapped_ipv6() {
        let client: SocketAddr = "198.18.0.2:1000".parse().unwrap();
        let server: SocketAddr = "[2001:2::2]:443".parse().unwrap();
        assert_eq!(
            encode(HeaderKind::ProxyV1, client, server, None),
            b"PROXY TCP6 ::ffff:198.18.0.2 2001:2::2 1000 443\r\n"
        );
    }

    #[test]
    fn v2_ipv4_without_tls_is_the_exact_bytes() {
        let (client, server) = v4();
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 18, 0, 2, 198, 18, 1, 2, 0xC8, 0x22, 0x01, 0xBB]);
        assert_eq!(encode(HeaderKind::ProxyV2, client, server, None), expected);
    }

    #[test]
    fn v2_with_tls_parses_back_with_every_tlv() {
        for (client, server) in [v4(), v6()] {
            let bytes = encode(HeaderKind::ProxyV2, client, server, Some(&FACTS));
            let header = ppp::v2::Header::try_from(bytes.as_slice()).unwrap();
            assert_eq!(header.len(), bytes.len(), "the header's length covers every TLV");
            assert_eq!(header.command, ppp::v2::Command::Proxy);
            assert_eq!(header.protocol, ppp::v2::Protocol::Stream);
            match (header.addresses, client, server) {
                (ppp::v2::Addresses::IPv4(a), SocketAddr::V4(c), SocketAddr::V4(s)) => {
                    assert_eq!((a.source_address, a.source_port), (*c.ip(), c.port()));
                    assert_eq!((a.destination_address, a.destination_port), (*s.ip(), s.port()));
                }
                (ppp::v2::Addresses::IPv6(a), SocketAddr::V6(c), SocketAddr::V6(s)) => {
                    assert_eq!((a.source_address, a.source_port), (*c.ip(), c.port()));
                    assert_eq!((a.destination_address, a.destination_port), (*s.ip(), s.port()));
                }
                (other, ..) => panic!("wrong address family: {other:?}"),
            }
            let tlvs: Vec<_> = header.tlvs().map(|tlv| tlv.unwrap()).collect();
            let kinds: Vec<u8> = tlvs.iter().map(|tlv| tlv.kind).collect();
            assert_eq!(kinds, [PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL]);
            assert_eq!(&*tlvs[0].value, b"h2");
            assert_eq!(&*tlvs[1].value, b"www.lab.test");
            let ssl = &*tlvs[2].value;
            assert_eq!(ssl[..5], [PP2_CLIENT_SSL, 0, 0, 0, 0], "client flags and verify result");
            assert_eq!(
                sub_tlvs(&ssl[5..]),
                [
                    (PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3".to_vec()),
                    (PP2_SUBTYPE_SSL_CIPHER, b"TLS13_AES_128_GCM_SHA256".to_vec()),
                ]
            );
        }
    }

    #[test]
    fn v2_without_sni_or_alpn_carries_only_the_ssl_tlv() {
        let (client, server) = v4();
        let facts = TlsFacts {
            sni: None,
            alpn: None,
            ..FACTS
        };
        let bytes = encode(HeaderKind::ProxyV2, client, server, Some(&facts));
        let header = ppp::v2::Header::try_from(bytes.as_slice()).unwrap();
        let kinds: Vec<u8> = header.tlvs().map(|tlv| tlv.unwrap().kind).collect();
        assert_eq!(kinds, [PP2_TYPE_SSL]);
    }

    /// The sub-TLVs inside `PP2_TYPE_SSL` (ppp does not split them).
    fn sub_tlvs(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let [kind, high, low, rest @ ..] = bytes {
            let length = usize::from(u16::from_be_bytes([*high, *low]));
            out.push((*kind, rest[..length].to_vec()));
            bytes = &rest[length..];
        }
        assert!(bytes.is_empty(), "trailing bytes after the sub-TLVs");
        out
    }

    #[test]
    fn write_ip_is_the_family_octet_and_the_client_address() {
        let (client, server) = v4();
        assert_eq!(
            encode(HeaderKind::WriteIp, client, server, Some(&FACTS)),
            [2, 198, 18, 0, 2]
        );
        let (client, server) = v6();
        let mut expected = vec![10, 0x20, 0x01, 0, 2];
        expected.extend_from_slice(&[0; 11]);
        expected.push(1);
        assert_eq!(encode(HeaderKind::WriteIp, client, server, None), expected);
    }
}
