//! The record of what went into the inspection loop and has not come back
//! out, kept so a box that dies can be failed open byte-exact.

use std::collections::VecDeque;

use crate::TLS_BACKLOG;

/// The bytes of one direction that went into the inspection loop and have
/// not come out of its other leg yet, matched by count (what the box passes
/// back takes the place of as many bytes as went in). The last
/// [`TLS_BACKLOG`] bytes are kept, and the loop's entry leg is fed only up
/// to that many unacknowledged bytes: so every byte the box has not
/// acknowledged is here, and a transparent box (whose acknowledgements come
/// from the exit leg) holds nothing else. Older bytes make way, counted in
/// `lost`: a box that fails holding them (one that acknowledges and keeps
/// bytes) cannot be failed open exactly.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    pub(crate) bytes: VecDeque<u8>,
    /// Bytes older than `bytes` that went in and have not come out.
    pub(crate) lost: usize,
}

impl InFlight {
    /// How much more the loop may be fed while its entry leg has
    /// `unacknowledged` bytes.
    pub(crate) fn room(unacknowledged: usize) -> usize {
        TLS_BACKLOG.saturating_sub(unacknowledged)
    }

    pub(crate) fn entered(&mut self, bytes: &[u8]) {
        self.bytes.extend(bytes);
        let excess = self.bytes.len().saturating_sub(TLS_BACKLOG);
        self.bytes.drain(..excess);
        self.lost += excess;
    }

    /// `count` bytes came out of the loop (a box that lengthened the stream
    /// may give back more than went in: the record just empties).
    pub(crate) fn came_out(&mut self, count: usize) {
        let from_lost = count.min(self.lost);
        self.lost -= from_lost;
        let from_bytes = (count - from_lost).min(self.bytes.len());
        self.bytes.drain(..from_bytes);
        if self.bytes.is_empty() {
            // Nothing in the loop: the memory goes back.
            self.bytes = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{InFlight, TLS_BACKLOG};

    #[test]
    fn an_in_flight_record_matches_by_count_and_keeps_at_most_its_bound() {
        let mut record = InFlight::default();
        record.entered(b"abcdef");
        record.came_out(2);
        assert_eq!(record.bytes, b"cdef");
        // The entry leg is fed up to the bound of unacknowledged bytes.
        assert_eq!(InFlight::room(1_000), TLS_BACKLOG - 1_000);
        assert_eq!(InFlight::room(2 * TLS_BACKLOG), 0);
        // Beyond the bound the oldest bytes make way, counted as lost...
        record.entered(&vec![b'x'; TLS_BACKLOG]);
        assert_eq!((record.bytes.len(), record.lost), (TLS_BACKLOG, 4));
        // ...and what comes out accounts for them first.
        record.came_out(5);
        assert_eq!((record.bytes.len(), record.lost), (TLS_BACKLOG - 1, 0));
        // A box that gave back more than went in just empties the record.
        record.came_out(2 * TLS_BACKLOG);
        assert_eq!((record.bytes.len(), record.lost), (0, 0));
        assert_eq!(record.bytes.capacity(), 0, "an empty record holds no memory");
    }
}
