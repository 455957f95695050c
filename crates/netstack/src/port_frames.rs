//! The stack's transmit sink on real ports ([`crate::TxFrames`]): each
//! frame smoltcp sends is written once, L2 header included, into a buffer
//! from the pool of the port it leaves from (an mbuf on DPDK), and the
//! driver (the appliance's engine, the load generator's pump) hands that
//! buffer to the port's transmit burst as it is. A frame written while that
//! pool is dry waits in a heap `Vec`; the driver copies it into a port
//! buffer when it sends, or drops and counts it (TCP sends it again).

use std::any::Any;

use port::{BufPool, PacketBuf};

use crate::TxFrames;

/// A frame queued to send.
pub enum Queued<B> {
    /// In a buffer of its port's pool, ready for the transmit burst.
    InPortBuffer(B),
    /// In a heap buffer: the port's pool was dry (or the port unknown).
    Spilled(Vec<u8>),
}

/// The frames the stack sends, in buffers of the ports' pools.
pub struct PortFrames<Pool: BufPool> {
    /// Indexed by port.
    pools: Vec<Pool>,
    queued: Vec<(usize, Queued<Pool::Buf>)>,
}

impl<Pool: BufPool> PortFrames<Pool> {
    /// A sink on the pools of the ports, indexed as the stack's ports are.
    pub fn new(pools: Vec<Pool>) -> Self {
        PortFrames {
            pools,
            queued: Vec::new(),
        }
    }

    /// Takes the queued frames, in order, with their ports.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (usize, Queued<Pool::Buf>)> {
        self.queued.drain(..)
    }
}

impl<Pool: BufPool> TxFrames for PortFrames<Pool> {
    fn push(&mut self, port: usize, len: usize) -> &mut [u8] {
        let buffer = self.pools.get_mut(port).and_then(|pool| {
            let mut buffer = pool.alloc()?;
            buffer.grow_back(len)?;
            Some(buffer)
        });
        let frame = match buffer {
            Some(buffer) => Queued::InPortBuffer(buffer),
            None => Queued::Spilled(vec![0; len]),
        };
        self.queued.push((port, frame));
        match self.queued.last_mut() {
            Some((_, Queued::InPortBuffer(buffer))) => buffer.data_mut(),
            Some((_, Queued::Spilled(bytes))) => bytes,
            None => &mut [],
        }
    }

    fn len(&self) -> usize {
        self.queued.len()
    }

    fn frame(&self, index: usize) -> Option<&[u8]> {
        self.queued.get(index).map(|(_, frame)| match frame {
            Queued::InPortBuffer(buffer) => buffer.data(),
            Queued::Spilled(bytes) => &bytes[..],
        })
    }

    fn truncate(&mut self, len: usize) {
        self.queued.truncate(len);
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use port::{MemPort, Port};

    #[test]
    fn frames_go_into_port_buffers_and_spill_only_when_the_pool_is_dry() {
        let (port, control) = MemPort::new([0; 6]);
        control.set_alloc_limit(Some(1));
        let mut frames = PortFrames::new(vec![port.pool()]);
        frames.push(0, 4).copy_from_slice(b"one!");
        frames.push(0, 3).copy_from_slice(b"two");
        frames.push(7, 5).copy_from_slice(b"three");
        assert_eq!(frames.len(), 3);
        assert_eq!(frames.frame(1), Some(&b"two"[..]));
        frames.truncate(2);
        let queued: Vec<_> = frames.drain().collect();
        assert!(matches!(&queued[..], [
            (0, Queued::InPortBuffer(first)),
            (0, Queued::Spilled(second)),
        ] if first == b"one!" && second == b"two"));
        assert!(frames.is_empty());
    }
}
