//! What an idle intercepted TLS connection costs the appliance in memory,
//! measured in memory: N connections client ⇄ [`TlsSession`] ⇄ origin
//! complete their handshakes (TLS 1.3, ECDSA P-256, the origin issuing
//! tickets as nginx does) and exchange one request and one response of a
//! given size; then the clients and origins are dropped and only the N
//! sessions are kept, idle. The growth of the process's resident memory
//! (VmRSS) divided by N is the TLS state one idle intercepted connection
//! holds (both rustls connections and the session's buffers); the TCP legs
//! come on top (`Stack::memory_per_flow`).
//!
//!     cargo run --release -p mitm --example idle_memory [-- CONNECTIONS]
//!
//! Prints a Markdown table, one row per response size (each row's sessions
//! stay alive while the next rows are measured).

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::{appliance, client_config, intercepted, new_client, origin_ca, origin_config, Res, TempDir};
use mitm::TlsSession;
use rustls::ServerConnection;

fn resident_bytes() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

fn drain(reader: &mut impl Read) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

fn main() -> Res<()> {
    let connections: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(5000);
    if connections == 0 {
        return Err("CONNECTIONS must be at least 1".into());
    }
    let ca = origin_ca()?;
    let origin = origin_config(&ca, true)?;
    let dir = TempDir(std::env::temp_dir().join(format!("idle-memory-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let mut app = appliance(&ca.pem, &dir, 1024)?;
    let client = client_config(&app.ca_der, &[&rustls::version::TLS13])?;
    let request = b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n";

    println!("| response (bytes) | idle sessions | RSS growth | per idle intercepted TLS connection |");
    println!("|---:|---:|---:|---:|");
    let mut kept = Vec::new();
    for response_len in [0usize, 1_000, 16_000] {
        let response = vec![b'x'; response_len];
        let open = |app: &mut common::Appliance| -> Res<TlsSession> {
            let mut client = new_client(&client)?;
            let mut server = ServerConnection::new(Arc::clone(&origin))?;
            server.set_buffer_limit(None);
            let mut session = TlsSession::new("198.18.0.2".parse()?);
            intercepted(&mut client, &mut session, &mut app.context, &mut server)?;
            client.writer().write_all(request)?;
            intercepted(&mut client, &mut session, &mut app.context, &mut server)?;
            drain(&mut server.reader());
            if !response.is_empty() {
                server.writer().write_all(&response)?;
                intercepted(&mut client, &mut session, &mut app.context, &mut server)?;
                drain(&mut client.reader());
            }
            Ok(session)
        };
        // Warm-up: caches, forged certificate, allocator arenas.
        drop((0..200).map(|_| open(&mut app)).collect::<Res<Vec<_>>>()?);
        let before = resident_bytes()?;
        let sessions = (0..connections).map(|_| open(&mut app)).collect::<Res<Vec<_>>>()?;
        let after = resident_bytes()?;
        let growth = after.saturating_sub(before);
        println!(
            "| {response_len} | {} | {:.1} MiB | {:.1} KiB |",
            sessions.len(),
            growth as f64 / (1u64 << 20) as f64,
            growth as f64 / 1024.0 / sessions.len() as f64
        );
        // Kept, so the next row's sessions cannot reuse their memory.
        kept.push(sessions);
    }
    Ok(())
}
