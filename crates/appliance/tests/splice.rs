//! Transparent TCP splice, end to end in memory: a smoltcp client and server
//! talk through the appliance as if it were a cable, while every
//! intercepted connection is terminated and re-originated by it.

mod harness;

use harness::{
    assert_no_leaks, close_both, connect, exchange, ipv4, pattern, policy, tcp, transfer, v4, v6, Lab, CLIENT_V4,
    SERVER_V4, SERVER_V6,
};
use smoltcp::socket::tcp::State;
use smoltcp::wire::{EthernetFrame, Icmpv4Packet, Ipv4Packet, TcpPacket};

const PORT: u16 = 443;

#[test]
fn handshake_bulk_both_ways_and_orderly_close_ipv4() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_000);
    // The server sees the client's own address and port.
    assert_eq!(lab.server.tcp(server).remote_endpoint(), Some(v4(CLIENT_V4, 40_000)));
    assert_eq!(lab.engine.splicer().counters().sessions_live, 1);
    assert_eq!(lab.engine.stack().live_flows(), 2);

    let up = pattern(1_000_000, 1);
    let down = pattern(2_000_000, 2);
    transfer(&mut lab, client, server, &up, &down, 60_000);
    close_both(&mut lab, client, server);

    let counters = lab.engine.splicer().counters();
    assert_eq!(counters.bytes_client_to_server, up.len() as u64);
    assert_eq!(counters.bytes_server_to_client, down.len() as u64);
    let client_port = lab.totals(0);
    assert!(client_port.intercepted > 500, "{client_port:?}");
    assert_eq!(
        client_port.rx,
        client_port.bridged + client_port.intercepted + client_port.dropped
    );
    assert_no_leaks(&mut lab);
}

#[test]
fn handshake_and_bulk_ipv6() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v6(SERVER_V6, PORT), 40_001);
    assert_eq!(
        lab.server.tcp(server).remote_endpoint(),
        Some(v6(harness::CLIENT_V6, 40_001))
    );
    transfer(
        &mut lab,
        client,
        server,
        &pattern(300_000, 3),
        &pattern(500_000, 4),
        60_000,
    );
    close_both(&mut lab, client, server);
    assert_no_leaks(&mut lab);
}

#[test]
fn server_leg_is_a_new_connection_with_the_clients_addresses() {
    let mut lab = Lab::new(&policy(&[PORT]));
    lab.links[0].log = Some(Vec::new());
    lab.links[1].log = Some(Vec::new());
    connect(&mut lab, v4(SERVER_V4, PORT), 40_002);
    let syn = |frames: &[Vec<u8>]| {
        frames
            .iter()
            .find_map(|frame| {
                let eth = EthernetFrame::new_checked(frame.as_slice()).ok()?;
                let ip = ipv4(frame)?;
                let tcp = tcp(frame)?;
                (tcp.syn() && !tcp.ack()).then(|| {
                    (
                        eth.src_addr(),
                        eth.dst_addr(),
                        ip.src_addr(),
                        ip.dst_addr(),
                        tcp.src_port(),
                        tcp.dst_port(),
                        tcp.seq_number(),
                    )
                })
            })
            .expect("a SYN")
    };
    let from_client = syn(lab.links[0].log.as_ref().unwrap());
    let to_server = syn(lab.links[1].log.as_ref().unwrap());
    // Same MACs, addresses and ports: the server cannot tell the difference...
    assert_eq!(
        (
            from_client.0,
            from_client.1,
            from_client.2,
            from_client.3,
            from_client.4,
            from_client.5
        ),
        (
            to_server.0,
            to_server.1,
            to_server.2,
            to_server.3,
            to_server.4,
            to_server.5
        )
    );
    // ...but it is the appliance's own connection: another initial sequence number.
    assert_ne!(from_client.6, to_server.6);
}

#[test]
fn half_close_keeps_the_other_direction_flowing() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_003);
    let request = pattern(50_000, 5);
    let mut to_server: &[u8] = &request;
    let mut at_server = Vec::new();
    let mut nothing = Vec::new();
    assert!(lab.run_until(10_000, |lab| {
        exchange(&mut lab.client, client, &mut to_server, &mut nothing);
        to_server.is_empty()
    }));
    lab.client.tcp(client).close();
    // The server receives everything, then the FIN.
    assert!(lab.run_until(10_000, |lab| {
        exchange(&mut lab.server, server, &mut &[][..], &mut at_server);
        !lab.server.tcp(server).may_recv()
    }));
    assert!(at_server == request);
    assert_eq!(lab.server.tcp(server).state(), State::CloseWait);
    // The server still answers, after the client's FIN.
    let response = pattern(400_000, 6);
    let mut to_client: &[u8] = &response;
    let mut at_client = Vec::new();
    assert!(lab.run_until(30_000, |lab| {
        exchange(&mut lab.server, server, &mut to_client, &mut nothing);
        exchange(&mut lab.client, client, &mut &[][..], &mut at_client);
        at_client.len() == response.len()
    }));
    assert!(at_client == response);
    lab.server.tcp(server).close();
    assert!(lab.run_until(5_000, |lab| !lab.client.tcp(client).may_recv()));
    assert_no_leaks(&mut lab);
}

#[test]
fn a_reset_on_one_leg_resets_the_other() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_004);
    transfer(
        &mut lab,
        client,
        server,
        &pattern(10_000, 7),
        &pattern(10_000, 8),
        10_000,
    );
    lab.client.tcp(client).abort();
    assert!(
        lab.run_until(100, |lab| lab.server.tcp(server).state() == State::Closed),
        "server not reset promptly"
    );
    assert_eq!(lab.engine.splicer().counters().resets, 1);
    assert_no_leaks(&mut lab);

    // And the other way round.
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_005);
    lab.server.tcp(server).abort();
    assert!(
        lab.run_until(100, |lab| lab.client.tcp(client).state() == State::Closed),
        "client not reset promptly"
    );
    assert_no_leaks(&mut lab);
}

#[test]
fn refused_server_port_is_refused_to_the_client_promptly() {
    let mut lab = Lab::new(&policy(&[PORT]));
    // Nothing listens on the server: its stack answers the SYN with RST.
    let client = lab.client.connect(v4(SERVER_V4, PORT), 40_006, 4096);
    let mut was_established = false;
    let refused = lab.run_until(200, |lab| {
        was_established |= lab.client.tcp(client).state() == State::Established;
        lab.client.tcp(client).state() == State::Closed
    });
    assert!(refused, "client still {:?}", lab.client.tcp(client).state());
    assert!(
        !was_established,
        "the client must never see a handshake with a refused server"
    );
    assert_eq!(lab.engine.splicer().counters().server_refused, 1);
    assert_no_leaks(&mut lab);
}

#[test]
fn silent_server_stays_silent_to_the_client_and_flows_are_freed() {
    let mut lab = Lab::new(&policy(&[PORT]));
    // Let ARP settle with the server up, then take the server away.
    let (c, s) = connect(&mut lab, v4(SERVER_V4, PORT), 40_007);
    close_both(&mut lab, c, s);
    lab.server_online = false;
    lab.links[3].log = Some(Vec::new());
    let client = lab.client.connect(v4(SERVER_V4, PORT), 40_008, 4096);
    lab.client
        .tcp(client)
        .set_timeout(Some(smoltcp::time::Duration::from_secs(8)));
    lab.run_for(2_000);
    assert_eq!(
        lab.client.tcp(client).state(),
        State::SynSent,
        "no SYN-ACK for a server that does not answer"
    );
    let synacks = lab.links[3].log.as_ref().unwrap().iter().filter(|frame| {
        EthernetFrame::new_checked(frame.as_slice())
            .ok()
            .and_then(|eth| {
                Ipv4Packet::new_checked(eth.payload())
                    .ok()
                    .map(|ip| ip.payload().to_vec())
            })
            .and_then(|payload| {
                TcpPacket::new_checked(payload.as_slice())
                    .ok()
                    .map(|tcp| tcp.syn() && tcp.ack() && tcp.dst_port() == 40_008)
            })
            .unwrap_or(false)
    });
    assert_eq!(synacks.count(), 0);
    // The appliance gives up after its timeout (3 s here) without a word.
    assert!(lab.run_until(10_000, |lab| lab.engine.splicer().counters().server_timed_out >= 1));
    // No RST either: the client is still waiting, until its own timeout.
    let started = lab.now;
    lab.run_until(10_000, |lab| lab.now >= started + netstack::Duration::from_secs(3));
    assert_eq!(lab.client.tcp(client).state(), State::SynSent);
    assert!(lab.run_until(10_000, |lab| lab.client.tcp(client).state() == State::Closed));
    assert_no_leaks(&mut lab);
}

#[test]
fn loss_and_reordering_are_repaired_by_retransmission() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_009);
    for link in &mut lab.links {
        link.loss_percent = 3;
        link.reorder_percent = 10;
    }
    transfer(
        &mut lab,
        client,
        server,
        &pattern(200_000, 9),
        &pattern(300_000, 10),
        300_000,
    );
    let lost: u64 = lab.links.iter().map(|link| link.lost).sum();
    assert!(lost > 10, "the links must actually have lost frames ({lost})");
    for link in &mut lab.links {
        link.loss_percent = 0;
        link.reorder_percent = 0;
    }
    close_both(&mut lab, client, server);
    assert_no_leaks(&mut lab);
}

#[test]
fn many_concurrent_connections() {
    let mut lab = Lab::new(&policy(&[PORT]));
    const COUNT: u16 = 200;
    let listeners: Vec<_> = (0..COUNT).map(|_| lab.server.listen(PORT, 16 * 1024)).collect();
    let clients: Vec<_> = (0..COUNT)
        .map(|i| lab.client.connect(v4(SERVER_V4, PORT), 41_000 + i, 16 * 1024))
        .collect();
    assert!(lab.run_until(10_000, |lab| clients
        .iter()
        .all(|&c| lab.client.tcp(c).state() == State::Established)));
    assert!(lab.engine.stack().live_flows() >= 2 * usize::from(COUNT));
    // Each client sends its own data; the server echoes what it gets back.
    let payloads: Vec<Vec<u8>> = (0..COUNT).map(|i| pattern(8_000, i as u8)).collect();
    let mut progress: Vec<(&[u8], Vec<u8>)> = payloads.iter().map(|p| (p.as_slice(), Vec::new())).collect();
    let done = lab.run_until(60_000, |lab| {
        for (index, &client) in clients.iter().enumerate() {
            let (to_send, received) = &mut progress[index];
            exchange(&mut lab.client, client, to_send, received);
        }
        for &server in &listeners {
            let socket = lab.server.tcp(server);
            let mut buf = [0u8; 4096];
            while socket.can_recv() && socket.send_capacity() - socket.send_queue() >= buf.len() {
                let read = socket.recv_slice(&mut buf).unwrap_or(0);
                if read == 0 {
                    break;
                }
                socket.send_slice(&buf[..read]).unwrap();
            }
        }
        progress
            .iter()
            .zip(&payloads)
            .all(|((_, received), payload)| received.len() == payload.len())
    });
    assert!(done, "echoes incomplete");
    for ((_, received), payload) in progress.iter().zip(&payloads) {
        assert!(received == payload);
    }
    for (&client, &server) in clients.iter().zip(&listeners) {
        lab.client.tcp(client).close();
        lab.server.tcp(server).close();
    }
    assert_no_leaks(&mut lab);
    assert_eq!(lab.engine.splicer().counters().sessions_opened, u64::from(COUNT));
}

#[test]
fn other_ports_are_bridged_untouched() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (client, server) = connect(&mut lab, v4(SERVER_V4, 8080), 40_010);
    transfer(
        &mut lab,
        client,
        server,
        &pattern(100_000, 11),
        &pattern(100_000, 12),
        20_000,
    );
    assert_eq!(lab.engine.splicer().counters().sessions_opened, 0);
    assert_eq!(lab.engine.stack().counters().flows_created, 0);
    assert_eq!(lab.totals(0).intercepted, 0);
    assert!(lab.totals(0).bridged > 50);
}

#[test]
fn icmp_unreachable_reaches_the_client_quoting_its_own_sequence_number() {
    let mut lab = Lab::new(&policy(&[PORT]));
    let (c, s) = connect(&mut lab, v4(SERVER_V4, PORT), 40_011);
    close_both(&mut lab, c, s);
    lab.server_online = false;
    lab.server_unreachable = true;
    lab.links[0].log = Some(Vec::new());
    lab.links[3].log = Some(Vec::new());
    let client = lab.client.connect(v4(SERVER_V4, PORT), 40_012, 4096);
    assert!(lab.run_until(100, |lab| lab.engine.splicer().counters().server_unreachable == 1));
    lab.run_for(10);

    let client_isn = lab.links[0]
        .log
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|frame| {
            tcp(frame)
                .filter(|tcp| tcp.syn() && tcp.src_port() == 40_012)
                .map(|tcp| tcp.seq_number())
        })
        .expect("the client's SYN");
    let quoted = lab.links[3]
        .log
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|frame| {
            let icmp = Icmpv4Packet::new_checked(ipv4(frame)?.payload()).ok()?;
            assert!(icmp.verify_checksum(), "the rewritten ICMP checksum must verify");
            let data = icmp.data();
            (icmp.msg_type() == smoltcp::wire::Icmpv4Message::DstUnreachable)
                .then(|| smoltcp::wire::TcpSeqNumber(i32::from_be_bytes([data[24], data[25], data[26], data[27]])))
        })
        .expect("an ICMP unreachable towards the client");
    assert_eq!(quoted, client_isn, "the error must quote the client's own SYN");
    assert_eq!(lab.client.tcp(client).state(), State::SynSent, "no handshake, no RST");
    assert_no_leaks(&mut lab);
}

#[test]
fn a_client_reusing_its_port_right_after_a_close_gets_a_new_connection_at_once() {
    let mut lab = Lab::new(&policy(&[PORT]));
    for round in 0..3u8 {
        let (client, server) = connect(&mut lab, v4(SERVER_V4, PORT), 40_020);
        transfer(
            &mut lab,
            client,
            server,
            &pattern(2_000, round),
            &pattern(3_000, round),
            5_000,
        );
        // The server closes first, so the appliance's client leg ends in
        // TIME-WAIT while the client's own socket is gone at once.
        lab.server.tcp(server).close();
        assert!(lab.run_until(2_000, |lab| lab.client.tcp(client).state() == State::CloseWait));
        lab.client.tcp(client).close();
        assert!(lab.run_until(2_000, |lab| lab.client.tcp(client).state() == State::Closed));
        lab.client.sockets.remove(client);
        lab.server.sockets.remove(server);
        // Same 4-tuple again, well inside the appliance's 10 s TIME-WAIT.
    }
    assert_eq!(lab.engine.splicer().counters().sessions_opened, 3);
    assert_no_leaks(&mut lab);
}
