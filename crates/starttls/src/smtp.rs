//! SMTP and submission (RFC 5321, STARTTLS RFC 3207): the greeting, the
//! client's commands (pipelined or not, RFC 2920), each paired in order with
//! the server's reply (multi-line `250-` … `250 `). `STARTTLS` answered
//! `220` is the upgrade, any other code a refusal. A message after `DATA`
//! (once answered `354`, up to CR LF `.` CR LF) and a `BDAT` chunk (its
//! announced size) are data, never commands. EHLO, HELO, LHLO, NOOP, RSET,
//! QUIT, HELP and STARTTLS carry no content; every other command does.
//! STARTTLS may come at any time in the plaintext session (after RSET, after
//! a refusal, after a mail transaction): it is handled each time.

use std::collections::VecDeque;

use crate::line::{self, DotTerminated, LineBuffer, PENDING_LIMIT};
use crate::{
    client_bytes, note_client, note_server, server_bytes, take_counted, ClientEvent, ClientStep, Negotiation,
    NegotiationError, Peer, Protocol, ServerEvent, ServerStep,
};

/// What the next reply answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Awaited {
    Greeting,
    Ehlo,
    Data,
    StartTls,
    Other,
}

/// What the client's next bytes are.
enum ClientMode {
    Commands,
    /// DATA was sent: nothing may follow until the server's answer (a client
    /// waits for `354`), or the watcher could not tell data from commands.
    DataAnswer,
    Message(DotTerminated),
    /// A BDAT chunk's bytes still to come.
    Chunk(u64),
    /// STARTTLS was sent: the caller discards until the answer.
    UpgradeRequested,
    Upgraded,
}

pub(crate) struct Smtp {
    client: ClientMode,
    client_line: LineBuffer,
    server_line: LineBuffer,
    awaited: VecDeque<Awaited>,
    /// Lines of the current (multi-line) reply already read.
    reply_lines: usize,
    content_reported: bool,
    offer_reported: bool,
}

/// A client command, as far as the watcher cares.
enum Command {
    StartTls,
    Ehlo,
    Data,
    Bdat(u64),
    Plain,
    Content,
}

impl Command {
    fn parse(line: &[u8]) -> Result<Command, NegotiationError> {
        let (verb, arguments) = line::split_word(line);
        Ok(if line::is(verb, "STARTTLS") {
            Command::StartTls
        } else if line::is(verb, "EHLO") || line::is(verb, "LHLO") {
            Command::Ehlo
        } else if verb.is_empty()
            || ["HELO", "NOOP", "RSET", "QUIT", "HELP"]
                .iter()
                .any(|name| line::is(verb, name))
        {
            Command::Plain
        } else if line::is(verb, "DATA") {
            Command::Data
        } else if line::is(verb, "BDAT") {
            let (size, _last) = line::split_word(arguments);
            Command::Bdat(line::decimal(size, u64::MAX).ok_or(NegotiationError::Malformed {
                peer: Peer::Client,
                what: "a BDAT without a chunk size",
            })?)
        } else {
            Command::Content
        })
    }
}

impl Smtp {
    pub(crate) fn new() -> Smtp {
        Smtp {
            client: ClientMode::Commands,
            client_line: LineBuffer::new(Peer::Client),
            server_line: LineBuffer::new(Peer::Server),
            awaited: VecDeque::from([Awaited::Greeting]),
            reply_lines: 0,
            content_reported: false,
            offer_reported: false,
        }
    }

    fn await_reply(&mut self, awaited: Awaited) -> Result<(), NegotiationError> {
        if self.awaited.len() >= PENDING_LIMIT {
            return Err(NegotiationError::Malformed {
                peer: Peer::Client,
                what: "too many commands without an answer",
            });
        }
        self.awaited.push_back(awaited);
        Ok(())
    }

    fn content(&mut self, event: &mut Option<ClientEvent>) {
        if !self.content_reported {
            self.content_reported = true;
            note_client(event, ClientEvent::PlaintextContent);
        }
    }

    fn command(&mut self, event: &mut Option<ClientEvent>) -> Result<(), NegotiationError> {
        let command = Command::parse(self.client_line.line());
        self.client_line.clear();
        match command? {
            Command::StartTls => {
                self.await_reply(Awaited::StartTls)?;
                self.client = ClientMode::UpgradeRequested;
                note_client(event, ClientEvent::UpgradeRequested);
            }
            Command::Ehlo => self.await_reply(Awaited::Ehlo)?,
            Command::Plain => self.await_reply(Awaited::Other)?,
            Command::Data => {
                self.content(event);
                self.await_reply(Awaited::Data)?;
                self.client = ClientMode::DataAnswer;
            }
            Command::Bdat(size) => {
                self.content(event);
                if size == 0 {
                    self.await_reply(Awaited::Other)?;
                } else {
                    self.client = ClientMode::Chunk(size);
                }
            }
            Command::Content => {
                self.content(event);
                self.await_reply(Awaited::Other)?;
            }
        }
        Ok(())
    }

    /// A complete line of the server's: notes what the reply it belongs to
    /// meant.
    fn reply_line(&mut self, event: &mut Option<ServerEvent>) -> Result<(), NegotiationError> {
        let line = self.server_line.line();
        let malformed = NegotiationError::Malformed {
            peer: Peer::Server,
            what: "a reply line without a reply code",
        };
        let (code, rest) = match line {
            [hundreds @ b'2'..=b'5', tens, units, rest @ ..] if tens.is_ascii_digit() && units.is_ascii_digit() => {
                let code = u16::from(hundreds - b'0') * 100 + u16::from(tens - b'0') * 10 + u16::from(units - b'0');
                (code, rest)
            }
            _ => return Err(malformed),
        };
        let (last, text) = match rest {
            [] => (true, &[][..]),
            [b' ', text @ ..] => (true, text),
            [b'-', text @ ..] => (false, text),
            _ => return Err(malformed),
        };
        let keyword = line::split_word(text).0;
        if self.awaited.front() == Some(&Awaited::Ehlo)
            && self.reply_lines > 0
            && line::is(keyword, "STARTTLS")
            && !self.offer_reported
        {
            self.offer_reported = true;
            note_server(event, ServerEvent::UpgradeOffered);
        }
        self.server_line.clear();
        if !last {
            self.reply_lines += 1;
            return Ok(());
        }
        self.reply_lines = 0;
        match self.awaited.pop_front() {
            // A server may close the session with 421 unasked (RFC 5321 3.8).
            None if code == 421 => {}
            None => {
                return Err(NegotiationError::Malformed {
                    peer: Peer::Server,
                    what: "a reply to no command",
                })
            }
            Some(Awaited::Greeting | Awaited::Ehlo | Awaited::Other) => {}
            Some(Awaited::Data) => {
                self.client = if code == 354 {
                    ClientMode::Message(DotTerminated::new())
                } else {
                    ClientMode::Commands
                };
            }
            Some(Awaited::StartTls) if code == 220 => {
                self.client = ClientMode::Upgraded;
                note_server(event, ServerEvent::UpgradeAccepted);
            }
            Some(Awaited::StartTls) => {
                self.client = ClientMode::Commands;
                note_server(event, ServerEvent::UpgradeRefused);
            }
        }
        Ok(())
    }
}

impl Negotiation for Smtp {
    fn protocol(&self) -> Protocol {
        Protocol::Smtp
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
            ClientMode::Message(message) => match message.scan(rest) {
                Some(end) => {
                    self.client = ClientMode::Commands;
                    self.await_reply(Awaited::Other)?;
                    Ok(Some(end))
                }
                None => Ok(Some(rest.len())),
            },
            ClientMode::Chunk(left) => {
                let taken = take_counted(left, rest);
                if *left == 0 {
                    self.client = ClientMode::Commands;
                    self.await_reply(Awaited::Other)?;
                }
                Ok(Some(taken))
            }
            ClientMode::DataAnswer => Err(NegotiationError::Malformed {
                peer: Peer::Client,
                what: "bytes after DATA before the server's answer",
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
            let (taken, complete) = self.server_line.fill(rest)?;
            if complete {
                self.reply_line(event)?;
            }
            Ok(Some(taken))
        })
    }

    fn awaiting_server(&self) -> bool {
        !self.awaited.is_empty()
    }

    fn upgrade_requested(&self) -> bool {
        matches!(self.client, ClientMode::UpgradeRequested)
    }
}
