//! Moving the generator's frames over real ports (DPDK queues or in-memory
//! ones): each side may have several receive queues, because an appliance
//! with several workers transmits on one queue per worker, and a memif
//! peer has no other way to hand them over. Every receive queue of both
//! sides is polled; everything the generator sends leaves on its side's
//! first queue (the only one a memif peer of a software-distributing
//! appliance reads).
use netstack::{Instant, OutFrame};
use port::{PacketBuf, Port};

use crate::generator::{Generator, CLIENT_SIDE};

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
    /// Client side (index [`CLIENT_SIDE`]), then server side.
    sides: [Vec<P>; 2],
    frames: Vec<P::Buf>,
    output: Vec<OutFrame>,
    outgoing: [Vec<P::Buf>; 2],
    tx_dropped: u64,
}

impl<P: Port> PortPump<P> {
    /// The pump over the client side's queues and the server side's.
    pub fn new(client: Vec<P>, server: Vec<P>) -> Result<Self, PortsError> {
        if client.is_empty() {
            return Err(PortsError::NoQueue("client"));
        }
        if server.is_empty() {
            return Err(PortsError::NoQueue("server"));
        }
        Ok(PortPump {
            sides: [client, server],
            frames: Vec::with_capacity(RX_BURST),
            output: Vec::new(),
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

    /// Sends what the generator has queued, each frame on the first queue of
    /// its side; frames without a buffer or that the driver keeps refusing
    /// are dropped and counted.
    pub fn transmit(&mut self, generator: &mut Generator) {
        generator.drain_output(&mut self.output);
        for out in self.output.drain(..) {
            let side = usize::from(out.port != CLIENT_SIDE);
            let copied = self.sides[side][0].alloc().and_then(|mut buf| {
                buf.grow_back(out.frame.len())?.copy_from_slice(&out.frame);
                Some(buf)
            });
            match copied {
                Some(buf) => self.outgoing[side].push(buf),
                None => self.tx_dropped += 1,
            }
        }
        for (queues, outgoing) in self.sides.iter_mut().zip(self.outgoing.iter_mut()) {
            let mut attempts = 0;
            while !outgoing.is_empty() && attempts < TX_ATTEMPTS {
                if queues[0].tx_burst(outgoing) == 0 {
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
