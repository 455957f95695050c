//! The IMAP watcher on transcripts of Dovecot and its clients (curl,
//! `openssl s_client -starttls imap`), whole and cut at every byte.

mod common;

use common::{
    assert_malformed, check_content_commands, check_injection, check_transcripts, feed, line_too_long, run, watcher,
    Client, Injection, Seen, Server, Side, Transcript, UPGRADE,
};
use starttls::{ClientEvent, Peer, Protocol, ServerEvent, LINE_LIMIT};

const GREETING: &[u8] = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE \
LITERAL+ STARTTLS LOGINDISABLED] Dovecot (Debian) ready.\r\n";
const GREETING_WITHOUT_TLS: &[u8] = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID \
ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot (Debian) ready.\r\n";

#[test]
fn dovecot_transcripts_whole_and_cut_at_every_byte() {
    check_transcripts(
        Protocol::Imap,
        &[
            Transcript {
                name: "dovecot upgrade",
                chunks: &[
                    (Server, GREETING),
                    (Client, b"A001 CAPABILITY\r\n"),
                    (
                        Server,
                        b"* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS \
LOGINDISABLED\r\nA001 OK Pre-login capabilities listed, post-login capabilities have more.\r\n",
                    ),
                    (Client, b"A002 STARTTLS\r\n"),
                    (Server, b"A002 OK Begin TLS negotiation now.\r\n"),
                ],
                events: &UPGRADE,
                awaiting: Some(&[false, true, false, true, false]),
            },
            Transcript {
                name: "the offer in a capability response alone",
                chunks: &[
                    (Server, b"* OK Dovecot ready.\r\n"),
                    (Client, b"1 capability\r\n"),
                    (Server, b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n1 OK done\r\n"),
                ],
                events: &[Seen::Server(ServerEvent::UpgradeOffered)],
                awaiting: None,
            },
            Transcript {
                name: "a refused session with literals, AUTHENTICATE and IDLE",
                chunks: &[
                    (Server, GREETING_WITHOUT_TLS),
                    (Client, b"a1 STARTTLS\r\n"),
                    (Server, b"a1 BAD TLS support isn't enabled.\r\n"),
                    (Client, b"a2 AUTHENTICATE PLAIN\r\n"),
                    (Server, b"+ \r\n"),
                    (Client, b"AGFsaWNlAHdyb25n\r\n"),
                    (Server, b"a2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
                    // Synchronizing literals, each after the server's
                    // continuation.
                    (Client, b"a3 LOGIN {5}\r\n"),
                    (Server, b"+ OK\r\n"),
                    (Client, b"alice {6}\r\n"),
                    (Server, b"+ OK\r\n"),
                    (Client, b"secret\r\n"),
                    (Server, b"a3 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
                    // A non-synchronizing literal holding what would be a
                    // command.
                    (Client, b"a4 APPEND INBOX {16+}\r\na9 STARTTLS\r\nxx\r\n"),
                    (Server, b"a4 OK [APPENDUID 1 1] Append completed.\r\n"),
                    // A literal from the server holding what would be a
                    // continuation.
                    (Client, b"a5 FETCH 1 BODY[]\r\n"),
                    (
                        Server,
                        b"* 1 FETCH (BODY[] {6}\r\n+ go\r\n)\r\na5 OK Fetch completed.\r\n",
                    ),
                    (Client, b"a6 IDLE\r\n"),
                    (Server, b"+ idling\r\n"),
                    (Client, b"DONE\r\n"),
                    (Server, b"* 2 EXISTS\r\na6 OK Idle completed.\r\n"),
                    (Client, b"a7 LOGOUT\r\n"),
                    (Server, b"* BYE Logging out\r\na7 OK Logout completed.\r\n"),
                ],
                events: &[
                    Seen::Client(ClientEvent::UpgradeRequested),
                    Seen::Server(ServerEvent::UpgradeRefused),
                    Seen::Client(ClientEvent::PlaintextContent),
                ],
                awaiting: Some(&[
                    false, true, false, // greeting, STARTTLS refused
                    true, false, true, false, // AUTHENTICATE: the client's turn after "+"
                    true, false, true, false, true, false, // LOGIN with two literals
                    true, false, true, false, // APPEND, FETCH
                    true, false, true, false, // IDLE waits for the client's DONE
                    true, false,
                ]),
            },
            Transcript {
                name: "a refused synchronizing literal ends its command",
                chunks: &[
                    (Server, GREETING),
                    (Client, b"a LOGIN {500}\r\n"),
                    (Server, b"a NO Literal too large\r\n"),
                    (Client, b"b STARTTLS\r\n"),
                    (Server, b"b OK Begin TLS negotiation now.\r\n"),
                ],
                events: &[
                    Seen::Server(ServerEvent::UpgradeOffered),
                    Seen::Client(ClientEvent::PlaintextContent),
                    Seen::Client(ClientEvent::UpgradeRequested),
                    Seen::Server(ServerEvent::UpgradeAccepted),
                ],
                awaiting: None,
            },
            Transcript {
                name: "openssl s_client tags with a dot",
                chunks: &[
                    (Server, GREETING),
                    (Client, b". CAPABILITY\r\n"),
                    (
                        Server,
                        b"* CAPABILITY IMAP4rev1 STARTTLS\r\n. OK Pre-login capabilities listed.\r\n",
                    ),
                    (Client, b". STARTTLS\r\n"),
                    (Server, b". OK Begin TLS negotiation now.\r\n"),
                ],
                events: &UPGRADE,
                awaiting: None,
            },
        ],
    );
}

#[test]
fn pipelined_bytes_after_starttls_do_not_pass() {
    check_injection(
        Protocol::Imap,
        &Injection {
            greeting: GREETING,
            request: b"a STARTTLS\r\n",
            injected: b"b LOGIN alice secret\r\n",
            later: b"c NOOP\r\n",
            answer: b"a OK Begin TLS negotiation now.\r\n",
            smuggled: b"* OK injected\r\n",
            later_from_server: b"* OK more\r\n",
        },
    );
}

#[test]
fn literals_are_skipped_however_large() {
    let mut imap = watcher(Protocol::Imap);
    feed(imap.as_mut(), Server, GREETING).unwrap();
    let message = vec![b'x'; 4 * LINE_LIMIT];
    feed(imap.as_mut(), Client, b"a APPEND INBOX {32768+}\r\n").unwrap();
    assert_eq!(feed(imap.as_mut(), Client, &message).unwrap(), (message.len(), None));
    feed(imap.as_mut(), Client, b"\r\n").unwrap();
    feed(imap.as_mut(), Server, b"a OK Append completed.\r\n").unwrap();
    feed(imap.as_mut(), Client, b"b FETCH 1 BODY[]\r\n").unwrap();
    feed(imap.as_mut(), Server, b"* 1 FETCH (BODY[] {32768}\r\n").unwrap();
    assert_eq!(feed(imap.as_mut(), Server, &message).unwrap(), (message.len(), None));
    feed(imap.as_mut(), Server, b")\r\nb OK Fetch completed.\r\n").unwrap();
    assert!(!imap.awaiting_server());
}

#[test]
fn content_commands_are_told_from_the_others() {
    check_content_commands(
        Protocol::Imap,
        &["a CAPABILITY", "a noop", "a LOGOUT", "a ID (\"name\" \"curl\")", ""],
        &[
            "a LOGIN alice secret",
            "a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==",
            "a SELECT INBOX",
            "a EXAMINE INBOX",
            "a LIST \"\" *",
            "a ENABLE UTF8=ACCEPT",
            "a UID FETCH 1:* FLAGS",
            "a XUNKNOWN",
        ],
    );
}

#[test]
fn lines_longer_than_the_limit_fail() {
    let mut imap = watcher(Protocol::Imap);
    assert_eq!(
        feed(imap.as_mut(), Client, &vec![b'a'; LINE_LIMIT + 1]),
        Err(line_too_long(Peer::Client))
    );
    let mut imap = watcher(Protocol::Imap);
    assert_eq!(
        feed(
            imap.as_mut(),
            Server,
            &[&b"* OK "[..], &vec![b'x'; LINE_LIMIT]].concat()
        ),
        Err(line_too_long(Peer::Server))
    );
}

#[test]
fn what_cannot_be_paired_or_framed_fails() {
    let malformed = |peer, transcript: &[(Side, &[u8])]| assert_malformed(Protocol::Imap, peer, transcript);
    malformed(Peer::Server, &[(Server, b"a OK hello\r\n")]);
    malformed(Peer::Server, &[(Server, GREETING), (Server, b"x OK nobody asked\r\n")]);
    malformed(Peer::Server, &[(Server, GREETING), (Server, b"+ go on\r\n")]);
    malformed(
        Peer::Server,
        &[(Server, GREETING), (Client, b"a NOOP\r\n"), (Server, b"a MAYBE\r\n")],
    );
    malformed(Peer::Server, &[(Server, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\n")]);
    malformed(Peer::Client, &[(Client, b"LOGIN\r\n")]);
    malformed(Peer::Client, &[(Client, b"a+b NOOP\r\n")]);
    let long_tag = [&[b'a'; 65][..], b" NOOP\r\n"].concat();
    malformed(Peer::Client, &[(Client, &long_tag)]);
    assert!(run(Protocol::Imap, &[(Client, &long_tag[1..])]).is_ok());
    malformed(Peer::Client, &[(Server, GREETING), (Client, b"a LOGIN {5}\r\nalice")]);
    malformed(Peer::Client, &[(Client, b"a APPEND INBOX {99999999999}\r\n")]);
    // A PREAUTH greeting is a greeting.
    assert!(run(Protocol::Imap, &[(Server, b"* PREAUTH ready\r\n")]).is_ok());
}
