//! The byte queues a TLS transform shares with the relay that drives it:
//! what waits for each leg, and the plaintext each side sent that the
//! caller passes on. Interception ([`crate::TlsSession`]) and tlsgate's
//! termination, downgrade and upgrade transforms hold one each.

/// Bytes waiting between a transform and its relay. The relay takes from
/// the front of each what the leg (or the inspection loop) accepts.
#[derive(Debug, Default)]
pub struct Queues {
    /// Bytes waiting for the client's leg.
    pub to_client: Vec<u8>,
    /// Bytes waiting for the server's leg.
    pub to_server: Vec<u8>,
    /// Plaintext the client sent, not yet passed on (exposed plaintext).
    pub plaintext_from_client: Vec<u8>,
    /// Plaintext the server sent, not yet passed on (exposed plaintext).
    pub plaintext_from_server: Vec<u8>,
}

impl Queues {
    /// Frees the queues the caller has emptied (they keep their capacity
    /// otherwise).
    pub fn release_empty(&mut self) {
        for queue in [
            &mut self.to_client,
            &mut self.to_server,
            &mut self.plaintext_from_client,
            &mut self.plaintext_from_server,
        ] {
            release_if_empty(queue);
        }
    }

    /// Bytes of capacity the queues hold.
    pub fn capacity(&self) -> usize {
        [
            &self.to_client,
            &self.to_server,
            &self.plaintext_from_client,
            &self.plaintext_from_server,
        ]
        .iter()
        .map(|queue| queue.capacity())
        .sum()
    }
}

/// Gives back the memory of `buffer` if it is empty.
pub fn release_if_empty(buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        *buffer = Vec::new();
    }
}
