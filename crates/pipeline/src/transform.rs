//! What the relay needs of a TLS transform: ciphertext in from each leg,
//! ciphertext out for each, and the plaintext in between. TLS interception
//! ([`mitm::TlsSession`]), termination and downgrade ([`crate::TlsServer`])
//! and upgrade ([`crate::TlsClient`]) are all relayed by the same code
//! through it.

use mitm::{MitmError, Queues, TlsContext, TlsSession};

pub trait TlsTransform {
    /// What feeding the server's bytes needs (the TLS context that judges
    /// the real server's certificate and forges the client's).
    type Context;
    fn feed_from_client(&mut self, data: &[u8]) -> Result<(), MitmError>;
    fn feed_from_server(&mut self, context: &mut Self::Context, data: &[u8]) -> Result<(), MitmError>;
    /// Feeds the client's bytes where they lie (see
    /// [`LegIo::recv_in_place`](crate::LegIo::recv_in_place)): how many were
    /// consumed; all of them unless the transform works in place.
    fn feed_from_client_in_place(&mut self, data: &mut [u8], _take_all: bool) -> Result<usize, MitmError> {
        self.feed_from_client(data)?;
        Ok(data.len())
    }
    /// [`TlsTransform::feed_from_client_in_place`] for the server's bytes.
    fn feed_from_server_in_place(
        &mut self,
        context: &mut Self::Context,
        data: &mut [u8],
        _take_all: bool,
    ) -> Result<usize, MitmError> {
        self.feed_from_server(context, data)?;
        Ok(data.len())
    }
    /// Bytes waiting for each leg (take what the leg accepts), and the
    /// plaintext handed to the caller (exposed), waiting to be passed on.
    fn queues(&mut self) -> &mut Queues;
    fn send_to_server(&mut self, plaintext: &[u8]) -> Result<(), MitmError>;
    fn send_to_client(&mut self, plaintext: &[u8]) -> Result<(), MitmError>;
    /// Encrypts what waits for the server straight into `room` (the free
    /// room of the server leg's send buffer), as far as whole records fit
    /// and nothing waits in the queue ahead; how many bytes it wrote. A
    /// transform that encrypts into its queues at once writes nothing.
    fn encrypt_to_server(&mut self, _room: &mut [u8]) -> Result<usize, MitmError> {
        Ok(0)
    }
    /// [`TlsTransform::encrypt_to_server`] for the client.
    fn encrypt_to_client(&mut self, _room: &mut [u8]) -> Result<usize, MitmError> {
        Ok(0)
    }
    /// Encrypts into the queues what the `encrypt_to_*` calls left.
    fn encrypt_waiting(&mut self) -> Result<(), MitmError> {
        Ok(())
    }
    /// Passes the end of a direction on as the leg's protocol says it
    /// (close_notify).
    fn close_to_server(&mut self);
    fn close_to_client(&mut self);
    /// The client's (the server's) stream ended inside the transform
    /// (close_notify).
    fn client_finished(&self) -> bool;
    fn server_finished(&self) -> bool;
    /// Whether the plaintext is handed to the caller rather than crossing
    /// inside the transform.
    fn plaintext_exposed(&self) -> bool;
    /// Whether the server leg speaks TLS (its end is a close_notify, not
    /// just a FIN).
    fn server_speaks_tls(&self) -> bool;
    /// Whether the client leg speaks TLS (its end is a close_notify, not
    /// just a FIN).
    fn client_speaks_tls(&self) -> bool {
        true
    }
    /// Plaintext (and a close_notify, counting one) accepted for the server
    /// and held until its handshake is done: counts against
    /// [`crate::TLS_BACKLOG`] like the ciphertext waiting, and holds the FIN.
    fn held_for_server(&self) -> usize {
        0
    }
    /// Both handshakes are done.
    fn handshakes_done(&self) -> bool;
    /// Gives back the memory of emptied buffers.
    fn release_empty_buffers(&mut self);
}

impl TlsTransform for TlsSession {
    type Context = TlsContext;

    fn feed_from_client(&mut self, data: &[u8]) -> Result<(), MitmError> {
        TlsSession::from_client(self, data)
    }

    fn feed_from_server(&mut self, context: &mut TlsContext, data: &[u8]) -> Result<(), MitmError> {
        TlsSession::from_server(self, context, data)
    }

    fn feed_from_client_in_place(&mut self, data: &mut [u8], take_all: bool) -> Result<usize, MitmError> {
        TlsSession::from_client_in_place(self, data, take_all)
    }

    fn feed_from_server_in_place(
        &mut self,
        context: &mut TlsContext,
        data: &mut [u8],
        take_all: bool,
    ) -> Result<usize, MitmError> {
        TlsSession::from_server_in_place(self, context, data, take_all)
    }

    fn queues(&mut self) -> &mut Queues {
        TlsSession::queues(self)
    }

    fn send_to_server(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        TlsSession::send_to_server(self, plaintext)
    }

    fn send_to_client(&mut self, plaintext: &[u8]) -> Result<(), MitmError> {
        TlsSession::send_to_client(self, plaintext)
    }

    fn encrypt_to_server(&mut self, room: &mut [u8]) -> Result<usize, MitmError> {
        TlsSession::encrypt_to_server(self, room)
    }

    fn encrypt_to_client(&mut self, room: &mut [u8]) -> Result<usize, MitmError> {
        TlsSession::encrypt_to_client(self, room)
    }

    fn encrypt_waiting(&mut self) -> Result<(), MitmError> {
        TlsSession::encrypt_waiting(self)
    }

    fn close_to_server(&mut self) {
        TlsSession::close_to_server(self);
    }

    fn close_to_client(&mut self) {
        TlsSession::close_to_client(self);
    }

    fn client_finished(&self) -> bool {
        TlsSession::client_finished(self)
    }

    fn server_finished(&self) -> bool {
        TlsSession::server_finished(self)
    }

    fn plaintext_exposed(&self) -> bool {
        TlsSession::plaintext_exposed(self)
    }

    fn server_speaks_tls(&self) -> bool {
        true
    }

    fn handshakes_done(&self) -> bool {
        self.info.client_version.is_some()
    }

    fn release_empty_buffers(&mut self) {
        TlsSession::release_empty_buffers(self);
    }
}
