//! The stack's frames are written into buffers of their port's pool, in
//! memory on a virtual clock: a pool that runs dry mid-transfer only drops
//! the frames written meanwhile (counted as `generated_dropped`), and TCP
//! sends them again once buffers come back; nothing is lost for good.

mod harness;

use harness::{assert_no_leaks, close_both, connect, pattern, policy, transfer_with, v4, Lab, SERVER_V4};
use netstack::Duration;

const PORT: u16 = 443;

#[test]
fn a_dry_buffer_pool_drops_frames_and_the_transfer_recovers_byte_exact() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_200);
    let (up, down) = (pattern(400_000, 5), pattern(400_000, 6));
    // No buffer at all on either port for 300 ms, once a quarter of the
    // bytes went each way.
    let mut dry_until = None;
    transfer_with(
        &mut lab,
        client,
        server,
        &up,
        &down,
        30_000,
        |lab, (at_server, at_client)| match dry_until {
            None if at_server >= up.len() / 4 && at_client >= down.len() / 4 => {
                dry_until = Some(lab.now + Duration::from_millis(300));
                lab.client_port.set_alloc_limit(Some(0));
                lab.server_port.set_alloc_limit(Some(0));
            }
            Some(until) if lab.now >= until => {
                lab.client_port.set_alloc_limit(None);
                lab.server_port.set_alloc_limit(None);
            }
            _ => {}
        },
    );
    assert!(dry_until.is_some(), "the pools never ran dry");
    let dropped = lab.totals(0).generated_dropped + lab.totals(1).generated_dropped;
    assert!(dropped > 0, "no frame was dropped while the pools were dry");
    close_both(&mut lab, client, server);
    assert_no_leaks(&mut lab);
}
