//! The `tls_hello` target: the first bytes of a TLS connection from both
//! ends, through [`TlsSession`]: what a client sends before the appliance
//! decides (rustls' `Acceptor`, the 64 KiB limit, bypass), and after an
//! interception, the upstream ClientHello and a server's first answer.
//!
//! Input: byte 0 is the size of the pieces the client's bytes arrive in
//! (0: all at once), byte 1 selects `invalid_upstream` (bit 0: refuse),
//! bytes 2..4 the length of the client's bytes (big-endian); the client's
//! bytes follow, then the server's.

use std::net::IpAddr;

use mitm::{InvalidUpstream, Pending, TlsSession};
use rustls::pki_types::ServerName;

use crate::engine::SERVER_V4;
use crate::pki;

/// One connection: the client's bytes, the decision, the server's bytes.
pub fn tls_hello(data: &[u8]) {
    let Some((header, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let [piece, flags, len_high, len_low] = *header;
    let client_len = usize::from(u16::from_be_bytes([len_high, len_low])).min(rest.len());
    let (client, server) = rest.split_at(client_len);
    let server_ip = IpAddr::from(SERVER_V4);

    let mut session = TlsSession::new(server_ip);
    let mut accepted = true;
    for chunk in pieces(client, piece) {
        if session.from_client(chunk).is_err() {
            accepted = false;
            break;
        }
    }
    let pending = session.pending();
    // However the bytes were cut, the same ClientHello is read, and a
    // bypass gives back exactly what the client sent.
    let mut whole = TlsSession::new(server_ip);
    assert_eq!(whole.from_client(client).is_ok(), accepted, "pieces of {piece} bytes");
    if !accepted {
        return;
    }
    assert_eq!(whole.pending(), pending, "pieces of {piece} bytes");
    assert_eq!(
        whole.bypass(),
        client,
        "a bypass must pass on every byte the client sent"
    );
    let Some(Pending::Hello { sni, alpn, .. }) = pending else {
        return;
    };

    let invalid = if flags & 1 == 1 {
        InvalidUpstream::Refuse
    } else {
        InvalidUpstream::Mirror
    };
    let (mut context, _) = pki::appliance(invalid);
    if session.intercept(&context).is_err() {
        return;
    }
    check_upstream_hello(
        std::mem::take(&mut session.queues().to_server),
        sni.as_deref(),
        &alpn,
        server_ip,
    );
    for chunk in pieces(server, piece) {
        let result = session.from_server(&mut context, chunk);
        session.queues().to_server.clear();
        session.queues().to_client.clear();
        if result.is_err() {
            break;
        }
    }
    let _ = session.buffer_capacity();
}

/// `data` in pieces of `size` bytes (0: one piece).
fn pieces(data: &[u8], size: u8) -> std::slice::Chunks<'_, u8> {
    let size = if size == 0 {
        data.len().max(1)
    } else {
        usize::from(size)
    };
    data.chunks(size)
}

/// The ClientHello the appliance sends the server carries the client's
/// name (when it is a DNS name) and exactly the client's ALPN offer.
fn check_upstream_hello(hello: Vec<u8>, sni: Option<&str>, alpn: &[String], server_ip: IpAddr) {
    let mut upstream = TlsSession::new(server_ip);
    assert!(
        upstream.from_client(&hello).is_ok(),
        "the upstream ClientHello is refused"
    );
    let Some(Pending::Hello {
        sni: upstream_sni,
        alpn: upstream_alpn,
        ..
    }) = upstream.pending()
    else {
        panic!("the upstream ClientHello does not parse: {:?}", upstream.pending());
    };
    let expected = sni
        .filter(|name| matches!(ServerName::try_from(*name), Ok(ServerName::DnsName(_))))
        .map(|name| name.trim_end_matches('.').to_ascii_lowercase());
    assert_eq!(
        upstream_sni.map(|name| name.to_ascii_lowercase()),
        expected,
        "the upstream name differs from the client's"
    );
    assert_eq!(upstream_alpn, alpn, "the upstream ALPN offer differs from the client's");
}
