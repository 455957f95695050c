//! PostgreSQL (frontend/backend protocol, "Message Flow" and "SSL Session
//! Encryption"): the client's first message is untyped (length, code).
//! SSLRequest (8 bytes, code 80877103) is the upgrade request: the server's
//! single byte `S` accepts it, `N` refuses it, and the client goes on with
//! another first message. A StartupMessage (protocol 3.x, or the refused
//! 2.0) is content: user and database names, then the session in typed
//! messages (type byte, length), read only for their framing. CancelRequest
//! passes and the server closes. GSSENCRequest (code 80877104) answered `N`
//! passes; answered `G`, the session would be GSSAPI-encrypted, which the
//! appliance can neither intercept nor inspect:
//! [`NegotiationError::Unsupported`]. So is TLS without SSLRequest (the
//! direct SSL negotiation of PostgreSQL 17 clients). Lengths are bounded:
//! 10000 bytes for a first message (the server's own limit), 1 GiB for a
//! typed one; messages are skipped, not held.

use crate::{ClientEvent, ClientStep, Negotiation, NegotiationError, Peer, Protocol, ServerEvent, ServerStep};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// The server's own limit on a first message (MAX_STARTUP_PACKET_LENGTH).
const FIRST_MESSAGE_LIMIT: u32 = 10_000;
/// The longest typed message (the server's MaxAllocSize).
const MESSAGE_LIMIT: u32 = 0x3fff_ffff;
/// A CancelRequest: length, code, process id, and a key of 4 (protocol 3.0)
/// to 256 bytes (3.2).
const CANCEL_LENGTHS: std::ops::RangeInclusive<u32> = 16..=268;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

enum Phase {
    /// The client's first message is coming; `header` holds its length and
    /// code as they arrive.
    First {
        header: [u8; 8],
        have: usize,
    },
    /// SSLRequest sent: the caller discards the client's bytes until the
    /// server's one-byte answer.
    SslRequested,
    /// GSSENCRequest sent: the client waits for the one-byte answer.
    GssRequested,
    /// A CancelRequest's bytes still to come; then nothing more.
    Cancel {
        left: u32,
    },
    /// After the StartupMessage: typed messages both ways.
    Session {
        client: Messages,
        server: Messages,
        answered: bool,
    },
    Upgraded,
}

/// One direction of typed messages, framed and skipped.
struct Messages {
    peer: Peer,
    /// The type byte and length being read.
    header: [u8; 5],
    have: usize,
    /// The rest of the current message still to skip.
    skip: u64,
}

impl Messages {
    fn new(peer: Peer, skip: u64) -> Messages {
        Messages {
            peer,
            header: [0; 5],
            have: 0,
            skip,
        }
    }

    fn read(&mut self, mut bytes: &[u8]) -> Result<(), NegotiationError> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let taken = usize::try_from(self.skip).map_or(bytes.len(), |skip| skip.min(bytes.len()));
                self.skip -= taken as u64;
                bytes = &bytes[taken..];
                continue;
            }
            let taken = (self.header.len() - self.have).min(bytes.len());
            self.header[self.have..self.have + taken].copy_from_slice(&bytes[..taken]);
            self.have += taken;
            bytes = &bytes[taken..];
            if self.have == self.header.len() {
                self.have = 0;
                let [_, length @ ..] = self.header;
                let length = u32::from_be_bytes(length);
                if length < 4 {
                    return Err(NegotiationError::Malformed {
                        peer: self.peer,
                        what: "a message length below 4",
                    });
                }
                if length > MESSAGE_LIMIT {
                    return Err(NegotiationError::LineTooLong {
                        peer: self.peer,
                        limit: MESSAGE_LIMIT as usize,
                    });
                }
                self.skip = u64::from(length - 4);
            }
        }
        Ok(())
    }
}

pub(crate) struct Postgres {
    phase: Phase,
}

impl Postgres {
    pub(crate) fn new() -> Postgres {
        Postgres {
            phase: Phase::First {
                header: [0; 8],
                have: 0,
            },
        }
    }

    /// The client's first message began with `length` and `code`: what it
    /// is, and the bytes of it still to come.
    fn first_message(&mut self, length: u32, code: u32) -> Result<Option<ClientEvent>, NegotiationError> {
        let malformed = |what| NegotiationError::Malformed {
            peer: Peer::Client,
            what,
        };
        if length > FIRST_MESSAGE_LIMIT {
            return Err(NegotiationError::LineTooLong {
                peer: Peer::Client,
                limit: FIRST_MESSAGE_LIMIT as usize,
            });
        }
        if length < 8 {
            return Err(malformed("a first message shorter than 8 bytes"));
        }
        match code {
            SSL_REQUEST | GSSENC_REQUEST if length != 8 => {
                Err(malformed("an SSLRequest or GSSENCRequest longer than 8 bytes"))
            }
            SSL_REQUEST => {
                self.phase = Phase::SslRequested;
                Ok(Some(ClientEvent::UpgradeRequested))
            }
            GSSENC_REQUEST => {
                self.phase = Phase::GssRequested;
                Ok(None)
            }
            CANCEL_REQUEST if CANCEL_LENGTHS.contains(&length) => {
                self.phase = Phase::Cancel { left: length - 8 };
                Ok(None)
            }
            CANCEL_REQUEST => Err(malformed("a CancelRequest of a wrong length")),
            _ if matches!(code >> 16, 2 | 3) => {
                self.phase = Phase::Session {
                    client: Messages::new(Peer::Client, u64::from(length - 8)),
                    server: Messages::new(Peer::Server, 0),
                    answered: false,
                };
                Ok(Some(ClientEvent::PlaintextContent))
            }
            _ => Err(malformed("an unknown protocol version or request code")),
        }
    }
}

impl Negotiation for Postgres {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }

    fn from_client(&mut self, bytes: &[u8]) -> Result<ClientStep, NegotiationError> {
        let mut event = None;
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            match &mut self.phase {
                Phase::First { header, have } => {
                    if *have == 0 && rest[0] == TLS_HANDSHAKE {
                        return Err(NegotiationError::Unsupported {
                            peer: Peer::Client,
                            what: "TLS without an SSLRequest (direct SSL negotiation)",
                        });
                    }
                    let taken = (header.len() - *have).min(rest.len());
                    header[*have..*have + taken].copy_from_slice(&rest[..taken]);
                    *have += taken;
                    at += taken;
                    if *have == header.len() {
                        *have = 0;
                        let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
                        let length = u32::from_be_bytes([l0, l1, l2, l3]);
                        let code = u32::from_be_bytes([c0, c1, c2, c3]);
                        if let Some(first) = self.first_message(length, code)? {
                            event.get_or_insert(first);
                        }
                    }
                }
                Phase::SslRequested => break,
                Phase::GssRequested => {
                    return Err(NegotiationError::Malformed {
                        peer: Peer::Client,
                        what: "bytes before the answer to its GSSENCRequest",
                    })
                }
                Phase::Cancel { left } => {
                    if *left == 0 {
                        return Err(NegotiationError::Malformed {
                            peer: Peer::Client,
                            what: "bytes after a CancelRequest",
                        });
                    }
                    let taken = usize::try_from(*left).map_or(rest.len(), |left| left.min(rest.len()));
                    *left -= taken as u32;
                    at += taken;
                }
                Phase::Session { client, .. } => {
                    client.read(rest)?;
                    at = bytes.len();
                }
                Phase::Upgraded => return Err(NegotiationError::after_upgrade(Peer::Client)),
            }
        }
        Ok(ClientStep { pass: at, event })
    }

    fn from_server(&mut self, bytes: &[u8]) -> Result<ServerStep, NegotiationError> {
        let Some(&answer) = bytes.first() else {
            return Ok(ServerStep { pass: 0, event: None });
        };
        let malformed = |what| NegotiationError::Malformed {
            peer: Peer::Server,
            what,
        };
        match &mut self.phase {
            Phase::SslRequested => match answer {
                b'S' => {
                    self.phase = Phase::Upgraded;
                    Ok(ServerStep {
                        pass: 1,
                        event: Some(ServerEvent::UpgradeAccepted),
                    })
                }
                b'N' => {
                    self.phase = Phase::First {
                        header: [0; 8],
                        have: 0,
                    };
                    if bytes.len() > 1 {
                        return Err(malformed("bytes after its answer to an SSLRequest"));
                    }
                    Ok(ServerStep {
                        pass: 1,
                        event: Some(ServerEvent::UpgradeRefused),
                    })
                }
                _ => Err(malformed("an answer to an SSLRequest other than S or N")),
            },
            Phase::GssRequested => match answer {
                b'N' if bytes.len() == 1 => {
                    self.phase = Phase::First {
                        header: [0; 8],
                        have: 0,
                    };
                    Ok(ServerStep { pass: 1, event: None })
                }
                b'N' => Err(malformed("bytes after its answer to a GSSENCRequest")),
                b'G' => Err(NegotiationError::Unsupported {
                    peer: Peer::Server,
                    what: "GSSAPI encryption",
                }),
                _ => Err(malformed("an answer to a GSSENCRequest other than G or N")),
            },
            Phase::Session { server, answered, .. } => {
                server.read(bytes)?;
                *answered = true;
                Ok(ServerStep {
                    pass: bytes.len(),
                    event: None,
                })
            }
            Phase::First { .. } | Phase::Cancel { .. } => Err(malformed("bytes the client did not ask for")),
            Phase::Upgraded => Err(NegotiationError::after_upgrade(Peer::Server)),
        }
    }

    fn awaiting_server(&self) -> bool {
        match &self.phase {
            Phase::SslRequested | Phase::GssRequested => true,
            Phase::Session { answered, .. } => !answered,
            Phase::First { .. } | Phase::Cancel { .. } | Phase::Upgraded => false,
        }
    }

    fn upgrade_requested(&self) -> bool {
        matches!(self.phase, Phase::SslRequested | Phase::GssRequested)
    }
}
