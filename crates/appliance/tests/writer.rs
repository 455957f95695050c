//! The writer thread of the logs and the capture: records reach their file
//! in the order the workers queued them, a reopen (log rotation) splits
//! them between the old and the new file, a stop writes everything
//! accepted, and a writer that cannot keep up (here: blocked on a pipe
//! nobody reads) makes the workers drop and count, never wait.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod harness;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use appliance::capture::{CaptureSettings, CaptureStream};
use appliance::keylog::KeyLog;
use appliance::mirror::Taps;
use appliance::writer::{CaptureQueue, Writer, WriterTotals, KEYLOG_QUEUE_RECORDS};
use harness::tls::Scratch;
use rustls::KeyLog as _;

/// The key-log line of secret number `seq` (its client random).
fn secret(log: &KeyLog, seq: u32) {
    log.log("CLIENT_RANDOM", &seq.to_be_bytes(), &[0xab; 48]);
}

/// The sequence numbers of the key-log lines in `text`, in order.
fn sequence(text: &str) -> Vec<u32> {
    text.lines()
        .map(|line| {
            let random = line.split(' ').nth(1).unwrap();
            u32::from_str_radix(random, 16).unwrap()
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn records_reach_the_file_in_order_and_a_stop_writes_every_one_accepted() {
    let scratch = Scratch::new("writer-order");
    let path = scratch.0.join("keys.log");
    let mut writer = Writer::start().unwrap();
    let log = KeyLog::open(&path, writer.handle()).unwrap();
    for seq in 0..5_000 {
        secret(&log, seq);
    }
    writer.stop();
    assert_eq!(sequence(&read(&path)), (0..5_000).collect::<Vec<_>>());
    assert_eq!(writer.handle().totals(), WriterTotals::default(), "nothing dropped");
    // After the stop, records are dropped and counted, not left waiting.
    secret(&log, 5_000);
    assert_eq!(writer.handle().totals().keylog_records_dropped, 1);
    assert_eq!(sequence(&read(&path)).len(), 5_000);
}

#[test]
fn a_reopen_sends_the_later_records_to_a_fresh_file_at_the_path() {
    let scratch = Scratch::new("writer-reopen");
    let path = scratch.0.join("keys.log");
    let rotated = scratch.0.join("keys.log.1");
    let writer = Writer::start().unwrap();
    let log = KeyLog::open(&path, writer.handle()).unwrap();
    for seq in 0..100 {
        secret(&log, seq);
    }
    // logrotate: move the file away, then SIGHUP reopens it.
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen().unwrap();
    for seq in 100..150 {
        secret(&log, seq);
    }
    writer.handle().flush();
    assert_eq!(sequence(&read(&rotated)), (0..100).collect::<Vec<_>>());
    assert_eq!(sequence(&read(&path)), (100..150).collect::<Vec<_>>());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the fresh key log is the owner's only");
}

#[test]
fn a_writer_that_cannot_keep_up_makes_the_workers_drop_and_count_never_wait() {
    let scratch = Scratch::new("writer-full");
    // The key log is a pipe that is read only at the end: the writer
    // blocks on it once the pipe is full, and stops taking records.
    let pipe = scratch.0.join("keys.fifo");
    assert!(Command::new("mkfifo").arg(&pipe).status().unwrap().success());
    let (start, started) = mpsc::channel::<()>();
    let reading = std::thread::spawn({
        let pipe = pipe.clone();
        move || {
            let mut file = File::open(&pipe).unwrap();
            // Nothing read until the test says so.
            started.recv().unwrap();
            let mut text = String::new();
            file.read_to_string(&mut text).unwrap();
            text
        }
    });
    let mut writer = Writer::start().unwrap();
    let log = KeyLog::open(&pipe, writer.handle()).unwrap();
    let capture_path = scratch.0.join("decrypted.pcap");
    let capture = CaptureQueue::open(
        CaptureSettings {
            path: capture_path.clone(),
            ..CaptureSettings::default()
        },
        writer.handle(),
    )
    .unwrap();

    // The worker's side, on its own thread: it must finish on its own.
    let offered = 3 * KEYLOG_QUEUE_RECORDS as u32;
    let (done, finished) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        for seq in 0..offered {
            secret(&log, seq);
        }
        // The capture's frames wait behind the blocked key log, then drop.
        let mut taps = Taps::new(Default::default()).with_capture(capture);
        let mut stream = CaptureStream::new(
            "198.18.0.1:40000".parse().unwrap(),
            "198.18.0.2:443".parse().unwrap(),
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            1,
        );
        for _ in 0..2 * appliance::writer::CAPTURE_QUEUE_BATCHES {
            stream.data(&mut taps, true, b"GET / HTTP/1.1\r\n\r\n", SystemTime::now());
        }
        done.send(()).unwrap();
    });
    let returned = finished.recv_timeout(Duration::from_secs(60));
    let totals = writer.handle().totals();
    assert!(returned.is_ok(), "the worker waited for the writer: {totals:?}");
    worker.join().unwrap();
    assert!(
        totals.keylog_records_dropped >= u64::from(offered) - KEYLOG_QUEUE_RECORDS as u64 - 4_096,
        "{totals:?}"
    );
    // Each batch after the budget: its data segment and the ACK (the
    // first one also the handshake), all counted.
    assert!(
        totals.capture_frames_dropped >= 2 * appliance::writer::CAPTURE_QUEUE_BATCHES as u64,
        "{totals:?}"
    );

    // Once the pipe is read, everything accepted arrives, in order.
    start.send(()).unwrap();
    writer.stop();
    let text = reading.join().unwrap();
    let written = sequence(&text);
    assert!(written.windows(2).all(|pair| pair[0] < pair[1]), "in order");
    assert_eq!(
        written.len() as u64 + totals.keylog_records_dropped,
        u64::from(offered),
        "every line written or counted"
    );
    assert_eq!(written.first(), Some(&0), "the oldest ones are kept");
}
