//! The layout of the mbuf pools against real DPDK on 4 KiB pages
//! (`--no-huge`): DPDK's default pool leaves gaps (an mbuf never crosses a
//! page, so each takes a page), which the af_xdp driver cannot use, since it
//! registers the pool with the kernel as one region of its size times the
//! object size; a `one_mbuf_per_page` pool is that one region, and its mbufs
//! hold full frames. The EAL can be initialised once per process, so this
//! is one test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::init_test_eal;
use dpdk::{pool_for_devices, Mempool, MBUF_FRAME_BYTES};
use port::PacketBuf;

const POOL_SIZE: u32 = 8191;

#[test]
fn a_pool_for_af_xdp_is_one_region_of_page_sized_mbufs() {
    let eal = init_test_eal(&[]);

    let default = Mempool::new(&eal, "default_layout", POOL_SIZE, -1).expect("pool");
    assert!(
        !default.is_one_region(),
        "DPDK's default pool on 4 KiB pages has gaps (this is why af_xdp needs its own layout)"
    );

    let for_af_xdp =
        pool_for_devices(&eal, "af_xdp_layout", POOL_SIZE, ["net_af_packet0", "net_af_xdp1"]).expect("pool");
    assert!(
        for_af_xdp.is_one_region(),
        "every mbuf lies in the region af_xdp registers"
    );
    let for_af_packet =
        pool_for_devices(&eal, "af_packet_layout", 1023, ["net_af_packet0", "net_af_packet1"]).expect("pool");
    assert!(
        !for_af_packet.is_one_region(),
        "other devices keep DPDK's default layout"
    );

    // Every mbuf of the pool can be taken and holds a full-size frame.
    let mut taken = Vec::new();
    while let Some(mut mbuf) = for_af_xdp.alloc() {
        let frame = mbuf.grow_back(MBUF_FRAME_BYTES).expect("a full frame fits");
        frame.fill(0xa5);
        taken.push(mbuf);
    }
    assert_eq!(taken.len(), POOL_SIZE as usize);
    drop(taken);
    assert_eq!(for_af_xdp.available(), POOL_SIZE);
}
