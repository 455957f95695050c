//! What TLS interception costs in CPU, measured in memory (no sockets, no
//! kernel): the forging of certificates (cache miss and hit), and one full
//! handshake between a rustls client and a rustls server directly against
//! one full intercepted connection (client ⇄ [`TlsSession`] ⇄ origin), for
//! TLS 1.3 and TLS 1.2, ECDSA P-256 everywhere; and TLS 1.3 with an origin
//! that issues tickets, so the appliance's upstream leg resumes (as with
//! nginx in the lab).
//!
//!     cargo run --release -p mitm --example tls_cost [-- ROUNDS CONNECTIONS]
//!
//! Otherwise every connection is a full handshake: the clients keep no
//! sessions and the origin issues no tickets and keeps no session IDs, so
//! neither leg resumes. An intercepted connection runs four handshake roles (client,
//! appliance as server, appliance as client, origin), a direct one two, so
//! "intercepted / (2 × direct)" is 1.0 when interception adds nothing but
//! the second handshake; the appliance's own share (the time spent inside
//! `TlsSession` calls) is timed separately. Prints medians over the rounds
//! of the per-round means as a Markdown table.

mod common;

use std::time::{Duration, Instant};

use std::sync::Arc;

use common::{
    appliance, client_config, direct, intercepted, leaf, median, new_client, origin_ca, origin_config, Res, TempDir,
};
use mitm::{CertificateAuthority, Forger, TlsSession, Trust};
use rustls::ServerConnection;
use time::OffsetDateTime;

fn micros(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(7);
    let conns: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    if rounds == 0 || conns == 0 {
        return Err("ROUNDS and CONNECTIONS must be at least 1".into());
    }

    let ca = origin_ca()?;
    let full_origin = origin_config(&ca, false)?;
    // Separate session caches for the direct and the intercepted connections:
    // the direct ones would evict the appliance's sessions.
    let ticket_origin = (origin_config(&ca, true)?, origin_config(&ca, true)?);
    let dir = TempDir(std::env::temp_dir().join(format!("tls-cost-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let mut app = appliance(&ca.pem, &dir, 1024)?;

    // --- forging: distinct real certificates (misses), one (hits) ----------
    let mut forger = Forger::new(
        CertificateAuthority::generate("tlsgate bench CA", 1, OffsetDateTime::now_utc())?,
        None,
        1,
    )?;
    let mut miss = Vec::new();
    let mut hit = Vec::new();
    for round in 0..rounds {
        let reals = (0..conns)
            .map(|i| leaf(&ca, &format!("host{round}-{i}.test")).map(|(cert, _)| cert))
            .collect::<Res<Vec<_>>>()?;
        let now = OffsetDateTime::now_utc();
        let start = Instant::now();
        for (i, real) in reals.iter().enumerate() {
            let forged = forger.forge(real, Some(&format!("host{round}-{i}.test")), Trust::Trusted, now)?;
            if forged.cache_hit {
                return Err("forge: a distinct certificate hit the cache".into());
            }
        }
        miss.push(micros(start.elapsed(), conns));
        let sni = format!("host{round}-0.test");
        forger.forge(&reals[0], Some(&sni), Trust::Trusted, now)?;
        let start = Instant::now();
        for _ in 0..conns {
            let forged = forger.forge(&reals[0], Some(&sni), Trust::Trusted, now)?;
            if !forged.cache_hit {
                return Err("forge: the same certificate missed the cache".into());
            }
        }
        hit.push(micros(start.elapsed(), conns));
    }

    // --- handshakes -----------------------------------------------------------
    struct Row {
        version: &'static str,
        direct: f64,
        intercepted: f64,
        appliance: f64,
    }
    let mut rows = Vec::new();
    for (version, versions, (direct_origin, origin), upstream_resumes) in [
        (
            "TLS 1.3",
            &[&rustls::version::TLS13][..],
            (&full_origin, &full_origin),
            false,
        ),
        (
            "TLS 1.2",
            &[&rustls::version::TLS12][..],
            (&full_origin, &full_origin),
            false,
        ),
        (
            "TLS 1.3, the origin issues tickets: the upstream leg resumes",
            &[&rustls::version::TLS13][..],
            (&ticket_origin.0, &ticket_origin.1),
            true,
        ),
    ] {
        let direct_client = client_config(&ca.der, versions)?;
        let via_client = client_config(&app.ca_der, versions)?;
        // Warm up the forged-certificate cache (the connection below is a
        // cache hit, as for every repeat visit to a site) and, with tickets,
        // the upstream session cache.
        {
            let mut client = new_client(&via_client)?;
            let mut server = ServerConnection::new(Arc::clone(origin))?;
            let mut session = TlsSession::new("198.18.0.2".parse()?);
            intercepted(&mut client, &mut session, &mut app.context, &mut server)?;
        }
        let (mut d, mut i, mut a) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let start = Instant::now();
            for _ in 0..conns {
                let mut client = new_client(&direct_client)?;
                let mut server = ServerConnection::new(Arc::clone(direct_origin))?;
                direct(&mut client, &mut server)?;
                if client.is_handshaking() || server.is_handshaking() {
                    return Err("direct handshake did not complete".into());
                }
            }
            d.push(micros(start.elapsed(), conns));

            let mut inside = Duration::ZERO;
            let start = Instant::now();
            for _ in 0..conns {
                let mut client = new_client(&via_client)?;
                let mut server = ServerConnection::new(Arc::clone(origin))?;
                let mut session = TlsSession::new("198.18.0.2".parse()?);
                inside += intercepted(&mut client, &mut session, &mut app.context, &mut server)?;
                let info = &session.info;
                if client.is_handshaking()
                    || !session.is_established()
                    || info.upstream_verified != Some(Ok(()))
                    || !info.forged_cache_hit
                    || info.resumed_client
                    || info.resumed_server != upstream_resumes
                {
                    return Err(format!("intercepted connection not as expected: {info:?}").into());
                }
            }
            i.push(micros(start.elapsed(), conns));
            a.push(micros(inside, conns));
        }
        rows.push(Row {
            version,
            direct: median(d),
            intercepted: median(i),
            appliance: median(a),
        });
    }

    // --- report -----------------------------------------------------------------
    println!("Medians of {rounds} rounds of {conns} calls or connections each (µs per call or connection).");
    println!();
    println!("| forging (`Forger::forge`) | µs per call |");
    println!("|---|---:|");
    println!(
        "| cache miss (a distinct real certificate each time) | {:.1} |",
        median(miss)
    );
    println!("| cache hit (same certificate and SNI) | {:.2} |", median(hit));
    println!();
    println!(
        "| handshakes, ECDSA P-256 | direct: client + server (µs) | intercepted: client + appliance + \
         origin (µs) | appliance alone, inside `TlsSession` (µs) | intercepted / (2 × direct) | appliance / direct |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            row.version,
            row.direct,
            row.intercepted,
            row.appliance,
            row.intercepted / (2.0 * row.direct),
            row.appliance / row.direct
        );
    }
    let counters = app.context.forger().counters();
    println!();
    println!(
        "Appliance forger after the handshakes: {} misses, {} hits.",
        counters.misses, counters.hits
    );
    Ok(())
}
