//! Arbitrary bytes, and pieces of each protocol in arbitrary order, in
//! arbitrary pieces: no watcher panics or hangs (even fed on after an
//! error), none passes more than it was given, nothing passes once the
//! upgrade was requested or accepted.

mod common;

use common::{check, watcher, Client, Server, Side};
use proptest::prelude::*;
use starttls::Protocol;

/// Pieces of each protocol's syntax, so that arbitrary sequences reach the
/// watchers' deeper states; the first is the server's greeting (PostgreSQL:
/// the client's SSLRequest), which half the conversations start with.
const SMTP: &[(Side, &[u8])] = &[
    (Server, b"220 mail ESMTP\r\n"),
    (Client, b"\r\n"),
    (Client, b"\n"),
    (Client, b"\r\n.\r\n"),
    (Server, b"250-mail\r\n"),
    (Server, b"250-STARTTLS\r\n"),
    (Server, b"250 ok\r\n"),
    (Server, b"354 go\r\n"),
    (Server, b"454 no\r\n"),
    (Server, b"421 bye\r\n"),
    (Client, b"EHLO a\r\n"),
    (Client, b"STARTTLS\r\n"),
    (Client, b"DATA\r\n"),
    (Client, b"BDAT 3\r\n"),
    (Client, b"BDAT 0 LAST\r\n"),
    (Client, b"MAIL FROM:<a>\r\n"),
    (Client, b"RSET\r\n"),
];
const IMAP: &[(Side, &[u8])] = &[
    (Server, b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n"),
    (Client, b"\r\n"),
    (Client, b"\n"),
    (Server, b"* CAPABILITY STARTTLS\r\n"),
    (Client, b"a STARTTLS\r\n"),
    (Server, b"a OK done\r\n"),
    (Server, b"a NO no\r\n"),
    (Server, b"b BAD bad\r\n"),
    (Server, b"b OK [CAPABILITY STARTTLS] ok\r\n"),
    (Server, b"+ go\r\n"),
    (Client, b"b LOGIN {3}\r\n"),
    (Client, b" {2+}\r\n"),
    (Client, b"c AUTHENTICATE PLAIN\r\n"),
    (Server, b"c OK in\r\n"),
    (Client, b"d IDLE\r\n"),
    (Client, b"DONE\r\n"),
    (Server, b"* 1 FETCH (BODY[] {4}\r\n"),
    (Server, b"* BYE\r\n"),
];
const POP3: &[(Side, &[u8])] = &[
    (Server, b"+OK\r\n"),
    (Client, b"\r\n"),
    (Client, b"\n"),
    (Server, b"\r\n.\r\n"),
    (Server, b".\r\n"),
    (Server, b"+OK ready\r\n"),
    (Server, b"-ERR no\r\n"),
    (Client, b"CAPA\r\n"),
    (Client, b"STLS\r\n"),
    (Client, b"RETR 1\r\n"),
    (Client, b"LIST\r\n"),
    (Client, b"AUTH PLAIN\r\n"),
    (Server, b"+ \r\n"),
    (Client, b"USER a\r\n"),
];
const POSTGRES: &[(Side, &[u8])] = &[
    (Client, &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]),
    (Client, &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]),
    (Client, &[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e]),
    (Client, &[0, 0, 0, 9, 0, 3, 0, 0, 0]),
    (Client, &[b'Q', 0, 0, 0, 5, 0]),
    (Server, &[b'R', 0, 0, 0, 8, 0, 0, 0, 0]),
    (Server, b"S"),
    (Server, b"N"),
    (Server, b"G"),
];

const FTP: &[(Side, &[u8])] = &[
    (Server, b"220 (vsFTPd 3.0.3)\r\n"),
    (Client, b"\r\n"),
    (Client, b"FEAT\r\n"),
    (Server, b"211-Features:\r\n"),
    (Server, b" AUTH TLS\r\n"),
    (Server, b"211 End\r\n"),
    (Server, b"150 here\r\n"),
    (Client, b"AUTH TLS\r\n"),
    (Client, b"AUTH SSL\r\n"),
    (Client, b"USER a\r\n"),
    (Client, b"PBSZ 0\r\n"),
    (Server, b"234 go\r\n"),
    (Server, b"530 no\r\n"),
    (Server, b"504 no\r\n"),
    (Server, b"421 bye\r\n"),
];
const XMPP: &[(Side, &[u8])] = &[
    (
        Client,
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' version='1.0'>",
    ),
    (
        Server,
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' version='1.0'>",
    ),
    (
        Server,
        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
    ),
    (Client, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
    (
        Client,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AA==</auth>",
    ),
    (Client, b"<iq type='get'/>"),
    (Server, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
    (Server, b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
    (Server, b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
    (Client, b"<!-- c -->"),
    (Server, b"</stream:stream>"),
];

/// A piece a peer sends: a word of `vocabulary` from its sender, or
/// arbitrary bytes from either; cut in two at an arbitrary point.
fn piece(vocabulary: &'static [(Side, &'static [u8])]) -> impl Strategy<Value = (Side, Vec<u8>, usize)> {
    prop_oneof![
        1 => (
            proptest::sample::select(&[Client, Server][..]),
            proptest::collection::vec(any::<u8>(), 0..24)
        ),
        8 => proptest::sample::select(vocabulary).prop_map(|(side, word)| (side, word.to_vec())),
    ]
    .prop_flat_map(|(side, piece)| {
        let length = piece.len();
        (Just(side), Just(piece), 0..=length)
    })
}

/// Up to 16 pieces, each cut in two; half of the conversations open with
/// the vocabulary's first word.
fn conversation(vocabulary: &'static [(Side, &'static [u8])]) -> impl Strategy<Value = Vec<(Side, Vec<u8>)>> {
    let (opener, opening) = vocabulary[0];
    (any::<bool>(), proptest::collection::vec(piece(vocabulary), 0..16)).prop_map(move |(open, pieces)| {
        let cut = pieces
            .into_iter()
            .flat_map(|(side, piece, cut)| [(side, piece[..cut].to_vec()), (side, piece[cut..].to_vec())]);
        open.then(|| (opener, opening.to_vec()))
            .into_iter()
            .chain(cut)
            .collect()
    })
}

proptest! {
    // About one conversation in a hundred (IMAP: in three hundred) reaches
    // an accepted upgrade.
    #![proptest_config(ProptestConfig {
        cases: 2048,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn smtp_never_panics(conversation in conversation(SMTP)) {
        check(watcher(Protocol::Smtp).as_mut(), &conversation);
    }

    #[test]
    fn imap_never_panics(conversation in conversation(IMAP)) {
        check(watcher(Protocol::Imap).as_mut(), &conversation);
    }

    #[test]
    fn pop3_never_panics(conversation in conversation(POP3)) {
        check(watcher(Protocol::Pop3).as_mut(), &conversation);
    }

    #[test]
    fn postgres_never_panics(conversation in conversation(POSTGRES)) {
        check(watcher(Protocol::Postgres).as_mut(), &conversation);
    }

    #[test]
    fn ftp_never_panics(conversation in conversation(FTP)) {
        check(watcher(Protocol::Ftp).as_mut(), &conversation);
    }

    #[test]
    fn xmpp_never_panics(conversation in conversation(XMPP)) {
        check(watcher(Protocol::Xmpp).as_mut(), &conversation);
    }
}
