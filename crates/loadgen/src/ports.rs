//! Moving the generator's frames over real ports (DPDK queues or in-memory
//! ones): each side may have several receive queues, because an appliance
//! with several workers transmits on one queue per worker, and a memif
//! peer has no other way to hand them over. Every receive queue of both
//! sides is polled; everything the generator sends leaves on its side's
//! first queue (the only one a memif peer of a software-distributing
//! appliance reads), written by the generator's stack straight into a
//! buffer of that queue's pool ([`PortFrames`]).
use netstack::{Instant, PortFrames, Queued};
use port::{PacketBuf, Port};

use crate::generator::Generator;

/// Frames taken from one receive queue per poll, at most.
const RX_BURST: usize = 64;

/// Transmit attempts that the driver refuses entirely before the rest of a
/// side's frames are dropped (a full ring the peer does not drain).
const TX_ATTEMPTS: usize = 16;

/// Why a [`PortPump`] cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortsError {
    #[error("the {0} side has no queue")]
    NoQueue(&'static str),
}

/// The generator's two sides, each a list of queues of one port: queue 0
/// receives and transmits, the others only receive.
#[derive(Debug)]
pub struct PortPump<P: Port> {
    /// Client side (index [`crate::CLIENT_SIDE`]), then server side.
    sides: [Vec<P>; 2],
    frames: Vec<P::Buf>,
    outgoing: [Vec<P::Buf>; 2],
    tx_dropped: u64,
}

impl<P: Port> PortPump<P> {
    /// The pump over the client side's queues and the server side's, for
    /// `generator`: its stack now writes each frame into a buffer of the
    /// first queue's pool of the side it leaves from.
    pub fn new(client: Vec<P>, server: Vec<P>, generator: &mut Generator) -> Result<Self, PortsError> {
        let (Some(client_first), Some(server_first)) = (client.first(), server.first()) else {
            return Err(PortsError::NoQueue(if client.is_empty() { "client" } else { "server" }));
        };
        generator.set_tx_frames(Box::new(PortFrames::new(vec![
            client_first.pool(),
            server_first.pool(),
        ])));
        Ok(PortPump {
            sides: [client, server],
            frames: Vec::with_capacity(RX_BURST),
            outgoing: [Vec::new(), Vec::new()],
            tx_dropped: 0,
        })
    }

    /// Hands the generator one burst from every receive queue of both sides.
    pub fn receive(&mut self, generator: &mut Generator, now: Instant) {
        for (side, queues) in self.sides.iter_mut().enumerate() {
            for queue in queues {
                self.frames.clear();
                queue.rx_burst(&mut self.frames, RX_BURST);
                for frame in &self.frames {
                    generator.receive(side, frame.data(), now);
                }
            }
        }
        self.frames.clear();
    }

    /// Sends what the generator has written, each frame on the first queue
    /// of its side; a frame written while the pool was dry gets one more
    /// try at a buffer, and frames without one or that the driver keeps
    /// refusing are dropped and counted (TCP sends them again).
    pub fn transmit(&mut self, generator: &mut Generator) {
        if let Some(written) = generator.take_tx_frames::<PortFrames<P::Pool>>() {
            for (side, frame) in written.drain() {
                let (Some(queue), Some(outgoing)) = (
                    self.sides.get_mut(side).and_then(|queues| queues.first_mut()),
                    self.outgoing.get_mut(side),
                ) else {
                    self.tx_dropped += 1;
                    continue;
                };
                let buf = match frame {
                    Queued::InPortBuffer(buf) => Some(buf),
                    Queued::Spilled(bytes) => queue.alloc().and_then(|mut buf| {
                        buf.grow_back(bytes.len())?.copy_from_slice(&bytes);
                        Some(buf)
                    }),
                };
                match buf {
                    Some(buf) => outgoing.push(buf),
                    None => self.tx_dropped += 1,
                }
            }
        }
        for (queues, outgoing) in self.sides.iter_mut().zip(self.outgoing.iter_mut()) {
            let Some(queue) = queues.first_mut() else {
                continue;
            };
            let mut attempts = 0;
            while !outgoing.is_empty() && attempts < TX_ATTEMPTS {
                if queue.tx_burst(outgoing) == 0 {
                    attempts += 1;
                }
            }
            self.tx_dropped += outgoing.len() as u64;
            outgoing.clear();
        }
    }

    /// Frames dropped on transmit so far.
    pub fn tx_dropped(&self) -> u64 {
        self.tx_dropped
    }
}
