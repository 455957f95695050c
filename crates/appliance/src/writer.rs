//! The output writer: one thread for the process that owns the files the
//! workers record into (the connection log, the key log and the decrypted
//! capture), so that no worker writes a file or takes a lock shared with
//! the other workers on its data path.
//!
//! A worker hands over owned records (a serialized connection-log line, a
//! key-log line, the frames of one call of a capture stream) with a
//! non-blocking send on one bounded channel. Each kind has its own budget of
//! records waiting ([`LOG_QUEUE_RECORDS`], [`KEYLOG_QUEUE_RECORDS`],
//! [`CAPTURE_QUEUE_BATCHES`]), so a flood of capture frames never crowds out
//! log lines; a record over its budget is dropped and counted
//! ([`WriterTotals`]), never waited for. The thread writes the records in the
//! order they were accepted, in batches: it takes everything queued at once,
//! writes the logs through buffers and flushes them once per batch. While
//! records keep coming it sleeps [`BATCH_INTERVAL`] between batches, so a
//! busy appliance costs the writer one wake-up and one write per file per
//! interval, not one per record, and a worker's send wakes nobody. Once a
//! batch finds nothing it sleeps until the next record, which wakes it at
//! once (a quiet log's line lands promptly), as do a control message and a
//! queue filling up (a quarter of its budget waiting).
//!
//! Files are opened by whoever asks for them (the data plane assembly after
//! the privilege drop, a reload), so an error reaches the caller at once;
//! the open file is then handed to the thread, after the records already
//! queued: a reopen for log rotation is such a message, and every record
//! accepted before it goes to the old file, every later one to the new.
//! [`Writer::stop`] (and dropping the [`Writer`]) writes everything
//! accepted so far, flushes and closes: nothing accepted is lost at a clean
//! stop. Records offered after the stop are dropped and counted.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime};

use crate::capture::{CaptureError, CaptureSettings, DecryptedCapture, FrameSink, Frames};
use crate::counters::CaptureTotals;
pub use crate::counters::WriterTotals;

/// Connection-log records waiting for the writer at most.
pub const LOG_QUEUE_RECORDS: usize = 16_384;

/// Key-log lines waiting for the writer at most (a TLS 1.3 connection
/// logs ten: five secrets per leg).
pub const KEYLOG_QUEUE_RECORDS: usize = 16_384;

/// Capture batches (the frames of one call of a capture stream, at most a
/// relayed read of plaintext) waiting for the writer at most.
pub const CAPTURE_QUEUE_BATCHES: usize = 4_096;

/// How long the writer sleeps between batches while records keep coming:
/// at most about one write per log file per interval (more only when a
/// batch overflows [`LOG_BUFFER_BYTES`]), and a record waits at most about
/// this long for its file.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// The buffer of each log file: a batch up to this size is one write.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// Room in the channel for the control messages (open, flush, stop), which
/// the control thread sends waiting, never a worker.
const CONTROL_SLOTS: usize = 64;

/// The workers' side of the decrypted capture: the file is the writer
/// thread's (see [`Writer`]); each call of a [`CaptureStream`](crate::capture::CaptureStream) queues
/// its frames for it, or drops them (counted in `capture_frames_dropped`)
/// when the queue is full.
#[derive(Debug, Clone)]
pub struct CaptureQueue {
    capture: Arc<DecryptedCapture>,
    writer: WriterHandle,
}

impl CaptureQueue {
    /// Opens the capture (see [`DecryptedCapture::open`]; here, with this
    /// thread's credentials) and hands it to `writer`.
    pub fn open(settings: CaptureSettings, writer: &WriterHandle) -> Result<CaptureQueue, CaptureError> {
        let capture = Arc::new(DecryptedCapture::open(settings)?);
        writer.open(Opened::Capture(Arc::clone(&capture)));
        Ok(CaptureQueue {
            capture,
            writer: writer.clone(),
        })
    }

    /// Where and how it writes.
    pub fn settings(&self) -> &CaptureSettings {
        self.capture.settings()
    }

    /// What the file took so far (see [`DecryptedCapture::totals`]).
    pub fn totals(&self) -> CaptureTotals {
        self.capture.totals()
    }
}

impl FrameSink for &CaptureQueue {
    fn wire_port(&self, server_port: u16) -> u16 {
        (&*self.capture).wire_port(server_port)
    }

    fn write(&mut self, frames: Frames, now: SystemTime) {
        self.writer.capture_frames(frames, now);
    }
}

/// Why the writer thread cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the output writer thread: {0}")]
pub struct WriterError(#[source] io::Error);

/// The kinds of record, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Log,
    KeyLog,
    Capture,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Log, Kind::KeyLog, Kind::Capture];

    fn index(self) -> usize {
        self as usize
    }

    fn budget(self) -> usize {
        match self {
            Kind::Log => LOG_QUEUE_RECORDS,
            Kind::KeyLog => KEYLOG_QUEUE_RECORDS,
            Kind::Capture => CAPTURE_QUEUE_BATCHES,
        }
    }

    /// Records waiting at which the sender wakes the writer before its
    /// interval is over: a burst is written long before it could fill the
    /// budget.
    fn wake_at(self) -> usize {
        self.budget() / 4
    }
}

/// A file the writer writes, handed over once opened.
#[derive(Debug)]
pub(crate) enum Opened {
    /// The connection log.
    Log(File),
    /// The key log.
    KeyLog(File),
    /// The decrypted capture (its own buffering and rotation).
    Capture(Arc<DecryptedCapture>),
}

#[derive(Debug)]
enum Message {
    /// A line of the connection log or the key log.
    Line(Kind, Vec<u8>),
    /// The frames of one call of a capture stream, at `now`.
    Frames(Frames, SystemTime),
    /// Writes to this file from now on (the previous one of its kind is
    /// flushed and closed).
    Open(Opened),
    /// Writes everything before it, then answers.
    Flush(SyncSender<()>),
    /// Writes everything before it, flushes and ends the thread.
    Stop,
}

/// What the workers and the writer thread share.
#[derive(Debug, Default)]
struct Shared {
    /// Per [`Kind`]: records sent and not yet taken by the thread.
    waiting: [AtomicUsize; 3],
    /// Per [`Kind`]: records (frames for the capture) dropped.
    dropped: [AtomicU64; 3],
    /// The writer sleeps until woken (it found nothing to do): the next
    /// record accepted wakes it.
    idle: AtomicBool,
}

impl Shared {
    /// Whether no record is waiting (or being sent) at all.
    fn nothing_waiting(&self) -> bool {
        self.waiting.iter().all(|waiting| waiting.load(Ordering::SeqCst) == 0)
    }
}

/// The workers' (and the openers') side of the writer: cheap to clone.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    sender: SyncSender<Message>,
    shared: Arc<Shared>,
    /// The writer thread, to wake.
    thread: Thread,
}

impl WriterHandle {
    /// Queues a connection-log line (with its newline); never waits.
    pub(crate) fn log_line(&self, line: Vec<u8>) {
        self.offer(Kind::Log, Message::Line(Kind::Log, line), 1);
    }

    /// Queues a key-log line (with its newline); never waits.
    pub(crate) fn key_log_line(&self, line: Vec<u8>) {
        self.offer(Kind::KeyLog, Message::Line(Kind::KeyLog, line), 1);
    }

    /// Queues the frames of one call of a capture stream; never waits.
    pub(crate) fn capture_frames(&self, frames: Frames, now: SystemTime) {
        let count = frames.iter().count() as u64;
        if count == 0 {
            return;
        }
        self.offer(Kind::Capture, Message::Frames(frames, now), count);
    }

    /// Sends `message` if `kind` is within its budget, else drops it and
    /// counts `weight` records dropped.
    ///
    /// The send itself wakes nobody: the writer is woken only when it was
    /// idle or when the queue of `kind` reaches [`Kind::wake_at`].
    fn offer(&self, kind: Kind, message: Message, weight: u64) {
        let waiting = &self.shared.waiting[kind.index()];
        // SeqCst with the writer's going idle (`Files::run`): either it sees
        // this record waiting, or this sees it idle.
        let before = waiting.fetch_add(1, Ordering::SeqCst);
        let accepted = before < kind.budget()
            && match self.sender.try_send(message) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            };
        if !accepted {
            waiting.fetch_sub(1, Ordering::AcqRel);
            self.shared.dropped[kind.index()].fetch_add(weight, Ordering::Relaxed);
            return;
        }
        let idle = self.shared.idle.load(Ordering::SeqCst) && self.shared.idle.swap(false, Ordering::SeqCst);
        if idle || before + 1 == kind.wake_at() {
            self.thread.unpark();
        }
    }

    /// Sends a control message, waiting for room, and wakes the writer;
    /// false once the writer has stopped.
    fn control(&self, message: Message) -> bool {
        let sent = self.sender.send(message).is_ok();
        self.thread.unpark();
        sent
    }

    /// Hands a freshly opened file to the writer, after the records
    /// queued so far; waits for room (the control thread, never a worker).
    pub(crate) fn open(&self, output: Opened) {
        // A stopped writer takes nothing any more: the file is closed here.
        self.control(Message::Open(output));
    }

    /// Waits until everything accepted so far is written and the files
    /// are flushed (the capture's buffer too); at once if the writer has
    /// stopped.
    pub fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.control(Message::Flush(done)) {
            let _ = wait.recv();
        }
    }

    /// What was dropped so far.
    pub fn totals(&self) -> WriterTotals {
        let dropped = |kind: Kind| self.shared.dropped[kind.index()].load(Ordering::Relaxed);
        WriterTotals {
            log_records_dropped: dropped(Kind::Log),
            keylog_records_dropped: dropped(Kind::KeyLog),
            capture_frames_dropped: dropped(Kind::Capture),
        }
    }
}

/// The writer thread; stopped (after writing everything accepted) when
/// dropped.
#[derive(Debug)]
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread (after the privilege drop: it runs with the
    /// credentials of the thread that starts it).
    pub fn start() -> Result<Writer, WriterError> {
        let (sender, receiver) =
            mpsc::sync_channel(Kind::ALL.iter().map(|kind| kind.budget()).sum::<usize>() + CONTROL_SLOTS);
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("tlsgate-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || Files::default().run(&receiver, &shared)
            })
            .map_err(WriterError)?;
        Ok(Writer {
            handle: WriterHandle {
                sender,
                shared,
                thread: thread.thread().clone(),
            },
            thread: Some(thread),
        })
    }

    /// A handle for the workers and the openers.
    pub fn handle(&self) -> &WriterHandle {
        &self.handle
    }

    /// Writes everything accepted so far, flushes and closes the files and
    /// ends the thread; later records are dropped and counted. Idempotent.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.control(Message::Stop);
            if thread.join().is_err() {
                tracing::error!("the output writer thread panicked");
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The files the writer thread holds.
#[derive(Default)]
struct Files {
    log: Option<BufWriter<File>>,
    key_log: Option<BufWriter<File>>,
    capture: Option<Arc<DecryptedCapture>>,
}

impl Files {
    /// Takes messages in batches until [`Message::Stop`] (or every sender
    /// is gone), flushing the logs after each batch; sleeps
    /// [`BATCH_INTERVAL`] after a batch that found records, and until woken
    /// after one that found none.
    fn run(mut self, receiver: &Receiver<Message>, shared: &Shared) {
        // At most this many messages make one batch, so that the logs are
        // flushed even while the workers keep the channel from emptying.
        let most = Kind::ALL.iter().map(|kind| kind.budget()).sum::<usize>();
        loop {
            let mut taken = 0;
            while taken < most {
                let stop = match receiver.try_recv() {
                    Ok(message) => !self.take(message, shared),
                    Err(TryRecvError::Disconnected) => true,
                    Err(TryRecvError::Empty) => break,
                };
                if stop {
                    self.flush(true);
                    return;
                }
                taken += 1;
            }
            self.flush(false);
            if taken == most {
                continue;
            }
            if taken > 0 || !shared.nothing_waiting() {
                std::thread::park_timeout(BATCH_INTERVAL);
                continue;
            }
            // SeqCst with `WriterHandle::offer`: a record sent after this
            // look at the queues sees the writer idle and wakes it.
            shared.idle.store(true, Ordering::SeqCst);
            if shared.nothing_waiting() {
                std::thread::park();
            }
            shared.idle.store(false, Ordering::SeqCst);
        }
    }

    /// Handles one message; false for [`Message::Stop`].
    fn take(&mut self, message: Message, shared: &Shared) -> bool {
        match message {
            Message::Line(kind, line) => {
                shared.waiting[kind.index()].fetch_sub(1, Ordering::AcqRel);
                let file = if kind == Kind::Log {
                    &mut self.log
                } else {
                    &mut self.key_log
                };
                if let Some(file) = file {
                    // A full disk loses the line, never the connection.
                    let _ = file.write_all(&line);
                }
            }
            Message::Frames(frames, now) => {
                shared.waiting[Kind::Capture.index()].fetch_sub(1, Ordering::AcqRel);
                if let Some(capture) = &self.capture {
                    let mut capture = capture.as_ref();
                    capture.write(frames, now);
                }
            }
            Message::Open(output) => self.open(output),
            Message::Flush(done) => {
                self.flush(true);
                let _ = done.send(());
            }
            Message::Stop => return false,
        }
        true
    }

    fn open(&mut self, output: Opened) {
        match output {
            Opened::Log(file) => replace(&mut self.log, file),
            Opened::KeyLog(file) => replace(&mut self.key_log, file),
            Opened::Capture(capture) => {
                if let Some(previous) = self.capture.replace(capture) {
                    previous.flush();
                }
            }
        }
    }

    /// Flushes the logs, and with `capture` the capture's buffer too.
    fn flush(&mut self, capture: bool) {
        for file in [&mut self.log, &mut self.key_log].into_iter().flatten() {
            let _ = file.flush();
        }
        if let Some(current) = self.capture.as_ref().filter(|_| capture) {
            current.flush();
        }
    }
}

/// Flushes the log file in `slot` (if any) and puts `file` in its place.
fn replace(slot: &mut Option<BufWriter<File>>, file: File) {
    if let Some(mut previous) = slot.replace(BufWriter::with_capacity(LOG_BUFFER_BYTES, file)) {
        let _ = previous.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;
    use std::time::Instant;

    use super::*;

    /// A log "file" that counts the writer's writes: one end of a datagram
    /// socket pair, where every write is one datagram; the other end,
    /// read on its own thread until `expected` bytes came (or 60 s passed),
    /// gives the bytes and how many writes carried them.
    fn counting_sink(expected: usize) -> (File, std::thread::JoinHandle<(Vec<u8>, usize)>) {
        let (sink, counter) = UnixDatagram::pair().unwrap();
        counter.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let reading = std::thread::spawn(move || {
            let (mut bytes, mut writes) = (Vec::new(), 0);
            let mut datagram = vec![0; 2 * LOG_BUFFER_BYTES];
            while bytes.len() < expected {
                let Ok(len) = counter.recv(&mut datagram) else {
                    break;
                };
                bytes.extend_from_slice(&datagram[..len]);
                writes += 1;
            }
            (bytes, writes)
        });
        (File::from(OwnedFd::from(sink)), reading)
    }

    /// Records offered at a steady pace (here about one per 50 µs, a
    /// thousand TLS connections a second's worth of key-log lines) are
    /// written in batches, at most one write per [`BATCH_INTERVAL`] (and
    /// the first record at once), not one per record; the last ones land
    /// without a flush or a stop.
    #[test]
    fn records_offered_at_a_steady_pace_are_written_in_batches() {
        const RECORDS: usize = 2_000;
        let line = |seq: usize| format!("{seq:08}\n").into_bytes();
        let (file, reading) = counting_sink(RECORDS * line(0).len());
        let writer = Writer::start().unwrap();
        writer.handle().open(Opened::KeyLog(file));
        let started = Instant::now();
        for seq in 0..RECORDS {
            writer.handle().key_log_line(line(seq));
            std::thread::sleep(Duration::from_micros(50));
        }
        let (bytes, writes) = reading.join().unwrap();
        let elapsed = started.elapsed();
        assert_eq!(bytes, (0..RECORDS).flat_map(line).collect::<Vec<_>>(), "all, in order");
        let batches = (elapsed.as_micros() / BATCH_INTERVAL.as_micros()) as usize + 2;
        assert!(
            writes <= batches && writes * 10 <= RECORDS,
            "{RECORDS} records in {writes} writes over {elapsed:?}: at most {batches} batches"
        );
        assert_eq!(writer.handle().totals(), WriterTotals::default(), "nothing dropped");
    }
}
