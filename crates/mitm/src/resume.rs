//! Upstream TLS sessions kept for one group of connections only: an FTP
//! control connection and the data connections it announces. A server
//! that demands a data connection resume the control connection's session
//! (vsftpd's `require_ssl_reuse`) is given one of that group's sessions,
//! never one another control connection received, and no other connection
//! can take, evict or replace them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::NamedGroup;
use rustls_pki_types::ServerName;

/// TLS 1.3 tickets a group keeps, newest kept (a server sends one or two
/// per handshake, and a group's handshakes mostly follow one another).
const TICKETS: usize = 8;

/// The sessions of one group, whatever server name each handshake used (a
/// `227` may name the server's address behind NAT): the group talks to one
/// server. Clones share the sessions; they go with the last clone.
#[derive(Clone, Default)]
pub struct GroupSessions(Arc<GroupStore>);

impl GroupSessions {
    pub fn new() -> Self {
        GroupSessions::default()
    }

    pub(crate) fn store(&self) -> Arc<dyn ClientSessionStore> {
        Arc::clone(&self.0) as Arc<dyn ClientSessionStore>
    }
}

impl std::fmt::Debug for GroupSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sessions are key material: never shown.
        f.write_str("GroupSessions")
    }
}

#[derive(Default)]
struct Sessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    /// Oldest first.
    tls13: VecDeque<Tls13ClientSessionValue>,
}

#[derive(Default)]
pub(crate) struct GroupStore(Mutex<Sessions>);

impl GroupStore {
    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        // Each update is one statement: a panic elsewhere cannot leave the
        // sessions half changed.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for GroupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupStore")
    }
}

impl ClientSessionStore for GroupStore {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        self.sessions().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.sessions().kx_hint
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.sessions().tls12 = Some(value);
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.sessions().tls12.clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.sessions().tls12 = None;
    }

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut sessions = self.sessions();
        if sessions.tls13.len() >= TICKETS {
            sessions.tls13.pop_front();
        }
        sessions.tls13.push_back(value);
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.sessions().tls13.pop_back()
    }
}
