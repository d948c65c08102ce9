//! Neighbour resolution requests: the XDP program reports next hops it has no MAC for on the
//! RESOLVE ring buffer; a background thread turns them into `Request::ResolveNeighbour` for the
//! host (rate-limited per next hop). The plugin's own thread asks too, for gateways of routes it
//! programs.

use crate::maps::ResolveEvent;
use aya::maps::{MapData, RingBuf};
use ekho_plugin_api::prelude::*;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Sends resolution requests to the host, at most one per next hop per `interval`.
#[derive(Clone)]
pub struct Asker {
    host: HostHandle,
    interval: Duration,
    last: Arc<Mutex<HashMap<(u32, IpAddress), Instant>>>,
    pub sent: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
}

impl Asker {
    pub fn new(host: HostHandle, interval: Duration) -> Asker {
        Asker {
            host,
            interval,
            last: Default::default(),
            sent: Default::default(),
            refused: Default::default(),
        }
    }

    pub fn ask(&self, ifindex: u32, addr: IpAddress) {
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = last.get(&(ifindex, addr)) {
                if now.duration_since(*t) < self.interval {
                    return;
                }
            }
            if last.len() > 65536 {
                let interval = self.interval;
                last.retain(|_, t| now.duration_since(*t) < interval);
            }
            last.insert((ifindex, addr), now);
        }
        match self
            .host
            .request(Request::ResolveNeighbour { ifindex, addr })
            .into_result()
        {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Logged once per next hop per interval at most (same rate limit as requests).
                self.refused.fetch_add(1, Ordering::Relaxed);
                self.host.log(
                    LogLevel::Debug,
                    format!("resolve request for {addr} on ifindex {ifindex} refused: {e}")
                        .as_str()
                        .into(),
                );
            }
        }
    }

    /// Forgets a next hop (its neighbour became valid), so a later loss is asked at once.
    pub fn forget(&self, ifindex: u32, addr: IpAddress) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(ifindex, addr));
    }
}

/// The thread draining the RESOLVE ring buffer.
pub struct Resolver {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Resolver {
    pub fn spawn(mut ring: RingBuf<MapData>, asker: Asker) -> std::io::Result<Resolver> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("xdp-router-resolve".into())
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
                        if item.len() < std::mem::size_of::<ResolveEvent>() {
                            continue;
                        }
                        // SAFETY: length checked; read_unaligned copes with any alignment.
                        let ev: ResolveEvent = unsafe {
                            std::ptr::read_unaligned(item.as_ptr() as *const ResolveEvent)
                        };
                        let addr = if ev.family == 2 {
                            IpAddress::V4([ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]])
                        } else {
                            IpAddress::V6(ev.addr)
                        };
                        drop(item);
                        asker.ask(ev.ifindex, addr);
                    }
                }
            })?;
        Ok(Resolver {
            stop,
            handle: Some(handle),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop();
    }
}
