//! Feeding transcripts to a watcher, whole and cut into pieces, and the
//! invariants that hold for any conversation.
#![allow(dead_code, clippy::expect_used)] // shared by several test files; helpers outside #[test] functions

use starttls::{negotiation, ClientEvent, Negotiation, NegotiationError, Peer, Protocol, ServerEvent, LINE_LIMIT};

/// Who sent a chunk of a transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

pub use Side::{Client, Server};

/// An event, with the side that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Client(ClientEvent),
    Server(ServerEvent),
}

/// What a transcript did: per chunk, the bytes passed and whether the
/// watcher then awaited the server; the events in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub passed: Vec<usize>,
    pub awaiting: Vec<bool>,
    pub events: Vec<Seen>,
}

pub fn watcher(protocol: Protocol) -> Box<dyn Negotiation> {
    negotiation(protocol)
}

/// Shows `piece` to the watcher as sent by `side`.
pub fn feed(
    watcher: &mut dyn Negotiation,
    side: Side,
    piece: &[u8],
) -> Result<(usize, Option<Seen>), NegotiationError> {
    let (pass, event) = match side {
        Client => {
            let step = watcher.from_client(piece)?;
            (step.pass, step.event.map(Seen::Client))
        }
        Server => {
            let step = watcher.from_server(piece)?;
            (step.pass, step.event.map(Seen::Server))
        }
    };
    assert!(pass <= piece.len(), "passed {pass} of {} bytes", piece.len());
    Ok((pass, event))
}

/// Cuts chunk number `index` into pieces.
pub type Cut<'a> = &'a dyn Fn(usize, &[u8]) -> Vec<Vec<u8>>;

/// Runs `transcript` through a new watcher, chunk `index` cut by `cut`
/// into the pieces it returns.
pub fn run_cut(protocol: Protocol, transcript: &[(Side, &[u8])], cut: Cut) -> Result<Outcome, NegotiationError> {
    run_on_cut(watcher(protocol).as_mut(), transcript, cut)
}

/// Runs `transcript` through `watcher` (in the state earlier input left
/// it), every chunk whole.
pub fn run_on(watcher: &mut dyn Negotiation, transcript: &[(Side, &[u8])]) -> Result<Outcome, NegotiationError> {
    run_on_cut(watcher, transcript, &whole)
}

fn run_on_cut(
    watcher: &mut dyn Negotiation,
    transcript: &[(Side, &[u8])],
    cut: Cut,
) -> Result<Outcome, NegotiationError> {
    let mut outcome = Outcome {
        passed: Vec::new(),
        awaiting: Vec::new(),
        events: Vec::new(),
    };
    for (index, (side, chunk)) in transcript.iter().enumerate() {
        let mut passed = 0;
        for piece in cut(index, chunk) {
            let (pass, event) = feed(watcher, *side, &piece)?;
            passed += pass;
            outcome.events.extend(event);
        }
        outcome.passed.push(passed);
        outcome.awaiting.push(watcher.awaiting_server());
    }
    Ok(outcome)
}

/// Runs `transcript` with every chunk whole.
pub fn run(protocol: Protocol, transcript: &[(Side, &[u8])]) -> Result<Outcome, NegotiationError> {
    run_cut(protocol, transcript, &whole)
}

fn whole(_: usize, chunk: &[u8]) -> Vec<Vec<u8>> {
    vec![chunk.to_vec()]
}

/// Runs `transcript` whole, a byte at a time, and with each chunk in turn
/// cut in two at every byte boundary; asserts they all give the same
/// outcome, and returns it.
pub fn run_every_cut(protocol: Protocol, transcript: &[(Side, &[u8])]) -> Outcome {
    let whole = run(protocol, transcript).expect("the transcript is accepted");
    let bytewise = run_cut(protocol, transcript, &|_, chunk| {
        chunk.iter().map(|&byte| vec![byte]).collect()
    });
    assert_eq!(bytewise.as_ref(), Ok(&whole), "fed a byte at a time");
    for (cut_chunk, (_, chunk)) in transcript.iter().enumerate() {
        for at in 1..chunk.len() {
            let cut = run_cut(protocol, transcript, &|index, chunk| {
                if index == cut_chunk {
                    vec![chunk[..at].to_vec(), chunk[at..].to_vec()]
                } else {
                    vec![chunk.to_vec()]
                }
            });
            assert_eq!(cut.as_ref(), Ok(&whole), "chunk {cut_chunk} cut at {at}");
        }
    }
    whole
}

/// One row of a table of transcripts (see [`check_transcripts`]): the
/// chunks each peer sent, and what the watcher must make of them.
pub struct Transcript<'a> {
    /// What the row shows, for the failure messages.
    pub name: &'a str,
    pub chunks: &'a [(Side, &'a [u8])],
    /// The events, in order.
    pub events: &'a [Seen],
    /// Whether the server is awaited after each chunk, if checked.
    pub awaiting: Option<&'a [bool]>,
}

/// The usual upgrade: offered, requested, accepted.
pub const UPGRADE: [Seen; 3] = [
    Seen::Server(ServerEvent::UpgradeOffered),
    Seen::Client(ClientEvent::UpgradeRequested),
    Seen::Server(ServerEvent::UpgradeAccepted),
];

/// Runs each transcript of `table` whole, a byte at a time and cut at
/// every byte boundary ([`run_every_cut`]); checks that every chunk
/// passes whole and that the events and the awaiting are the row's.
pub fn check_transcripts(protocol: Protocol, table: &[Transcript]) {
    for row in table {
        let outcome = run_every_cut(protocol, row.chunks);
        let name = row.name;
        assert_eq!(
            outcome.passed,
            all_passed(row.chunks),
            "{name}: every chunk passes whole"
        );
        assert_eq!(outcome.events, row.events, "{name}: the events");
        if let Some(awaiting) = row.awaiting {
            assert_eq!(outcome.awaiting, awaiting, "{name}: awaiting the server");
        }
    }
}

/// Each of `neutral` (a command line without its CR LF) sent first passes
/// whole with no event, each of `content` as the plaintext content.
pub fn check_content_commands(protocol: Protocol, neutral: &[&str], content: &[&str]) {
    let cases = neutral.iter().map(|command| (command, None)).chain(
        content
            .iter()
            .map(|command| (command, Some(Seen::Client(ClientEvent::PlaintextContent)))),
    );
    for (command, event) in cases {
        let line = format!("{command}\r\n");
        assert_eq!(
            feed(watcher(protocol).as_mut(), Client, line.as_bytes()),
            Ok((line.len(), event)),
            "{command}"
        );
    }
}

/// An upgrade with bytes around it that must not pass (see
/// [`check_injection`]).
pub struct Injection<'a> {
    pub greeting: &'a [u8],
    pub request: &'a [u8],
    /// What the client sends after its request in the same piece.
    pub injected: &'a [u8],
    /// What the client sends next, before the answer.
    pub later: &'a [u8],
    pub answer: &'a [u8],
    /// What the server sends after its answer in the same piece.
    pub smuggled: &'a [u8],
    /// What the server sends next, before TLS.
    pub later_from_server: &'a [u8],
}

/// After the greeting, only the request passes of the client's piece, and
/// nothing of what the client sends before the answer; only the answer
/// passes of the server's piece; after it, the client's TLS record and the
/// server's next bytes fail.
pub fn check_injection(protocol: Protocol, case: &Injection) {
    let mut watcher = watcher(protocol);
    feed(watcher.as_mut(), Server, case.greeting).expect("the greeting is accepted");
    assert_eq!(
        feed(watcher.as_mut(), Client, &[case.request, case.injected].concat()),
        Ok((case.request.len(), Some(Seen::Client(ClientEvent::UpgradeRequested))))
    );
    assert!(watcher.awaiting_server());
    assert_eq!(feed(watcher.as_mut(), Client, case.later), Ok((0, None)));
    assert_eq!(
        feed(watcher.as_mut(), Server, &[case.answer, case.smuggled].concat()),
        Ok((case.answer.len(), Some(Seen::Server(ServerEvent::UpgradeAccepted))))
    );
    assert!(!watcher.awaiting_server());
    assert!(matches!(
        feed(watcher.as_mut(), Client, b"\x16\x03\x01"),
        Err(NegotiationError::Malformed { peer: Peer::Client, .. })
    ));
    assert!(matches!(
        feed(watcher.as_mut(), Server, case.later_from_server),
        Err(NegotiationError::Malformed { peer: Peer::Server, .. })
    ));
}

/// `transcript` fails on bytes `peer` sent that the protocol does not
/// allow.
pub fn assert_malformed(protocol: Protocol, peer: Peer, transcript: &[(Side, &[u8])]) {
    assert!(
        matches!(
            run(protocol, transcript),
            Err(NegotiationError::Malformed { peer: failed, .. }) if failed == peer
        ),
        "{transcript:?}"
    );
}

/// `peer` sent a line longer than [`LINE_LIMIT`].
pub fn line_too_long(peer: Peer) -> NegotiationError {
    NegotiationError::LineTooLong {
        peer,
        limit: LINE_LIMIT,
    }
}

/// Every chunk passed whole.
pub fn all_passed(transcript: &[(Side, &[u8])]) -> Vec<usize> {
    transcript.iter().map(|(_, chunk)| chunk.len()).collect()
}

/// Feeds `conversation`, checking the invariants up to the first error,
/// and only that nothing panics or hangs after it.
pub fn check(watcher: &mut dyn Negotiation, conversation: &[(Side, Vec<u8>)]) {
    let mut requested = false;
    let mut accepted = false;
    let mut failed = false;
    for &(side, ref piece) in conversation {
        let result = feed(watcher, side, piece);
        failed |= result.is_err();
        let (Ok((pass, event)), false) = (result, failed) else {
            continue;
        };
        if accepted {
            assert_eq!(pass, 0, "{side:?} bytes passed after the accept");
        }
        if requested && side == Side::Client {
            assert_eq!((pass, event), (0, None), "client bytes passed after the request");
        }
        match event {
            Some(Seen::Client(ClientEvent::UpgradeRequested)) => requested = true,
            Some(Seen::Server(ServerEvent::UpgradeRefused)) => requested = false,
            Some(Seen::Server(ServerEvent::UpgradeAccepted)) => {
                accepted = true;
                requested = false;
            }
            _ => {}
        }
        if side == Side::Client && pass < piece.len() {
            // Only the upgrade request ends a client piece early (its event
            // may have given way to the first content).
            assert!(watcher.awaiting_server());
            requested = true;
        }
    }
}

/// `transcript` with the byte at `position` of chunk number `chunk`
/// replaced by `byte`.
pub fn mutated(
    transcript: &[(Side, &[u8])],
    chunk: usize,
    position: proptest::sample::Index,
    byte: u8,
) -> Vec<(Side, Vec<u8>)> {
    let mut pieces: Vec<(Side, Vec<u8>)> = transcript.iter().map(|&(side, bytes)| (side, bytes.to_vec())).collect();
    let message = &mut pieces[chunk].1;
    let index = position.index(message.len());
    message[index] = byte;
    pieces
}
