//! FTP control connections (RFC 959 with AUTH TLS of RFC 4217): the
//! plaintext preamble up to `AUTH TLS` and its `234` ([`FtpNegotiation`]),
//! and, once TLS runs, the decrypted control channel's announcements of data
//! connections ([`ControlChannel`]).
//!
//! Replies are matched to commands by counting: the greeting and every
//! non-empty command line get exactly one final (2xx-6xx) reply, in order,
//! preliminary 1xx replies aside; empty lines get none (vsftpd and ProFTPD
//! ignore them). A `234` the count does not match to a pending `AUTH TLS` is
//! an error, as is a line that starts with no command or reply code (a TLS
//! record, an SSLv2 hello), so a miscount fails the connection instead of
//! letting TLS through unseen.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::line::LineBuffer;
use crate::{
    note_client, note_server, ClientEvent, ClientStep, Negotiation, NegotiationError, Peer, Protocol, ServerEvent,
    ServerStep,
};

/// Commands a client sends before the session's content: anything else (USER,
/// PASS, RETR, STOR, LIST, CWD, ...) is content.
const PREAMBLE_COMMANDS: [&[u8]; 12] = [
    b"AUTH", b"FEAT", b"SYST", b"NOOP", b"HELP", b"HOST", b"QUIT", b"OPTS", b"LANG", b"PBSZ", b"PROT", b"CLNT",
];

/// How many data-connection commands may await their replies at once.
pub const PIPELINED_LIMIT: usize = 32;

fn malformed(peer: Peer, what: &'static str) -> NegotiationError {
    NegotiationError::Malformed { peer, what }
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// A command line as verb (upper case) and argument (trimmed). Leading
/// Telnet sequences (IAC IP IAC DM before ABOR) and blanks are skipped.
/// `None` for an empty line.
fn parse_command(line: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let start = line
        .iter()
        .position(|&byte| byte < 0x80 && !byte.is_ascii_whitespace())?;
    let line = &line[start..];
    let verb_end = line.iter().position(|&byte| byte == b' ').unwrap_or(line.len());
    let verb = line[..verb_end].to_ascii_uppercase();
    Some((verb, trim(&line[verb_end..])))
}

/// The first byte of a client's command line: a letter, a Telnet IAC or
/// blank, or the line's end. A TLS record (0x16) or an SSLv2 hello (0x80)
/// is none of these.
fn may_start_command(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || matches!(byte, 0xff | b' ' | b'\t' | b'\r' | b'\n')
}

/// Whether data connections are TLS (RFC 4217's `PROT P`) or plain (`PROT
/// C`, the default after `AUTH TLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProtection {
    Clear,
    Private,
}

impl DataProtection {
    /// The protection of data connections right after `AUTH <mechanism>`:
    /// `AUTH SSL` and `AUTH TLS-P` imply `PROT P` (vsftpd does so), `AUTH
    /// TLS` and `AUTH TLS-C` leave it clear. `None` for a mechanism that is
    /// not TLS (GSSAPI, ...).
    fn after_auth(mechanism: &[u8]) -> Option<DataProtection> {
        let mechanism = mechanism.to_ascii_uppercase();
        match mechanism.as_slice() {
            b"TLS" | b"TLS-C" => Some(DataProtection::Clear),
            b"SSL" | b"TLS-P" => Some(DataProtection::Private),
            _ => None,
        }
    }
}

/// One line of a server's reply.
enum ReplyLine {
    /// A line of a multi-line reply before its last (`xyz-text`, or any text).
    Continuation { code: u16, text: Vec<u8> },
    /// The reply's last line (`xyz text`): the reply is complete.
    Final { code: u16, text: Vec<u8> },
}

fn reply_code(line: &[u8]) -> Option<u16> {
    match line {
        [hundreds @ b'1'..=b'6', tens @ b'0'..=b'9', units @ b'0'..=b'9', ..] => {
            Some(u16::from(hundreds - b'0') * 100 + u16::from(tens - b'0') * 10 + u16::from(units - b'0'))
        }
        _ => None,
    }
}

const NO_CODE: &str = "a reply line that does not start with a reply code";

/// Reads a server's replies, single- and multi-line (RFC 959 4.2).
#[derive(Debug)]
struct Replies {
    line: LineBuffer,
    /// The code of the multi-line reply under way.
    open: Option<u16>,
}

impl Replies {
    fn new() -> Replies {
        Replies {
            line: LineBuffer::new(Peer::Server),
            open: None,
        }
    }

    /// Takes `input` up to the end of its first line: how many bytes it
    /// took, and the reply line they completed.
    fn fill(&mut self, input: &[u8]) -> Result<(usize, Option<ReplyLine>), NegotiationError> {
        if self.open.is_none() && self.line.is_empty() {
            if let Some(&first) = input.first() {
                if !(first.is_ascii_digit() || first == b'\r' || first == b'\n') {
                    return Err(malformed(Peer::Server, NO_CODE));
                }
            }
        }
        let (taken, complete) = self.line.fill(input)?;
        if !complete {
            return Ok((taken, None));
        }
        let line = self.line.line().to_vec();
        self.line.clear();
        Ok((taken, self.reply_line(line)?))
    }

    fn reply_line(&mut self, line: Vec<u8>) -> Result<Option<ReplyLine>, NegotiationError> {
        if let Some(code) = self.open {
            if reply_code(&line) == Some(code) && matches!(line.get(3), None | Some(b' ')) {
                self.open = None;
                return Ok(Some(ReplyLine::Final {
                    code,
                    text: line.get(4..).unwrap_or_default().to_vec(),
                }));
            }
            // Some servers repeat `xyz-` on every line.
            let text = match line.get(3) {
                Some(b'-') if reply_code(&line) == Some(code) => line[4..].to_vec(),
                _ => line,
            };
            return Ok(Some(ReplyLine::Continuation { code, text }));
        }
        if line.is_empty() {
            return Ok(None);
        }
        let code = reply_code(&line).ok_or(malformed(Peer::Server, NO_CODE))?;
        let text = line.get(4..).unwrap_or_default().to_vec();
        match line.get(3) {
            None | Some(b' ') => Ok(Some(ReplyLine::Final { code, text })),
            Some(b'-') => {
                self.open = Some(code);
                Ok(Some(ReplyLine::Continuation { code, text }))
            }
            Some(_) => Err(malformed(Peer::Server, NO_CODE)),
        }
    }
}

/// A line of a `FEAT` reply (211) that lists `AUTH TLS` (or `AUTH SSL`, or
/// several mechanisms at once, `AUTH TLS;TLS-C;SSL;TLS-P`).
fn lists_auth_tls(text: &[u8]) -> bool {
    let text = trim(text).to_ascii_uppercase();
    let Some(mechanisms) = text.strip_prefix(b"AUTH ") else {
        return false;
    };
    mechanisms.windows(3).any(|word| word == b"TLS" || word == b"SSL")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    None,
    Requested(DataProtection),
    Accepted(DataProtection),
}

/// Watches an FTP control connection's plaintext preamble: `AUTH TLS` (also
/// `SSL`, `TLS-C`, `TLS-P`, any case) is the upgrade request, `234` its
/// acceptance (also `334`, which servers of the AUTH SSL drafts send), any
/// other final reply to it a refusal; a `FEAT` reply listing `AUTH TLS` is
/// the offer; USER, PASS and every command but the preamble's (AUTH FEAT
/// SYST NOOP HELP HOST QUIT OPTS LANG PBSZ PROT CLNT) is plaintext content.
#[derive(Debug)]
pub struct FtpNegotiation {
    commands: LineBuffer,
    replies: Replies,
    /// The greeting and the commands whose final reply did not arrive.
    unanswered: u64,
    /// The last reply was preliminary (1xx, a transfer under way).
    preliminary: bool,
    upgrade: Upgrade,
    content_reported: bool,
    offer_reported: bool,
}

impl Default for FtpNegotiation {
    fn default() -> Self {
        Self::new()
    }
}

impl FtpNegotiation {
    pub fn new() -> FtpNegotiation {
        FtpNegotiation {
            commands: LineBuffer::new(Peer::Client),
            replies: Replies::new(),
            unanswered: 1,
            preliminary: false,
            upgrade: Upgrade::None,
            content_reported: false,
            offer_reported: false,
        }
    }

    /// A final reply completed: what it answered.
    fn answer(&mut self, code: u16) -> Result<Option<ServerEvent>, NegotiationError> {
        if code < 200 {
            self.preliminary = true;
            return Ok(None);
        }
        self.preliminary = false;
        // A reply nothing awaits (421 before closing) answers nothing.
        let answered_last = match self.unanswered.checked_sub(1) {
            Some(left) => {
                self.unanswered = left;
                left == 0
            }
            None => false,
        };
        match self.upgrade {
            Upgrade::Requested(protection) if answered_last => {
                if code == 234 || code == 334 {
                    self.upgrade = Upgrade::Accepted(protection);
                    Ok(Some(ServerEvent::UpgradeAccepted))
                } else {
                    self.upgrade = Upgrade::None;
                    Ok(Some(ServerEvent::UpgradeRefused))
                }
            }
            _ if code == 234 => Err(malformed(Peer::Server, "234 (TLS accepted) that answers no AUTH TLS")),
            _ => Ok(None),
        }
    }
}

impl Negotiation for FtpNegotiation {
    fn protocol(&self) -> Protocol {
        Protocol::Ftp
    }

    fn from_client(&mut self, bytes: &[u8]) -> Result<ClientStep, NegotiationError> {
        match self.upgrade {
            Upgrade::None => {}
            Upgrade::Requested(_) => return Ok(ClientStep { pass: 0, event: None }),
            Upgrade::Accepted(_) => return Err(NegotiationError::after_upgrade(Peer::Client)),
        }
        let mut event = None;
        let mut at = 0;
        while at < bytes.len() {
            if self.commands.is_empty() && !may_start_command(bytes[at]) {
                return Err(malformed(Peer::Client, "a line that is no FTP command"));
            }
            let (taken, complete) = self.commands.fill(&bytes[at..])?;
            at += taken;
            if !complete {
                break;
            }
            let command = parse_command(self.commands.line())
                .map(|(verb, argument)| (verb, DataProtection::after_auth(argument)));
            self.commands.clear();
            let Some((verb, mechanism)) = command else {
                continue;
            };
            self.unanswered = self.unanswered.saturating_add(1);
            if let (b"AUTH", Some(protection)) = (verb.as_slice(), mechanism) {
                self.upgrade = Upgrade::Requested(protection);
                note_client(&mut event, ClientEvent::UpgradeRequested);
                return Ok(ClientStep { pass: at, event });
            }
            if !PREAMBLE_COMMANDS.contains(&verb.as_slice()) && !self.content_reported {
                self.content_reported = true;
                note_client(&mut event, ClientEvent::PlaintextContent);
            }
        }
        Ok(ClientStep {
            pass: bytes.len(),
            event,
        })
    }

    fn from_server(&mut self, bytes: &[u8]) -> Result<ServerStep, NegotiationError> {
        if let Upgrade::Accepted(_) = self.upgrade {
            return Err(NegotiationError::after_upgrade(Peer::Server));
        }
        let mut event = None;
        let mut at = 0;
        while at < bytes.len() {
            let (taken, reply) = self.replies.fill(&bytes[at..])?;
            at += taken;
            match reply {
                Some(ReplyLine::Continuation { code: 211, text }) if lists_auth_tls(&text) && !self.offer_reported => {
                    self.offer_reported = true;
                    note_server(&mut event, ServerEvent::UpgradeOffered);
                }
                Some(ReplyLine::Final { code, .. }) => match self.answer(code)? {
                    Some(ServerEvent::UpgradeAccepted) => {
                        note_server(&mut event, ServerEvent::UpgradeAccepted);
                        return Ok(ServerStep { pass: at, event });
                    }
                    Some(answer) => note_server(&mut event, answer),
                    None => {}
                },
                Some(ReplyLine::Continuation { .. }) | None => {}
            }
        }
        Ok(ServerStep {
            pass: bytes.len(),
            event,
        })
    }

    fn awaiting_server(&self) -> bool {
        self.upgrade_requested() || (self.unanswered > 0 && !self.preliminary)
    }

    fn upgrade_requested(&self) -> bool {
        matches!(self.upgrade, Upgrade::Requested(_))
    }

    /// The observer of the control channel inside TLS, once the upgrade was
    /// accepted, knowing what the `AUTH` mechanism implies for data
    /// connections.
    fn control_channel(&self) -> Option<ControlChannel> {
        match self.upgrade {
            Upgrade::Accepted(protection) => Some(ControlChannel::new(protection)),
            Upgrade::None | Upgrade::Requested(_) => None,
        }
    }
}

/// Where a data connection is to be opened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataEndpoint {
    /// The address as the control channel gave it (`227` often names the
    /// server's private address behind NAT: reported as given). `None`: the
    /// address of the control connection's server (EPSV names only a port).
    pub address: Option<IpAddr>,
    pub port: u16,
}

/// What the control channel announced about data connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataChannelEvent {
    /// The server listens and the client connects to it (`227` to PASV,
    /// `229` to EPSV).
    ServerListens(DataEndpoint),
    /// The client listens and the server connects to it (PORT or EPRT that
    /// the server accepted).
    ClientListens(DataEndpoint),
    /// `PROT` accepted: data connections from now on are TLS or plain.
    Protection(DataProtection),
}

/// A command whose reply announces something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announcing {
    Passive,
    ExtendedPassive,
    /// PORT or EPRT, `None` when its argument does not parse.
    Active(Option<DataEndpoint>),
    /// PROT, `None` for a level other than C and P.
    Protection(Option<DataProtection>),
    ClearControlChannel,
    Reinitialize,
    /// LPRT and LPSV (RFC 1639), not understood.
    LongAddress,
}

impl Announcing {
    fn of(verb: &[u8], argument: &[u8]) -> Option<Announcing> {
        Some(match verb {
            b"PASV" => Announcing::Passive,
            b"EPSV" if !argument.eq_ignore_ascii_case(b"ALL") => Announcing::ExtendedPassive,
            b"PORT" => Announcing::Active(parse_port(argument)),
            b"EPRT" => Announcing::Active(parse_eprt(argument)),
            b"PROT" => Announcing::Protection(match argument.to_ascii_uppercase().as_slice() {
                b"C" => Some(DataProtection::Clear),
                b"P" => Some(DataProtection::Private),
                _ => None,
            }),
            b"CCC" => Announcing::ClearControlChannel,
            b"REIN" => Announcing::Reinitialize,
            b"LPRT" | b"LPSV" => Announcing::LongAddress,
            _ => return None,
        })
    }
}

/// Reads `digits` (at most `max_digits` ASCII digits) at the start of
/// `bytes`: the value and the rest.
fn parse_number(bytes: &[u8], max_digits: usize) -> Option<(u32, &[u8])> {
    let digits = bytes.iter().take_while(|byte| byte.is_ascii_digit()).count();
    if digits == 0 || digits > max_digits {
        return None;
    }
    let value = bytes[..digits]
        .iter()
        .fold(0u32, |value, digit| value * 10 + u32::from(digit - b'0'));
    Some((value, &bytes[digits..]))
}

/// `h1,h2,h3,h4,p1,p2` at the start of `bytes` (PORT's argument, the
/// numbers of `227`): the endpoint and the rest.
fn parse_host_port(bytes: &[u8]) -> Option<(DataEndpoint, &[u8])> {
    let mut numbers = [0u8; 6];
    let mut rest = bytes;
    for (index, number) in numbers.iter_mut().enumerate() {
        if index > 0 {
            rest = rest.strip_prefix(b",")?;
        }
        let (value, after) = parse_number(rest, 3)?;
        *number = u8::try_from(value).ok()?;
        rest = after;
    }
    let [h1, h2, h3, h4, p1, p2] = numbers;
    let endpoint = DataEndpoint {
        address: Some(IpAddr::V4(Ipv4Addr::new(h1, h2, h3, h4))),
        port: u16::from_be_bytes([p1, p2]),
    };
    Some((endpoint, rest))
}

/// PORT's argument.
fn parse_port(argument: &[u8]) -> Option<DataEndpoint> {
    match parse_host_port(argument)? {
        (endpoint, []) => Some(endpoint),
        _ => None,
    }
}

/// EPRT's argument (RFC 2428): `|1|192.0.2.1|6275|` or `|2|2001:db8::1|5282|`,
/// any printable delimiter.
fn parse_eprt(argument: &[u8]) -> Option<DataEndpoint> {
    let (&delimiter, rest) = argument.split_first()?;
    if !(33..=126).contains(&delimiter) {
        return None;
    }
    let fields: Vec<&[u8]> = rest.split(|&byte| byte == delimiter).collect();
    let [family, address, port, []] = fields.as_slice() else {
        return None;
    };
    let address = std::str::from_utf8(address).ok()?;
    let address = match *family {
        b"1" => IpAddr::V4(address.parse::<Ipv4Addr>().ok()?),
        b"2" => IpAddr::V6(address.parse::<Ipv6Addr>().ok()?),
        _ => return None,
    };
    let (port, []) = parse_number(port, 5)? else {
        return None;
    };
    Some(DataEndpoint {
        address: Some(address),
        port: u16::try_from(port).ok()?,
    })
}

/// The text of `227`: `Entering Passive Mode (h1,h2,h3,h4,p1,p2).`, the
/// numbers found where they start (RFC 1123 4.1.2.6: not every server puts
/// them in parentheses).
fn parse_passive_reply(text: &[u8]) -> Option<DataEndpoint> {
    let start = text.iter().position(|byte| byte.is_ascii_digit())?;
    parse_host_port(&text[start..]).map(|(endpoint, _)| endpoint)
}

/// The text of `229`: `Entering Extended Passive Mode (|||6446|)`.
fn parse_extended_passive_reply(text: &[u8]) -> Option<DataEndpoint> {
    let open = text.iter().position(|&byte| byte == b'(')?;
    let (&delimiter, rest) = text[open + 1..].split_first()?;
    if !(33..=126).contains(&delimiter) || delimiter.is_ascii_digit() {
        return None;
    }
    let rest = rest.strip_prefix(&[delimiter, delimiter][..])?;
    let (port, rest) = parse_number(rest, 5)?;
    rest.strip_prefix(&[delimiter, b')'][..])?;
    Some(DataEndpoint {
        address: None,
        port: u16::try_from(port).ok()?,
    })
}

/// Observes an FTP control channel's plaintext (inside TLS, after the
/// upgrade) in both directions and reports the data connections it
/// announces and their protection. It never changes a byte; what it holds
/// is bounded (a line per direction, at most 32 data-connection commands
/// awaiting their replies); an announcement it cannot understand (an
/// accepted PORT it cannot parse, LPRT/LPSV, PROT S or E) is an error, so
/// that no data connection goes unannounced.
#[derive(Debug)]
pub struct ControlChannel {
    commands: LineBuffer,
    replies: Replies,
    /// Non-empty command lines seen, and final replies matched to them.
    sent: u64,
    answered: u64,
    /// The announcing commands awaiting their reply, by their number.
    announcing: VecDeque<(u64, Announcing)>,
    protection: DataProtection,
}

impl ControlChannel {
    /// An observer from the first byte inside TLS, data connections
    /// protected as `protection` says until a PROT changes it
    /// ([`FtpNegotiation::control_channel`] knows it).
    pub fn new(protection: DataProtection) -> ControlChannel {
        ControlChannel {
            commands: LineBuffer::new(Peer::Client),
            replies: Replies::new(),
            sent: 0,
            answered: 0,
            announcing: VecDeque::new(),
            protection,
        }
    }

    /// Whether data connections opened now are TLS.
    pub fn protection(&self) -> DataProtection {
        self.protection
    }

    /// The client sent `bytes` (the next ones, in order).
    pub fn from_client(&mut self, bytes: &[u8]) -> Result<(), NegotiationError> {
        let mut at = 0;
        while at < bytes.len() {
            let (taken, complete) = self.commands.fill(&bytes[at..])?;
            at += taken;
            if !complete {
                break;
            }
            let command = parse_command(self.commands.line()).map(|(verb, argument)| Announcing::of(&verb, argument));
            self.commands.clear();
            let Some(announcing) = command else {
                continue;
            };
            let number = self.sent;
            self.sent = self.sent.saturating_add(1);
            if let Some(announcing) = announcing {
                if self.announcing.len() >= PIPELINED_LIMIT {
                    return Err(malformed(
                        Peer::Client,
                        "more than 32 data-connection commands awaiting their replies",
                    ));
                }
                self.announcing.push_back((number, announcing));
            }
        }
        Ok(())
    }

    /// The server sent `bytes` (the next ones, in order): what its replies
    /// announced, in order.
    pub fn from_server(&mut self, bytes: &[u8]) -> Result<Vec<DataChannelEvent>, NegotiationError> {
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (taken, reply) = self.replies.fill(&bytes[at..])?;
            at += taken;
            let Some(ReplyLine::Final { code, text }) = reply else {
                continue;
            };
            if code < 200 || self.answered >= self.sent {
                continue;
            }
            let number = self.answered;
            self.answered += 1;
            let Some(&(front, announcing)) = self.announcing.front() else {
                continue;
            };
            if front != number {
                continue;
            }
            self.announcing.pop_front();
            if let Some(event) = self.announced(announcing, code, &text)? {
                events.push(event);
            }
        }
        Ok(events)
    }

    fn announced(
        &mut self,
        announcing: Announcing,
        code: u16,
        text: &[u8],
    ) -> Result<Option<DataChannelEvent>, NegotiationError> {
        let accepted = (200..300).contains(&code);
        let event = match announcing {
            Announcing::Passive if code == 227 => DataChannelEvent::ServerListens(
                parse_passive_reply(text).ok_or(malformed(Peer::Server, "a 227 reply without an address and port"))?,
            ),
            Announcing::ExtendedPassive if code == 229 => DataChannelEvent::ServerListens(
                parse_extended_passive_reply(text).ok_or(malformed(Peer::Server, "a 229 reply without a port"))?,
            ),
            Announcing::Passive | Announcing::ExtendedPassive => return Ok(None),
            _ if !accepted => return Ok(None),
            Announcing::Active(Some(endpoint)) => DataChannelEvent::ClientListens(endpoint),
            Announcing::Active(None) => {
                return Err(malformed(
                    Peer::Client,
                    "a PORT or EPRT the server accepted and the appliance cannot parse",
                ))
            }
            Announcing::Protection(Some(protection)) => {
                self.protection = protection;
                DataChannelEvent::Protection(protection)
            }
            Announcing::Protection(None) => {
                return Err(malformed(
                    Peer::Client,
                    "a PROT level other than C or P that the server accepted",
                ))
            }
            // The control connection's TLS would end and the session go on
            // in plaintext after it, which the interception does not follow:
            // the session fails (closed), the reason naming the command.
            Announcing::ClearControlChannel => {
                return Err(NegotiationError::Unsupported {
                    peer: Peer::Client,
                    what: "CCC (clear command channel: the control connection back in plaintext)",
                })
            }
            Announcing::Reinitialize => {
                return Err(NegotiationError::Unsupported {
                    peer: Peer::Client,
                    what: "REIN (reinitialize: the control connection back in plaintext)",
                })
            }
            Announcing::LongAddress => {
                return Err(malformed(
                    Peer::Client,
                    "LPRT or LPSV (RFC 1639) that the server accepted",
                ))
            }
        };
        Ok(Some(event))
    }
}
