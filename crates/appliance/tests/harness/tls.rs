//! rustls connections on the lab's hosts: TLS records moved between a
//! rustls connection and a host's smoltcp socket.

use std::io::Read;
use std::sync::Arc;

use smoltcp::iface::SocketHandle;

use super::Host;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Sends what `tls` has to send on `socket`.
fn flush<D: rustls::SideData>(host: &mut Host, socket: SocketHandle, tls: &mut rustls::ConnectionCommon<D>) {
    let socket = host.tcp(socket);
    let mut records = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut records).unwrap();
    }
    if !records.is_empty() && socket.may_send() {
        assert_eq!(
            socket.send_slice(&records).unwrap(),
            records.len(),
            "socket buffer too small"
        );
    }
}

/// Moves TLS records between a rustls connection and a host socket, and
/// collects the plaintext it yields; true once the peer's close_notify
/// came. A TLS error is returned after the alert rustls has for the peer
/// was sent.
pub fn try_drive<D: rustls::SideData>(
    host: &mut Host,
    socket: SocketHandle,
    tls: &mut rustls::ConnectionCommon<D>,
    plaintext: &mut Vec<u8>,
) -> Result<bool, rustls::Error> {
    flush(host, socket, tls);
    let mut closed = false;
    while host.tcp(socket).can_recv() {
        let mut buf = vec![0u8; 16 * 1024];
        let read = host.tcp(socket).recv_slice(&mut buf).unwrap_or(0);
        if read == 0 {
            break;
        }
        let mut input = &buf[..read];
        while !input.is_empty() {
            tls.read_tls(&mut input).unwrap();
            if let Err(err) = tls.process_new_packets() {
                flush(host, socket, tls);
                return Err(err);
            }
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match tls.reader().read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => plaintext.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                }
            }
        }
    }
    Ok(closed)
}

/// [`try_drive`] for connections that must not fail.
pub fn drive<D: rustls::SideData>(
    host: &mut Host,
    socket: SocketHandle,
    tls: &mut rustls::ConnectionCommon<D>,
    plaintext: &mut Vec<u8>,
) -> bool {
    try_drive(host, socket, tls, plaintext).unwrap()
}
