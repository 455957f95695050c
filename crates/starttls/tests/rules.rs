//! The rules of one step that every watcher follows (see `negotiation()`):
//! a piece reports at most one event; the first plaintext content outranks
//! the upgrade request in the client's piece, which still ends at the
//! request, the request then pending; the server's answer outranks its
//! offer. PostgreSQL has neither content before its request nor an offer.

mod common;

use common::{feed, run_on, watcher, Client, Seen, Server, Side};
use starttls::{ClientEvent, Protocol, ServerEvent};

const XMPP_CLIENT_HEADER: &[u8] =
    b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' to='lab.test' version='1.0'>";
const XMPP_SERVER_HEADER: &[u8] =
    b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' from='lab.test' version='1.0'>";
const XMPP_FEATURES: &[u8] = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>";
const XMPP_STARTTLS: &[u8] = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

type Transcript = &'static [(Side, &'static [u8])];

/// Per protocol: what comes before, then the client's piece of content,
/// request and more (the more being the trailing bytes that do not pass),
/// then the server's answers, the request's acceptance last.
struct ContentThenRequest {
    protocol: Protocol,
    before: Transcript,
    content_and_request: &'static [u8],
    after_the_request: &'static [u8],
    answers: &'static [u8],
}

const CONTENT_THEN_REQUEST: [ContentThenRequest; 5] = [
    ContentThenRequest {
        protocol: Protocol::Smtp,
        before: &[(Server, b"220 mail ESMTP\r\n")],
        content_and_request: b"MAIL FROM:<a@lab.test>\r\nSTARTTLS\r\n",
        after_the_request: b"RSET\r\n",
        answers: b"250 2.1.0 Ok\r\n220 2.0.0 Ready\r\n",
    },
    ContentThenRequest {
        protocol: Protocol::Imap,
        before: &[(Server, b"* OK ready\r\n")],
        content_and_request: b"a LOGIN alice secret\r\nb STARTTLS\r\n",
        after_the_request: b"c SELECT INBOX\r\n",
        answers: b"a NO [PRIVACYREQUIRED] no\r\nb OK go\r\n",
    },
    ContentThenRequest {
        protocol: Protocol::Pop3,
        before: &[(Server, b"+OK ready\r\n")],
        content_and_request: b"USER alice\r\nSTLS\r\n",
        after_the_request: b"PASS secret\r\n",
        answers: b"-ERR no\r\n+OK go\r\n",
    },
    ContentThenRequest {
        protocol: Protocol::Ftp,
        before: &[(Server, b"220 (vsFTPd 3.0.3)\r\n")],
        content_and_request: b"USER anonymous\r\nAUTH TLS\r\n",
        after_the_request: b"PASS x\r\n",
        answers: b"530 Anonymous sessions must use encryption.\r\n234 Proceed with negotiation.\r\n",
    },
    ContentThenRequest {
        protocol: Protocol::Xmpp,
        before: &[(Client, XMPP_CLIENT_HEADER), (Server, XMPP_SERVER_HEADER), (Server, XMPP_FEATURES)],
        content_and_request: b"<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        after_the_request: b"<presence/>",
        answers: b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    },
];

#[test]
fn content_and_the_request_in_one_piece_report_the_content_and_the_request_is_pending() {
    for case in CONTENT_THEN_REQUEST {
        let protocol = case.protocol;
        let mut negotiation = watcher(protocol);
        run_on(negotiation.as_mut(), case.before).unwrap();
        let piece = [case.content_and_request, case.after_the_request].concat();
        assert_eq!(
            feed(negotiation.as_mut(), Client, &piece).unwrap(),
            (
                case.content_and_request.len(),
                Some(Seen::Client(ClientEvent::PlaintextContent))
            ),
            "{protocol}: the content is reported (require_tls blocks) and the request bounds what passes"
        );
        assert!(negotiation.awaiting_server(), "{protocol}: the request is pending");
        assert_eq!(
            feed(negotiation.as_mut(), Client, b"NOOP\r\n").unwrap(),
            (0, None),
            "{protocol}: nothing passes while the request is pending"
        );
        assert_eq!(
            feed(negotiation.as_mut(), Server, case.answers).unwrap(),
            (case.answers.len(), Some(Seen::Server(ServerEvent::UpgradeAccepted))),
            "{protocol}: the pending request is accepted"
        );
    }
}

/// Per protocol: the conversation up to a piece of the server's that holds
/// the offer and the refusal of the request pipelined after it.
const OFFER_THEN_REFUSAL: [(Protocol, Transcript); 5] = [
    (
        Protocol::Smtp,
        &[
            (Server, b"220 mail ESMTP\r\n"),
            (Client, b"EHLO a\r\nSTARTTLS\r\n"),
            (Server, b"250-mail\r\n250 STARTTLS\r\n454 4.7.0 no\r\n"),
        ],
    ),
    (
        Protocol::Imap,
        &[
            (Server, b"* OK ready\r\n"),
            (Client, b"a CAPABILITY\r\nb STARTTLS\r\n"),
            (Server, b"* CAPABILITY IMAP4rev1 STARTTLS\r\na OK done\r\nb NO no\r\n"),
        ],
    ),
    (
        Protocol::Pop3,
        &[
            (Server, b"+OK ready\r\n"),
            (Client, b"CAPA\r\nSTLS\r\n"),
            (Server, b"+OK\r\nSTLS\r\n.\r\n-ERR no\r\n"),
        ],
    ),
    (
        Protocol::Ftp,
        &[
            (Server, b"220 (vsFTPd 3.0.3)\r\n"),
            (Client, b"FEAT\r\nAUTH TLS\r\n"),
            (Server, b"211-Features:\r\n AUTH TLS\r\n211 End\r\n504 no\r\n"),
        ],
    ),
    (
        Protocol::Xmpp,
        &[
            (Client, XMPP_CLIENT_HEADER),
            (Client, XMPP_STARTTLS),
            (
                Server,
                b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' version='1.0'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features><failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            ),
        ],
    ),
];

#[test]
fn the_answer_outranks_the_offer_in_one_piece_and_the_offer_is_not_reported_later() {
    for (protocol, transcript) in OFFER_THEN_REFUSAL {
        let mut negotiation = watcher(protocol);
        let outcome = run_on(negotiation.as_mut(), transcript).unwrap();
        assert_eq!(
            outcome.events,
            [
                Seen::Client(ClientEvent::UpgradeRequested),
                Seen::Server(ServerEvent::UpgradeRefused)
            ],
            "{protocol}"
        );
        assert!(!negotiation.awaiting_server(), "{protocol}: the request was answered");
        assert_eq!(
            feed(negotiation.as_mut(), Server, b"").unwrap(),
            (0, None),
            "{protocol}: the offer is not reported later"
        );
    }
}
