//! A scripted peer of the in-memory lab: a host socket speaking a
//! line protocol in plaintext, then through a rustls connection once its
//! TLS starts (STARTTLS and FTP tests).

use std::io::Write;
use std::ops::DerefMut;

use rustls::{ConnectionCommon, SideData};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;

use super::tls::drive;
use super::{exchange, Host};

/// One end of a conversation on a host socket (SMTP, an FTP control or
/// data connection...): plaintext until its TLS starts, then through it.
pub struct Peer<C> {
    pub socket: SocketHandle,
    pub tls: Option<C>,
    pub received: Vec<u8>,
}

impl<C, D> Peer<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData,
{
    pub fn new(socket: SocketHandle) -> Peer<C> {
        Peer {
            socket,
            tls: None,
            received: Vec::new(),
        }
    }

    pub fn pump(&mut self, host: &mut Host) {
        if host.tcp(self.socket).state() != State::Established {
            return;
        }
        match self.tls.as_mut() {
            None => exchange(host, self.socket, &mut &[][..], &mut self.received),
            Some(tls) => {
                drive(host, self.socket, tls, &mut self.received);
            }
        }
    }

    pub fn send(&mut self, host: &mut Host, bytes: &[u8]) {
        match self.tls.as_mut() {
            None => assert_eq!(host.tcp(self.socket).send_slice(bytes).unwrap(), bytes.len()),
            Some(tls) => tls.writer().write_all(bytes).unwrap(),
        }
        self.pump(host);
    }

    /// Sends a piece of `pending` when the socket has room for it (16 KiB
    /// at a time under TLS, once the earlier records went).
    pub fn feed(&mut self, host: &mut Host, pending: &mut &[u8]) {
        if pending.is_empty() || host.tcp(self.socket).state() != State::Established {
            return;
        }
        let taken = match self.tls.as_mut() {
            None => host.tcp(self.socket).send_slice(pending).unwrap_or(0),
            Some(tls) if host.tcp(self.socket).send_queue() == 0 && !tls.wants_write() => {
                tls.writer().write(&pending[..pending.len().min(16 * 1024)]).unwrap()
            }
            Some(_) => 0,
        };
        *pending = &pending[taken..];
        self.pump(host);
    }

    /// Takes what was received if it ends with `line_end`.
    pub fn take_if_ends(&mut self, line_end: &[u8]) -> Option<Vec<u8>> {
        self.received
            .ends_with(line_end)
            .then(|| std::mem::take(&mut self.received))
    }
}
