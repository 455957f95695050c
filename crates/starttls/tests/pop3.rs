//! The POP3 watcher on transcripts of Dovecot and its clients (curl,
//! `openssl s_client -starttls pop3`), whole and cut at every byte.

mod common;

use common::{
    assert_malformed, check_content_commands, check_injection, check_transcripts, feed, line_too_long, run, watcher,
    Client, Injection, Seen, Server, Side, Transcript, UPGRADE,
};
use starttls::{ClientEvent, Peer, Protocol, ServerEvent, LINE_LIMIT};

const GREETING: &[u8] = b"+OK Dovecot (Debian) ready.\r\n";
const CAPA: &[u8] = b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n\
STLS\r\nUSER\r\nSASL PLAIN\r\n.\r\n";
const CAPA_WITHOUT_TLS: &[u8] = b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n\
USER\r\nSASL PLAIN\r\n.\r\n";

#[test]
fn dovecot_transcripts_whole_and_cut_at_every_byte() {
    check_transcripts(
        Protocol::Pop3,
        &[
            Transcript {
                name: "dovecot upgrade",
                chunks: &[
                    (Server, GREETING),
                    (Client, b"CAPA\r\n"),
                    (Server, CAPA),
                    (Client, b"STLS\r\n"),
                    (Server, b"+OK Begin TLS negotiation now.\r\n"),
                ],
                events: &UPGRADE,
                awaiting: Some(&[false, true, false, true, false]),
            },
            Transcript {
                name: "a refused session with AUTH and multi-line responses",
                chunks: &[
                    (Server, GREETING),
                    (Client, b"CAPA\r\n"),
                    (Server, CAPA_WITHOUT_TLS),
                    (Client, b"STLS\r\n"),
                    (Server, b"-ERR [SYS/PERM] TLS support isn't enabled.\r\n"),
                    (Client, b"AUTH PLAIN\r\n"),
                    (Server, b"+ \r\n"),
                    (Client, b"AGFsaWNlAHNlY3JldA==\r\n"),
                    (Server, b"+OK Logged in.\r\n"),
                    // Pipelined (RFC 2449), with multi-line answers.
                    (Client, b"STAT\r\nLIST\r\nLIST 1\r\nUIDL\r\n"),
                    (
                        Server,
                        b"+OK 1 57\r\n+OK 1 messages:\r\n1 57\r\n.\r\n+OK 1 57\r\n+OK\r\n1 000000014f1b6a59\r\n.\r\n",
                    ),
                    // A body holding what would be status lines, dot-stuffed.
                    (Client, b"RETR 1\r\n"),
                    (
                        Server,
                        b"+OK 57 octets\r\nSubject: hi\r\n\r\n+OK Begin TLS\r\n..\r\n-ERR\r\n.\r\n",
                    ),
                    (Client, b"TOP 1 0\r\n"),
                    (Server, b"-ERR No such message\r\n"),
                    (Client, b"QUIT\r\n"),
                    (Server, b"+OK Logging out.\r\n"),
                ],
                events: &[
                    Seen::Client(ClientEvent::UpgradeRequested),
                    Seen::Server(ServerEvent::UpgradeRefused),
                    Seen::Client(ClientEvent::PlaintextContent),
                ],
                awaiting: Some(&[
                    false, true, false, true, false, // CAPA, STLS refused
                    true, false, true, false, // AUTH: the client's turn after "+"
                    true, false, true, false, true, false, true, false,
                ]),
            },
        ],
    );
}

#[test]
fn pipelined_bytes_after_stls_do_not_pass() {
    check_injection(
        Protocol::Pop3,
        &Injection {
            greeting: GREETING,
            request: b"STLS\r\n",
            injected: b"USER alice\r\n",
            later: b"PASS secret\r\n",
            answer: b"+OK Begin TLS negotiation now.\r\n",
            smuggled: b"+OK injected\r\n",
            later_from_server: b"+OK more\r\n",
        },
    );
}

#[test]
fn content_commands_are_told_from_the_others() {
    check_content_commands(
        Protocol::Pop3,
        &["CAPA", "capa", "NOOP", "QUIT", ""],
        &[
            "USER alice",
            "PASS secret",
            "APOP alice c4c9334bac560ecc979e58001b3e22fb",
            "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
            "STAT",
            "LIST",
            "RETR 1",
            "DELE 1",
            "UTF8",
        ],
    );
}

#[test]
fn lines_longer_than_the_limit_fail() {
    let mut pop3 = watcher(Protocol::Pop3);
    assert_eq!(
        feed(pop3.as_mut(), Client, &vec![b'A'; LINE_LIMIT + 1]),
        Err(line_too_long(Peer::Client))
    );
    let mut pop3 = watcher(Protocol::Pop3);
    feed(pop3.as_mut(), Server, GREETING).unwrap();
    feed(pop3.as_mut(), Client, b"CAPA\r\n").unwrap();
    assert_eq!(
        feed(
            pop3.as_mut(),
            Server,
            &[&b"+OK\r\n"[..], &vec![b'X'; LINE_LIMIT + 1]].concat()
        ),
        Err(line_too_long(Peer::Server))
    );
    // A message body is not held: its lines may be of any length.
    let mut pop3 = watcher(Protocol::Pop3);
    feed(pop3.as_mut(), Server, GREETING).unwrap();
    feed(pop3.as_mut(), Client, b"RETR 1\r\n").unwrap();
    let body = [&b"+OK\r\n"[..], &vec![b'X'; 4 * LINE_LIMIT], b"\r\n.\r\n"].concat();
    assert_eq!(feed(pop3.as_mut(), Server, &body).unwrap(), (body.len(), None));
    assert!(!pop3.awaiting_server());
}

#[test]
fn what_cannot_be_paired_or_framed_fails() {
    let malformed = |peer, transcript: &[(Side, &[u8])]| assert_malformed(Protocol::Pop3, peer, transcript);
    malformed(Peer::Server, &[(Server, b"* OK hello\r\n")]);
    malformed(Peer::Server, &[(Server, b"+ go on\r\n")]);
    malformed(Peer::Server, &[(Server, b"+ok lowercase\r\n")]);
    malformed(Peer::Server, &[(Server, GREETING), (Server, b"+OK nobody asked\r\n")]);
    malformed(Peer::Server, &[(Server, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\n")]);
    malformed(Peer::Client, &[(Client, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\n")]);
    // An unasked -ERR before closing is allowed.
    assert!(run(
        Protocol::Pop3,
        &[(Server, GREETING), (Server, b"-ERR Disconnected for inactivity.\r\n")]
    )
    .is_ok());
}
