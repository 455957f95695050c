//! The PostgreSQL watcher on what libpq (psql) and the server send, whole
//! and cut at every byte.

#![allow(clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use common::{assert_malformed, check_transcripts, feed, run, watcher, Client, Seen, Server, Side, Transcript};
use starttls::{ClientEvent, NegotiationError, Peer, Protocol, ServerEvent};

const SSL_REQUEST: &[u8] = &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: &[u8] = &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// A message with a length: the untyped first message when `kind` is
/// `None`.
fn message(kind: Option<u8>, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(body.len() + 4).expect("a short test message");
    [kind.as_slice(), &length.to_be_bytes(), body].concat()
}

/// psql's StartupMessage, protocol 3.0.
fn startup() -> Vec<u8> {
    message(
        None,
        b"\x00\x03\x00\x00user\0alice\0database\0app\0application_name\0psql\0\
client_encoding\0UTF8\0\0",
    )
}

/// What a server sends from the password request to ReadyForQuery, and a
/// query's answer.
fn session() -> [Vec<u8>; 4] {
    let authentication = message(Some(b'R'), &[0, 0, 0, 3]);
    let password = message(Some(b'p'), b"secret\0");
    let ready = [
        message(Some(b'R'), &[0, 0, 0, 0]),
        message(Some(b'S'), b"server_version\x0017.2\0"),
        message(Some(b'K'), &[0, 0, 0x30, 0x39, 1, 2, 3, 4]),
        message(Some(b'Z'), b"I"),
    ]
    .concat();
    let answer = [
        message(
            Some(b'T'),
            b"\x00\x01one\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        ),
        message(Some(b'D'), b"\x00\x01\x00\x00\x00\x011"),
        message(Some(b'C'), b"SELECT 1\0"),
        message(Some(b'Z'), b"I"),
    ]
    .concat();
    [authentication, password, ready, answer]
}

#[test]
fn psql_transcripts_whole_and_cut_at_every_byte() {
    let startup = startup();
    let [authentication, password, ready, answer] = session();
    let query = message(Some(b'Q'), b"SELECT 1\0");
    let terminate = message(Some(b'X'), b"");
    check_transcripts(
        Protocol::Postgres,
        &[
            Transcript {
                name: "psql upgrade after a refused GSSENCRequest",
                chunks: &[
                    (Client, GSSENC_REQUEST),
                    (Server, b"N"),
                    (Client, SSL_REQUEST),
                    (Server, b"S"),
                ],
                events: &[
                    Seen::Client(ClientEvent::UpgradeRequested),
                    Seen::Server(ServerEvent::UpgradeAccepted),
                ],
                awaiting: Some(&[true, false, true, false]),
            },
            Transcript {
                name: "a refused upgrade, then a plaintext session",
                chunks: &[
                    (Client, SSL_REQUEST),
                    (Server, b"N"),
                    (Client, &startup),
                    (Server, &authentication),
                    (Client, &password),
                    (Server, &ready),
                    (Client, &query),
                    (Server, &answer),
                    (Client, &terminate),
                ],
                events: &[
                    Seen::Client(ClientEvent::UpgradeRequested),
                    Seen::Server(ServerEvent::UpgradeRefused),
                    Seen::Client(ClientEvent::PlaintextContent),
                ],
                // The preamble ends at the server's first answer to the
                // startup: a long query is not awaited.
                awaiting: Some(&[true, false, true, false, false, false, false, false, false]),
            },
        ],
    );
}

#[test]
fn bytes_after_the_ssl_request_do_not_pass() {
    let mut postgres = watcher(Protocol::Postgres);
    let injected = [SSL_REQUEST, &startup()].concat();
    assert_eq!(
        feed(postgres.as_mut(), Client, &injected).unwrap(),
        (8, Some(Seen::Client(ClientEvent::UpgradeRequested)))
    );
    assert_eq!(feed(postgres.as_mut(), Client, &startup()).unwrap(), (0, None));
    assert_eq!(
        feed(postgres.as_mut(), Server, b"SE").unwrap(),
        (1, Some(Seen::Server(ServerEvent::UpgradeAccepted)))
    );
    assert!(matches!(
        feed(postgres.as_mut(), Server, b"E"),
        Err(NegotiationError::Malformed { peer: Peer::Server, .. })
    ));
    assert!(matches!(
        feed(postgres.as_mut(), Client, b"\x16\x03\x01"),
        Err(NegotiationError::Malformed { peer: Peer::Client, .. })
    ));
}

#[test]
fn what_cannot_be_intercepted_fails() {
    assert_eq!(
        run(Protocol::Postgres, &[(Client, GSSENC_REQUEST), (Server, b"G")]),
        Err(NegotiationError::Unsupported {
            peer: Peer::Server,
            what: "GSSAPI encryption"
        })
    );
    assert!(matches!(
        run(
            Protocol::Postgres,
            &[(Client, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")]
        ),
        Err(NegotiationError::Unsupported { peer: Peer::Client, .. })
    ));
}

#[test]
fn a_cancel_request_passes_and_nothing_follows() {
    let cancel = message(None, &[0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x30, 0x39, 1, 2, 3, 4]);
    check_transcripts(
        Protocol::Postgres,
        &[Transcript {
            name: "a cancel request",
            chunks: &[(Client, &cancel)],
            events: &[],
            awaiting: Some(&[false]),
        }],
    );
    let malformed = |peer, transcript: &[(Side, &[u8])]| assert_malformed(Protocol::Postgres, peer, transcript);
    malformed(Peer::Client, &[(Client, &cancel), (Client, b"Q")]);
    malformed(Peer::Server, &[(Client, &cancel), (Server, b"E")]);
}

#[test]
fn framing_and_lengths_are_checked() {
    let malformed = |peer, transcript: &[(Side, &[u8])]| assert_malformed(Protocol::Postgres, peer, transcript);
    let startup = startup();
    // The server speaks first, or answers an SSLRequest with an error.
    malformed(Peer::Server, &[(Server, b"N")]);
    malformed(Peer::Server, &[(Client, SSL_REQUEST), (Server, b"E")]);
    malformed(Peer::Server, &[(Client, GSSENC_REQUEST), (Server, b"NN")]);
    // The client does not wait for the answer to GSSENCRequest.
    malformed(Peer::Client, &[(Client, &[GSSENC_REQUEST, &startup].concat())]);
    malformed(
        Peer::Client,
        &[(Client, &[0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 0])],
    );
    malformed(Peer::Client, &[(Client, &[0, 0, 0, 4, 0, 3, 0, 0])]);
    malformed(Peer::Client, &[(Client, &message(None, &[0x12, 0x34, 0, 0]))]);
    malformed(Peer::Client, &[(Client, &startup), (Client, &[b'Q', 0, 0, 0, 3])]);
    assert_eq!(
        run(Protocol::Postgres, &[(Client, &[0, 0, 0x27, 0x11, 0, 3, 0, 0])]),
        Err(NegotiationError::LineTooLong {
            peer: Peer::Client,
            limit: 10_000
        })
    );
    assert_eq!(
        run(
            Protocol::Postgres,
            &[(Client, &startup), (Server, &[b'D', 0x40, 0, 0, 0])]
        ),
        Err(NegotiationError::LineTooLong {
            peer: Peer::Server,
            limit: 0x3fff_ffff
        })
    );
}
