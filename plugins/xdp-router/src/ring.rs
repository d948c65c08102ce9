//! A thread draining one BPF ring buffer of fixed-size records: the RESOLVE ring (next hops to
//! resolve) and the FLOW_EVENTS ring (flows that saw FIN or RST).

use aya::maps::{MapData, RingBuf};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The thread: polls the ring (every 100 ms at most, so that a stop is seen), reads each record
/// as a `T` (records shorter than one are skipped) and hands it to the handler. Stopped and
/// joined on drop.
pub struct RingReader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl RingReader {
    /// Starts the thread `name` on `ring`. `T` is the record's `repr(C)` plain-data layout.
    pub fn spawn<T: Copy + 'static>(
        name: &str,
        mut ring: RingBuf<MapData>,
        mut handle: impl FnMut(T) + Send + 'static,
    ) -> std::io::Result<RingReader> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let fd = ring.as_raw_fd();
                while !s.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 100) };
                    while let Some(item) = ring.next() {
                        if item.len() < std::mem::size_of::<T>() {
                            continue;
                        }
                        // SAFETY: length checked; T is plain data; read_unaligned copes with
                        // any alignment.
                        let record: T =
                            unsafe { std::ptr::read_unaligned(item.as_ptr() as *const T) };
                        drop(item);
                        handle(record);
                    }
                }
            })?;
        Ok(RingReader {
            stop,
            handle: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.stop();
    }
}
