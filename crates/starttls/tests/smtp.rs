//! The SMTP watcher on transcripts of Postfix and its clients (swaks,
//! `openssl s_client -starttls smtp`), whole and cut at every byte.

mod common;

use common::{
    assert_malformed, check_content_commands, check_injection, check_transcripts, feed, line_too_long, run, watcher,
    Client, Injection, Seen, Server, Side, Transcript, UPGRADE,
};
use starttls::{ClientEvent, Peer, Protocol, ServerEvent, LINE_LIMIT};

const GREETING: &[u8] = b"220 mail.lab.test ESMTP Postfix (Debian/GNU)\r\n";
const EHLO: &[u8] = b"EHLO client.lab.test\r\n";
const EHLO_REPLY: &[u8] = b"250-mail.lab.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n\
250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";
const EHLO_REPLY_WITHOUT_TLS: &[u8] = b"250-mail.lab.test\r\n250-PIPELINING\r\n\
250-SIZE 10240000\r\n250 8BITMIME\r\n";

#[test]
fn postfix_transcripts_whole_and_cut_at_every_byte() {
    check_transcripts(
        Protocol::Smtp,
        &[
            Transcript {
                name: "postfix upgrade",
                chunks: &[
                    (Server, GREETING),
                    (Client, EHLO),
                    (Server, EHLO_REPLY),
                    (Client, b"STARTTLS\r\n"),
                    (Server, b"220 2.0.0 Ready to start TLS\r\n"),
                ],
                events: &UPGRADE,
                awaiting: Some(&[false, true, false, true, false]),
            },
            Transcript {
                name: "a refusal leaves the session watched through mail and a later STARTTLS",
                chunks: &[
                    (Server, GREETING),
                    (Client, b"ehlo client.lab.test\r\n"),
                    (Server, EHLO_REPLY),
                    (Client, b"STARTTLS\r\n"),
                    (Server, b"454 4.7.0 TLS not available due to local problem\r\n"),
                    // A pipelined transaction (RFC 2920), then a message whose
                    // body holds what would be commands.
                    (
                        Client,
                        b"MAIL FROM:<alice@lab.test>\r\nRCPT TO:<bob@lab.test>\r\nDATA\r\n",
                    ),
                    (Server, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"),
                    (Server, b"354 End data with <CR><LF>.<CR><LF>\r\n"),
                    (Client, b"Subject: hi\r\n\r\nSTARTTLS\r\n..\r\nQUIT\r\n.\r\n"),
                    (Server, b"250 2.0.0 Ok: queued as 4Fq2Kx1AbCz\r\n"),
                    (Client, b"RSET\r\n"),
                    (Server, b"250 2.0.0 Ok\r\n"),
                    (Client, b"STARTTLS\r\n"),
                    (Server, b"220 2.0.0 Ready to start TLS\r\n"),
                ],
                events: &[
                    Seen::Server(ServerEvent::UpgradeOffered),
                    Seen::Client(ClientEvent::UpgradeRequested),
                    Seen::Server(ServerEvent::UpgradeRefused),
                    Seen::Client(ClientEvent::PlaintextContent),
                    Seen::Client(ClientEvent::UpgradeRequested),
                    Seen::Server(ServerEvent::UpgradeAccepted),
                ],
                awaiting: Some(&[
                    false, true, false, true, false, true, true, false, true, false, true, false, true, false,
                ]),
            },
            Transcript {
                name: "BDAT chunks are data, not commands",
                chunks: &[
                    (Server, GREETING),
                    (Client, EHLO),
                    (Server, EHLO_REPLY),
                    (Client, b"MAIL FROM:<alice@lab.test>\r\nRCPT TO:<bob@lab.test>\r\n"),
                    (Client, b"BDAT 10\r\nSTARTTLS\r\nBDAT 6 LAST\r\nRSET\r\n"),
                    (
                        Server,
                        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: 10 bytes\r\n250 2.0.0 Ok: queued\r\n",
                    ),
                    (Client, b"BDAT 0 LAST\r\n"),
                    (Server, b"503 5.5.1 Error: need MAIL command\r\n"),
                ],
                events: &[
                    Seen::Server(ServerEvent::UpgradeOffered),
                    Seen::Client(ClientEvent::PlaintextContent),
                ],
                awaiting: Some(&[false, true, false, true, true, false, true, false]),
            },
            Transcript {
                name: "a server without STARTTLS offers nothing",
                chunks: &[
                    (Server, GREETING),
                    (Client, EHLO),
                    (Server, EHLO_REPLY_WITHOUT_TLS),
                    (Client, b"STARTTLS\r\n"),
                    (Server, b"502 5.5.1 Error: command not implemented\r\n"),
                ],
                events: &[
                    Seen::Client(ClientEvent::UpgradeRequested),
                    Seen::Server(ServerEvent::UpgradeRefused),
                ],
                awaiting: None,
            },
        ],
    );
}

#[test]
fn bytes_around_starttls_and_its_accepting_reply_do_not_pass() {
    check_injection(
        Protocol::Smtp,
        &Injection {
            greeting: GREETING,
            request: b"STARTTLS\r\n",
            injected: b"RSET\r\nMAIL FROM:<evil@lab.test>\r\n",
            later: b"RSET\r\n",
            answer: b"220 2.0.0 Ready to start TLS\r\n",
            smuggled: b"250 injected\r\n",
            later_from_server: b"250 more\r\n",
        },
    );
}

#[test]
fn content_commands_are_told_from_the_others() {
    let content = [
        "MAIL FROM:<a@lab.test>",
        "rcpt TO:<b@lab.test>",
        "DATA",
        "BDAT 0 LAST",
        "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
        "VRFY bob",
        "EXPN staff",
        "ETRN lab.test",
        "XCLIENT ADDR=198.18.0.1",
        "WHATEVER",
    ];
    check_content_commands(
        Protocol::Smtp,
        &[
            "EHLO client.lab.test",
            "helo client.lab.test",
            "LHLO client.lab.test",
            "NOOP",
            "RSET",
            "HELP MAIL",
            "",
            "QUIT",
        ],
        &content,
    );
    // Reported once.
    for command in content.into_iter().filter(|&command| command != "DATA") {
        let mut smtp = watcher(Protocol::Smtp);
        feed(smtp.as_mut(), Client, format!("{command}\r\n").as_bytes()).unwrap();
        assert_eq!(
            feed(smtp.as_mut(), Client, b"VRFY bob\r\n").unwrap(),
            (10, None),
            "{command}"
        );
    }
}

#[test]
fn lines_longer_than_the_limit_fail() {
    let mut smtp = watcher(Protocol::Smtp);
    let longest = [vec![b'A'; LINE_LIMIT - 2], b"\r\n".to_vec()].concat();
    feed(smtp.as_mut(), Client, &longest).unwrap();
    let too_long = vec![b'A'; LINE_LIMIT + 1];
    assert_eq!(feed(smtp.as_mut(), Client, &too_long), Err(line_too_long(Peer::Client)));
    let mut smtp = watcher(Protocol::Smtp);
    let endless_greeting = [&b"220-"[..], &vec![b'x'; LINE_LIMIT]].concat();
    assert_eq!(
        feed(smtp.as_mut(), Server, &endless_greeting),
        Err(line_too_long(Peer::Server))
    );
}

#[test]
fn what_cannot_be_paired_or_framed_fails() {
    let malformed_server = |transcript: &[(Side, &[u8])]| assert_malformed(Protocol::Smtp, Peer::Server, transcript);
    // Not a reply.
    malformed_server(&[(Server, b"hello\r\n")]);
    malformed_server(&[(Server, b"2200 x\r\n")]);
    // A reply nobody asked for (421 may come unasked).
    assert!(run(Protocol::Smtp, &[(Server, GREETING), (Server, b"421 4.4.2 bye\r\n")]).is_ok());
    malformed_server(&[(Server, GREETING), (Server, b"250 Ok\r\n")]);
    // A server that takes a bare LF for the end of a message answers while
    // the watcher still reads the message.
    malformed_server(&[
        (Server, GREETING),
        (Client, b"DATA\r\n"),
        (Server, b"354 go\r\n"),
        (Client, b"x\n.\n"),
        (Server, b"250 Ok\r\n"),
    ]);
    // TLS from the server without STARTTLS.
    malformed_server(&[(Server, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03\n")]);
    let malformed_client = |transcript: &[(Side, &[u8])]| assert_malformed(Protocol::Smtp, Peer::Client, transcript);
    // The client sends before the answer to DATA.
    malformed_client(&[(Server, GREETING), (Client, b"DATA\r\nSubject: x\r\n")]);
    // TLS from the client without STARTTLS (implicit TLS on port 25).
    malformed_client(&[
        (Server, GREETING),
        (Client, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n"),
    ]);
    malformed_client(&[(Client, b"BDAT lots\r\n")]);
}

#[test]
fn the_greeting_and_every_command_are_awaited() {
    let mut smtp = watcher(Protocol::Smtp);
    assert!(smtp.awaiting_server());
    feed(smtp.as_mut(), Server, b"220-mail.lab.test\r\n").unwrap();
    assert!(smtp.awaiting_server(), "the greeting goes on");
    feed(smtp.as_mut(), Server, b"220 ESMTP\r\n").unwrap();
    assert!(!smtp.awaiting_server());
    feed(smtp.as_mut(), Client, b"NOOP\r\nNOOP\r\n").unwrap();
    feed(smtp.as_mut(), Server, b"250 Ok\r\n").unwrap();
    assert!(smtp.awaiting_server(), "one NOOP unanswered");
    feed(smtp.as_mut(), Server, b"250 Ok\r\n").unwrap();
    assert!(!smtp.awaiting_server());
}
