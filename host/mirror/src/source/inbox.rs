//! The event socket's reader: a thread of its own that moves notification datagrams out of the
//! kernel's socket buffer into user space as they come, for the source thread to decode and
//! apply in order.
//!
//! The kernel charges a socket the whole buffer of each notification it queues (the skb's
//! `truesize`, about 1 KiB for a route notification of about 100 bytes): the 64 MiB default
//! buffer (128 MiB as the kernel counts it) holds about 130 thousand route notifications. A
//! burst of a million deletions written at the kernel's own rate outran the source thread by
//! more than that and overran the socket (messages lost, a resync of a million routes) while
//! the thread was still busy applying. Read into user space, the same notifications take their
//! own bytes only: the reader keeps the kernel's queue short (it does nothing else: a listener
//! that only receives keeps up with the kernel, `bench_churn`'s floor rows), and the source
//! thread works through the backlog at its pace. The backlog is bounded
//! ([`SourceOptions::backlog_bytes`](super::SourceOptions::backlog_bytes)): past it the reader
//! drops what it reads and reports the loss, which the source thread handles as an overrun of
//! the socket (counted, resynced).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::EventReader;

/// What the reader hands over, in the order it happened on the socket.
pub enum Received {
    /// Datagrams back to back, each a native-endian `u32` length, then its bytes.
    Datagrams(Vec<u8>),
    /// Notifications were lost before this point: the socket overran (`ENOBUFS`), a datagram
    /// did not fit its slot, or the inbox was full.
    Lost(&'static str),
    /// Receiving failed: the source stops with this error.
    Failed(std::io::Error),
}

/// The queue between the reader and the source thread.
pub struct Inbox {
    q: Mutex<Queue>,
    /// The most datagram bytes held.
    max_bytes: usize,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Received>,
    /// Bytes of the datagrams queued.
    bytes: usize,
    /// Emptied chunks handed back for reuse.
    spare: Vec<Vec<u8>>,
}

impl Inbox {
    /// An empty inbox holding at most `max_bytes` of datagrams.
    pub fn new(max_bytes: usize) -> Inbox {
        Inbox {
            q: Mutex::default(),
            max_bytes,
        }
    }

    /// The most datagram bytes held.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Takes everything queued, in order, into `out` (emptied first).
    pub fn take(&self, out: &mut VecDeque<Received>) {
        out.clear();
        let mut q = self.q.lock().unwrap();
        std::mem::swap(&mut q.items, out);
        q.bytes = 0;
    }

    /// Hands an emptied chunk back for the reader to fill again.
    pub fn recycle(&self, mut chunk: Vec<u8>) {
        chunk.clear();
        let mut q = self.q.lock().unwrap();
        if q.spare.len() < 64 {
            q.spare.push(chunk);
        }
    }

    /// Queues `r`; returns whether the queue was empty before (the source needs waking).
    fn push(&self, r: Received) -> bool {
        let mut q = self.q.lock().unwrap();
        let was_empty = q.items.is_empty();
        if let Received::Datagrams(d) = &r {
            if q.bytes + d.len() > self.max_bytes {
                // Dropped, as the kernel drops into a full buffer; one loss marker for a run
                // of them.
                if !matches!(q.items.back(), Some(Received::Lost(_))) {
                    q.items.push_back(Received::Lost("inbox"));
                }
                return was_empty;
            }
            q.bytes += d.len();
        }
        q.items.push_back(r);
        was_empty
    }

    fn chunk(&self) -> Vec<u8> {
        self.q
            .lock()
            .unwrap()
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(64 << 10))
    }
}

/// The reader thread; stops (and is joined) when dropped, before the socket it reads.
pub struct Reader {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Reader {
    /// Starts reading socket `fd` into `inbox`, writing to eventfd `wake` whenever the inbox
    /// goes from empty to not empty. The caller keeps `fd` open until the reader is dropped.
    pub fn start(fd: i32, inbox: Arc<Inbox>, wake: OwnedFd) -> Reader {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let thread = std::thread::Builder::new()
            .name("ekho-nl-reader".into())
            .spawn(move || read(fd, &inbox, wake, &d))
            .expect("spawning the netlink reader thread");
        Reader {
            done,
            thread: Some(thread),
        }
    }
}

fn notify(wake: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a valid u64 to an eventfd we own.
    unsafe {
        libc::write(
            wake.as_raw_fd(),
            &one as *const u64 as *const libc::c_void,
            8,
        )
    };
}

/// The reader's nice value: below the other threads', so that a source thread and plugin workers
/// busy with a backlog do not starve it of the CPU it needs to keep the kernel's queue short
/// (its work is bounded by what arrives: it sleeps when the socket is empty).
const READER_NICE: i32 = -10;

fn read(fd: i32, inbox: &Inbox, wake: OwnedFd, done: &AtomicBool) {
    // SAFETY: gettid and setpriority on this thread only (Linux: PRIO_PROCESS with a thread
    // id names that thread).
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, READER_NICE)
    };
    if r != 0 {
        tracing::debug!(
            "netlink reader keeps the default priority (setpriority: {})",
            std::io::Error::last_os_error()
        );
    }
    let mut reader = EventReader::new();
    let send = |r: Received| {
        if inbox.push(r) {
            notify(&wake);
        }
    };
    while !done.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid descriptor; the timeout lets the thread see `done`.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        loop {
            match reader.recv(fd) {
                Ok(0) => break,
                Ok(k) => {
                    let mut chunk = inbox.chunk();
                    for i in 0..k {
                        let (dgram, truncated) = reader.datagram(i);
                        if truncated {
                            if !chunk.is_empty() {
                                send(Received::Datagrams(std::mem::take(&mut chunk)));
                            }
                            send(Received::Lost("truncated"));
                            continue;
                        }
                        chunk.extend_from_slice(&(dgram.len() as u32).to_ne_bytes());
                        chunk.extend_from_slice(dgram);
                    }
                    if !chunk.is_empty() {
                        send(Received::Datagrams(chunk));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    send(Received::Lost("ENOBUFS"))
                }
                Err(e) => {
                    send(Received::Failed(e));
                    return;
                }
            }
        }
    }
}

/// The datagrams of a [`Received::Datagrams`] chunk.
pub fn datagrams(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(chunk.get(at..at + 4)?.try_into().ok()?) as usize;
        let d = chunk.get(at + 4..at + 4 + len)?;
        at += 4 + len;
        Some(d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_back_into_their_datagrams() {
        let mut c = Vec::new();
        for d in [&b"abc"[..], b"", b"0123456789"] {
            c.extend_from_slice(&(d.len() as u32).to_ne_bytes());
            c.extend_from_slice(d);
        }
        let got: Vec<&[u8]> = datagrams(&c).collect();
        assert_eq!(got, [&b"abc"[..], b"", b"0123456789"]);
    }

    #[test]
    fn a_full_inbox_drops_and_reports_the_loss_once() {
        let inbox = Inbox::new(1000);
        assert!(inbox.push(Received::Datagrams(vec![0; 990])));
        assert!(!inbox.push(Received::Datagrams(vec![0; 20])));
        assert!(!inbox.push(Received::Datagrams(vec![0; 20])));
        let mut out = VecDeque::new();
        inbox.take(&mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(out[1], Received::Lost("inbox")));
        // Taken: room again.
        assert!(inbox.push(Received::Datagrams(vec![0; 20])));
    }
}
