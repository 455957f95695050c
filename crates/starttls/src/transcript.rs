//! Test support: a recorded conversation replayed through a watcher as the
//! appliance would, whole or cut into pieces, and the invariants that hold
//! for any input.

use crate::{ClientEvent, Negotiation, NegotiationError, Peer, ServerEvent};

/// One peer's message, as it was sent.
pub(crate) type Message<'a> = (Peer, &'a [u8]);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    Client(ClientEvent),
    Server(ServerEvent),
}

/// What a replay gave: the bytes of each message that passed on, and the
/// events with the index of the message they came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replay {
    pub(crate) passed: Vec<usize>,
    pub(crate) events: Vec<(usize, Seen)>,
}

impl Replay {
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.events.iter().map(|&(_, seen)| seen).collect()
    }
}

/// Shows `messages` to `negotiation` in order, each message cut at the
/// offsets `cuts` gives it (ascending, inside the message), as the
/// appliance does: what a step does not pass is discarded, and nothing is
/// shown after the server accepted the upgrade.
pub(crate) fn replay_cut(
    negotiation: &mut dyn Negotiation,
    messages: &[Message],
    cuts: impl Fn(usize) -> Vec<usize>,
) -> Result<Replay, NegotiationError> {
    let mut replay = Replay {
        passed: Vec::new(),
        events: Vec::new(),
    };
    for (index, &(peer, message)) in messages.iter().enumerate() {
        let mut bounds = cuts(index);
        bounds.push(message.len());
        let mut start = 0;
        let mut passed = 0;
        let mut accepted = false;
        for end in bounds {
            let piece = &message[start..end];
            start = end;
            let (pass, event) = match peer {
                Peer::Client => {
                    let step = negotiation.from_client(piece)?;
                    (step.pass, step.event.map(Seen::Client))
                }
                Peer::Server => {
                    let step = negotiation.from_server(piece)?;
                    (step.pass, step.event.map(Seen::Server))
                }
            };
            assert!(pass <= piece.len(), "passed {pass} of {} bytes", piece.len());
            passed += pass;
            if let Some(seen) = event {
                replay.events.push((index, seen));
            }
            if event == Some(Seen::Server(ServerEvent::UpgradeAccepted)) {
                accepted = true;
                break;
            }
        }
        replay.passed.push(passed);
        if accepted {
            break;
        }
    }
    Ok(replay)
}

/// `messages` shown whole.
pub(crate) fn replay(negotiation: &mut dyn Negotiation, messages: &[Message]) -> Result<Replay, NegotiationError> {
    replay_cut(negotiation, messages, |_| Vec::new())
}

/// Replays `messages` cut in two at every offset of every message, and a
/// byte at a time, each with a fresh watcher from `new`: every way gives
/// what showing the messages whole gives.
pub(crate) fn assert_cut_anywhere_is_whole(new: impl Fn() -> Box<dyn Negotiation>, messages: &[Message]) -> Replay {
    let whole = replay(new().as_mut(), messages).expect("whole transcript");
    for (cut_message, &(_, message)) in messages.iter().enumerate() {
        for offset in 1..message.len() {
            let cut = replay_cut(new().as_mut(), messages, |index| {
                if index == cut_message {
                    vec![offset]
                } else {
                    Vec::new()
                }
            });
            assert_eq!(cut.as_ref(), Ok(&whole), "message {cut_message} cut at {offset}");
        }
    }
    let bytewise = replay_cut(new().as_mut(), messages, |index| (1..messages[index].1.len()).collect());
    assert_eq!(bytewise.as_ref(), Ok(&whole), "a byte at a time");
    whole
}

/// Feeds arbitrary pieces from either peer: the watcher never passes more
/// than it was given, and stops at its first error or accepted upgrade.
pub(crate) fn check_arbitrary_pieces(
    negotiation: &mut dyn Negotiation,
    pieces: &[(bool, Vec<u8>)],
) -> Result<(), proptest::test_runner::TestCaseError> {
    for (from_client, piece) in pieces {
        let _ = negotiation.awaiting_server();
        let (pass, accepted) = if *from_client {
            match negotiation.from_client(piece) {
                Ok(step) => (step.pass, false),
                Err(_) => return Ok(()),
            }
        } else {
            match negotiation.from_server(piece) {
                Ok(step) => (step.pass, step.event == Some(ServerEvent::UpgradeAccepted)),
                Err(_) => return Ok(()),
            }
        };
        proptest::prop_assert!(pass <= piece.len());
        if accepted {
            return Ok(());
        }
    }
    Ok(())
}
