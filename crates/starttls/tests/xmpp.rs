//! The XMPP watcher on transcripts of real peers, whole and cut
//! into pieces, and on arbitrary input.

mod common;

use common::{check, check_transcripts, mutated, run_on, Client, Seen, Server, Side, Transcript, UPGRADE};
use proptest::prelude::*;
use starttls::xmpp::{XmppNegotiation, TAG_LIMIT};
use starttls::{ClientEvent, ClientStep, Negotiation, NegotiationError, Peer, Protocol, ServerEvent, ServerStep};

const STARTTLS: &[u8] = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
const PROCEED: &[u8] = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
// Transcripts captured from Prosody 0.12.3 (Debian, `c2s_require_encryption
// = true`) through a recording relay, a message per segment as it came.
/// Prosody's stream header and features, in one segment.
const PROSODY_FEATURES: &[u8] = b"<?xml version='1.0'?><stream:stream xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='lab.test' xmlns='jabber:client' id='6a733911-b2e1-4441-827a-6e387e9bd2b1'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>";

/// `openssl s_client -starttls xmpp -xmpphost lab.test` (OpenSSL 3.0).
const OPENSSL_S_CLIENT: [(Side, &[u8]); 4] = [
    (Client, b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' to='lab.test' version='1.0'>"),
    (Server, PROSODY_FEATURES),
    (Client, STARTTLS),
    (Server, PROCEED),
];

/// A client with an XML declaration and double quotes that
/// authenticates before TLS: Prosody's SASL `<failure/>` is no refusal
/// of TLS.
const AUTH_IN_PLAINTEXT: [(Side, &[u8]); 4] = [
    (Client, b"<?xml version=\"1.0\"?>\n<stream:stream to=\"lab.test\" xml:lang=\"en\" version=\"1.0\" xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\">"),
    (Server, b"<?xml version='1.0'?><stream:stream xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='lab.test' xmlns='jabber:client' id='25928a50-b5c2-48b2-bdb8-b9dd8fb9c582'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"),
    (Client, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>"),
    (Server, b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>"),
];

/// A libstrophe-style client: XML declaration, double quotes, line
/// breaks; a server declaring the TLS namespace with a prefix on its
/// features and answering with an explicit end tag.
const PREFIXES_AND_COMMENTS: [(Side, &[u8]); 5] = [
    (Client, b"<?xml version=\"1.0\"?>\n<stream:stream to=\"lab.test\" xml:lang=\"en\" version=\"1.0\"\n  xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\">"),
    (Server, b"<?xml version='1.0'?><s:stream xmlns:s='http://etherx.jabber.org/streams' from='lab.test' version='1.0' xmlns='jabber:client'><!-- say hi -->"),
    (Server, b"<s:features xmlns:t='urn:ietf:params:xml:ns:xmpp-tls'> <t:starttls/>\n<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></s:features>"),
    (Client, b" <tls:starttls xmlns:tls=\"urn:ietf:params:xml:ns:xmpp-tls\" ></tls:starttls >"),
    (Server, b"<proceed xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"></proceed>"),
];

#[test]
fn transcripts_of_real_peers_whole_and_cut_at_every_byte() {
    check_transcripts(
        Protocol::Xmpp,
        &[
            Transcript {
                name: "openssl s_client against Prosody",
                chunks: &OPENSSL_S_CLIENT,
                events: &UPGRADE,
                awaiting: None,
            },
            Transcript {
                name: "auth before TLS is content, a SASL failure no refusal",
                chunks: &AUTH_IN_PLAINTEXT,
                events: &[
                    Seen::Server(ServerEvent::UpgradeOffered),
                    Seen::Client(ClientEvent::PlaintextContent),
                ],
                awaiting: None,
            },
            Transcript {
                name: "double quotes, prefixes, comments and open-close pairs",
                chunks: &PREFIXES_AND_COMMENTS,
                events: &UPGRADE,
                awaiting: None,
            },
        ],
    );
}

#[test]
fn after_auth_before_tls_the_stream_goes_on_watched() {
    let mut xmpp = XmppNegotiation::new();
    run_on(&mut xmpp, &AUTH_IN_PLAINTEXT).unwrap();
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
    let messages: [(Side, &[u8]); 6] = [
        (Client, AUTH_IN_PLAINTEXT[0].1),
        (Server, b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' version='1.0'><stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>"),
        (Client, AUTH_IN_PLAINTEXT[2].1),
        (Server, b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
        (Client, b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' to='lab.test' version='1.0'>"),
        (Server, b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' version='1.0'><stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"),
    ];
    let replayed = run_on(&mut xmpp, &messages).unwrap();
    assert_eq!(replayed.events, vec![Seen::Client(ClientEvent::PlaintextContent)]);
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
    run_on(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
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
fn a_failure_is_a_refusal_and_stanzas_are_content() {
    let mut xmpp = XmppNegotiation::new();
    run_on(&mut xmpp, &OPENSSL_S_CLIENT[..3]).unwrap();
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
        run_on(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
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
    run_on(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
    let tricky = b"<message a='/>' b=\"<'>\"><!-- <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/> --><body><![CDATA[</message><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>]]></body></message>";
    // '<' inside an attribute value is not XML: the whole thing fails.
    assert!(xmpp.from_client(tricky).is_err());

    let mut xmpp = XmppNegotiation::new();
    run_on(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
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
    run_on(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
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
    run_on(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
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
    run_on(&mut xmpp, &OPENSSL_S_CLIENT[..2]).unwrap();
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
    fn markup_soup_never_panics(
        words in prop::collection::vec((prop::sample::select(vec![Client, Server]), prop::sample::select(vec![
            &b"<"[..], b">", b"/>", b"</", b"<?", b"?>", b"<!--", b"-->", b"<![CDATA[", b"]]>", b"'", b"\"",
            b" ", b"=", b"stream:stream", b"xmlns='http://etherx.jabber.org/streams'", b"starttls",
            b"xmlns='urn:ietf:params:xml:ns:xmpp-tls'", b"proceed", b"failure", b"stream:features",
            b"xmlns:stream='http://etherx.jabber.org/streams'", b"a", b":",
        ])), 0..64),
    ) {
        let pieces: Vec<(Side, Vec<u8>)> = words.into_iter().map(|(side, word)| (side, word.to_vec())).collect();
        check(&mut XmppNegotiation::new(), &pieces);
    }

    #[test]
    fn mutated_transcripts_never_panic(
        seed in 0..OPENSSL_S_CLIENT.len(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        check(&mut XmppNegotiation::new(), &mutated(&OPENSSL_S_CLIENT, seed, position, byte));
    }
}
