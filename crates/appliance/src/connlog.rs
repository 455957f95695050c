//! The connection log: one JSON object per line for every intercepted
//! connection, written when it ends, with its 5-tuple (as Suricata's
//! eve.json names it: `src_ip`, `src_port`, `dest_ip`, `dest_port`,
//! `proto`), its `flow_id` and `community_id` (to join IDS events on the same
//! connection), its TLS details on each leg (version, suite, forward
//! secrecy, grade), the real and the forged certificate, the decision and
//! its reason, the bytes each way and how it ended. Decisions taken at the
//! client's SYN (a bypass, or a block refused with a RST) are one record
//! each. The schema is `docs/connection-log.schema.json`. The workers queue
//! the records for the writer thread ([`crate::writer`]), which owns the
//! file; reopened on SIGHUP so it can be rotated.

use std::fs::{File, OpenOptions};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Serialize;
use time::{OffsetDateTime, UtcOffset};

use crate::writer::{Opened, WriterHandle};

/// The log, shared by every worker: the file is the writer thread's (see
/// [`crate::writer`]), a record is a line queued for it.
#[derive(Debug)]
pub struct ConnectionLog {
    path: PathBuf,
    writer: WriterHandle,
}

/// Why the log cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("connection log {path}: {source}")]
pub struct ConnectionLogError {
    path: PathBuf,
    source: std::io::Error,
}

fn open(path: &Path) -> Result<File, ConnectionLogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ConnectionLogError {
            path: path.to_owned(),
            source,
        })
}

impl ConnectionLog {
    /// Opens the file (here, with this thread's credentials) and hands it
    /// to `writer`, which writes the records from then on.
    pub fn open(path: &Path, writer: &WriterHandle) -> Result<Self, ConnectionLogError> {
        let (log, file) = ConnectionLog::prepare(path, writer)?;
        writer.open(file);
        Ok(log)
    }

    /// Opens the file, not handed to `writer` yet (a reload hands it over
    /// once everything else loaded).
    pub(crate) fn prepare(path: &Path, writer: &WriterHandle) -> Result<(ConnectionLog, Opened), ConnectionLogError> {
        let file = Opened::Log(open(path)?);
        let log = ConnectionLog {
            path: path.to_owned(),
            writer: writer.clone(),
        };
        Ok((log, file))
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reopens the file at its path (after it was moved away for
    /// rotation): the records queued before go to the old file, the later
    /// ones to the new.
    pub fn reopen(&self) -> Result<(), ConnectionLogError> {
        self.writer.open(Opened::Log(open(&self.path)?));
        Ok(())
    }

    /// Queues one record for the writer thread, never waiting: a full
    /// queue drops it (counted in `log_records_dropped`), a write error
    /// (full disk) loses the line, never the connection.
    pub fn write(&self, record: &ConnectionRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        self.writer.log_line(line);
    }
}

/// What a record tells of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A session of the TLS interception mode (`intercept.mode = "tls"`),
    /// written when it ends, whatever was decided at its ClientHello.
    TlsIntercept,
    /// A session terminated for a `[[service]]` (the appliance as the
    /// service's TLS server), written when it ends.
    TlsTerminate,
    /// A session spliced without TLS (`intercept.mode = "splice"`), written
    /// when it ends.
    Connection,
    /// A connection the policy bypassed at its SYN: bridged untouched, no
    /// other record.
    SynBypass,
    /// A SYN the policy refused with a RST: no other record.
    SynBlock,
}

/// One intercepted connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionRecord {
    /// When the event happened: the end of a session, the SYN of a decision
    /// taken there (RFC 3339, UTC, microseconds).
    pub timestamp: String,
    /// The same for every record of one connection (a hash of its 5-tuple
    /// and start, below 2^53 so that every JSON reader keeps it exact).
    pub flow_id: u64,
    pub event_type: EventType,
    /// The 5-tuple, client to server.
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dest_ip: IpAddr,
    pub dest_port: u16,
    pub proto: &'static str,
    /// The Community ID v1 of the 5-tuple (seed 0), as Suricata and Zeek
    /// write it.
    pub community_id: String,
    /// The appliance port the client's SYN came in on.
    pub in_port: &'static str,
    /// Times of the client's SYN and of the end (RFC 3339, UTC, microseconds).
    pub start: String,
    pub end: String,
    pub duration_ms: u64,
    /// What was done and why.
    pub decision: &'static str,
    pub reason: String,
    pub sni: Option<String>,
    pub alpn_offered: Vec<String>,
    pub alpn: Option<String>,
    pub client_tls_version: Option<String>,
    pub client_cipher: Option<String>,
    /// Whether each leg's handshake resumed an earlier TLS session.
    pub client_resumed: bool,
    pub server_resumed: bool,
    pub server_tls_version: Option<String>,
    pub server_cipher: Option<String>,
    /// Each leg graded (see `mitm::grade`): whether its key exchange is
    /// ephemeral, and A (modern) / B (suboptimal) / C (known attacks, no
    /// forward secrecy) / F (broken).
    pub client_forward_secrecy: Option<bool>,
    pub client_grade: Option<&'static str>,
    pub server_forward_secrecy: Option<bool>,
    pub server_grade: Option<&'static str>,
    /// The ClientHello carried an outer Encrypted Client Hello extension
    /// (real or GREASE, which cannot be told apart; `sni` is then the
    /// outer, public name).
    pub ech: bool,
    pub upstream_cert_sha256: Option<String>,
    pub upstream_verified: Option<bool>,
    pub upstream_verify_error: Option<String>,
    pub forged_cert_sha256: Option<String>,
    pub forged_cache_hit: bool,
    /// TCP payload bytes received from each side.
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    /// Decrypted bytes relayed each way (TLS only).
    pub plaintext_client_to_server: u64,
    pub plaintext_server_to_client: u64,
    /// The inspection loop: "inspected" when the plaintext went through
    /// the box, else what happened instead (absent without a box).
    pub inspection: Option<String>,
    /// What the appliance learned from this connection (a destination it
    /// bypasses from then on, and why), if anything.
    pub learned: Option<String>,
    /// A `[[starttls]]` connection: its protocol, what became of its
    /// upgrade (`upgraded`, `refused`, `plaintext`, `blocked`, `failed`),
    /// and the client bytes discarded after its upgrade request (absent
    /// for other connections).
    pub starttls: Option<&'static str>,
    pub starttls_outcome: Option<&'static str>,
    pub starttls_discarded_bytes: Option<u64>,
    /// How it ended: closed, reset by client/server, server refused,
    /// server silent, server unreachable, TLS failure.
    pub ended: String,
}

/// The IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;

/// `at` in RFC 3339 in UTC with microseconds, as Suricata's eve.json
/// writes its timestamps: `2026-12-03T08:06:05.123456Z`.
pub fn timestamp(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// The Community ID v1 of a flow (corelight/community-id-spec, as Suricata
/// and Zeek compute it): the base64 SHA-1 of the seed (16 bits, big
/// endian), both addresses, the protocol, a zero byte and both ports
/// (big endian), the endpoints ordered so that the smaller address (then
/// port) comes first and both directions give the same id; prefixed `1:`.
/// For protocols with ports (TCP, UDP, SCTP); `src` and `dst` are of one IP
/// version.
pub fn community_id(seed: u16, src: SocketAddr, dst: SocketAddr, proto: u8) -> String {
    let (first, second) = if (src.ip(), src.port()) <= (dst.ip(), dst.port()) {
        (src, dst)
    } else {
        (dst, src)
    };
    let mut input = Vec::with_capacity(2 + 16 + 16 + 2 + 4);
    input.extend_from_slice(&seed.to_be_bytes());
    for endpoint in [first, second] {
        match endpoint.ip() {
            IpAddr::V4(ip) => input.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => input.extend_from_slice(&ip.octets()),
        }
    }
    input.extend_from_slice(&[proto, 0]);
    input.extend_from_slice(&first.port().to_be_bytes());
    input.extend_from_slice(&second.port().to_be_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    format!(
        "1:{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The `flow_id` of the connection from `client` to `server` that started
/// at `started`: the first bytes of a SHA-256 of both, below 2^53.
pub fn flow_id(client: SocketAddr, server: SocketAddr, proto: u8, started: OffsetDateTime) -> u64 {
    let mut input = format!("{client} {server} {proto} ").into_bytes();
    input.extend_from_slice(&started.unix_timestamp_nanos().to_be_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.as_ref().get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(first) & ((1 << 53) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors of the Community ID spec's baseline (baseline_deflt.json and
    /// baseline_seed1.json), each checked in both directions, and Zeek's
    /// `community_id_v1` test vectors.
    #[test]
    fn community_id_matches_the_published_vectors() {
        let vectors: [(u16, &str, &str, u8, &str); 8] = [
            (
                0,
                "128.232.110.120:34855",
                "66.35.250.204:80",
                6,
                "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
            ),
            (
                1,
                "128.232.110.120:34855",
                "66.35.250.204:80",
                6,
                "1:3V71V58M3Ksw/yuFALMcW0LAHvc=",
            ),
            (
                0,
                "[2001:470:e5bf:dead:4957:2174:e82c:4887]:63943",
                "[2607:f8b0:400c:c03::1a]:25",
                6,
                "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
            ),
            (
                1,
                "[2001:470:e5bf:dead:4957:2174:e82c:4887]:63943",
                "[2607:f8b0:400c:c03::1a]:25",
                6,
                "1:eJYTW6AOzFLlSUoESovMjnu7rMw=",
            ),
            (
                0,
                "192.168.1.52:54585",
                "8.8.8.8:53",
                17,
                "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
            ),
            (
                1,
                "192.168.1.52:54585",
                "8.8.8.8:53",
                17,
                "1:Q9We8WO3piVF8yEQBNJF4uiSVrI=",
            ),
            (0, "1.2.3.4:1122", "5.6.7.8:3344", 6, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
            (1, "1.2.3.4:1122", "5.6.7.8:3344", 6, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
        ];
        for (seed, src, dst, proto, expected) in vectors {
            let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
            assert_eq!(
                community_id(seed, src, dst, proto),
                expected,
                "{src} -> {dst} seed {seed}"
            );
            assert_eq!(
                community_id(seed, dst, src, proto),
                expected,
                "{dst} -> {src} seed {seed}"
            );
        }
    }

    /// SCTP between two hosts on the same port: the order falls to the
    /// addresses (baseline vector).
    #[test]
    fn community_id_orders_equal_ports_by_address() {
        let (a, b) = ("192.168.170.8:7".parse().unwrap(), "192.168.170.56:7".parse().unwrap());
        assert_eq!(community_id(0, a, b, 132), "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=");
        assert_eq!(community_id(0, b, a, 132), "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=");
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_796_285_165_123_456_789)
            .unwrap()
            .to_offset(UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(timestamp(at), "2026-12-03T08:06:05.123456Z");
    }

    #[test]
    fn flow_ids_differ_by_start_and_stay_below_2_to_the_53() {
        let (client, server) = ("198.18.0.1:40000".parse().unwrap(), "198.18.0.2:443".parse().unwrap());
        let at = OffsetDateTime::from_unix_timestamp(1_796_285_165).unwrap();
        let id = flow_id(client, server, IPPROTO_TCP, at);
        assert_eq!(id, flow_id(client, server, IPPROTO_TCP, at));
        assert_ne!(
            id,
            flow_id(client, server, IPPROTO_TCP, at + time::Duration::microseconds(1))
        );
        assert!(id < 1 << 53);
    }
}
