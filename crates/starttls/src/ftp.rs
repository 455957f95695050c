//! FTP control connections (RFC 959 with AUTH TLS of RFC 4217): the
//! plaintext preamble up to `AUTH TLS` and its `234` ([`FtpNegotiation`]),
//! and, once TLS runs, the decrypted control channel's announcements of data
//! connections ([`ControlChannel`]).
//!
//! Replies are matched to commands by counting: the greeting and every
//! non-empty command line get exactly one final (2xx-6xx) reply, in order,
//! preliminary 1xx replies aside; empty lines get none (vsftpd and ProFTPD
//! ignore them). A `234` the count does not match to a pending `AUTH TLS` is
//! an error, as is a TLS record where a command or reply line starts, so a
//! miscount fails the connection instead of letting TLS through unseen.

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
const PIPELINED_LIMIT: usize = 32;

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

    /// The observer of the control channel inside TLS, once the upgrade was
    /// accepted, knowing what the `AUTH` mechanism implies for data
    /// connections.
    pub fn control_channel(&self) -> Option<ControlChannel> {
        match self.upgrade {
            Upgrade::Accepted(protection) => Some(ControlChannel::new(protection)),
            Upgrade::None | Upgrade::Requested(_) => None,
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
            Upgrade::Accepted(_) => return Err(malformed(Peer::Client, "bytes after the accepted upgrade")),
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
            return Err(malformed(Peer::Server, "bytes after its accepted upgrade"));
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
        matches!(self.upgrade, Upgrade::Requested(_)) || (self.unanswered > 0 && !self.preliminary)
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
    /// `CCC` or `REIN` accepted: the control connection's TLS ends, what
    /// follows on it is plaintext.
    ControlChannelCleared,
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
            Announcing::ClearControlChannel => DataChannelEvent::ControlChannelCleared,
            Announcing::Reinitialize => {
                self.protection = DataProtection::Clear;
                DataChannelEvent::ControlChannelCleared
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::{assert_cut_anywhere_is_whole, check_arbitrary_pieces, replay, Message, Seen};
    use proptest::prelude::*;

    // Transcripts captured from vsftpd 3.0.3 (Debian 3.0.3-13, `ssl_enable`,
    // `force_anon_logins_ssl`) through a recording relay, a message per
    // segment as it came.
    const GREETING: &[u8] = b"220 (vsFTPd 3.0.3)\r\n";
    const ACCEPTED: &[u8] = b"234 Proceed with negotiation.\r\n";

    fn new() -> Box<dyn Negotiation> {
        Box::new(FtpNegotiation::new())
    }

    /// `openssl s_client -starttls ftp` (OpenSSL 3.0).
    const OPENSSL_S_CLIENT: [Message; 3] = [
        (Peer::Server, GREETING),
        (Peer::Client, b"AUTH TLS\r\n"),
        (Peer::Server, ACCEPTED),
    ];

    /// A client that asks for the features, logs in too early, tries
    /// Kerberos, then TLS (in lower case): vsftpd writes each line of its
    /// FEAT reply in a segment of its own.
    const FEAT_THEN_AUTH: [Message; 22] = [
        (Peer::Server, GREETING),
        (Peer::Client, b"FEAT\r\n"),
        (Peer::Server, b"211-Features:\r\n"),
        (Peer::Server, b" AUTH TLS\r\n"),
        (Peer::Server, b" EPRT\r\n"),
        (Peer::Server, b" EPSV\r\n"),
        (Peer::Server, b" MDTM\r\n"),
        (Peer::Server, b" PASV\r\n"),
        (Peer::Server, b" PBSZ\r\n"),
        (Peer::Server, b" PROT\r\n"),
        (Peer::Server, b" REST STREAM\r\n"),
        (Peer::Server, b" SIZE\r\n"),
        (Peer::Server, b" TVFS\r\n"),
        (Peer::Server, b"211 End\r\n"),
        (Peer::Client, b"USER anonymous\r\n"),
        (Peer::Server, b"530 Anonymous sessions must use encryption.\r\n"),
        (Peer::Client, b"PASS\r\n"),
        (Peer::Server, b"530 Please login with USER and PASS.\r\n"),
        (Peer::Client, b"AUTH KERBEROS_V4\r\n"),
        (Peer::Server, b"504 Unknown AUTH type.\r\n"),
        (Peer::Client, b"auth tls\r\n"),
        (Peer::Server, ACCEPTED),
    ];

    fn lengths(messages: &[Message]) -> Vec<usize> {
        messages.iter().map(|(_, bytes)| bytes.len()).collect()
    }

    #[test]
    fn openssl_s_client_against_vsftpd_upgrades_in_any_pieces() {
        let whole = assert_cut_anywhere_is_whole(new, &OPENSSL_S_CLIENT);
        assert_eq!(
            whole.events,
            vec![
                (1, Seen::Client(ClientEvent::UpgradeRequested)),
                (2, Seen::Server(ServerEvent::UpgradeAccepted)),
            ]
        );
        assert_eq!(
            whole.passed,
            lengths(&OPENSSL_S_CLIENT),
            "the preamble passes byte for byte"
        );
    }

    #[test]
    fn features_content_and_another_mechanism_before_auth_tls_in_any_pieces() {
        let repeated = [
            (Peer::Server, GREETING),
            (Peer::Client, &b"FEAT\r\n"[..]),
            (
                Peer::Server,
                b"211-Extensions supported:\r\n211-AUTH TLS\r\n211-PBSZ\r\n211 END\r\n",
            ),
        ];
        assert_eq!(
            replay(new().as_mut(), &repeated).unwrap().seen(),
            vec![Seen::Server(ServerEvent::UpgradeOffered)],
            "a FEAT reply repeating its code on every line"
        );
        let whole = assert_cut_anywhere_is_whole(new, &FEAT_THEN_AUTH);
        assert_eq!(
            whole.events,
            vec![
                (3, Seen::Server(ServerEvent::UpgradeOffered)),
                (14, Seen::Client(ClientEvent::PlaintextContent)),
                (20, Seen::Client(ClientEvent::UpgradeRequested)),
                (21, Seen::Server(ServerEvent::UpgradeAccepted)),
            ],
            "AUTH KERBEROS_V4 and its 504 are neither request nor refusal"
        );
        assert_eq!(whole.passed, lengths(&FEAT_THEN_AUTH));
    }

    #[test]
    fn curl_ssl_reqd_sends_auth_ssl_which_implies_private_data_connections() {
        let mut ftp = FtpNegotiation::new();
        assert!(ftp.awaiting_server(), "the greeting is awaited");
        let messages: [Message; 3] = [
            (Peer::Server, GREETING),
            (Peer::Client, b"AUTH SSL\r\n"),
            (Peer::Server, ACCEPTED),
        ];
        let replayed = replay(&mut ftp, &messages).unwrap();
        assert_eq!(
            replayed.seen(),
            vec![
                Seen::Client(ClientEvent::UpgradeRequested),
                Seen::Server(ServerEvent::UpgradeAccepted)
            ]
        );
        let channel = ftp.control_channel().expect("accepted");
        assert_eq!(channel.protection(), DataProtection::Private);
        assert!(matches!(
            ftp.from_server(b"220 more\r\n"),
            Err(NegotiationError::Malformed { peer: Peer::Server, .. })
        ));

        let mut ftp = FtpNegotiation::new();
        replay(&mut ftp, &OPENSSL_S_CLIENT).unwrap();
        assert_eq!(
            ftp.control_channel().map(|channel| channel.protection()),
            Some(DataProtection::Clear)
        );
    }

    #[test]
    fn mechanisms_are_case_insensitive_and_334_is_an_acceptance() {
        for (request, answer) in [
            (&b"auth tls\r\n"[..], &b"234 AUTH TLS OK.\r\n"[..]),
            (b"Auth Tls-C\r\n", b"234 ok\r\n"),
            (b"AUTH TLS-P\r\n", b"234-multi\r\n234 line\r\n"),
            (b"AUTH SSL\r\n", b"334 AUTH SSL OK.\r\n"),
        ] {
            let mut ftp = FtpNegotiation::new();
            let messages = [
                (Peer::Server, GREETING),
                (Peer::Client, request),
                (Peer::Server, answer),
            ];
            let replayed = replay(&mut ftp, &messages).unwrap();
            assert_eq!(
                replayed.seen().last(),
                Some(&Seen::Server(ServerEvent::UpgradeAccepted)),
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn commands_pipelined_after_auth_tls_do_not_pass() {
        let mut ftp = FtpNegotiation::new();
        ftp.from_server(GREETING).unwrap();
        let step = ftp.from_client(b"AUTH TLS\r\nUSER x\r\n").unwrap();
        assert_eq!(
            step,
            ClientStep {
                pass: 10,
                event: Some(ClientEvent::UpgradeRequested)
            }
        );
        assert!(ftp.awaiting_server());
        assert_eq!(
            ftp.from_client(b"PASS y\r\n").unwrap(),
            ClientStep { pass: 0, event: None }
        );
        let step = ftp.from_server(b"234 Proceed.\r\n\x16\x03\x03").unwrap();
        assert_eq!(
            step,
            ServerStep {
                pass: 14,
                event: Some(ServerEvent::UpgradeAccepted)
            },
            "server bytes after its 234 do not pass"
        );
        assert!(!ftp.awaiting_server());
    }

    #[test]
    fn content_and_the_request_in_one_piece_report_the_content_and_the_request_is_pending() {
        let mut ftp = FtpNegotiation::new();
        ftp.from_server(GREETING).unwrap();
        assert_eq!(
            ftp.from_client(b"USER anonymous\r\nAUTH TLS\r\nPASS x\r\n").unwrap(),
            ClientStep {
                pass: 26,
                event: Some(ClientEvent::PlaintextContent)
            },
            "the content is reported (require_tls blocks) and the request bounds what passes"
        );
        assert!(ftp.awaiting_server(), "the request is pending");
        assert_eq!(
            ftp.from_client(b"NOOP\r\n").unwrap(),
            ClientStep { pass: 0, event: None }
        );
        ftp.from_server(b"530 Anonymous sessions must use encryption.\r\n")
            .unwrap();
        assert_eq!(
            ftp.from_server(b"234 Proceed with negotiation.\r\n").unwrap(),
            ServerStep {
                pass: 31,
                event: Some(ServerEvent::UpgradeAccepted)
            }
        );
        assert!(ftp.control_channel().is_some());
    }

    #[test]
    fn a_refusal_passes_and_the_session_goes_on_watched_in_plaintext() {
        let mut ftp = FtpNegotiation::new();
        ftp.from_server(GREETING).unwrap();
        ftp.from_client(b"AUTH TLS\r\nUSER dropped\r\n").unwrap();
        let step = ftp.from_server(b"530 Please login with USER and PASS.\r\n").unwrap();
        assert_eq!(step.event, Some(ServerEvent::UpgradeRefused));
        assert_eq!(step.pass, 38);
        assert!(!ftp.awaiting_server());
        assert!(ftp.control_channel().is_none());
        let step = ftp.from_client(b"USER anonymous\r\n").unwrap();
        assert_eq!(
            step,
            ClientStep {
                pass: 16,
                event: Some(ClientEvent::PlaintextContent)
            }
        );
        ftp.from_server(b"331 Please specify the password.\r\n").unwrap();
        let step = ftp.from_client(b"PASS secret\r\n").unwrap();
        assert_eq!(step.event, None, "only the first content is reported");
        ftp.from_server(b"230 Login successful.\r\n").unwrap();
        // vsftpd ignores an empty line (no reply) and times the session out
        // with a reply nothing awaits.
        assert_eq!(ftp.from_client(b"\r\n").unwrap().pass, 2);
        assert!(!ftp.awaiting_server());
        assert_eq!(ftp.from_server(b"421 Timeout.\r\n").unwrap().event, None);
        // A second attempt is watched again.
        assert_eq!(
            ftp.from_client(b"AUTH TLS\r\n").unwrap().event,
            Some(ClientEvent::UpgradeRequested)
        );
        assert_eq!(
            ftp.from_server(b"504 Unknown AUTH type.\r\n").unwrap().event,
            Some(ServerEvent::UpgradeRefused)
        );
    }

    #[test]
    fn preamble_commands_are_not_content_and_replies_are_matched_in_order() {
        let mut ftp = FtpNegotiation::new();
        let messages: [Message; 5] = [
            (Peer::Server, b"220-Welcome to the\r\n  lab server\r\n220 ready\r\n"),
            // An empty line is ignored by vsftpd and ProFTPD: no reply.
            (Peer::Client, b"HOST ftp.lab.test\r\n\r\nSYST\r\nnoop\r\nAUTH TLS\r\n"),
            (Peer::Server, b"220 host ok\r\n215 UNIX Type: L8\r\n"),
            (Peer::Server, b"200 NOOP ok.\r\n"),
            (Peer::Server, ACCEPTED),
        ];
        let whole = assert_cut_anywhere_is_whole(new, &messages);
        assert_eq!(
            whole.seen(),
            vec![
                Seen::Client(ClientEvent::UpgradeRequested),
                Seen::Server(ServerEvent::UpgradeAccepted)
            ]
        );
        replay(&mut ftp, &messages[..4]).unwrap();
        assert!(ftp.awaiting_server(), "AUTH TLS is still unanswered");
    }

    #[test]
    fn awaiting_the_server_stops_at_a_preliminary_reply() {
        let mut ftp = FtpNegotiation::new();
        ftp.from_server(GREETING).unwrap();
        assert!(!ftp.awaiting_server());
        ftp.from_client(b"RETR big.iso\r\n").unwrap();
        assert!(ftp.awaiting_server());
        ftp.from_server(b"150 Opening BINARY mode data connection.\r\n")
            .unwrap();
        assert!(!ftp.awaiting_server(), "a transfer under way is not a silent server");
        ftp.from_server(b"226 Transfer complete.\r\n").unwrap();
        assert!(!ftp.awaiting_server());
    }

    #[test]
    fn tls_where_a_line_starts_and_a_234_answering_nothing_are_errors() {
        let mut ftp = FtpNegotiation::new();
        ftp.from_server(GREETING).unwrap();
        assert!(matches!(
            ftp.from_client(b"\x16\x03\x01\x00\xa5\x01"),
            Err(NegotiationError::Malformed { peer: Peer::Client, .. })
        ));
        let mut ftp = FtpNegotiation::new();
        assert!(ftp.from_client(b"\x80\x2e\x01").is_err(), "an SSLv2 hello");
        let mut ftp = FtpNegotiation::new();
        assert!(ftp.from_server(b"\x16\x03\x03").is_err());
        let mut ftp = FtpNegotiation::new();
        ftp.from_server(GREETING).unwrap();
        ftp.from_client(b"FEAT\r\n").unwrap();
        assert!(matches!(
            ftp.from_server(b"234 Proceed.\r\n"),
            Err(NegotiationError::Malformed { peer: Peer::Server, .. })
        ));
        let mut ftp = FtpNegotiation::new();
        assert!(ftp.from_server(b"22O typo\r\n").is_err());
        let mut ftp = FtpNegotiation::new();
        assert!(ftp.from_server(b"220ready\r\n").is_err());
    }

    #[test]
    fn oversized_lines_are_errors() {
        let mut long = b"USER ".to_vec();
        long.extend(std::iter::repeat_n(b'a', crate::LINE_LIMIT));
        let mut ftp = FtpNegotiation::new();
        assert_eq!(
            ftp.from_client(&long),
            Err(NegotiationError::LineTooLong {
                peer: Peer::Client,
                limit: crate::LINE_LIMIT
            })
        );
        let mut long = b"220 ".to_vec();
        long.extend(std::iter::repeat_n(b'x', crate::LINE_LIMIT));
        let mut ftp = FtpNegotiation::new();
        assert!(matches!(
            ftp.from_server(&long),
            Err(NegotiationError::LineTooLong { peer: Peer::Server, .. })
        ));
    }

    /// The control channel inside TLS, as `curl -v --ssl-reqd` showed it
    /// against vsftpd 3.0.3 (a passive download with EPSV, then the lines of
    /// PASV, EPRT and PORT sessions), closed by a PROT C.
    const CONTROL_CHANNEL: [Message; 14] = [
        (Peer::Client, b"USER anonymous\r\n"),
        (Peer::Server, b"230 Login successful.\r\n"),
        (Peer::Client, b"PBSZ 0\r\n"),
        (Peer::Server, b"200 PBSZ set to 0.\r\n"),
        (Peer::Client, b"PROT P\r\n"),
        (Peer::Server, b"200 PROT now Private.\r\n"),
        (Peer::Client, b"PWD\r\nEPSV\r\n"),
        (Peer::Server, b"257 \"/\" is the current directory\r\n229 Entering Extended Passive Mode (|||40100|)\r\n"),
        (Peer::Client, b"TYPE I\r\nSIZE file.bin\r\nRETR file.bin\r\nPASV\r\n"),
        (Peer::Server, b"200 Switching to Binary mode.\r\n213 6\r\n150 Opening BINARY mode data connection for file.bin (6 bytes).\r\n226 Transfer complete.\r\n227 Entering Passive Mode (127,0,0,1,156,168).\r\n"),
        (Peer::Client, b"EPRT |1|127.0.0.1|56681|\r\nPORT 127,0,0,1,185,189\r\nEPRT |2|2001:2::2|51000|\r\nPROT C\r\n"),
        (Peer::Server, b"200 EPRT command successful. Consider using EPSV.\r\n200 PORT command successful. Consider using PASV.\r\n200 EPRT command successful. Consider using EPSV.\r\n200 PROT now Clear.\r\n"),
        (Peer::Client, b"QUIT\r\n"),
        (Peer::Server, b"221 Goodbye.\r\n"),
    ];

    /// Shows `messages` to a new control channel observer, each message cut
    /// at `cuts`: the events.
    fn observe(messages: &[Message], cuts: &[usize]) -> Result<Vec<DataChannelEvent>, NegotiationError> {
        let mut channel = ControlChannel::new(DataProtection::Clear);
        let mut events = Vec::new();
        for &(peer, message) in messages {
            let mut start = 0;
            for end in cuts
                .iter()
                .copied()
                .filter(|&cut| cut < message.len())
                .chain([message.len()])
            {
                let piece = &message[start..end];
                start = end;
                match peer {
                    Peer::Client => channel.from_client(piece)?,
                    Peer::Server => events.extend(channel.from_server(piece)?),
                }
            }
        }
        Ok(events)
    }

    #[test]
    fn the_control_channel_announces_data_connections_in_any_pieces() {
        let events = observe(&CONTROL_CHANNEL, &[]).unwrap();
        let endpoint = |address: Option<IpAddr>, port| DataEndpoint { address, port };
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(
            events,
            vec![
                DataChannelEvent::Protection(DataProtection::Private),
                DataChannelEvent::ServerListens(endpoint(None, 40100)),
                DataChannelEvent::ServerListens(endpoint(Some(localhost), 40104)),
                DataChannelEvent::ClientListens(endpoint(Some(localhost), 56681)),
                DataChannelEvent::ClientListens(endpoint(Some(localhost), 47549)),
                DataChannelEvent::ClientListens(endpoint(Some("2001:2::2".parse().unwrap()), 51000)),
                DataChannelEvent::Protection(DataProtection::Clear),
            ]
        );
        let longest = CONTROL_CHANNEL.iter().map(|(_, bytes)| bytes.len()).max().unwrap_or(0);
        for cut in 1..longest {
            assert_eq!(observe(&CONTROL_CHANNEL, &[cut]).as_ref(), Ok(&events), "cut at {cut}");
        }
        let every_byte: Vec<usize> = (1..longest).collect();
        assert_eq!(observe(&CONTROL_CHANNEL, &every_byte), Ok(events));
    }

    #[test]
    fn refused_announcements_announce_nothing() {
        let messages: [Message; 2] = [
            (Peer::Client, b"PORT 198,18,0,2,200,10\r\nEPRT |1|198.18.0.2|51000|\r\nPROT P\r\nPASV\r\nEPSV\r\n"),
            (Peer::Server, b"500 Illegal PORT command.\r\n522 Bad network protocol.\r\n536 PROT level not supported.\r\n550 Permission denied.\r\n500 Unknown command.\r\n"),
        ];
        assert_eq!(observe(&messages, &[]), Ok(Vec::new()));
    }

    #[test]
    fn passive_replies_in_other_spellings() {
        for (reply, port) in [
            (&b"227 Entering Passive Mode 198,18,0,1,4,1\r\n"[..], 1025),
            (b"227 =198,18,0,1,0,21\r\n", 21),
            (
                b"227-multi\r\n227 Entering Passive Mode (198,18,0,1,255,255)\r\n",
                65535,
            ),
        ] {
            let messages = [(Peer::Client, &b"PASV\r\n"[..]), (Peer::Server, reply)];
            assert_eq!(
                observe(&messages, &[]),
                Ok(vec![DataChannelEvent::ServerListens(DataEndpoint {
                    address: Some(Ipv4Addr::new(198, 18, 0, 1).into()),
                    port
                })])
            );
        }
        let messages = [
            (Peer::Client, &b"EPSV 2\r\n"[..]),
            (Peer::Server, b"229 Extended (!!!6446!)\r\n"),
        ];
        assert_eq!(
            observe(&messages, &[]),
            Ok(vec![DataChannelEvent::ServerListens(DataEndpoint {
                address: None,
                port: 6446
            })])
        );
    }

    #[test]
    fn what_the_observer_cannot_follow_is_an_error() {
        for messages in [
            [
                (Peer::Client, &b"PASV\r\n"[..]),
                (Peer::Server, b"227 Entering Passive Mode (198,18,0,1,4)\r\n"),
            ],
            [
                (Peer::Client, b"PASV\r\n"),
                (Peer::Server, b"227 Entering Passive Mode (198,18,0,256,4,1)\r\n"),
            ],
            [
                (Peer::Client, b"EPSV\r\n"),
                (Peer::Server, b"229 Entering Extended Passive Mode (|||70000|)\r\n"),
            ],
            [
                (Peer::Client, b"PORT 198,18,0,2,200\r\n"),
                (Peer::Server, b"200 PORT command successful.\r\n"),
            ],
            [
                (Peer::Client, b"EPRT |3|x|1|\r\n"),
                (Peer::Server, b"200 EPRT command successful.\r\n"),
            ],
            [
                (Peer::Client, b"LPSV\r\n"),
                (
                    Peer::Server,
                    b"228 Entering Long Passive Mode (4,4,198,18,0,1,2,4,1)\r\n",
                ),
            ],
            [(Peer::Client, b"PROT S\r\n"), (Peer::Server, b"200 PROT now Safe.\r\n")],
        ] {
            assert!(
                matches!(observe(&messages, &[]), Err(NegotiationError::Malformed { .. })),
                "{:?}",
                String::from_utf8_lossy(messages[1].1)
            );
        }
        let pipelined = b"PASV\r\n".repeat(PIPELINED_LIMIT + 1);
        assert!(observe(&[(Peer::Client, &pipelined)], &[]).is_err());
        let pipelined = b"PASV\r\n".repeat(PIPELINED_LIMIT);
        assert!(observe(&[(Peer::Client, &pipelined)], &[]).is_ok());
    }

    #[test]
    fn clearing_the_command_channel_is_announced() {
        let messages: [Message; 2] = [
            (Peer::Client, b"CCC\r\nREIN\r\n"),
            (Peer::Server, b"200 CCC ok.\r\n220 Service ready for new user.\r\n"),
        ];
        assert_eq!(
            observe(&messages, &[]),
            Ok(vec![
                DataChannelEvent::ControlChannelCleared,
                DataChannelEvent::ControlChannelCleared
            ])
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn arbitrary_pieces_never_panic(
            pieces in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..64)), 0..24),
        ) {
            check_arbitrary_pieces(&mut FtpNegotiation::new(), &pieces)?;
        }

        #[test]
        fn mutated_transcripts_never_panic(
            seed in 0..FEAT_THEN_AUTH.len(),
            position in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut pieces: Vec<(bool, Vec<u8>)> = FEAT_THEN_AUTH
                .iter()
                .map(|&(peer, bytes)| (peer == Peer::Client, bytes.to_vec()))
                .collect();
            let message = &mut pieces[seed].1;
            let index = position.index(message.len());
            message[index] = byte;
            check_arbitrary_pieces(&mut FtpNegotiation::new(), &pieces)?;
        }

        #[test]
        fn the_control_channel_never_panics(
            pieces in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..64)), 0..24),
            words in prop::collection::vec(prop::sample::select(vec![
                &b"PASV\r\n"[..], b"EPSV\r\n", b"PORT 1,2,3,4,5,6\r\n", b"EPRT |2|::1|9|\r\n", b"PROT P\r\n",
                b"227 (1,2,3,4,5,6)\r\n", b"229 (|||7|)\r\n", b"200 ok\r\n", b"211-x\r\n", b"211 y\r\n",
            ]), 0..24),
        ) {
            let mut channel = ControlChannel::new(DataProtection::Clear);
            let lines = words.iter().enumerate().map(|(index, line)| (index % 2 == 0, line.to_vec()));
            for (from_client, piece) in pieces.into_iter().chain(lines) {
                let result = if from_client {
                    channel.from_client(&piece).map(|()| Vec::new())
                } else {
                    channel.from_server(&piece)
                };
                match result {
                    Ok(events) => prop_assert!(events.len() <= piece.len() / 4),
                    Err(_) => break,
                }
            }
        }
    }
}
