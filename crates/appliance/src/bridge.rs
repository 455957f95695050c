//! The inline bridge: every frame received on one port leaves the other
//! port unchanged, in bursts. Runts (frames too short to hold their Ethernet
//! header) are dropped; frames with malformed L3 headers are bridged like
//! any other and counted (see `wire::classify` for the rule).

use std::sync::Arc;

use dpdk::{PacketBuf, Port};

use crate::counters::PortStats;

/// Transmit attempts on a full ring before the remaining frames are dropped.
const TX_ATTEMPTS: u32 = 16;

/// Which port a frame came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }
}

/// One worker's share of the bridge: a queue pair on each port.
pub struct Bridge<P: Port> {
    ports: [P; 2],
    stats: [Arc<PortStats>; 2],
    burst_size: usize,
    frames: Vec<P::Buf>,
}

impl<P: Port> Bridge<P> {
    /// A bridge between `client` and `server`, counting into `stats`
    /// (client first).
    pub fn new(client: P, server: P, stats: [Arc<PortStats>; 2], burst_size: usize) -> Self {
        Bridge {
            ports: [client, server],
            stats,
            burst_size: burst_size.max(1),
            frames: Vec::with_capacity(burst_size.max(1)),
        }
    }

    /// One poll of both ports; returns how many frames were received.
    pub fn poll(&mut self) -> usize {
        self.forward(Side::Client) + self.forward(Side::Server)
    }

    pub fn port(&self, side: Side) -> &P {
        &self.ports[side.index()]
    }

    /// Receives one burst on `from` and sends it out of the other port.
    fn forward(&mut self, from: Side) -> usize {
        let (ingress, egress) = match from {
            Side::Client => (0, 1),
            Side::Server => (1, 0),
        };
        let frames = &mut self.frames;
        let received = self.ports[ingress].rx_burst(frames, self.burst_size);
        if received == 0 {
            return 0;
        }
        let in_stats = &self.stats[ingress];
        in_stats.add_rx(received as u64);

        let mut runts = 0u64;
        let mut malformed = 0u64;
        frames.retain(|frame| match wire::classify(frame.data()) {
            Err(_) => {
                runts += 1;
                false
            }
            Ok(class) => {
                if class.malformed.is_some() {
                    malformed += 1;
                }
                true
            }
        });

        let to_send = frames.len();
        let mut attempts = 0;
        while !frames.is_empty() && attempts < TX_ATTEMPTS {
            if self.ports[egress].tx_burst(frames) == 0 {
                attempts += 1;
            }
        }
        let unsent = frames.len();
        frames.clear();

        let sent = (to_send - unsent) as u64;
        self.stats[egress].add_tx(sent);
        in_stats.add_bridged(sent);
        in_stats.add_dropped(runts + unsent as u64);
        in_stats.add_malformed(runts + malformed);
        received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpdk::{MemPort, MemPortControl};

    fn bridge(
        burst: usize,
    ) -> (
        Bridge<MemPort>,
        MemPortControl,
        MemPortControl,
        [Arc<PortStats>; 2],
    ) {
        let (client, client_ctl) = MemPort::new("client", [2, 0, 0, 0, 0, 0xc]);
        let (server, server_ctl) = MemPort::new("server", [2, 0, 0, 0, 0, 0x5]);
        let stats = [
            Arc::new(PortStats::default()),
            Arc::new(PortStats::default()),
        ];
        (
            Bridge::new(client, server, stats.clone(), burst),
            client_ctl,
            server_ctl,
            stats,
        )
    }

    /// An Ethernet frame with an unassigned ethertype and `fill` as payload.
    fn frame(fill: u8, len: usize) -> Vec<u8> {
        let mut frame = vec![
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x88, 0xb5,
        ];
        frame.resize(len.max(14), fill);
        frame
    }

    /// A minimal valid IPv4/UDP frame, padded to 60 bytes.
    fn udp_frame() -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ];
        let mut sum: u32 = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, b'p', b'i', b'n', b'g']);
        frame.resize(60, 0);
        frame
    }

    #[test]
    fn frames_cross_unchanged_both_ways_in_order() {
        let (mut bridge, client, server, stats) = bridge(4);
        let from_client: Vec<_> = (0..10).map(|i| frame(i, 60 + usize::from(i))).collect();
        let from_server: Vec<_> = (0..3).map(|i| frame(100 + i, 1514)).collect();
        from_client.iter().cloned().for_each(|f| client.inject(f));
        from_server.iter().cloned().for_each(|f| server.inject(f));
        while bridge.poll() > 0 {}
        assert_eq!(server.take_transmitted(), from_client);
        assert_eq!(client.take_transmitted(), from_server);
        let (c, s) = (stats[0].totals(), stats[1].totals());
        assert_eq!(
            (c.rx, c.bridged, c.dropped, c.malformed, c.tx),
            (10, 10, 0, 0, 3)
        );
        assert_eq!(
            (s.rx, s.bridged, s.dropped, s.malformed, s.tx),
            (3, 3, 0, 0, 10)
        );
    }

    #[test]
    fn runts_are_dropped_and_l3_malformed_frames_bridged() {
        let (mut bridge, client, server, stats) = bridge(32);
        let good = udp_frame();
        let mut bad_checksum = good.clone();
        bad_checksum[24] ^= 0xff;
        client.inject(vec![]);
        client.inject(vec![0xff; 13]);
        client.inject(good.clone());
        client.inject(bad_checksum.clone());
        while bridge.poll() > 0 {}
        assert_eq!(server.take_transmitted(), vec![good, bad_checksum]);
        let c = stats[0].totals();
        assert_eq!((c.rx, c.bridged, c.dropped, c.malformed), (4, 2, 2, 3));
    }

    #[test]
    fn full_transmit_ring_drops_after_retries_without_losing_count() {
        let (mut bridge, client, server, stats) = bridge(8);
        server.set_tx_burst_limit(Some(0));
        (0..8).for_each(|i| client.inject(frame(i, 64)));
        assert_eq!(bridge.poll(), 8);
        assert!(server.take_transmitted().is_empty());
        let c = stats[0].totals();
        assert_eq!((c.rx, c.bridged, c.dropped), (8, 0, 8));

        // A ring that takes 3 per burst still delivers everything, in order.
        server.set_tx_burst_limit(Some(3));
        let frames: Vec<_> = (0..8).map(|i| frame(50 + i, 64)).collect();
        frames.iter().cloned().for_each(|f| client.inject(f));
        bridge.poll();
        assert_eq!(server.take_transmitted(), frames);
        let c = stats[0].totals();
        assert_eq!((c.rx, c.bridged, c.dropped), (16, 8, 8));
        assert_eq!(stats[1].totals().tx, 8);
    }

    #[test]
    fn burst_size_bounds_each_poll() {
        let (mut bridge, client, _server, _stats) = bridge(4);
        (0..10).for_each(|i| client.inject(frame(i, 60)));
        assert_eq!(bridge.poll(), 4);
        assert_eq!(client.pending_rx(), 6);
    }
}
