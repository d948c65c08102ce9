//! Neighbour resolution requests: the XDP program reports next hops it has no MAC for on the
//! RESOLVE ring buffer; a background thread turns them into `Request::ResolveNeighbour` for the
//! host (rate-limited per next hop). The plugin's own thread asks too, for gateways of routes it
//! programs.

use crate::maps::ResolveEvent;
use crate::ring::RingReader;
use aya::maps::{MapData, RingBuf};
use ekho_plugin_api::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// The thread draining the RESOLVE ring buffer: each record is asked of the host.
pub fn spawn(ring: RingBuf<MapData>, asker: Asker) -> std::io::Result<RingReader> {
    RingReader::spawn("xdp-router-resolve", ring, move |ev: ResolveEvent| {
        let addr = if ev.family == 2 {
            IpAddress::V4([ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]])
        } else {
            IpAddress::V6(ev.addr)
        };
        asker.ask(ev.ifindex, addr);
    })
}
