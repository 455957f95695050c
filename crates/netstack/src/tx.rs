//! Where the frames the stack sends are written: a [`TxFrames`] sink, set
//! with [`crate::Stack::set_tx_frames`]. smoltcp's transmit token asks the
//! sink for a buffer of the frame's length and writes the IP packet and the
//! flow's L2 header into it in place, so a sink whose buffers are the
//! port's own (mbufs on DPDK) sends each frame without another copy. The
//! default sink, [`OutFrames`], keeps them as heap [`OutFrame`]s for
//! [`crate::Stack::drain_output`].

use std::any::Any;

use crate::device::OutFrame;

/// The frames the stack has queued to send, in order, on every port.
pub trait TxFrames: Send + Any {
    /// Queues a frame of `len` bytes for `port` and returns them, for the
    /// stack to write every one of them (whatever they held before is
    /// overwritten). A sink never refuses: one whose port buffers run out
    /// keeps the frame some other way, or counts it as dropped when it is
    /// drained.
    fn push(&mut self, port: usize, len: usize) -> &mut [u8];

    /// How many frames are queued.
    fn len(&self) -> usize;

    /// Whether no frame is queued.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of queued frame `index`.
    fn frame(&self, index: usize) -> Option<&[u8]>;

    /// Drops every frame queued from `len` on (frees their buffers).
    fn truncate(&mut self, len: usize);

    /// The sink as its own type, for its owner to take the frames.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl dyn TxFrames {
    /// Queues a copy of `frame` for `port`.
    pub(crate) fn push_copy(&mut self, port: usize, frame: &[u8]) {
        let buf = self.push(port, frame.len());
        if let Some(buf) = buf.get_mut(..frame.len()) {
            buf.copy_from_slice(frame);
        }
    }
}

/// The default sink: each frame in its own `Vec`.
#[derive(Debug, Default)]
pub struct OutFrames(pub Vec<OutFrame>);

impl TxFrames for OutFrames {
    fn push(&mut self, port: usize, len: usize) -> &mut [u8] {
        self.0.push(OutFrame {
            port,
            frame: vec![0; len],
        });
        self.0.last_mut().map_or(&mut [], |out| &mut out.frame[..])
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn frame(&self, index: usize) -> Option<&[u8]> {
        self.0.get(index).map(|out| &out.frame[..])
    }

    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
