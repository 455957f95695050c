//! The FTP watcher on transcripts of real peers, whole and cut
//! into pieces, and on arbitrary input.

mod common;

use common::{all_passed, check, mutated, run, run_every_cut, run_on, Client, Seen, Server, Side};
use proptest::prelude::*;
use starttls::ftp::{ControlChannel, DataChannelEvent, DataEndpoint, DataProtection, FtpNegotiation, PIPELINED_LIMIT};
use starttls::{
    ClientEvent, ClientStep, Negotiation, NegotiationError, Peer, Protocol, ServerEvent, ServerStep, LINE_LIMIT,
};
use std::net::{IpAddr, Ipv4Addr};

// Transcripts captured from vsftpd 3.0.3 (Debian 3.0.3-13, `ssl_enable`,
// `force_anon_logins_ssl`) through a recording relay, a message per
// segment as it came.
const GREETING: &[u8] = b"220 (vsFTPd 3.0.3)\r\n";
const ACCEPTED: &[u8] = b"234 Proceed with negotiation.\r\n";

/// `openssl s_client -starttls ftp` (OpenSSL 3.0).
const OPENSSL_S_CLIENT: [(Side, &[u8]); 3] = [(Server, GREETING), (Client, b"AUTH TLS\r\n"), (Server, ACCEPTED)];

/// A client that asks for the features, logs in too early, tries
/// Kerberos, then TLS (in lower case): vsftpd writes each line of its
/// FEAT reply in a segment of its own.
const FEAT_THEN_AUTH: [(Side, &[u8]); 22] = [
    (Server, GREETING),
    (Client, b"FEAT\r\n"),
    (Server, b"211-Features:\r\n"),
    (Server, b" AUTH TLS\r\n"),
    (Server, b" EPRT\r\n"),
    (Server, b" EPSV\r\n"),
    (Server, b" MDTM\r\n"),
    (Server, b" PASV\r\n"),
    (Server, b" PBSZ\r\n"),
    (Server, b" PROT\r\n"),
    (Server, b" REST STREAM\r\n"),
    (Server, b" SIZE\r\n"),
    (Server, b" TVFS\r\n"),
    (Server, b"211 End\r\n"),
    (Client, b"USER anonymous\r\n"),
    (Server, b"530 Anonymous sessions must use encryption.\r\n"),
    (Client, b"PASS\r\n"),
    (Server, b"530 Please login with USER and PASS.\r\n"),
    (Client, b"AUTH KERBEROS_V4\r\n"),
    (Server, b"504 Unknown AUTH type.\r\n"),
    (Client, b"auth tls\r\n"),
    (Server, ACCEPTED),
];

#[test]
fn openssl_s_client_against_vsftpd_upgrades_in_any_pieces() {
    let whole = run_every_cut(Protocol::Ftp, &OPENSSL_S_CLIENT);
    assert_eq!(
        whole.events,
        vec![
            Seen::Client(ClientEvent::UpgradeRequested),
            Seen::Server(ServerEvent::UpgradeAccepted),
        ]
    );
    assert_eq!(
        whole.passed,
        all_passed(&OPENSSL_S_CLIENT),
        "the preamble passes byte for byte"
    );
}

#[test]
fn features_content_and_another_mechanism_before_auth_tls_in_any_pieces() {
    let repeated = [
        (Server, GREETING),
        (Client, &b"FEAT\r\n"[..]),
        (
            Server,
            b"211-Extensions supported:\r\n211-AUTH TLS\r\n211-PBSZ\r\n211 END\r\n",
        ),
    ];
    assert_eq!(
        run(Protocol::Ftp, &repeated).unwrap().events,
        vec![Seen::Server(ServerEvent::UpgradeOffered)],
        "a FEAT reply repeating its code on every line"
    );
    let whole = run_every_cut(Protocol::Ftp, &FEAT_THEN_AUTH);
    assert_eq!(
        whole.events,
        vec![
            Seen::Server(ServerEvent::UpgradeOffered),
            Seen::Client(ClientEvent::PlaintextContent),
            Seen::Client(ClientEvent::UpgradeRequested),
            Seen::Server(ServerEvent::UpgradeAccepted),
        ],
        "AUTH KERBEROS_V4 and its 504 are neither request nor refusal"
    );
    assert_eq!(whole.passed, all_passed(&FEAT_THEN_AUTH));
}

#[test]
fn curl_ssl_reqd_sends_auth_ssl_which_implies_private_data_connections() {
    let mut ftp = FtpNegotiation::new();
    assert!(ftp.awaiting_server(), "the greeting is awaited");
    let messages: [(Side, &[u8]); 3] = [(Server, GREETING), (Client, b"AUTH SSL\r\n"), (Server, ACCEPTED)];
    let replayed = run_on(&mut ftp, &messages).unwrap();
    assert_eq!(
        replayed.events,
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
    run_on(&mut ftp, &OPENSSL_S_CLIENT).unwrap();
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
        let messages = [(Server, GREETING), (Client, request), (Server, answer)];
        let replayed = run_on(&mut ftp, &messages).unwrap();
        assert_eq!(
            replayed.events.last(),
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
    let messages: [(Side, &[u8]); 5] = [
        (Server, b"220-Welcome to the\r\n  lab server\r\n220 ready\r\n"),
        // An empty line is ignored by vsftpd and ProFTPD: no reply.
        (Client, b"HOST ftp.lab.test\r\n\r\nSYST\r\nnoop\r\nAUTH TLS\r\n"),
        (Server, b"220 host ok\r\n215 UNIX Type: L8\r\n"),
        (Server, b"200 NOOP ok.\r\n"),
        (Server, ACCEPTED),
    ];
    let whole = run_every_cut(Protocol::Ftp, &messages);
    assert_eq!(
        whole.events,
        vec![
            Seen::Client(ClientEvent::UpgradeRequested),
            Seen::Server(ServerEvent::UpgradeAccepted)
        ]
    );
    run_on(&mut ftp, &messages[..4]).unwrap();
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
    long.extend(std::iter::repeat_n(b'a', LINE_LIMIT));
    let mut ftp = FtpNegotiation::new();
    assert_eq!(
        ftp.from_client(&long),
        Err(NegotiationError::LineTooLong {
            peer: Peer::Client,
            limit: LINE_LIMIT
        })
    );
    let mut long = b"220 ".to_vec();
    long.extend(std::iter::repeat_n(b'x', LINE_LIMIT));
    let mut ftp = FtpNegotiation::new();
    assert!(matches!(
        ftp.from_server(&long),
        Err(NegotiationError::LineTooLong { peer: Peer::Server, .. })
    ));
}

/// The control channel inside TLS, as `curl -v --ssl-reqd` showed it
/// against vsftpd 3.0.3 (a passive download with EPSV, then the lines of
/// PASV, EPRT and PORT sessions), closed by a PROT C.
const CONTROL_CHANNEL: [(Side, &[u8]); 14] = [
    (Client, b"USER anonymous\r\n"),
    (Server, b"230 Login successful.\r\n"),
    (Client, b"PBSZ 0\r\n"),
    (Server, b"200 PBSZ set to 0.\r\n"),
    (Client, b"PROT P\r\n"),
    (Server, b"200 PROT now Private.\r\n"),
    (Client, b"PWD\r\nEPSV\r\n"),
    (Server, b"257 \"/\" is the current directory\r\n229 Entering Extended Passive Mode (|||40100|)\r\n"),
    (Client, b"TYPE I\r\nSIZE file.bin\r\nRETR file.bin\r\nPASV\r\n"),
    (Server, b"200 Switching to Binary mode.\r\n213 6\r\n150 Opening BINARY mode data connection for file.bin (6 bytes).\r\n226 Transfer complete.\r\n227 Entering Passive Mode (127,0,0,1,156,168).\r\n"),
    (Client, b"EPRT |1|127.0.0.1|56681|\r\nPORT 127,0,0,1,185,189\r\nEPRT |2|2001:2::2|51000|\r\nPROT C\r\n"),
    (Server, b"200 EPRT command successful. Consider using EPSV.\r\n200 PORT command successful. Consider using PASV.\r\n200 EPRT command successful. Consider using EPSV.\r\n200 PROT now Clear.\r\n"),
    (Client, b"QUIT\r\n"),
    (Server, b"221 Goodbye.\r\n"),
];

/// Shows `messages` to a new control channel observer, each message cut
/// at `cuts`: the events.
fn observe(messages: &[(Side, &[u8])], cuts: &[usize]) -> Result<Vec<DataChannelEvent>, NegotiationError> {
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
                Client => channel.from_client(piece)?,
                Server => events.extend(channel.from_server(piece)?),
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
    let messages: [(Side, &[u8]); 2] = [
        (Client, b"PORT 198,18,0,2,200,10\r\nEPRT |1|198.18.0.2|51000|\r\nPROT P\r\nPASV\r\nEPSV\r\n"),
        (Server, b"500 Illegal PORT command.\r\n522 Bad network protocol.\r\n536 PROT level not supported.\r\n550 Permission denied.\r\n500 Unknown command.\r\n"),
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
        let messages = [(Client, &b"PASV\r\n"[..]), (Server, reply)];
        assert_eq!(
            observe(&messages, &[]),
            Ok(vec![DataChannelEvent::ServerListens(DataEndpoint {
                address: Some(Ipv4Addr::new(198, 18, 0, 1).into()),
                port
            })])
        );
    }
    let messages = [(Client, &b"EPSV 2\r\n"[..]), (Server, b"229 Extended (!!!6446!)\r\n")];
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
            (Client, &b"PASV\r\n"[..]),
            (Server, b"227 Entering Passive Mode (198,18,0,1,4)\r\n"),
        ],
        [
            (Client, b"PASV\r\n"),
            (Server, b"227 Entering Passive Mode (198,18,0,256,4,1)\r\n"),
        ],
        [
            (Client, b"EPSV\r\n"),
            (Server, b"229 Entering Extended Passive Mode (|||70000|)\r\n"),
        ],
        [
            (Client, b"PORT 198,18,0,2,200\r\n"),
            (Server, b"200 PORT command successful.\r\n"),
        ],
        [
            (Client, b"EPRT |3|x|1|\r\n"),
            (Server, b"200 EPRT command successful.\r\n"),
        ],
        [
            (Client, b"LPSV\r\n"),
            (Server, b"228 Entering Long Passive Mode (4,4,198,18,0,1,2,4,1)\r\n"),
        ],
        [(Client, b"PROT S\r\n"), (Server, b"200 PROT now Safe.\r\n")],
    ] {
        assert!(
            matches!(observe(&messages, &[]), Err(NegotiationError::Malformed { .. })),
            "{:?}",
            String::from_utf8_lossy(messages[1].1)
        );
    }
    let pipelined = b"PASV\r\n".repeat(PIPELINED_LIMIT + 1);
    assert!(observe(&[(Client, &pipelined)], &[]).is_err());
    let pipelined = b"PASV\r\n".repeat(PIPELINED_LIMIT);
    assert!(observe(&[(Client, &pipelined)], &[]).is_ok());
}

#[test]
fn clearing_the_command_channel_is_an_error_naming_the_command() {
    for (command, reply, named) in [
        (&b"CCC\r\n"[..], &b"200 CCC ok.\r\n"[..], "CCC (clear command channel"),
        (
            b"REIN\r\n",
            b"220 Service ready for new user.\r\n",
            "REIN (reinitialize",
        ),
    ] {
        let Err(err) = observe(&[(Client, command), (Server, reply)], &[]) else {
            panic!("{named}: accepted without an error");
        };
        assert!(matches!(err, NegotiationError::Unsupported { .. }), "{err:?}");
        assert!(err.to_string().contains(named), "{err}");
    }
    // Refused, it changes nothing.
    assert_eq!(
        observe(
            &[(Client, b"CCC\r\n"), (Server, b"502 Command not implemented.\r\n")],
            &[]
        ),
        Ok(vec![])
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn mutated_transcripts_never_panic(
        seed in 0..FEAT_THEN_AUTH.len(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        check(&mut FtpNegotiation::new(), &mutated(&FEAT_THEN_AUTH, seed, position, byte));
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
