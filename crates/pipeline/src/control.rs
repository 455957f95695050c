//! The decrypted stream of an upgraded STARTTLS session watched for what it
//! announces: FTP's control channel names the data connections to come
//! ([`starttls::ControlChannel`]). The watcher sees exactly the plaintext
//! the relay passes on (after the inspection box, if any), in order, as a
//! [`Tap`] does, before it goes out; it never changes a byte.

use std::collections::VecDeque;

use starttls::{ControlChannel, DataChannelEvent, DataProtection, NegotiationError};

use crate::Tap;

/// One thing the control channel announced, with the protection of data
/// connections opened after it (a `PROT` before it in the same read
/// counts, one after it does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    pub event: DataChannelEvent,
    pub protection: DataProtection,
}

/// A control channel under watch and what it announced, waiting for the
/// caller ([`crate::Connection::next_announcement`]).
pub(crate) struct Watched {
    channel: ControlChannel,
    announced: VecDeque<Announcement>,
    /// Why the channel cannot be followed any more; nothing is watched
    /// after it.
    failure: Option<NegotiationError>,
    failed: bool,
}

impl Watched {
    pub(crate) fn new(channel: ControlChannel) -> Watched {
        Watched {
            channel,
            announced: VecDeque::new(),
            failure: None,
            failed: false,
        }
    }

    fn see(&mut self, from_client: bool, bytes: &[u8]) {
        if self.failed {
            return;
        }
        let mut protection = self.channel.protection();
        let seen = if from_client {
            self.channel.from_client(bytes).map(|()| Vec::new())
        } else {
            self.channel.from_server(bytes)
        };
        match seen {
            Ok(events) => {
                for event in events {
                    if let DataChannelEvent::Protection(now) = event {
                        protection = now;
                    }
                    self.announced.push_back(Announcement { event, protection });
                }
            }
            Err(err) => {
                self.failed = true;
                self.failure = Some(err);
            }
        }
    }

    /// The oldest announcement; once they are all taken, the failure (once).
    pub(crate) fn next(&mut self) -> Option<Result<Announcement, NegotiationError>> {
        match self.announced.pop_front() {
            Some(event) => Some(Ok(event)),
            None => self.failure.take().map(Err),
        }
    }
}

/// Shows the plaintext to the watcher, then to the caller's tap (if any).
pub(crate) struct WatchingTap<'a> {
    pub(crate) watched: &'a mut Watched,
    pub(crate) inner: Option<&'a mut dyn Tap>,
}

impl Tap for WatchingTap<'_> {
    fn data(&mut self, from_client: bool, bytes: &[u8]) {
        self.watched.see(from_client, bytes);
        if let Some(inner) = self.inner.as_deref_mut() {
            inner.data(from_client, bytes);
        }
    }

    fn fin(&mut self, from_client: bool) {
        if let Some(inner) = self.inner.as_deref_mut() {
            inner.fin(from_client);
        }
    }
}
