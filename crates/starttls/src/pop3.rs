//! POP3 (RFC 1939, CAPA RFC 2449, STLS RFC 2595, AUTH RFC 5034): the
//! greeting, the client's commands (pipelined or not) each paired in order
//! with the server's `+OK` or `-ERR`. A `+OK` to CAPA, RETR, TOP, and LIST,
//! UIDL or AUTH without argument starts a multi-line response, read up to
//! its CR LF `.` CR LF (dot-stuffed lines stay inside); `STLS` in a CAPA
//! response is the offer. `STLS` answered `+OK` is the upgrade, `-ERR` a
//! refusal. The lines of an AUTH exchange (after the server's `+`
//! continuations) are responses, not commands. CAPA, STLS, NOOP and QUIT
//! carry no content; every other command does.

use std::collections::VecDeque;

use crate::line::{self, DotTerminated, LineBuffer, PENDING_LIMIT};
use crate::{
    client_bytes, note_client, note_server, server_bytes, ClientEvent, ClientStep, Negotiation, NegotiationError, Peer,
    Protocol, ServerEvent, ServerStep,
};

/// What the next status line answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Awaited {
    Greeting,
    SingleLine,
    MultiLine,
    Capa,
    Auth,
    Stls,
}

/// What the client's next bytes are.
#[derive(Clone, Copy)]
enum ClientMode {
    Commands,
    /// Lines answering the server's continuations, up to AUTH's end.
    AuthResponses,
    UpgradeRequested,
    Upgraded,
}

/// What the server's next bytes are.
enum ServerMode {
    Status,
    /// The lines of a CAPA response, read for STLS.
    Capabilities,
    Body(DotTerminated),
}

pub(crate) struct Pop3 {
    client: ClientMode,
    server: ServerMode,
    client_line: LineBuffer,
    server_line: LineBuffer,
    awaited: VecDeque<Awaited>,
    /// The server's last continuation wants the client's next line.
    client_turn: bool,
    content_reported: bool,
    offer_reported: bool,
}

impl Pop3 {
    pub(crate) fn new() -> Pop3 {
        Pop3 {
            client: ClientMode::Commands,
            server: ServerMode::Status,
            client_line: LineBuffer::new(Peer::Client),
            server_line: LineBuffer::new(Peer::Server),
            awaited: VecDeque::from([Awaited::Greeting]),
            client_turn: false,
            content_reported: false,
            offer_reported: false,
        }
    }

    fn command(&mut self, event: &mut Option<ClientEvent>) -> Result<(), NegotiationError> {
        let line = self.client_line.line();
        let (verb, arguments) = line::split_word(line);
        let bare = arguments.iter().all(|&byte| byte == b' ');
        let (awaited, content) = if line::is(verb, "STLS") {
            (Awaited::Stls, false)
        } else if line::is(verb, "CAPA") {
            (Awaited::Capa, false)
        } else if verb.is_empty() || line::is(verb, "NOOP") || line::is(verb, "QUIT") {
            (Awaited::SingleLine, false)
        } else if line::is(verb, "RETR")
            || line::is(verb, "TOP")
            || (bare && ["LIST", "UIDL", "AUTH"].iter().any(|name| line::is(verb, name)))
        {
            (Awaited::MultiLine, true)
        } else if line::is(verb, "AUTH") {
            (Awaited::Auth, true)
        } else {
            (Awaited::SingleLine, true)
        };
        self.client_line.clear();
        if self.awaited.len() >= PENDING_LIMIT {
            return Err(NegotiationError::Malformed {
                peer: Peer::Client,
                what: "too many commands without an answer",
            });
        }
        self.awaited.push_back(awaited);
        if content && !self.content_reported {
            self.content_reported = true;
            note_client(event, ClientEvent::PlaintextContent);
        }
        match awaited {
            Awaited::Stls => {
                self.client = ClientMode::UpgradeRequested;
                note_client(event, ClientEvent::UpgradeRequested);
            }
            Awaited::Auth => self.client = ClientMode::AuthResponses,
            _ => {}
        }
        Ok(())
    }

    fn status(&mut self, event: &mut Option<ServerEvent>) -> Result<(), NegotiationError> {
        let line = self.server_line.line();
        let (indicator, _) = line::split_word(line);
        let awaited = self.awaited.front().copied();
        if awaited == Some(Awaited::Auth) && indicator == b"+" {
            self.client_turn = true;
            self.server_line.clear();
            return Ok(());
        }
        let ok = match indicator {
            b"+OK" => true,
            b"-ERR" => false,
            _ => {
                return Err(NegotiationError::Malformed {
                    peer: Peer::Server,
                    what: "a status line without +OK or -ERR",
                })
            }
        };
        self.server_line.clear();
        self.awaited.pop_front();
        self.client_turn = false;
        match awaited {
            // A server may say -ERR unasked before it closes (an idle timeout).
            None if !ok => {}
            None => {
                return Err(NegotiationError::Malformed {
                    peer: Peer::Server,
                    what: "an answer to no command",
                })
            }
            Some(Awaited::Greeting | Awaited::SingleLine) => {}
            Some(Awaited::Capa) if ok => self.server = ServerMode::Capabilities,
            Some(Awaited::MultiLine) if ok => self.server = ServerMode::Body(DotTerminated::new()),
            Some(Awaited::Capa | Awaited::MultiLine) => {}
            Some(Awaited::Auth) => self.client = ClientMode::Commands,
            Some(Awaited::Stls) if ok => {
                self.client = ClientMode::Upgraded;
                note_server(event, ServerEvent::UpgradeAccepted);
            }
            Some(Awaited::Stls) => {
                self.client = ClientMode::Commands;
                note_server(event, ServerEvent::UpgradeRefused);
            }
        }
        Ok(())
    }

    fn capability(&mut self, event: &mut Option<ServerEvent>) -> Result<(), NegotiationError> {
        let line = self.server_line.line();
        if line == b"." {
            self.server = ServerMode::Status;
        } else if line::is(line::split_word(line).0, "STLS") && !self.offer_reported {
            self.offer_reported = true;
            note_server(event, ServerEvent::UpgradeOffered);
        }
        self.server_line.clear();
        Ok(())
    }
}

impl Negotiation for Pop3 {
    fn protocol(&self) -> Protocol {
        Protocol::Pop3
    }

    fn from_client(&mut self, bytes: &[u8]) -> Result<ClientStep, NegotiationError> {
        client_bytes(bytes, |rest, event| match self.client {
            ClientMode::Commands => {
                let (taken, complete) = self.client_line.fill(rest)?;
                if complete {
                    self.command(event)?;
                }
                Ok(Some(taken))
            }
            ClientMode::AuthResponses => {
                let (taken, complete) = self.client_line.fill(rest)?;
                self.client_turn = false;
                if complete {
                    self.client_line.clear();
                }
                Ok(Some(taken))
            }
            ClientMode::UpgradeRequested => Ok(None),
            ClientMode::Upgraded => Err(NegotiationError::after_upgrade(Peer::Client)),
        })
    }

    fn from_server(&mut self, bytes: &[u8]) -> Result<ServerStep, NegotiationError> {
        server_bytes(bytes, |rest, event| {
            if matches!(self.client, ClientMode::Upgraded) {
                return Ok(None);
            }
            match &mut self.server {
                ServerMode::Body(body) => Ok(Some(match body.scan(rest) {
                    Some(end) => {
                        self.server = ServerMode::Status;
                        end
                    }
                    None => rest.len(),
                })),
                ServerMode::Status | ServerMode::Capabilities => {
                    let (taken, complete) = self.server_line.fill(rest)?;
                    if complete {
                        if matches!(self.server, ServerMode::Status) {
                            self.status(event)?;
                        } else {
                            self.capability(event)?;
                        }
                    }
                    Ok(Some(taken))
                }
            }
        })
    }

    fn awaiting_server(&self) -> bool {
        !matches!(self.server, ServerMode::Status) || (!self.awaited.is_empty() && !self.client_turn)
    }

    fn upgrade_requested(&self) -> bool {
        matches!(self.client, ClientMode::UpgradeRequested)
    }
}
