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
            Upgrade::Accepted => {
                return Err(NegotiationError::Malformed {
                    peer: Peer::Client,
                    what: "bytes after the accepted upgrade",
                })
            }
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
            return Err(NegotiationError::Malformed {
                peer: Peer::Server,
                what: "bytes after its accepted upgrade",
            });
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
        self.upgrade == Upgrade::Requested || (self.client_opened && !self.features_received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::{assert_cut_anywhere_is_whole, check_arbitrary_pieces, replay, Message, Seen};
    use proptest::prelude::*;

    fn new() -> Box<dyn Negotiation> {
        Box::new(XmppNegotiation::new())
    }

    const STARTTLS: &[u8] = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
    const PROCEED: &[u8] = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
    // Transcripts captured from Prosody 0.12.3 (Debian, `c2s_require_encryption
    // = true`) through a recording relay, a message per segment as it came.
    /// Prosody's stream header and features, in one segment.
    const PROSODY_FEATURES: &[u8] = b"<?xml version='1.0'?><stream:stream xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='lab.test' xmlns='jabber:client' id='6a733911-b2e1-4441-827a-6e387e9bd2b1'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";

    /// `openssl s_client -starttls xmpp -xmpphost lab.test` (OpenSSL 3.0).
    const OPENSSL_S_CLIENT: [Message; 4] = [
        (Peer::Client, b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' to='lab.test' version='1.0'>"),
        (Peer::Server, PROSODY_FEATURES),
        (Peer::Client, STARTTLS),
        (Peer::Server, PROCEED),
    ];

    /// A client with an XML declaration and double quotes that
    /// authenticates before TLS: Prosody's SASL `<failure/>` is no refusal
    /// of TLS.
    const AUTH_IN_PLAINTEXT: [Message; 4] = [
        (Peer::Client, b"<?xml version=\"1.0\"?>\n<stream:stream to=\"lab.test\" xml:lang=\"en\" version=\"1.0\" xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\">"),
        (Peer::Server, b"<?xml version='1.0'?><stream:stream xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='lab.test' xmlns='jabber:client' id='25928a50-b5c2-48b2-bdb8-b9dd8fb9c582'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"),
        (Peer::Client, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>"),
        (Peer::Server, b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>"),
    ];

    #[test]
    fn openssl_s_client_against_prosody_upgrades_in_any_pieces() {
        let whole = assert_cut_anywhere_is_whole(new, &OPENSSL_S_CLIENT);
        assert_eq!(
            whole.events,
            vec![
                (1, Seen::Server(ServerEvent::UpgradeOffered)),
                (2, Seen::Client(ClientEvent::UpgradeRequested)),
                (3, Seen::Server(ServerEvent::UpgradeAccepted)),
            ]
        );
        let lengths: Vec<usize> = OPENSSL_S_CLIENT.iter().map(|(_, bytes)| bytes.len()).collect();
        assert_eq!(whole.passed, lengths, "the preamble passes byte for byte");
    }

    #[test]
    fn auth_before_tls_is_content_and_a_sasl_failure_no_refusal_in_any_pieces() {
        let whole = assert_cut_anywhere_is_whole(new, &AUTH_IN_PLAINTEXT);
        assert_eq!(
            whole.events,
            vec![
                (1, Seen::Server(ServerEvent::UpgradeOffered)),
                (2, Seen::Client(ClientEvent::PlaintextContent)),
            ]
        );
        let mut xmpp = XmppNegotiation::new();
        replay(&mut xmpp, &AUTH_IN_PLAINTEXT).unwrap();
        assert!(!xmpp.awaiting_server());
        assert_eq!(
            xmpp.from_client(STARTTLS).unwrap().event,
            Some(ClientEvent::UpgradeRequested),
            "the stream goes on watched"
        );
    }

    #[test]
    fn a_stream_restart_after_sasl_in_plaintext_replaces_the_stream() {
        let mut xmpp = XmppNegotiation::new();
        let messages: [Message; 6] = [
            (Peer::Client, AUTH_IN_PLAINTEXT[0].1),
            (Peer::Server, b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' version='1.0'><stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>"),
            (Peer::Client, AUTH_IN_PLAINTEXT[2].1),
            (Peer::Server, b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
            (Peer::Client, b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' to='lab.test' version='1.0'>"),
            (Peer::Server, b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' version='1.0'><stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"),
        ];
        let replayed = replay(&mut xmpp, &messages).unwrap();
        assert_eq!(replayed.seen(), vec![Seen::Client(ClientEvent::PlaintextContent)]);
        // Stanzas are at the top level of the new stream again: a <proceed/>
        // there is seen (and answers nothing), the end tag ends the stream.
        assert!(xmpp.from_server(PROCEED).is_err());
        assert_eq!(xmpp.from_client(b"<presence/></stream:stream>").unwrap().event, None);
        assert!(
            xmpp.from_client(b"<presence/>").is_err(),
            "markup after the end of the stream"
        );
    }

    #[test]
    fn double_quotes_prefixes_comments_and_open_close_pairs() {
        // A libstrophe-style client: XML declaration, double quotes, line
        // breaks; a server declaring the TLS namespace with a prefix on its
        // features and answering with an explicit end tag.
        let messages: [Message; 5] = [
            (Peer::Client, b"<?xml version=\"1.0\"?>\n<stream:stream to=\"lab.test\" xml:lang=\"en\" version=\"1.0\"\n  xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\">"),
            (Peer::Server, b"<?xml version='1.0'?><s:stream xmlns:s='http://etherx.jabber.org/streams' from='lab.test' version='1.0' xmlns='jabber:client'><!-- say hi -->"),
            (Peer::Server, b"<s:features xmlns:t='urn:ietf:params:xml:ns:xmpp-tls'> <t:starttls/>\n<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></s:features>"),
            (Peer::Client, b" <tls:starttls xmlns:tls=\"urn:ietf:params:xml:ns:xmpp-tls\" ></tls:starttls >"),
            (Peer::Server, b"<proceed xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"></proceed>"),
        ];
        let whole = assert_cut_anywhere_is_whole(new, &messages);
        assert_eq!(
            whole.seen(),
            vec![
                Seen::Server(ServerEvent::UpgradeOffered),
                Seen::Client(ClientEvent::UpgradeRequested),
                Seen::Server(ServerEvent::UpgradeAccepted)
            ]
        );
    }

    #[test]
    fn awaiting_the_server_follows_the_preamble() {
        let mut xmpp = XmppNegotiation::new();
        assert!(!xmpp.awaiting_server(), "the client speaks first");
        xmpp.from_client(OPENSSL_S_CLIENT[0].1).unwrap();
        assert!(xmpp.awaiting_server(), "the stream header awaits the features");
        let (header, features) = PROSODY_FEATURES.split_at(PROSODY_FEATURES.len() - 20);
        xmpp.from_server(header).unwrap();
        assert!(xmpp.awaiting_server(), "the features are incomplete");
        xmpp.from_server(features).unwrap();
        assert!(!xmpp.awaiting_server());
        xmpp.from_client(STARTTLS).unwrap();
        assert!(xmpp.awaiting_server());
        xmpp.from_server(PROCEED).unwrap();
        assert!(!xmpp.awaiting_server());
    }

    #[test]
    fn an_auth_pipelined_after_starttls_does_not_pass() {
        let mut xmpp = XmppNegotiation::new();
        replay(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
        let mut pipelined = STARTTLS.to_vec();
        pipelined.extend_from_slice(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>",
        );
        assert_eq!(
            xmpp.from_client(&pipelined).unwrap(),
            ClientStep {
                pass: STARTTLS.len(),
                event: Some(ClientEvent::UpgradeRequested)
            }
        );
        assert_eq!(
            xmpp.from_client(b"<iq type='get'/>").unwrap(),
            ClientStep { pass: 0, event: None }
        );
        let mut answer = PROCEED.to_vec();
        answer.extend_from_slice(b"<message/>");
        assert_eq!(
            xmpp.from_server(&answer).unwrap(),
            ServerStep {
                pass: PROCEED.len(),
                event: Some(ServerEvent::UpgradeAccepted)
            },
            "server bytes after <proceed/> do not pass"
        );
        assert!(
            xmpp.from_client(b"\x16\x03\x01").is_err(),
            "not shown after the upgrade"
        );
    }

    #[test]
    fn content_and_the_request_in_one_piece_report_the_content_and_the_request_is_pending() {
        let mut xmpp = XmppNegotiation::new();
        replay(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
        let mut piece = b"<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>".to_vec();
        let content = piece.len();
        piece.extend_from_slice(STARTTLS);
        piece.extend_from_slice(b"<presence/>");
        assert_eq!(
            xmpp.from_client(&piece).unwrap(),
            ClientStep {
                pass: content + STARTTLS.len(),
                event: Some(ClientEvent::PlaintextContent)
            },
            "the content is reported (require_tls blocks) and the request bounds what passes"
        );
        assert!(xmpp.awaiting_server(), "the request is pending");
        assert_eq!(
            xmpp.from_server(PROCEED).unwrap(),
            ServerStep {
                pass: PROCEED.len(),
                event: Some(ServerEvent::UpgradeAccepted)
            }
        );
    }

    #[test]
    fn a_failure_is_a_refusal_and_stanzas_are_content() {
        let mut xmpp = XmppNegotiation::new();
        replay(&mut xmpp, &OPENSSL_S_CLIENT[..3]).unwrap();
        let step = xmpp
            .from_server(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>")
            .unwrap();
        assert_eq!(step.event, Some(ServerEvent::UpgradeRefused));
        assert!(!xmpp.awaiting_server());

        for stanza in [
            &b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNl</auth>"[..],
            b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
            b"<message to='bob@lab.test'><body><![CDATA[<hi> ]]]></body></message>",
            b"<presence/>",
            // starttls in the wrong namespace is no upgrade request.
            b"<starttls/>",
            b"<x:starttls xmlns:y='urn:ietf:params:xml:ns:xmpp-tls'/>",
        ] {
            let mut xmpp = XmppNegotiation::new();
            replay(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
            assert_eq!(
                xmpp.from_client(stanza).unwrap(),
                ClientStep {
                    pass: stanza.len(),
                    event: Some(ClientEvent::PlaintextContent)
                },
                "{}",
                String::from_utf8_lossy(stanza)
            );
            assert_eq!(xmpp.from_client(b"<presence/> ").unwrap().event, None, "reported once");
            assert_eq!(
                xmpp.from_client(STARTTLS).unwrap().event,
                Some(ClientEvent::UpgradeRequested),
                "a later request is watched"
            );
        }
    }

    #[test]
    fn markup_inside_quotes_comments_and_cdata_does_not_count() {
        let mut xmpp = XmppNegotiation::new();
        replay(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
        let tricky = b"<message a='/>' b=\"<'>\"><!-- <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/> --><body><![CDATA[</message><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>]]></body></message>";
        // '<' inside an attribute value is not XML: the whole thing fails.
        assert!(xmpp.from_client(tricky).is_err());

        let mut xmpp = XmppNegotiation::new();
        replay(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
        let tricky = b"<message a='/>' b=\"'>\"><!-- <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/> --><body><![CDATA[</message><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>]]></body></message>";
        let step = xmpp.from_client(tricky).unwrap();
        assert_eq!(step.event, Some(ClientEvent::PlaintextContent));
        assert_eq!(step.pass, tricky.len(), "no upgrade request inside the message");
        assert_eq!(
            xmpp.from_client(STARTTLS).unwrap().event,
            Some(ClientEvent::UpgradeRequested)
        );
    }

    #[test]
    fn what_xmpp_forbids_is_an_error() {
        let header = OPENSSL_S_CLIENT[0].1;
        for (client, what) in [
            (&b"\x16\x03\x01\x00\xa5"[..], "a TLS ClientHello instead of a stream"),
            (b"<!DOCTYPE stream [<!ENTITY a 'b'>]>", "a DTD"),
            (b"<stream xmlns='jabber:client'>", "a stream in the wrong namespace"),
            (b"hello", "character data outside the stream"),
        ] {
            assert!(XmppNegotiation::new().from_client(client).is_err(), "{what}");
        }
        for (after_header, what) in [
            (&b"text between stanzas"[..], "character data between stanzas"),
            (b"<![CDATA[x]]>", "CDATA between stanzas"),
            (
                b"<presence></presence></stream:stream><presence/>",
                "markup after the stream ended",
            ),
            (b"<presence a=b/>", "an unquoted attribute"),
            (b"<presence a='1'b='2'/>", "attributes not separated"),
            (b"<presence \x16/>", "a control character"),
        ] {
            let mut xmpp = XmppNegotiation::new();
            xmpp.from_client(header).unwrap();
            assert!(
                matches!(
                    xmpp.from_client(after_header),
                    Err(NegotiationError::Malformed { peer: Peer::Client, .. })
                ),
                "{what}"
            );
        }
        let mut xmpp = XmppNegotiation::new();
        replay(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
        assert!(
            matches!(
                xmpp.from_server(PROCEED),
                Err(NegotiationError::Malformed { peer: Peer::Server, .. })
            ),
            "<proceed/> without <starttls/>"
        );
        let mut xmpp = XmppNegotiation::new();
        xmpp.from_client(header).unwrap();
        assert!(xmpp.from_server(b"\x16\x03\x03\x00\x7a\x02").is_err(), "a ServerHello");
    }

    #[test]
    fn a_tag_is_bounded_and_an_element_is_not() {
        let mut xmpp = XmppNegotiation::new();
        replay(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
        let mut long_tag = b"<message to='".to_vec();
        long_tag.extend(std::iter::repeat_n(b'a', TAG_LIMIT));
        assert_eq!(
            xmpp.from_client(&long_tag),
            Err(NegotiationError::LineTooLong {
                peer: Peer::Client,
                limit: TAG_LIMIT
            })
        );

        let mut xmpp = XmppNegotiation::new();
        replay(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
        let mut big_message = b"<message to='bob@lab.test'><body>".to_vec();
        big_message.extend(std::iter::repeat_n(b'a', 8 * TAG_LIMIT));
        big_message.extend_from_slice(b"</body></message>");
        assert_eq!(xmpp.from_client(&big_message).unwrap().pass, big_message.len());
        assert_eq!(
            xmpp.from_client(STARTTLS).unwrap().event,
            Some(ClientEvent::UpgradeRequested)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn arbitrary_pieces_never_panic(
            pieces in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..64)), 0..24),
        ) {
            check_arbitrary_pieces(&mut XmppNegotiation::new(), &pieces)?;
        }

        #[test]
        fn markup_soup_never_panics(
            words in prop::collection::vec((any::<bool>(), prop::sample::select(vec![
                &b"<"[..], b">", b"/>", b"</", b"<?", b"?>", b"<!--", b"-->", b"<![CDATA[", b"]]>", b"'", b"\"",
                b" ", b"=", b"stream:stream", b"xmlns='http://etherx.jabber.org/streams'", b"starttls",
                b"xmlns='urn:ietf:params:xml:ns:xmpp-tls'", b"proceed", b"failure", b"stream:features",
                b"xmlns:stream='http://etherx.jabber.org/streams'", b"a", b":",
            ])), 0..64),
        ) {
            let pieces: Vec<(bool, Vec<u8>)> = words.into_iter().map(|(client, word)| (client, word.to_vec())).collect();
            check_arbitrary_pieces(&mut XmppNegotiation::new(), &pieces)?;
        }

        #[test]
        fn mutated_transcripts_never_panic(
            seed in 0..OPENSSL_S_CLIENT.len(),
            position in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut pieces: Vec<(bool, Vec<u8>)> = OPENSSL_S_CLIENT
                .iter()
                .map(|&(peer, bytes)| (peer == Peer::Client, bytes.to_vec()))
                .collect();
            let message = &mut pieces[seed].1;
            let index = position.index(message.len());
            message[index] = byte;
            check_arbitrary_pieces(&mut XmppNegotiation::new(), &pieces)?;
        }
    }
}
