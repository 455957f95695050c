//! PCAP-over-IP: the frames of the decrypted capture streamed live to TCP
//! clients on the management host (`capture.pcap_over_ip`), as PolarProxy
//! offers, so that `nc HOST PORT | tshark -r -` (or an IDS reading a pcap
//! stream) sees every intercepted connection's plaintext as it passes.
//!
//! Each client that connects gets the pcap global header, then every frame
//! built from then on as a whole pcap record (a connection that began
//! before it connected shows up mid-stream, without its handshake).
//!
//! **The workers never wait for a reader.** They hand each call's records
//! to [`StreamFeed::send`], which only encodes them while a client is
//! connected, and puts them on a channel to the writer thread within a
//! budget of [`QUEUE_BYTES`] in flight; a batch over the budget is dropped
//! and counted (`frames_dropped`). The writer thread (a kernel socket on
//! the host, never a data port) accepts clients, appends each batch to
//! every client's queue of at most [`CLIENT_QUEUE_BYTES`], and writes the
//! queues with non-blocking sends. A batch that does not fit a client's
//! queue is dropped for that client alone and counted
//! (`client_frames_dropped`): its pcap stays a sequence of whole records,
//! only with gaps. A client whose queue stays above half full for
//! [`TOO_SLOW_AFTER`] is disconnected (`clients_too_slow`); at most
//! [`MAX_CLIENTS`] are served at once, further ones are closed at once
//! (`clients_refused`). When the appliance stops, the clients get up to
//! two seconds to take what is queued for them, then the stream ends
//! (the reader sees the end of the pcap).
//!
//! The stream is not authenticated: whoever can connect reads the
//! plaintext. Listen on a loopback or management address only.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::capture::{pcap_header, push_record, Frames};
pub use crate::counters::StreamTotals;

/// Bytes of records the workers may have handed to the writer thread that
/// it has not taken yet.
pub const QUEUE_BYTES: u64 = 32 << 20;

/// Bytes queued for one client at most.
pub const CLIENT_QUEUE_BYTES: usize = 8 << 20;

/// How long a client's queue may stay above half full before the client
/// is disconnected.
pub const TOO_SLOW_AFTER: Duration = Duration::from_secs(5);

/// Clients served at once.
pub const MAX_CLIENTS: usize = 8;

/// How long the writer thread waits for records while every queue is
/// empty (new clients and stop are noticed at this pace).
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// How long it waits while a client still has bytes to take.
const BUSY_WAIT: Duration = Duration::from_millis(2);

/// At stop, how long the clients get to take what is queued for them.
const FLUSH_AT_STOP: Duration = Duration::from_secs(2);

/// Why the listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("`capture.pcap_over_ip` {listen}: cannot listen: {source}")]
    Listen { listen: SocketAddr, source: io::Error },
    #[error("`capture.pcap_over_ip` {listen}: cannot start its thread: {source}")]
    Thread { listen: SocketAddr, source: io::Error },
}

/// The counters the workers and the writer thread share.
#[derive(Debug, Default)]
struct Shared {
    clients: AtomicU64,
    clients_accepted: AtomicU64,
    clients_refused: AtomicU64,
    clients_too_slow: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    frames_dropped: AtomicU64,
    client_frames_dropped: AtomicU64,
    /// Bytes sent to the writer thread and not yet taken by it.
    in_flight: AtomicU64,
}

/// The records of one call of a stream, for the writer thread.
#[derive(Debug)]
struct Batch {
    records: Vec<u8>,
    frames: u64,
    frame_bytes: u64,
}

/// The workers' side of the stream (cheap to clone, one per worker).
#[derive(Debug, Clone)]
pub struct StreamFeed {
    sender: Sender<Batch>,
    shared: Arc<Shared>,
}

impl StreamFeed {
    /// Hands the frames to the writer thread if a client is connected;
    /// drops and counts them when [`QUEUE_BYTES`] are already in flight.
    /// Never waits.
    pub fn send(&self, frames: &Frames, now: SystemTime) {
        if self.shared.clients.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut batch = Batch {
            records: Vec::new(),
            frames: 0,
            frame_bytes: 0,
        };
        for frame in frames.iter() {
            if push_record(&mut batch.records, frame, now) {
                batch.frames += 1;
                batch.frame_bytes += frame.len() as u64;
            }
        }
        if batch.frames == 0 {
            return;
        }
        let len = batch.records.len() as u64;
        let dropped = batch.frames;
        let before = self.shared.in_flight.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > QUEUE_BYTES || self.sender.send(batch).is_err() {
            self.shared.in_flight.fetch_sub(len, Ordering::AcqRel);
            self.shared.frames_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// What the stream has done so far (the listener's counters).
    pub fn totals(&self) -> StreamTotals {
        let shared = &self.shared;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StreamTotals {
            clients: read(&shared.clients),
            clients_accepted: read(&shared.clients_accepted),
            clients_refused: read(&shared.clients_refused),
            clients_too_slow: read(&shared.clients_too_slow),
            frames: read(&shared.frames),
            bytes: read(&shared.bytes),
            frames_dropped: read(&shared.frames_dropped),
            client_frames_dropped: read(&shared.client_frames_dropped),
        }
    }
}

/// The PCAP-over-IP listener and its writer thread; stopped when dropped.
#[derive(Debug)]
pub struct PcapStream {
    feed: StreamFeed,
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PcapStream {
    /// Listens on `listen` and starts the writer thread.
    pub fn start(listen: SocketAddr) -> Result<PcapStream, StreamError> {
        let listener = TcpListener::bind(listen)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .map_err(|source| StreamError::Listen { listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StreamError::Listen { listen, source })?;
        let (sender, receiver) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            listener,
            receiver,
            shared: Arc::clone(&shared),
            clients: Vec::new(),
            header: pcap_header().map_err(|source| StreamError::Listen { listen, source })?,
        };
        let thread = std::thread::Builder::new()
            .name("tlsgate-pcap-ip".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || writer.run(&stop)
            })
            .map_err(|source| StreamError::Thread { listen, source })?;
        Ok(PcapStream {
            feed: StreamFeed { sender, shared },
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A feed for one worker.
    pub fn feed(&self) -> StreamFeed {
        self.feed.clone()
    }

    /// What the stream has done so far.
    pub fn totals(&self) -> StreamTotals {
        self.feed.totals()
    }
}

impl Drop for PcapStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connected reader.
#[derive(Debug)]
struct Client {
    socket: TcpStream,
    peer: SocketAddr,
    /// Whole records (and the header first), `sent` bytes of which are
    /// already written.
    queue: Vec<u8>,
    sent: usize,
    /// Since when its queue is above half full.
    behind_since: Option<Instant>,
}

impl Client {
    fn queued(&self) -> usize {
        self.queue.len() - self.sent
    }

    /// Writes what the socket takes now; false once the client is gone.
    fn write(&mut self) -> bool {
        while self.sent < self.queue.len() {
            match self.socket.write(self.queue.get(self.sent..).unwrap_or_default()) {
                Ok(0) => return false,
                Ok(count) => self.sent += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.sent == self.queue.len() {
            self.queue.clear();
            self.sent = 0;
        } else if self.sent > self.queue.len() / 2 {
            self.queue.drain(..self.sent);
            self.sent = 0;
        }
        true
    }
}

/// The writer thread's state.
struct Writer {
    listener: TcpListener,
    receiver: Receiver<Batch>,
    shared: Arc<Shared>,
    clients: Vec<Client>,
    header: Vec<u8>,
}

impl Writer {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.accept();
            let wait = if self.clients.iter().any(|client| client.queued() > 0) {
                BUSY_WAIT
            } else {
                IDLE_WAIT
            };
            match self.receiver.recv_timeout(wait) {
                Ok(batch) => {
                    self.queue(&batch);
                    while let Ok(batch) = self.receiver.try_recv() {
                        self.queue(&batch);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            self.write(Instant::now());
        }
        // The workers are done: what they sent last (the connections' ends)
        // still reaches the clients that keep reading.
        while let Ok(batch) = self.receiver.try_recv() {
            self.queue(&batch);
        }
        let deadline = Instant::now() + FLUSH_AT_STOP;
        while self.clients.iter().any(|client| client.queued() > 0) && Instant::now() < deadline {
            self.write(Instant::now());
            std::thread::sleep(BUSY_WAIT);
        }
    }

    fn accept(&mut self) {
        loop {
            let (socket, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.clients.len() >= MAX_CLIENTS {
                self.shared.clients_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("PCAP-over-IP: {peer} refused: {MAX_CLIENTS} clients are connected");
                continue;
            }
            if socket.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = socket.set_nodelay(true);
            tracing::info!("PCAP-over-IP: {peer} connected");
            self.clients.push(Client {
                socket,
                peer,
                queue: self.header.clone(),
                sent: 0,
                behind_since: None,
            });
            self.shared.clients_accepted.fetch_add(1, Ordering::Relaxed);
            self.shared.clients.store(self.clients.len() as u64, Ordering::Relaxed);
        }
    }

    /// Appends a batch to every client's queue it fits.
    fn queue(&mut self, batch: &Batch) {
        self.shared
            .in_flight
            .fetch_sub(batch.records.len() as u64, Ordering::AcqRel);
        for client in &mut self.clients {
            if client.queued() + batch.records.len() > CLIENT_QUEUE_BYTES {
                self.shared
                    .client_frames_dropped
                    .fetch_add(batch.frames, Ordering::Relaxed);
                continue;
            }
            client.queue.extend_from_slice(&batch.records);
            self.shared.frames.fetch_add(batch.frames, Ordering::Relaxed);
            self.shared.bytes.fetch_add(batch.frame_bytes, Ordering::Relaxed);
        }
    }

    /// Writes every queue; drops the clients that are gone and those that
    /// stayed too far behind.
    fn write(&mut self, now: Instant) {
        let shared = &self.shared;
        self.clients.retain_mut(|client| {
            if !client.write() {
                tracing::info!("PCAP-over-IP: {} disconnected", client.peer);
                return false;
            }
            if client.queued() <= CLIENT_QUEUE_BYTES / 2 {
                client.behind_since = None;
                return true;
            }
            let since = *client.behind_since.get_or_insert(now);
            if now.duration_since(since) < TOO_SLOW_AFTER {
                return true;
            }
            tracing::warn!(
                "PCAP-over-IP: {} disconnected: it stayed more than {} MiB behind for {} s",
                client.peer,
                CLIENT_QUEUE_BYTES >> 21,
                TOO_SLOW_AFTER.as_secs()
            );
            shared.clients_too_slow.fetch_add(1, Ordering::Relaxed);
            false
        });
        shared.clients.store(self.clients.len() as u64, Ordering::Relaxed);
    }
}
