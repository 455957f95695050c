//! Heap allocations on the steady-state data path: a bulk transfer through
//! a spliced connection, in memory, with a counting global allocator around
//! the engine's polls only (the in-memory hosts and links allocate freely).
//! The only test of this binary, so that nothing else allocates meanwhile.
//!
//! The bound: none per frame, sent or received, and a few per poll. The
//! stack's transmit token writes each frame straight into a buffer of the
//! port's pool (`MemPort`'s reuses the buffers of frames taken off the
//! wire, as a mempool does), which the engine sends as it is.

mod harness;

use harness::{connect, exchange, pattern, policy, v4, Lab, SERVER_V4};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const PORT: u16 = 443;

/// Moves `len` bytes each way between the connected client and server,
/// checking they arrive, with `around` running every engine poll.
fn bulk(
    lab: &mut Lab,
    (client, server): (smoltcp::iface::SocketHandle, smoltcp::iface::SocketHandle),
    len: usize,
    mut around: impl FnMut(&mut dyn FnMut()),
) {
    let (up, down) = (pattern(len, 1), pattern(len, 2));
    let (mut to_server, mut to_client) = (&up[..], &down[..]);
    let (mut at_server, mut at_client) = (Vec::with_capacity(len), Vec::with_capacity(len));
    for _ in 0..60_000 {
        exchange(&mut lab.client, client, &mut to_server, &mut at_client);
        exchange(&mut lab.server, server, &mut to_client, &mut at_server);
        if at_server.len() == len && at_client.len() == len {
            break;
        }
        lab.step_around_engine(&mut around);
    }
    assert!(at_server == up && at_client == down, "transfer incomplete or corrupt");
}

#[test]
fn a_steady_bulk_relay_allocates_nothing_per_frame() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let legs = connect(&mut lab, v4(SERVER_V4, PORT), 40_000);
    // Warm-up: buffers and tables grow to their working size.
    bulk(&mut lab, legs, 1_000_000, |poll| poll());

    // Frames the stack received (intercepted) and sent (generated), on both ports.
    let frames = |lab: &Lab| {
        let (client, server) = (lab.totals(0), lab.totals(1));
        (
            client.intercepted + server.intercepted,
            client.generated + server.generated,
        )
    };
    let before = frames(&lab);
    let (mut allocations, mut polls) = (0, 0);
    bulk(&mut lab, legs, 4_000_000, |poll| {
        let region = Region::new(GLOBAL);
        poll();
        allocations += region.change().allocations as u64;
        polls += 1;
    });
    let (received, sent) = (frames(&lab).0 - before.0, frames(&lab).1 - before.1);
    assert!(
        received > 2_000 && sent > 5_000,
        "{received} frames received, {sent} sent"
    );
    eprintln!("{allocations} allocations in {polls} polls for {received} frames received and {sent} sent");
    // Nothing per frame sent or received; a few per poll (about 4 today).
    // Before frames were written into port buffers, each frame sent cost
    // two: its own `Vec` and the port buffer it was copied into.
    let bound = 8 * polls;
    assert!(allocations <= bound, "{allocations} allocations, at most {bound}");
}
