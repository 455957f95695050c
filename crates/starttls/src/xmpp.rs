//! XMPP client-to-server streams (RFC 6120): the plaintext preamble up to
//! `<starttls/>` and `<proceed/>`, read by a small bounded scanner of XML
//! markup that follows the depth of elements, not an XML parser.
//!
//! The scanner holds one tag at a time (16 KiB at most, attributes
//! included), never an element's content, so memory is bounded while a
//! stanza of any size streams through. It skips comments, processing
//! instructions and CDATA sections, honours single and double quotes in
//! attributes and resolves namespace prefixes declared on the stream header
//! and the element. What XMPP forbids and a desynchronised watcher would
//! show is an error: a DTD, character data between stanzas, a control
//! character (a TLS record starts with 0x16), markup after the stream ended.

use crate::line::is_forbidden_control;
use crate::{
    note_client, note_server, ClientEvent, ClientStep, Negotiation, NegotiationError, Peer, Protocol, ServerEvent,
    ServerStep,
};

/// The longest tag the scanner holds, `<` to `>`.
pub const TAG_LIMIT: usize = 16 * 1024;

const STREAMS_NAMESPACE: &[u8] = b"http://etherx.jabber.org/streams";
const TLS_NAMESPACE: &[u8] = b"urn:ietf:params:xml:ns:xmpp-tls";

type Declarations = Vec<(Vec<u8>, Vec<u8>)>;

/// A start or end tag, as written.
#[derive(Debug)]
struct Tag {
    /// The qualified name, `prefix:local` or `local`.
    name: Vec<u8>,
    attributes: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Tag {
    fn prefix_and_local(&self) -> (&[u8], &[u8]) {
        match self.name.iter().position(|&byte| byte == b':') {
            Some(colon) => (&self.name[..colon], &self.name[colon + 1..]),
            None => (&[], &self.name),
        }
    }

    /// The namespaces this tag declares, by prefix (`""` for `xmlns`).
    fn declarations(&self) -> Declarations {
        self.attributes
            .iter()
            .filter_map(|(name, value)| {
                if name == b"xmlns" {
                    Some((Vec::new(), value.clone()))
                } else {
                    name.strip_prefix(b"xmlns:")
                        .map(|prefix| (prefix.to_vec(), value.clone()))
                }
            })
            .collect()
    }

    /// Whether this is `local` in `namespace`, the prefix resolved in this
    /// tag's declarations and then in `outer` (innermost first).
    fn is(&self, namespace: &[u8], local: &[u8], outer: &[&Declarations]) -> bool {
        let (prefix, own_local) = self.prefix_and_local();
        if own_local != local {
            return false;
        }
        let own = self.declarations();
        std::iter::once(&own)
            .chain(outer.iter().copied())
            .find_map(|declarations| {
                declarations
                    .iter()
                    .find(|(declared, _)| declared == prefix)
                    .map(|(_, uri)| uri.as_slice())
            })
            == Some(namespace)
    }
}

fn is_name_byte(byte: u8) -> bool {
    !byte.is_ascii_whitespace() && !matches!(byte, b'/' | b'=' | b'"' | b'\'' | b'<' | b'>')
}

fn is_name(name: &[u8]) -> bool {
    matches!(name.first(), Some(first) if !first.is_ascii_digit() && !matches!(first, b'-' | b'.' | b':'))
        && name.iter().all(|&byte| is_name_byte(byte))
}

/// What a complete piece of markup was.
#[derive(Debug)]
enum Token {
    /// A start tag (`empty`: `<x/>`) with `depth` elements open around it.
    Start { depth: usize, tag: Tag, empty: bool },
    /// An end tag, closing an element that had `depth` elements around it.
    End { depth: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Character data between markup.
    Text,
    /// Inside `<` ... `>`, held in `markup`; `quote` is an open attribute
    /// quote.
    Markup { quote: Option<u8> },
    /// Inside a comment, a processing instruction or a CDATA section:
    /// `matched` bytes of `end` seen.
    Skip { end: &'static [u8], matched: usize },
}

/// Follows one direction of an XML stream, a byte at a time.
#[derive(Debug)]
struct Scanner {
    peer: Peer,
    scan: Scan,
    markup: Vec<u8>,
    /// Elements open, the stream's included.
    depth: usize,
    /// The stream was closed (`</stream:stream>`).
    closed: bool,
}

impl Scanner {
    fn new(peer: Peer) -> Scanner {
        Scanner {
            peer,
            scan: Scan::Text,
            markup: Vec::new(),
            depth: 0,
            closed: false,
        }
    }

    /// A new stream header came where a stanza could (the restart after
    /// SASL, RFC 6120 6.4.6): it replaces the stream, it is not inside it.
    fn restart(&mut self) {
        self.depth = 1;
    }

    fn malformed(&self, what: &'static str) -> NegotiationError {
        NegotiationError::Malformed { peer: self.peer, what }
    }

    fn push(&mut self, byte: u8) -> Result<Option<Token>, NegotiationError> {
        if is_forbidden_control(byte) {
            return Err(self.malformed("a control character in an XML stream"));
        }
        match self.scan {
            Scan::Text => {
                if byte == b'<' {
                    if self.closed {
                        return Err(self.malformed("markup after the end of the stream"));
                    }
                    self.markup.clear();
                    self.markup.push(byte);
                    self.scan = Scan::Markup { quote: None };
                } else if self.depth <= 1 && !byte.is_ascii_whitespace() {
                    return Err(self.malformed("character data outside a stanza"));
                }
                Ok(None)
            }
            Scan::Skip { end, matched } => {
                let matched = Self::advance_match(end, matched, byte);
                self.scan = if matched == end.len() {
                    Scan::Text
                } else {
                    Scan::Skip { end, matched }
                };
                Ok(None)
            }
            Scan::Markup { quote } => self.markup_byte(quote, byte),
        }
    }

    /// How much of `end` is matched after `byte`, `matched` bytes of it
    /// having been: the longest end of what was seen that starts `end`.
    fn advance_match(end: &[u8], matched: usize, byte: u8) -> usize {
        let mut seen = end[..matched].to_vec();
        seen.push(byte);
        (1..=seen.len())
            .rev()
            .find(|&length| end.starts_with(&seen[seen.len() - length..]))
            .unwrap_or(0)
    }

    fn markup_byte(&mut self, quote: Option<u8>, byte: u8) -> Result<Option<Token>, NegotiationError> {
        if byte == b'<' {
            return Err(self.malformed("'<' inside a tag"));
        }
        if self.markup.len() >= TAG_LIMIT {
            return Err(NegotiationError::LineTooLong {
                peer: self.peer,
                limit: TAG_LIMIT,
            });
        }
        self.markup.push(byte);
        if self.markup.starts_with(b"<?") {
            self.scan = Scan::Skip { end: b"?>", matched: 0 };
            return Ok(None);
        }
        if self.markup.starts_with(b"<!") {
            if self.markup == b"<!--" {
                self.scan = Scan::Skip {
                    end: b"-->",
                    matched: 0,
                };
            } else if self.markup == b"<![CDATA[" {
                if self.depth <= 1 {
                    return Err(self.malformed("character data outside a stanza"));
                }
                self.scan = Scan::Skip {
                    end: b"]]>",
                    matched: 0,
                };
            } else if !b"<!--".starts_with(&self.markup) && !b"<![CDATA[".starts_with(&self.markup) {
                return Err(self.malformed("a DTD or other declaration"));
            }
            return Ok(None);
        }
        match quote {
            Some(open) => {
                if byte == open {
                    self.scan = Scan::Markup { quote: None };
                }
                Ok(None)
            }
            None if byte == b'"' || byte == b'\'' => {
                self.scan = Scan::Markup { quote: Some(byte) };
                Ok(None)
            }
            None if byte == b'>' => {
                self.scan = Scan::Text;
                self.complete_tag().map(Some)
            }
            None => Ok(None),
        }
    }

    fn complete_tag(&mut self) -> Result<Token, NegotiationError> {
        let markup = std::mem::take(&mut self.markup);
        let inner = &markup[1..markup.len() - 1];
        if let Some(name) = inner.strip_prefix(b"/") {
            if !is_name(name.trim_ascii_end()) {
                return Err(self.malformed("an end tag without a name"));
            }
            self.depth = self
                .depth
                .checked_sub(1)
                .ok_or(self.malformed("an end tag with no element open"))?;
            self.closed = self.depth == 0;
            return Ok(Token::End { depth: self.depth });
        }
        let (inner, empty) = match inner.strip_suffix(b"/") {
            Some(inner) => (inner, true),
            None => (inner, false),
        };
        let tag = self.parse_tag(inner)?;
        let depth = self.depth;
        if empty {
            self.closed = depth == 0;
        } else {
            self.depth = depth.saturating_add(1);
        }
        Ok(Token::Start { depth, tag, empty })
    }

    fn parse_tag(&self, inner: &[u8]) -> Result<Tag, NegotiationError> {
        let name_end = inner
            .iter()
            .position(|byte| byte.is_ascii_whitespace())
            .unwrap_or(inner.len());
        let name = &inner[..name_end];
        if !is_name(name) {
            return Err(self.malformed("a start tag without a name"));
        }
        let mut attributes = Vec::new();
        let mut rest = &inner[name_end..];
        loop {
            let trimmed = rest.trim_ascii_start();
            if trimmed.is_empty() {
                break;
            }
            if trimmed.len() == rest.len() {
                return Err(self.malformed("attributes not separated by white space"));
            }
            let name_end = trimmed
                .iter()
                .position(|&byte| !is_name_byte(byte))
                .unwrap_or(trimmed.len());
            let name = &trimmed[..name_end];
            let after_name = trimmed[name_end..].trim_ascii_start();
            let value = after_name
                .strip_prefix(b"=")
                .map(<[u8]>::trim_ascii_start)
                .filter(|_| is_name(name))
                .ok_or(self.malformed("an attribute without a name or '='"))?;
            let (&quote, value) = value
                .split_first()
                .filter(|(quote, _)| matches!(quote, b'"' | b'\''))
                .ok_or(self.malformed("an attribute value without quotes"))?;
            let value_end = value
                .iter()
                .position(|&byte| byte == quote)
                .ok_or(self.malformed("an attribute value without its closing quote"))?;
            attributes.push((name.to_vec(), value[..value_end].to_vec()));
            rest = &value[value_end + 1..];
        }
        Ok(Tag {
            name: name.to_vec(),
            attributes,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    None,
    Requested,
    Accepted,
}

/// The client's top-level element under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientElement {
    StartTls,
    Other,
}

/// The server's top-level element under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerElement {
    Features,
    Proceed,
    Failure,
    Other,
}

/// Watches an XMPP client-to-server preamble: the client's
/// `<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>` is the upgrade
/// request, the server's `<proceed/>` (same namespace) its acceptance and
/// `<failure/>` its refusal; `<starttls>` among the server's
/// `<stream:features>` is the offer; any other top-level element of the
/// client (`<auth>`, `<iq>`, `<message>`, `<presence>`, ...) is plaintext
/// content. A new stream header between stanzas (the restart after SASL)
/// replaces the stream.
#[derive(Debug)]
pub struct XmppNegotiation {
    client: Scanner,
    server: Scanner,
    client_stream: Declarations,
    server_stream: Declarations,
    client_element: Option<ClientElement>,
    server_element: Option<ServerElement>,
    /// What the server's `<stream:features>` under way declares.
    features: Declarations,
    client_opened: bool,
    features_received: bool,
    upgrade: Upgrade,
    content_reported: bool,
    offer_reported: bool,
}

impl Default for XmppNegotiation {
    fn default() -> Self {
        Self::new()
    }
}

impl XmppNegotiation {
    pub fn new() -> XmppNegotiation {
        XmppNegotiation {
            client: Scanner::new(Peer::Client),
            server: Scanner::new(Peer::Server),
            client_stream: Vec::new(),
            server_stream: Vec::new(),
            client_element: None,
            server_element: None,
            features: Vec::new(),
            client_opened: false,
            features_received: false,
            upgrade: Upgrade::None,
            content_reported: false,
            offer_reported: false,
        }
    }

    fn stream_header(tag: &Tag, peer: Peer) -> Result<Declarations, NegotiationError> {
        if !tag.is(STREAMS_NAMESPACE, b"stream", &[]) {
            return Err(NegotiationError::Malformed {
                peer,
                what: "an XML stream that is no XMPP stream",
            });
        }
        Ok(tag.declarations())
    }

    /// The client's token: whether it completed the upgrade request. The
    /// first plaintext content is noted in `event`.
    fn client_token(&mut self, token: Token, event: &mut Option<ClientEvent>) -> Result<bool, NegotiationError> {
        let completed = match token {
            Token::Start { depth: 0, tag, .. } => {
                self.client_stream = Self::stream_header(&tag, Peer::Client)?;
                self.client_opened = true;
                None
            }
            Token::Start {
                depth: 1,
                tag,
                empty: false,
            } if tag.is(STREAMS_NAMESPACE, b"stream", &[]) => {
                self.client.restart();
                self.client_stream = tag.declarations();
                None
            }
            Token::Start { depth: 1, tag, empty } => {
                let element = if tag.is(TLS_NAMESPACE, b"starttls", &[&self.client_stream]) {
                    ClientElement::StartTls
                } else {
                    if !self.content_reported {
                        self.content_reported = true;
                        note_client(event, ClientEvent::PlaintextContent);
                    }
                    ClientElement::Other
                };
                self.client_element = Some(element);
                empty.then_some(element)
            }
            Token::End { depth: 1 } => self.client_element,
            Token::Start { .. } | Token::End { .. } => None,
        };
        if completed.is_some() {
            self.client_element = None;
        }
        Ok(completed == Some(ClientElement::StartTls))
    }

    /// The server's token: the answer to the upgrade request it completes.
    /// The first offer is noted in `event`.
    fn server_token(
        &mut self,
        token: Token,
        event: &mut Option<ServerEvent>,
    ) -> Result<Option<ServerEvent>, NegotiationError> {
        let completed = match token {
            Token::Start { depth: 0, tag, .. } => {
                self.server_stream = Self::stream_header(&tag, Peer::Server)?;
                None
            }
            Token::Start {
                depth: 1,
                tag,
                empty: false,
            } if tag.is(STREAMS_NAMESPACE, b"stream", &[]) => {
                self.server.restart();
                self.server_stream = tag.declarations();
                None
            }
            Token::Start { depth: 1, tag, empty } => {
                let outer = [&self.server_stream];
                let element = if tag.is(STREAMS_NAMESPACE, b"features", &outer) {
                    self.features = tag.declarations();
                    ServerElement::Features
                } else if tag.is(TLS_NAMESPACE, b"proceed", &outer) {
                    ServerElement::Proceed
                } else if tag.is(TLS_NAMESPACE, b"failure", &outer) {
                    ServerElement::Failure
                } else {
                    ServerElement::Other
                };
                self.server_element = Some(element);
                empty.then_some(element)
            }
            Token::Start { depth: 2, tag, .. } => {
                if self.server_element == Some(ServerElement::Features)
                    && tag.is(TLS_NAMESPACE, b"starttls", &[&self.features, &self.server_stream])
                    && !self.offer_reported
                {
                    self.offer_reported = true;
                    note_server(event, ServerEvent::UpgradeOffered);
                }
                None
            }
            Token::End { depth: 1 } => self.server_element,
            Token::Start { .. } | Token::End { .. } => None,
        };
        if completed.is_some() {
            self.server_element = None;
        }
        match completed {
            Some(ServerElement::Features) => {
                self.features_received = true;
                Ok(None)
            }
            Some(ServerElement::Proceed) if self.upgrade == Upgrade::Requested => {
                self.upgrade = Upgrade::Accepted;
                Ok(Some(ServerEvent::UpgradeAccepted))
            }
            Some(ServerElement::Proceed) => Err(NegotiationError::Malformed {
                peer: Peer::Server,
                what: "<proceed/> that answers no <starttls/>",
            }),
            Some(ServerElement::Failure) if self.upgrade == Upgrade::Requested => {
                self.upgrade = Upgrade::None;
                Ok(Some(ServerEvent::UpgradeRefused))
            }
            Some(ServerElement::Failure | ServerElement::Other) | None => Ok(None),
        }
    }
}

impl Negotiation for XmppNegotiation {
    fn protocol(&self) -> Protocol {
        Protocol::Xmpp
    }

    fn from_client(&mut self, bytes: &[u8]) -> Result<ClientStep, NegotiationError> {
        match self.upgrade {
            Upgrade::None => {}
            Upgrade::Requested => return Ok(ClientStep { pass: 0, event: None }),
            Upgrade::Accepted => return Err(NegotiationError::after_upgrade(Peer::Client)),
        }
        let mut event = None;
        for (index, &byte) in bytes.iter().enumerate() {
            let Some(token) = self.client.push(byte)? else {
                continue;
            };
            if self.client_token(token, &mut event)? {
                self.upgrade = Upgrade::Requested;
                note_client(&mut event, ClientEvent::UpgradeRequested);
                return Ok(ClientStep { pass: index + 1, event });
            }
        }
        Ok(ClientStep {
            pass: bytes.len(),
            event,
        })
    }

    fn from_server(&mut self, bytes: &[u8]) -> Result<ServerStep, NegotiationError> {
        if self.upgrade == Upgrade::Accepted {
            return Err(NegotiationError::after_upgrade(Peer::Server));
        }
        let mut event = None;
        for (index, &byte) in bytes.iter().enumerate() {
            let Some(token) = self.server.push(byte)? else {
                continue;
            };
            match self.server_token(token, &mut event)? {
                Some(ServerEvent::UpgradeAccepted) => {
                    note_server(&mut event, ServerEvent::UpgradeAccepted);
                    return Ok(ServerStep { pass: index + 1, event });
                }
                Some(answer) => note_server(&mut event, answer),
                None => {}
            }
        }
        Ok(ServerStep {
            pass: bytes.len(),
            event,
        })
    }

    fn awaiting_server(&self) -> bool {
        self.upgrade_requested() || (self.client_opened && !self.features_received)
    }

    fn upgrade_requested(&self) -> bool {
        self.upgrade == Upgrade::Requested
    }
}
