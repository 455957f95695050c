//! IMAP (RFC 3501, STARTTLS RFC 2595 and 3501 6.2.1): the untagged
//! greeting, tagged commands (pipelined) each ended by the server's tagged
//! `OK`/`NO`/`BAD`. `tag STARTTLS` answered `OK` is the upgrade, `NO` or
//! `BAD` a refusal; `STARTTLS` in a `CAPABILITY` response or response code
//! is the offer. Literals `{n}`, `{n+}` (and `~{n}`) on either side are
//! skipped as data, never read as lines: a synchronizing literal waits for
//! the server's `+` continuation (or the command's end, if the server
//! refuses it) before its bytes may come. The lines of an AUTHENTICATE
//! exchange and the `DONE` of IDLE are responses, not commands.
//! CAPABILITY, NOOP, LOGOUT, ID and STARTTLS carry no content; every other
//! command does.

use std::collections::VecDeque;

use crate::line::{self, LineBuffer, PENDING_LIMIT};
use crate::{
    client_bytes, note_client, note_server, server_bytes, take_counted, ClientEvent, ClientStep, Negotiation,
    NegotiationError, Peer, Protocol, ServerEvent, ServerStep,
};

/// The largest literal: IMAP numbers are 32-bit.
const LITERAL_LIMIT: u64 = u32::MAX as u64;
/// The longest tag kept for pairing (clients use a few characters): what
/// unanswered commands hold stays small.
const TAG_LIMIT: usize = 64;

/// What the client's next bytes are.
enum ClientMode {
    /// The start of a command.
    Commands,
    /// A literal's bytes still to come, then the rest of the command.
    Literal(u64),
    /// The rest of a command after a literal.
    Continued,
    /// A synchronizing literal was announced: nothing may come until the
    /// server's `+` (or its answer to the command).
    AwaitingContinuation(u64),
    /// Lines answering the server's `+` continuations, up to the command's
    /// end (AUTHENTICATE), or just one (the `DONE` of IDLE).
    Responses {
        one_line: bool,
    },
    UpgradeRequested,
    Upgraded,
}

struct Pending {
    tag: Vec<u8>,
    starttls: bool,
}

pub(crate) struct Imap {
    client: ClientMode,
    client_line: LineBuffer,
    server_line: LineBuffer,
    /// A literal's bytes from the server still to skip.
    server_literal: u64,
    /// The server's current line continues an untagged response after a
    /// literal.
    server_continued: bool,
    greeted: bool,
    pending: VecDeque<Pending>,
    /// The server's last `+` wants the client's next bytes.
    client_turn: bool,
    content_reported: bool,
    offer_reported: bool,
}

/// The size of the literal a line announces at its end (`{n}`, `{n+}`) and
/// whether it is synchronizing.
fn literal(line: &[u8], peer: Peer) -> Result<Option<(u64, bool)>, NegotiationError> {
    let Some(inside) = line.strip_suffix(b"}") else {
        return Ok(None);
    };
    let Some(open) = inside.iter().rposition(|&byte| byte == b'{') else {
        return Ok(None);
    };
    let (digits, synchronizing) = match inside[open + 1..].strip_suffix(b"+") {
        Some(digits) => (digits, false),
        None => (&inside[open + 1..], true),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    let size = line::decimal(digits, LITERAL_LIMIT).ok_or(NegotiationError::Malformed {
        peer,
        what: "a literal larger than 4 GiB",
    })?;
    Ok(Some((size, synchronizing)))
}

/// A tag: printable ASCII but the atom specials and `+`.
fn valid_tag(tag: &[u8]) -> bool {
    !tag.is_empty()
        && tag
            .iter()
            .all(|&byte| byte.is_ascii_graphic() && !b"(){%*\"\\+".contains(&byte))
}

/// Whether the capability list starting at `words` (up to a `]`) holds
/// STARTTLS.
fn lists_starttls<'a>(words: impl Iterator<Item = &'a [u8]>) -> bool {
    for word in words {
        let (word, closed) = match word.strip_suffix(b"]") {
            Some(word) => (word, true),
            None => (word, false),
        };
        if line::is(word, "STARTTLS") {
            return true;
        }
        if closed {
            break;
        }
    }
    false
}

/// Whether a response's text after its status starts with a CAPABILITY
/// response code listing STARTTLS.
fn code_lists_starttls(text: &[u8]) -> bool {
    let mut words = text.split(|&byte| byte == b' ');
    match words.next() {
        Some(first) if first.eq_ignore_ascii_case(b"[CAPABILITY") => lists_starttls(words),
        _ => false,
    }
}

fn is_status(word: &[u8]) -> bool {
    ["OK", "NO", "BAD", "BYE", "PREAUTH"]
        .iter()
        .any(|status| line::is(word, status))
}

impl Imap {
    pub(crate) fn new() -> Imap {
        Imap {
            client: ClientMode::Commands,
            client_line: LineBuffer::new(Peer::Client),
            server_line: LineBuffer::new(Peer::Server),
            server_literal: 0,
            server_continued: false,
            greeted: false,
            pending: VecDeque::new(),
            client_turn: false,
            content_reported: false,
            offer_reported: false,
        }
    }

    fn content(&mut self, event: &mut Option<ClientEvent>) {
        if !self.content_reported {
            self.content_reported = true;
            note_client(event, ClientEvent::PlaintextContent);
        }
    }

    fn offered(&mut self, event: &mut Option<ServerEvent>) {
        if !self.offer_reported {
            self.offer_reported = true;
            note_server(event, ServerEvent::UpgradeOffered);
        }
    }

    /// After a command's line (or a piece of it after a literal): a literal
    /// it announces comes next, or the next command.
    fn after_segment(&mut self, announced: Option<(u64, bool)>) {
        self.client = match announced {
            Some((size, true)) => ClientMode::AwaitingContinuation(size),
            Some((0, false)) => ClientMode::Continued,
            Some((size, false)) => ClientMode::Literal(size),
            None => ClientMode::Commands,
        };
    }

    fn command(&mut self, event: &mut Option<ClientEvent>) -> Result<(), NegotiationError> {
        let line = self.client_line.line();
        if line.is_empty() {
            self.client_line.clear();
            return Ok(());
        }
        let (tag, rest) = line::split_word(line);
        let verb = line::split_word(rest).0;
        if !valid_tag(tag) || verb.is_empty() {
            return Err(NegotiationError::Malformed {
                peer: Peer::Client,
                what: "a command without a tag or a name",
            });
        }
        if tag.len() > TAG_LIMIT {
            return Err(NegotiationError::Malformed {
                peer: Peer::Client,
                what: "a tag longer than 64 bytes",
            });
        }
        if self.pending.len() >= PENDING_LIMIT {
            return Err(NegotiationError::Malformed {
                peer: Peer::Client,
                what: "too many commands without an answer",
            });
        }
        let starttls = line::is(verb, "STARTTLS");
        let responses = if line::is(verb, "AUTHENTICATE") {
            Some(false)
        } else if line::is(verb, "IDLE") {
            Some(true)
        } else {
            None
        };
        let plain = ["CAPABILITY", "NOOP", "LOGOUT", "ID", "STARTTLS"]
            .iter()
            .any(|name| line::is(verb, name));
        let announced = literal(line, Peer::Client)?;
        self.pending.push_back(Pending {
            tag: tag.to_vec(),
            starttls,
        });
        self.client_line.clear();
        if !plain {
            self.content(event);
        }
        if starttls {
            self.client = ClientMode::UpgradeRequested;
            note_client(event, ClientEvent::UpgradeRequested);
        } else if let Some(one_line) = responses {
            self.client = ClientMode::Responses { one_line };
        } else {
            self.after_segment(announced);
        }
        Ok(())
    }

    fn server_line(&mut self, event: &mut Option<ServerEvent>) -> Result<(), NegotiationError> {
        let line = self.server_line.line();
        let malformed = |what| NegotiationError::Malformed {
            peer: Peer::Server,
            what,
        };
        if self.server_continued {
            // The rest of an untagged response after a literal.
            match literal(line, Peer::Server)? {
                Some((size, _)) => self.server_literal = size,
                None => self.server_continued = false,
            }
            self.server_line.clear();
            return Ok(());
        }
        let (first, rest) = line::split_word(line);
        let (second, text) = line::split_word(rest);
        if !self.greeted {
            if first != b"*" || !["OK", "PREAUTH", "BYE"].iter().any(|s| line::is(second, s)) {
                return Err(malformed("a greeting that is not an untagged OK, PREAUTH or BYE"));
            }
            self.greeted = true;
            if code_lists_starttls(text) {
                self.offered(event);
            }
        } else if first == b"+" {
            match self.client {
                ClientMode::AwaitingContinuation(size) => {
                    self.client = if size == 0 {
                        ClientMode::Continued
                    } else {
                        ClientMode::Literal(size)
                    };
                }
                ClientMode::Responses { .. } => {}
                _ => return Err(malformed("a continuation request when none was due")),
            }
            self.client_turn = true;
        } else if first == b"*" {
            if is_status(second) {
                if code_lists_starttls(text) {
                    self.offered(event);
                }
            } else if line::is(second, "CAPABILITY") {
                if lists_starttls(text.split(|&byte| byte == b' ')) {
                    self.offered(event);
                }
            } else if let Some((size, _)) = literal(line, Peer::Server)? {
                self.server_literal = size;
                self.server_continued = true;
            }
        } else {
            let ok = line::is(second, "OK");
            if !ok && !line::is(second, "NO") && !line::is(second, "BAD") {
                return Err(malformed("a tagged response without OK, NO or BAD"));
            }
            let offered = ok && code_lists_starttls(text);
            let tag = first.to_vec();
            self.tagged(&tag, ok, event)?;
            if offered {
                self.offered(event);
            }
        }
        self.server_line.clear();
        Ok(())
    }

    /// The server's answer to the command tagged `tag`: `OK`, or `NO` or
    /// `BAD`.
    fn tagged(&mut self, tag: &[u8], ok: bool, event: &mut Option<ServerEvent>) -> Result<(), NegotiationError> {
        let Some(index) = self.pending.iter().position(|pending| pending.tag == tag) else {
            return Err(NegotiationError::Malformed {
                peer: Peer::Server,
                what: "an answer to no command",
            });
        };
        let last = index + 1 == self.pending.len();
        let starttls = self.pending.remove(index).is_some_and(|pending| pending.starttls);
        if starttls {
            if ok {
                self.client = ClientMode::Upgraded;
                note_server(event, ServerEvent::UpgradeAccepted);
            } else {
                self.client = ClientMode::Commands;
                note_server(event, ServerEvent::UpgradeRefused);
            }
        } else if last
            && matches!(
                self.client,
                ClientMode::AwaitingContinuation(_) | ClientMode::Responses { .. }
            )
        {
            // The command waiting for a continuation ended without one (a
            // refused literal, the end of an AUTHENTICATE exchange).
            self.client = ClientMode::Commands;
        }
        if last {
            self.client_turn = false;
        }
        Ok(())
    }
}

impl Negotiation for Imap {
    fn protocol(&self) -> Protocol {
        Protocol::Imap
    }

    fn from_client(&mut self, bytes: &[u8]) -> Result<ClientStep, NegotiationError> {
        client_bytes(bytes, |rest, event| match &mut self.client {
            ClientMode::Commands => {
                let (taken, complete) = self.client_line.fill(rest)?;
                if complete {
                    self.command(event)?;
                }
                Ok(Some(taken))
            }
            ClientMode::Continued => {
                let (taken, complete) = self.client_line.fill(rest)?;
                if complete {
                    let announced = literal(self.client_line.line(), Peer::Client)?;
                    self.client_line.clear();
                    self.after_segment(announced);
                }
                Ok(Some(taken))
            }
            ClientMode::Literal(left) => {
                let taken = take_counted(left, rest);
                if *left == 0 {
                    self.client = ClientMode::Continued;
                }
                self.client_turn = false;
                Ok(Some(taken))
            }
            ClientMode::Responses { one_line } => {
                let one_line = *one_line;
                let (taken, complete) = self.client_line.fill(rest)?;
                self.client_turn = false;
                if complete {
                    self.client_line.clear();
                    if one_line {
                        self.client = ClientMode::Commands;
                    }
                }
                Ok(Some(taken))
            }
            ClientMode::AwaitingContinuation(_) => Err(NegotiationError::Malformed {
                peer: Peer::Client,
                what: "a synchronizing literal before the server's continuation",
            }),
            ClientMode::UpgradeRequested => Ok(None),
            ClientMode::Upgraded => Err(NegotiationError::after_upgrade(Peer::Client)),
        })
    }

    fn from_server(&mut self, bytes: &[u8]) -> Result<ServerStep, NegotiationError> {
        server_bytes(bytes, |rest, event| {
            if matches!(self.client, ClientMode::Upgraded) {
                return Ok(None);
            }
            if self.server_literal > 0 {
                let taken = usize::try_from(self.server_literal).map_or(rest.len(), |left| left.min(rest.len()));
                self.server_literal -= taken as u64;
                return Ok(Some(taken));
            }
            let (taken, complete) = self.server_line.fill(rest)?;
            if complete {
                self.server_line(event)?;
            }
            Ok(Some(taken))
        })
    }

    fn awaiting_server(&self) -> bool {
        !self.greeted || (!self.pending.is_empty() && !self.client_turn)
    }

    fn upgrade_requested(&self) -> bool {
        matches!(self.client, ClientMode::UpgradeRequested)
    }
}
