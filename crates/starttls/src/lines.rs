//! Bounded assembly of CR LF (or bare LF) terminated lines, shared by the
//! line-based watchers.

use crate::{NegotiationError, Peer};

/// The longest line a watcher holds, CR included, LF not.
pub(crate) const LINE_LIMIT: usize = 8192;

/// A C0 control byte that no text protocol here allows (TAB, CR and LF
/// aside). A TLS record starts with one (0x14..0x17), so a peer that starts
/// TLS where the watcher expects text is caught at its first byte.
pub(crate) fn is_forbidden_control(byte: u8) -> bool {
    byte < 0x20 && !matches!(byte, b'\t' | b'\r' | b'\n')
}

/// The line being received from one peer.
#[derive(Debug)]
pub(crate) struct Lines {
    peer: Peer,
    line: Vec<u8>,
}

impl Lines {
    pub(crate) fn new(peer: Peer) -> Lines {
        Lines { peer, line: Vec::new() }
    }

    /// No byte of the current line arrived yet.
    pub(crate) fn at_line_start(&self) -> bool {
        self.line.is_empty()
    }

    /// Adds one byte; returns the line, without its CR LF, once its LF
    /// arrived.
    pub(crate) fn push(&mut self, byte: u8) -> Result<Option<Vec<u8>>, NegotiationError> {
        if is_forbidden_control(byte) {
            return Err(NegotiationError::Malformed {
                peer: self.peer,
                what: "a control character in a line",
            });
        }
        if byte == b'\n' {
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
        if self.line.len() >= LINE_LIMIT {
            return Err(NegotiationError::LineTooLong {
                peer: self.peer,
                limit: LINE_LIMIT,
            });
        }
        self.line.push(byte);
        Ok(None)
    }

    /// Forgets a partial line (its bytes were discarded, not relayed).
    pub(crate) fn clear(&mut self) {
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &mut Lines, bytes: &[u8]) -> Result<Vec<Vec<u8>>, NegotiationError> {
        let mut complete = Vec::new();
        for &byte in bytes {
            if let Some(line) = lines.push(byte)? {
                complete.push(line);
            }
        }
        Ok(complete)
    }

    #[test]
    fn lines_end_with_crlf_or_bare_lf() {
        let mut lines = Lines::new(Peer::Client);
        let complete = feed(&mut lines, b"NOOP\r\nFEAT\n\r\nSY").unwrap();
        assert_eq!(complete, vec![b"NOOP".to_vec(), b"FEAT".to_vec(), Vec::new()]);
        assert!(!lines.at_line_start());
        assert_eq!(feed(&mut lines, b"ST\r\n").unwrap(), vec![b"SYST".to_vec()]);
        assert!(lines.at_line_start());
    }

    #[test]
    fn a_line_longer_than_the_limit_is_an_error_and_the_limit_itself_is_not() {
        let mut lines = Lines::new(Peer::Server);
        let mut exact = vec![b'a'; LINE_LIMIT];
        exact.extend_from_slice(b"\r\n");
        assert!(feed(&mut lines, &exact).is_err(), "CR counts against the limit");
        let mut lines = Lines::new(Peer::Server);
        let mut exact = vec![b'a'; LINE_LIMIT];
        exact.push(b'\n');
        assert_eq!(feed(&mut lines, &exact).unwrap().len(), 1);
        let too_long = vec![b'a'; LINE_LIMIT + 1];
        assert_eq!(
            feed(&mut lines, &too_long),
            Err(NegotiationError::LineTooLong {
                peer: Peer::Server,
                limit: LINE_LIMIT
            })
        );
    }

    #[test]
    fn a_tls_record_is_malformed_at_its_first_byte() {
        let mut lines = Lines::new(Peer::Client);
        assert!(matches!(
            lines.push(0x16),
            Err(NegotiationError::Malformed { peer: Peer::Client, .. })
        ));
    }
}
