//! What the line-based watchers (SMTP, IMAP, POP3, FTP) share: bounded
//! assembly of lines of text, command words, and the scanner of
//! dot-terminated blocks (an SMTP message, a POP3 multi-line response).

use crate::{NegotiationError, Peer};

/// The longest line (with its CR LF) a watcher holds; a longer one is
/// [`NegotiationError::LineTooLong`]. Far above the protocols' own limits
/// (SMTP 512 for commands, 1000 for text lines) and what real servers send
/// (a capability list, a greeting).
pub const LINE_LIMIT: usize = 8192;

/// Most requests a client may have outstanding (pipelined) at once.
pub(crate) const PENDING_LIMIT: usize = 256;

/// A C0 control byte that no text protocol here allows (TAB, CR and LF
/// aside). A TLS record starts with one (0x14..0x17), so a peer that starts
/// TLS where a watcher expects text is caught at its first byte.
pub(crate) fn is_forbidden_control(byte: u8) -> bool {
    byte < 0x20 && !matches!(byte, b'\t' | b'\r' | b'\n')
}

/// One peer's line being assembled, up to [`LINE_LIMIT`] bytes. A line ends
/// at LF; a CR before it is dropped. A line is text: a control byte (DEL
/// and C0 but TAB, and a CR anywhere but before the LF) is
/// [`NegotiationError::Malformed`] as soon as it arrives, before the bytes
/// around it pass on.
#[derive(Debug)]
pub(crate) struct LineBuffer {
    bytes: Vec<u8>,
    peer: Peer,
}

impl LineBuffer {
    pub(crate) fn new(peer: Peer) -> LineBuffer {
        LineBuffer {
            bytes: Vec::new(),
            peer,
        }
    }

    /// Takes `input` up to and including its first LF; returns how many
    /// bytes it took and whether they completed a line (then [`line`] holds
    /// it until [`clear`]). Input that is no text is an error, whatever
    /// line it is in.
    ///
    /// [`line`]: LineBuffer::line
    /// [`clear`]: LineBuffer::clear
    pub(crate) fn fill(&mut self, input: &[u8]) -> Result<(usize, bool), NegotiationError> {
        let (taken, complete) = match input.iter().position(|&byte| byte == b'\n') {
            Some(end) => (end + 1, true),
            None => (input.len(), false),
        };
        let mut previous = self.bytes.last().copied();
        for &byte in &input[..taken] {
            if is_forbidden_control(byte) || byte == 0x7f || (previous == Some(b'\r') && byte != b'\n') {
                return Err(NegotiationError::Malformed {
                    peer: self.peer,
                    what: "a control byte in a line of text",
                });
            }
            previous = Some(byte);
        }
        if self.bytes.len() + taken > LINE_LIMIT {
            return Err(NegotiationError::LineTooLong {
                peer: self.peer,
                limit: LINE_LIMIT,
            });
        }
        self.bytes.extend_from_slice(&input[..taken]);
        Ok((taken, complete))
    }

    /// The completed line without its CR LF.
    pub(crate) fn line(&self) -> &[u8] {
        let line = self.bytes.strip_suffix(b"\n").unwrap_or(&self.bytes);
        line.strip_suffix(b"\r").unwrap_or(line)
    }

    /// No byte of the line under way arrived yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Forgets the line: a completed one once read, or a partial one whose
    /// bytes were discarded, not relayed.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
    }
}

/// The first word of `line` and the rest after the space that ends it.
pub(crate) fn split_word(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&byte| byte == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[]),
    }
}

/// Whether `word` is `name`, ignoring ASCII case.
pub(crate) fn is(word: &[u8], name: &str) -> bool {
    word.eq_ignore_ascii_case(name.as_bytes())
}

/// A decimal number of at most `max`, or `None`.
pub(crate) fn decimal(digits: &[u8], max: u64) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |value, &digit| {
            value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        })
        .filter(|&value| value <= max)
}

/// Finds the end of a block ended by a line holding a single dot (CR LF
/// `.` CR LF): an SMTP message after DATA, a POP3 multi-line response. Holds
/// no bytes. Only CR LF ends a line here: a bare LF never ends the block, so
/// a peer that takes one for a line end answers while this still reads the
/// block, and the answer fails the connection instead of desynchronising it.
pub(crate) struct DotTerminated {
    state: DotState,
}

#[derive(Clone, Copy)]
enum DotState {
    LineStart,
    Dot,
    DotCr,
    Cr,
    Inside,
}

impl DotTerminated {
    /// A block that starts at the beginning of a line.
    pub(crate) fn new() -> DotTerminated {
        DotTerminated {
            state: DotState::LineStart,
        }
    }

    /// Reads `input`; `Some(n)` when the block ended at its `n`th byte.
    pub(crate) fn scan(&mut self, input: &[u8]) -> Option<usize> {
        for (index, &byte) in input.iter().enumerate() {
            self.state = match (self.state, byte) {
                (DotState::DotCr, b'\n') => return Some(index + 1),
                (DotState::Cr, b'\n') => DotState::LineStart,
                (DotState::LineStart, b'.') => DotState::Dot,
                (DotState::Dot, b'\r') => DotState::DotCr,
                (_, b'\r') => DotState::Cr,
                _ => DotState::Inside,
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_record_or_a_stray_cr_is_malformed_as_it_arrives() {
        let malformed = Err(NegotiationError::Malformed {
            peer: Peer::Client,
            what: "a control byte in a line of text",
        });
        assert_eq!(LineBuffer::new(Peer::Client).fill(b"\x16\x03\x01\x02\x00"), malformed);
        let mut line = LineBuffer::new(Peer::Client);
        assert_eq!(line.fill(b"NOOP\r"), Ok((5, false)));
        assert_eq!(line.fill(b"x"), malformed, "a CR not before the LF");
        let mut line = LineBuffer::new(Peer::Client);
        assert_eq!(line.fill(b"NOOP\r"), Ok((5, false)));
        assert_eq!(line.fill(b"\nrest"), Ok((1, true)));
        assert_eq!(line.line(), b"NOOP");
    }

    #[test]
    fn the_limit_counts_the_cr_lf() {
        let mut exact = vec![b'a'; LINE_LIMIT - 2];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(LineBuffer::new(Peer::Server).fill(&exact), Ok((LINE_LIMIT, true)));
        exact.insert(0, b'a');
        assert_eq!(
            LineBuffer::new(Peer::Server).fill(&exact),
            Err(NegotiationError::LineTooLong {
                peer: Peer::Server,
                limit: LINE_LIMIT
            })
        );
    }
}
