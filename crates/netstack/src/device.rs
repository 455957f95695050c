//! The smoltcp `Device` a flow is polled with: it yields at most the one IP
//! packet being delivered to that flow, and writes every IP packet smoltcp
//! sends, behind the flow's L2 header, into a frame of the stack's
//! [`TxFrames`] sink for the flow's port.

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::l2::L2Header;
use crate::tx::TxFrames;

/// The IP MTU of the data ports.
pub const IP_MTU: usize = 1500;

/// A frame the stack wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFrame {
    /// Index of the port to send it from.
    pub port: usize,
    pub frame: Vec<u8>,
}

pub(crate) struct FlowDevice<'a> {
    pub rx: Option<&'a [u8]>,
    pub l2: &'a L2Header,
    pub port: usize,
    pub tx: &'a mut dyn TxFrames,
}

pub(crate) fn capabilities() -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = IP_MTU;
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Both;
    checksum.tcp = Checksum::Both;
    caps.checksum = checksum;
    caps
}

impl phy::Device for FlowDevice<'_> {
    type RxToken<'b>
        = PacketRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = FrameTx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _timestamp: Instant) -> Option<(PacketRx<'_>, FrameTx<'_>)> {
        let packet = self.rx.take()?;
        Some((
            PacketRx(packet),
            FrameTx {
                l2: self.l2,
                port: self.port,
                tx: &mut *self.tx,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<FrameTx<'_>> {
        Some(FrameTx {
            l2: self.l2,
            port: self.port,
            tx: &mut *self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities()
    }
}

pub(crate) struct PacketRx<'a>(&'a [u8]);

impl phy::RxToken for PacketRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

pub(crate) struct FrameTx<'a> {
    l2: &'a L2Header,
    port: usize,
    tx: &'a mut dyn TxFrames,
}

impl phy::TxToken for FrameTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let header = self.l2.len();
        let frame = self.tx.push(self.port, header + len);
        match frame.get_mut(header..header + len) {
            Some(packet) => {
                let result = f(packet);
                let version = packet.first().map_or(4, |byte| byte >> 4);
                self.l2.write(frame, version);
                result
            }
            // A sink that broke its contract (a shorter frame): smoltcp
            // still needs its packet written, into a frame that goes nowhere.
            None => f(&mut vec![0; len]),
        }
    }
}
