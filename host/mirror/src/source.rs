//! The rtnetlink source: subscribe, dump, listen, repair overruns.
//!
//! Everything runs on one dedicated OS thread, which enters the configured network namespace
//! (`setns`) before opening its sockets, so the rest of the process keeps its own netns and no
//! tokio worker ever changes namespace. The thread:
//! 1. opens the event socket, sizes its receive buffer (`SO_RCVBUFFORCE`, falling back to
//!    `SO_RCVBUF`) and joins every group first, so no change between dump and listen is missed;
//! 2. dumps every kind on a second socket and reconciles the dump into the mirror;
//! 3. applies notifications as they come: many datagrams per `recvmmsg`, a batch of about 1024
//!    events applied under one mirror lock and handed to the listeners at once;
//! 4. on `ENOBUFS` (messages lost) counts an overrun of that socket and re-dumps the kinds it
//!    carries (counted per kind, [`MirrorStats::resynced`](crate::MirrorStats::resynced)), keeping the event
//!    socket: the dump is reconciled by mark and sweep (only real differences are emitted), then
//!    the events queued meanwhile are applied in order;
//! 5. re-dumps proxy neighbours (never notified by the kernel) periodically and right after the
//!    link/address events that flush them, and any kinds asked for with
//!    [`Mirror::request_resync`](crate::Mirror::request_resync).
//!
//! tc (qdiscs, classes, chains, filters, actions: `source/tc.rs`) is dumped with every kind
//! at start and after an overrun, and alone when the state asks for it (a silent change it
//! cannot infer); its notifications arrive on the event socket.
//!
//! The nftables kinds (base chains, flowtables) come the same way from a second pair of
//! sockets (`NETLINK_NETFILTER`, `source/nftables.rs`): dumped with the other kinds, their events applied
//! in the same loop, an overrun on either socket resyncing the kinds that socket carries (the
//! rtnetlink socket's: every other kind and tc).

mod nftables;
mod tc;
pub use tc::SwCounters;

use crate::netlink::{self, rtm};
use crate::state::Snapshot;
use crate::Event;
use crate::Mirror;
use ekho_plugin_api::object::IpAddress;
use ekho_plugin_api::{Change, Object, ObjectKind};
use netlink_packet_core::{
    Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourHeader, NeighbourMessage,
    NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where and how to listen.
#[derive(Clone, Debug, Default)]
pub struct SourceConfig {
    /// Network namespace to mirror: `None` for the caller's, else a path (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`).
    pub netns: Option<PathBuf>,
    /// Receive buffer of the event socket, bytes (forced with SO_RCVBUFFORCE when allowed).
    /// 0 selects [`DEFAULT_RCVBUF`].
    pub rcvbuf: usize,
}

/// Event socket receive buffer used when [`SourceConfig::rcvbuf`] is 0: 64 MiB.
pub const DEFAULT_RCVBUF: usize = 64 << 20;

/// Further knobs of the source (defaults suit the daemon).
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Period of the proxy-neighbour re-dump (the kernel never notifies proxy entries); `None`
    /// disables the periodic poll (re-dumps after link/address events still happen).
    pub proxy_poll: Option<Duration>,
    /// Fault injection, for tests of what uses the source: this long after the initial dump the
    /// event socket's descriptor is replaced by one of `/dev/null` (`dup2`), so that the next
    /// receive fails as a broken socket would (`ENOTSOCK`) and the source stops with that error,
    /// through the same path as any fatal socket error. `None` (the default) in production.
    pub fail_after_sync: Option<Duration>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            proxy_poll: Some(Duration::from_secs(1)),
            fail_after_sync: None,
        }
    }
}

/// Errors of the source. Each keeps the operating-system error (errno) it comes from: callers
/// match on [`SourceError::errno`], never on the text.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The namespace could not be opened or entered.
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        /// Namespace path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A netlink socket call failed, or the kernel refused a request (its `NLMSG_ERROR` code).
    #[error("netlink: {op}: {source}")]
    Netlink {
        /// What was being done (`socket`, `send`, `dump of type 26`, ...).
        op: String,
        /// The error, with its errno (the kernel's code for a refused request).
        source: std::io::Error,
    },
    /// A dump the kernel could not complete (not fatal: the kind is reconciled without sweep).
    #[error("incomplete dump: {source}")]
    Incomplete {
        /// The code the kernel ended the dump with (`EMSGSIZE`).
        source: std::io::Error,
    },
    /// The kernel flagged every attempt at a dump as interrupted (`NLM_F_DUMP_INTR`).
    #[error("netlink: dumps kept being interrupted ({attempts} attempts)")]
    Interrupted {
        /// Attempts made.
        attempts: u32,
    },
    /// The source thread ended without a result (it panicked).
    #[error("netlink: source thread died")]
    ThreadDied,
    /// A request needs a running source (its socket in the mirrored namespace).
    #[error("no netlink source is running")]
    NotRunning,
}

impl SourceError {
    /// The errno behind the error, when an operating-system call or the kernel gave one
    /// (`libc::EPERM` when a capability is missing, ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            SourceError::Netns { source, .. }
            | SourceError::Netlink { source, .. }
            | SourceError::Incomplete { source } => source.raw_os_error(),
            SourceError::Interrupted { .. } | SourceError::ThreadDied | SourceError::NotRunning => {
                None
            }
        }
    }
}

fn nl_err(op: impl Into<String>, source: std::io::Error) -> SourceError {
    SourceError::Netlink {
        op: op.into(),
        source,
    }
}

/// The error of a request the kernel refused with `NLMSG_ERROR` code `code` (a negative errno).
fn refused(op: impl Into<String>, code: i32) -> SourceError {
    nl_err(op, std::io::Error::from_raw_os_error(-code))
}

/// Runs the source until the process ends: subscribes, dumps every kind into `mirror`, then
/// applies notifications. Returns only on a fatal error.
pub async fn run(mirror: Mirror, cfg: SourceConfig) -> Result<(), SourceError> {
    run_with(mirror, cfg, SourceOptions::default()).await
}

struct StopOnDrop(Arc<AtomicBool>, Mirror);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        self.1.control().wake();
    }
}

/// One addition of the initial dump, as an [`InitialStream`] receives it.
#[derive(Clone)]
pub enum Initial {
    /// A named object (boxed: a route item is a tenth of its size).
    Object(Box<Change>),
    /// A route given by its key and shared attribute set (see [`InitialStream::objects`]):
    /// `rk.route(attrs)` with device names filled in is the route a listener sees. Sent for
    /// nearly every route: building and naming it is left to the receiver, which keeps the
    /// dump's own thread free for the dump.
    Route(crate::routes::RKey, u32),
}

impl Initial {
    /// The kind of object this is.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Initial::Object(c) => c.kind(),
            Initial::Route(..) => ObjectKind::Route,
        }
    }
}

/// Receives the initial dump as it is made, for listeners attached with
/// [`Mirror::attach_synced`]: they get the state of the initial dump from here, in dependency
/// order, while the dump runs, instead of reading the mirror once it is complete.
pub trait InitialStream: Send {
    /// The next additions, as the mirror will hold them (for routes, the entry in effect per key
    /// and device), in dependency order across calls; within one call nexthop objects and groups
    /// are never split. `new_attrs` are the shared attribute sets first used by this call's
    /// routes: [`Initial::Route`] numbers them from 0 in the order they are handed out over the
    /// whole stream. Links always come before the routes through them. The sink takes what it
    /// wants out of `chunk`.
    fn objects(&mut self, new_attrs: &[Arc<crate::routes::Attrs>], chunk: &mut Vec<Initial>);
    /// The initial dump is installed: from now on every change reaches the listeners attached
    /// with [`Mirror::attach_synced`].
    fn done(&mut self);
}

/// [`run`] with explicit [`SourceOptions`]. Dropping the future stops the source thread.
pub async fn run_with(
    mirror: Mirror,
    cfg: SourceConfig,
    opts: SourceOptions,
) -> Result<(), SourceError> {
    run_streaming(mirror, cfg, opts, None).await
}

/// [`run_with`], handing the initial dump to `stream` as it arrives (see [`InitialStream`]).
pub async fn run_streaming(
    mirror: Mirror,
    cfg: SourceConfig,
    opts: SourceOptions,
    stream: Option<Box<dyn InitialStream>>,
) -> Result<(), SourceError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone(), mirror.clone());
    let m = mirror.clone();
    std::thread::Builder::new()
        .name("ekho-mirror-src".into())
        .spawn(move || {
            let r = thread_main(&m, &cfg, &opts, &stop, stream);
            if let Err(e) = &r {
                tracing::error!(error = %e, "mirror source stopped");
            }
            *m.control().req.lock().unwrap() = None;
            let _ = tx.send(r);
        })
        .map_err(|e| nl_err("spawn source thread", e))?;
    rx.await.unwrap_or(Err(SourceError::ThreadDied))
}

/// Runs `f` on a thread of its own inside the network namespace at `netns` (`None`: the
/// caller's) and returns what it returns; entering a namespace changes only the calling
/// thread's, so the caller's stays as it was. `Err`: the namespace could not be entered
/// (`SourceError::Netns`), or `f` panicked (`SourceError::ThreadDied`).
pub fn run_in_netns<T: Send + 'static>(
    netns: Option<std::path::PathBuf>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SourceError> {
    std::thread::spawn(move || {
        if let Some(p) = &netns {
            enter_netns(p)?;
        }
        Ok(f())
    })
    .join()
    .unwrap_or(Err(SourceError::ThreadDied))
}

/// Enters the network namespace at `path` on the calling thread.
pub fn enter_netns(path: &std::path::Path) -> Result<(), SourceError> {
    let f = std::fs::File::open(path).map_err(|e| SourceError::Netns {
        path: path.into(),
        source: e,
    })?;
    // SAFETY: setns on a valid fd; affects only the calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(SourceError::Netns {
            path: path.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The rtnetlink groups the event socket joins.
pub const GROUPS: &[u32] = &[
    1,  // RTNLGRP_LINK
    3,  // RTNLGRP_NEIGH
    5,  // RTNLGRP_IPV4_IFADDR
    7,  // RTNLGRP_IPV4_ROUTE
    8,  // RTNLGRP_IPV4_RULE
    9,  // RTNLGRP_IPV6_IFADDR
    11, // RTNLGRP_IPV6_ROUTE
    19, // RTNLGRP_IPV6_RULE
    24, // RTNLGRP_IPV4_NETCONF
    25, // RTNLGRP_IPV6_NETCONF
    26, // RTNLGRP_MDB
    32, // RTNLGRP_NEXTHOP
    33, // RTNLGRP_BRVLAN
    tc::GROUP,
];

/// Reads an event socket that reported `ENOBUFS` to the end of its queue, calling `overrun`
/// for every further `ENOBUFS` instead of stopping there. `step` reads once: `Ok(true)` when
/// it read something, `Ok(false)` when the queue is empty. The kernel keeps a netlink socket
/// congested, dropping every message with no further `ENOBUFS`, until its queue is empty: a
/// re-dump made while it is congested misses what it drops unreported (the conntrack source
/// lost entries so).
pub(crate) fn read_past_overruns(
    mut step: impl FnMut() -> std::io::Result<bool>,
    mut overrun: impl FnMut(),
) -> std::io::Result<()> {
    loop {
        match step() {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => overrun(),
            Err(e) => return Err(e),
        }
    }
}

/// Sizes a netlink socket's receive buffer: `SO_RCVBUFFORCE` (root), else `SO_RCVBUF` (capped
/// by `net.core.rmem_max`), with a warning.
pub(crate) fn set_rcvbuf(s: &Socket, size: usize) {
    let v = size.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt with a valid int option value.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if r != 0 {
        tracing::warn!(
            "SO_RCVBUFFORCE refused ({}), using SO_RCVBUF",
            std::io::Error::last_os_error()
        );
        let _ = s.set_rx_buf_sz(v);
    }
}

/// Receives one datagram whatever its size (grows `buf`). `Ok(None)` when nothing is queued
/// (non-blocking socket).
fn recv_dgram(fd: i32, buf: &mut Vec<u8>, block: bool) -> std::io::Result<Option<usize>> {
    let dontwait = if block { 0 } else { libc::MSG_DONTWAIT };
    loop {
        // SAFETY: peeking into a valid buffer of the given length.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_PEEK | libc::MSG_TRUNC | dontwait,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => Ok(None),
                std::io::ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        let n = n as usize;
        if n > buf.len() {
            buf.resize(n.next_power_of_two(), 0);
        }
        // SAFETY: receiving into a valid buffer at least as large as the datagram.
        let m = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                dontwait,
            )
        };
        if m < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => Ok(None),
                std::io::ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        return Ok(Some(m as usize));
    }
}

/// Datagrams read per `recvmmsg` call on the event socket.
const EVENT_SLOTS: usize = 64;
/// Room for one notification datagram. The kernel sends one message per notification, sized by
/// its `*_nlmsg_size()`: a few hundred bytes for a route, a few KiB for a link, up to about
/// 64 KiB for a route with thousands of legs (one `RTA_MULTIPATH`, whose length is 16 bits). A
/// datagram that does not fit is reported truncated and treated as lost (counted, resynced).
const EVENT_SLOT_BYTES: usize = 128 << 10;

/// Reads many notification datagrams per system call (`recvmmsg`) into fixed slots: one call per
/// wake-up and burst instead of a peek and a receive per datagram. Only the part of a slot the
/// kernel writes is ever touched, so the slots cost address space more than memory.
struct EventReader {
    bufs: Vec<u8>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iov`/`hdrs` point into `bufs`/`iov`, owned by the same value and
// never reallocated; the reader is used by one thread at a time.
unsafe impl Send for EventReader {}

impl EventReader {
    fn new() -> EventReader {
        let mut r = EventReader {
            bufs: vec![0u8; EVENT_SLOTS * EVENT_SLOT_BYTES],
            iov: Vec::with_capacity(EVENT_SLOTS),
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            hdrs: vec![unsafe { std::mem::zeroed() }; EVENT_SLOTS],
        };
        for i in 0..EVENT_SLOTS {
            r.iov.push(libc::iovec {
                // SAFETY: in bounds of `bufs`.
                iov_base: unsafe { r.bufs.as_mut_ptr().add(i * EVENT_SLOT_BYTES) }
                    as *mut libc::c_void,
                iov_len: EVENT_SLOT_BYTES,
            });
        }
        for i in 0..EVENT_SLOTS {
            // SAFETY: in bounds of `iov`, which is never reallocated after this.
            r.hdrs[i].msg_hdr.msg_iov = unsafe { r.iov.as_mut_ptr().add(i) };
            r.hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        r
    }

    /// Receives what is queued, without blocking: the number of datagrams read (0: none).
    fn recv(&mut self, fd: i32) -> std::io::Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        loop {
            // SAFETY: the headers describe valid, disjoint buffers owned by `self`.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    EVENT_SLOTS as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return match e.kind() {
                    std::io::ErrorKind::WouldBlock => Ok(0),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            return Ok(n as usize);
        }
    }

    /// Datagram `i` of the last [`EventReader::recv`], and whether it was truncated.
    fn datagram(&self, i: usize) -> (&[u8], bool) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(EVENT_SLOT_BYTES);
        let at = i * EVENT_SLOT_BYTES;
        (
            &self.bufs[at..at + len],
            h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        )
    }
}

/// Receives one datagram of a dump in a single call (no peek): dump datagrams are at most a few
/// tens of KiB (the kernel's dump buffer) and `buf` is larger. Returns the length received and
/// whether the datagram was truncated (never seen; `buf` is then enlarged and the caller must
/// dump again, the datagram's tail being lost).
fn recv_dump(fd: i32, buf: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
    loop {
        // SAFETY: receiving into a valid buffer of the given length.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        if n > buf.len() {
            let got = buf.len();
            tracing::warn!(
                bytes = n,
                "dump datagram larger than the receive buffer: enlarged, dumping again"
            );
            buf.resize(n.next_power_of_two(), 0);
            return Ok((got, true));
        }
        return Ok((n, false));
    }
}

fn new_socket() -> Result<Socket, SourceError> {
    let mut s = Socket::new(NETLINK_ROUTE).map_err(|e| nl_err("socket", e))?;
    s.bind_auto().map_err(|e| nl_err("bind", e))?;
    s.connect(&SocketAddr::new(0, 0))
        .map_err(|e| nl_err("connect", e))?;
    Ok(s)
}

/// The error code of an `NLMSG_ERROR` payload (0 for an acknowledgement).
pub(crate) fn errno(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// A request socket in the mirrored netns (dumps and one-off requests).
pub struct ReqSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// The nftables socket for dumps of the nftables kinds, opened by the first.
    nft: Option<Socket>,
    /// Where the messages received by dumps are counted (the initial dump's progress).
    progress: Option<Arc<crate::DumpProgress>>,
}

impl ReqSocket {
    /// Opens a request socket in the current thread's netns.
    pub fn new() -> Result<ReqSocket, SourceError> {
        let sock = new_socket()?;
        let _ = sock.set_ext_ack(true);
        Ok(ReqSocket {
            sock,
            seq: 0,
            buf: vec![0; 1 << 18],
            nft: None,
            progress: None,
        })
    }

    /// Kind `k`'s dump starts (`None`: the dumps are over), for the progress counted.
    fn dumping(&self, k: Option<ObjectKind>) {
        if let Some(p) = &self.progress {
            p.dumping(k);
        }
    }

    fn send(&mut self, msg_type: u16, flags: u16, payload: &[u8]) -> Result<u32, SourceError> {
        self.seq = self.seq.wrapping_add(1);
        let mut h = NetlinkHeader::default();
        h.length = 16 + payload.len() as u32;
        h.message_type = msg_type;
        h.flags = flags;
        h.sequence_number = self.seq;
        let mut b = vec![0u8; 16];
        h.emit(&mut b);
        b.extend_from_slice(payload);
        self.sock.send(&b, 0).map_err(|e| nl_err("send", e))?;
        Ok(self.seq)
    }

    /// Dumps `msg_type` with the given family header, calling `f` for every decoded message as
    /// it arrives (nothing is buffered beyond a few receive batches). Returns the message count
    /// and whether the kernel flagged the dump as interrupted (`NLM_F_DUMP_INTR`: the caller must
    /// start over).
    ///
    /// Two threads share the work: a helper receives and parses (the kernel builds the dump
    /// inside `recv`, netlink-packet-route parses), the caller's thread converts and runs `f`
    /// (the mirror interns and stores), so a large table takes about the longer of the two, not
    /// their sum. Parsed messages go back to the helper to be freed there: glibc's malloc
    /// serializes frees of another thread's memory on that thread's arena lock, which made the
    /// two threads slower than one.
    pub fn dump(
        &mut self,
        msg_type: u16,
        header: &[u8],
        f: &mut dyn FnMut(Event),
    ) -> Result<(u64, bool), SourceError> {
        let seq = self.send(msg_type, NLM_F_REQUEST | NLM_F_DUMP, header)?;
        let fd = self.sock.as_raw_fd();
        let buf = &mut self.buf;
        let progress = self.progress.clone();
        // Batches of decoded events (a few thousand: a hand-over per `recv` costs more in wakeups
        // than it saves); a few in flight bound the memory.
        const BATCH: usize = 4096;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<netlink::Parsed>>(2);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<netlink::Parsed>>();
        std::thread::scope(|scope| {
            let receiver = scope.spawn(move || -> Result<(u64, bool), SourceError> {
                let mut intr = false;
                let mut count = 0u64;
                let mut batch = Vec::with_capacity(BATCH);
                let mut spare: Vec<Vec<netlink::Parsed>> = Vec::new();
                loop {
                    // Free what the caller handed back, keeping the vectors for reuse.
                    while let Ok(mut v) = back_rx.try_recv() {
                        v.clear();
                        spare.push(v);
                    }
                    let (n, truncated) = recv_dump(fd, buf).map_err(|e| nl_err("dump recv", e))?;
                    intr |= truncated;
                    let counted = count;
                    let progressed = |count: u64| {
                        if let Some(p) = &progress {
                            p.add(count - counted);
                        }
                    };
                    for (h, payload) in netlink::split(&buf[..n]) {
                        if h.sequence_number != seq {
                            continue;
                        }
                        if h.flags & 0x10 != 0 {
                            intr = true; // NLM_F_DUMP_INTR
                        }
                        match h.message_type {
                            NLMSG_DONE | NLMSG_ERROR if errno(payload) == -libc::EMSGSIZE => {
                                // The kernel ends a dump it could not complete with an errno in
                                // DONE (EMSGSIZE: an entry larger than the biggest dump buffer,
                                // ~32 KiB).
                                let _ = tx.send(batch);
                                progressed(count);
                                return Err(SourceError::Incomplete {
                                    source: std::io::Error::from_raw_os_error(libc::EMSGSIZE),
                                });
                            }
                            NLMSG_DONE => {
                                let _ = tx.send(batch);
                                progressed(count);
                                return Ok((count, intr));
                            }
                            NLMSG_ERROR => {
                                let _ = tx.send(batch);
                                progressed(count);
                                let code = errno(payload);
                                if code != 0 {
                                    return Err(refused(format!("dump of type {msg_type}"), code));
                                }
                                return Ok((count, intr));
                            }
                            _ => {
                                count += 1;
                                match netlink::parse(&h, payload) {
                                    Ok(p) => batch.push(p),
                                    Err(e) => {
                                        crate::undecodable::note(
                                            crate::undecodable::Protocol::Route,
                                            h.message_type,
                                            "dump message",
                                            &e,
                                        );
                                    }
                                }
                            }
                        }
                    }
                    progressed(count);
                    if batch.len() >= BATCH
                        && tx
                            .send(std::mem::replace(
                                &mut batch,
                                spare.pop().unwrap_or_else(|| Vec::with_capacity(BATCH)),
                            ))
                            .is_err()
                    {
                        return Ok((count, intr)); // the caller stopped listening
                    }
                }
            });
            // Owned here: should `f` panic, the receiver's next send fails instead of blocking
            // the scope's join forever.
            let rx = rx;
            for batch in rx.iter() {
                for p in &batch {
                    f(netlink::event(p));
                }
                let _ = back_tx.send(batch);
            }
            drop(back_tx);
            receiver.join().expect("dump receiver thread panicked")
        })
    }

    /// Dumps `msg_type` for a benchmark baseline: receives and splits every message, and with
    /// `parse` also parses it with netlink-packet-route and nothing more (what any rust-netlink
    /// user pays before reading a field). Returns the message count.
    pub fn dump_baseline(
        &mut self,
        msg_type: u16,
        header: &[u8],
        parse: bool,
    ) -> Result<u64, SourceError> {
        use netlink_packet_core::NetlinkDeserializable;
        let seq = self.send(msg_type, NLM_F_REQUEST | NLM_F_DUMP, header)?;
        let mut count = 0;
        loop {
            let (n, _) = recv_dump(self.sock.as_raw_fd(), &mut self.buf)
                .map_err(|e| nl_err("dump recv", e))?;
            for (h, payload) in netlink::split(&self.buf[..n]) {
                if h.sequence_number != seq {
                    continue;
                }
                if h.message_type == NLMSG_DONE || h.message_type == NLMSG_ERROR {
                    return Ok(count);
                }
                count += 1;
                if parse {
                    std::hint::black_box(RouteNetlinkMessage::deserialize(&h, payload).ok());
                }
            }
        }
    }

    /// Dumps `msg_type` with the given family header, calling `f` with every message as
    /// netlink-packet-route decodes it, on this thread (for the few dumps whose messages carry
    /// what the mirror's events drop: tc's counters). Returns the message count.
    pub fn dump_messages(
        &mut self,
        msg_type: u16,
        header: &[u8],
        f: &mut dyn FnMut(RouteNetlinkMessage),
    ) -> Result<u64, SourceError> {
        use netlink_packet_core::NetlinkDeserializable;
        let seq = self.send(msg_type, NLM_F_REQUEST | NLM_F_DUMP, header)?;
        let fd = self.sock.as_raw_fd();
        let mut count = 0;
        loop {
            let (n, _) = recv_dump(fd, &mut self.buf).map_err(|e| nl_err("dump recv", e))?;
            for (h, payload) in netlink::split(&self.buf[..n]) {
                if h.sequence_number != seq {
                    continue;
                }
                match h.message_type {
                    NLMSG_DONE => return Ok(count),
                    NLMSG_ERROR => {
                        let code = errno(payload);
                        if code != 0 {
                            return Err(refused(format!("dump of type {msg_type}"), code));
                        }
                        return Ok(count);
                    }
                    _ => {
                        count += 1;
                        if let Ok(m) = RouteNetlinkMessage::deserialize(&h, payload) {
                            f(m);
                        }
                    }
                }
            }
        }
    }

    /// Sends a request and waits for its acknowledgement.
    pub fn request(
        &mut self,
        msg_type: u16,
        flags: u16,
        payload: &[u8],
    ) -> Result<(), SourceError> {
        let seq = self.send(msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, payload)?;
        loop {
            let n = recv_dgram(self.sock.as_raw_fd(), &mut self.buf, true)
                .map_err(|e| nl_err("recv", e))?
                .unwrap_or(0);
            for (h, payload) in netlink::split(&self.buf[..n]) {
                if h.sequence_number == seq && h.message_type == NLMSG_ERROR {
                    let code = errno(payload);
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(refused(format!("request of type {msg_type}"), code))
                    };
                }
            }
        }
    }

    /// Sends `RTM_NEWNEIGH` with `NTF_USE` (creating the entry if needed) for `addr` on `ifindex`.
    pub fn resolve_neighbour(&self, ifindex: u32, addr: IpAddress) -> Result<(), SourceError> {
        let (family, dst) = match addr {
            IpAddress::V4(b) => (AddressFamily::Inet, NeighbourAddress::Inet(b.into())),
            IpAddress::V6(b) => (AddressFamily::Inet6, NeighbourAddress::Inet6(b.into())),
        };
        let mut m = NeighbourMessage::default();
        m.header = NeighbourHeader {
            family,
            ifindex,
            state: NeighbourState::None,
            flags: NeighbourFlags::Use,
            ..Default::default()
        };
        m.attributes.push(NeighbourAttribute::Destination(dst));
        let mut nl = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)),
        );
        nl.finalize();
        let mut b = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut b);
        // A fresh socket per call keeps this usable concurrently with nothing else.
        let mut s = ReqSocket {
            sock: self.clone_in_netns()?,
            seq: 0,
            buf: vec![0; 8192],
            nft: None,
            progress: None,
        };
        s.request(28, NLM_F_CREATE, &b[16..])
    }

    fn clone_in_netns(&self) -> Result<Socket, SourceError> {
        // SAFETY: dup of a valid fd; the new fd refers to the same socket (same netns).
        let fd = unsafe { libc::dup(self.sock.as_raw_fd()) };
        if fd < 0 {
            return Err(nl_err("dup", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh, owned netlink socket descriptor.
        Ok(unsafe { Socket::from_raw_fd(fd) })
    }
}

/// The family-header of a dump request of a kind (`(msg_type, header bytes)` list).
pub fn dump_requests(kind: ObjectKind) -> Vec<(u16, Vec<u8>)> {
    const INET: u8 = 2;
    const INET6: u8 = 10;
    const BRIDGE: u8 = 7;
    let hdr = |family: u8, len: usize| {
        let mut v = vec![0u8; len];
        v[0] = family;
        v
    };
    match kind {
        ObjectKind::Link => vec![(18, hdr(0, 16))],
        ObjectKind::Netconf => vec![
            (rtm::GETNETCONF, hdr(INET, 4)),
            (rtm::GETNETCONF, hdr(INET6, 4)),
        ],
        ObjectKind::Address => vec![(22, hdr(INET, 8)), (22, hdr(INET6, 8))],
        ObjectKind::Vlan => vec![(rtm::GETVLAN, hdr(BRIDGE, 8))],
        ObjectKind::Nexthop => vec![(rtm::GETNEXTHOP, hdr(0, 8))],
        ObjectKind::Neighbour => {
            let mut v = vec![(30, hdr(INET, 12)), (30, hdr(INET6, 12))];
            v.extend(proxy_requests());
            v
        }
        ObjectKind::Fdb => vec![(30, hdr(BRIDGE, 12))],
        ObjectKind::Mdb => vec![(rtm::GETMDB, hdr(BRIDGE, 8))],
        ObjectKind::Route => vec![(26, hdr(INET, 12)), (26, hdr(INET6, 12))],
        ObjectKind::Rule => vec![(34, hdr(INET, 12)), (34, hdr(INET6, 12))],
        // Kinds with no rtnetlink dump of their own.
        _ => vec![],
    }
}

fn proxy_requests() -> Vec<(u16, Vec<u8>)> {
    [2u8, 10u8]
        .into_iter()
        .map(|f| {
            let mut v = vec![0u8; 12];
            v[0] = f;
            v[10] = 0x08; // ndm_flags = NTF_PROXY
            (30, v)
        })
        .collect()
}

/// What one dump request of kind `k` leaves: `Some((messages, interrupted))`, or `None` when the
/// kernel could not complete it (the kind is then reconciled without removals) or does not
/// support a kind it may lack (MDB without the bridge module, ...).
fn dump_outcome(
    k: ObjectKind,
    r: Result<(u64, bool), SourceError>,
    snap: &mut Snapshot,
) -> Result<Option<(u64, bool)>, SourceError> {
    match r {
        Ok(x) => Ok(Some(x)),
        Err(SourceError::Incomplete { source: e }) => {
            tracing::warn!("dump of {k} incomplete ({e}): reconciled without removals");
            snap.partial.insert(k);
            Ok(None)
        }
        Err(e)
            if matches!(
                k,
                ObjectKind::Mdb
                    | ObjectKind::Netconf
                    | ObjectKind::Nexthop
                    | ObjectKind::Vlan
                    | ObjectKind::NfChain
                    | ObjectKind::NfFlowtable
            ) =>
        {
            tracing::debug!("dump of {k} failed: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Dumps `kinds` into a snapshot (started over when the kernel flags a dump as interrupted).
pub fn snapshot(
    req: &mut ReqSocket,
    kinds: &BTreeSet<ObjectKind>,
) -> Result<(Snapshot, u64), SourceError> {
    const ATTEMPTS: u32 = 5;
    let mut n = 0;
    for _attempt in 0..ATTEMPTS {
        let mut snap = Snapshot {
            kinds: kinds.clone(),
            ..Default::default()
        };
        let mut intr = false;
        for k in kinds {
            req.dumping(Some(*k));
            for (t, h) in dump_requests(*k) {
                let r = req.dump(t, &h, &mut |e| snap.add(e));
                if let Some((c, i)) = dump_outcome(*k, r, &mut snap)? {
                    n += c;
                    intr |= i;
                }
            }
            if nftables::is_nft(*k) {
                let r = req.dump_nft(*k, &mut |e| snap.add(e));
                if let Some((c, i)) = dump_outcome(*k, r, &mut snap)? {
                    n += c;
                    intr |= i;
                }
            }
        }
        if !intr {
            return Ok((snap, n));
        }
        tracing::debug!("dump interrupted, starting over");
    }
    Err(SourceError::Interrupted { attempts: ATTEMPTS })
}

/// Keys per chunk of a streamed route resync (one mirror lock, one emit each).
const ROUTE_CHUNK: usize = 4096;

/// Re-dumps the routes into the mirror's table as they arrive (mark and sweep, chunks of
/// [`ROUTE_CHUNK`] keys under one lock), then removes the routes the dump lacked: the resync
/// holds one chunk, not a second table. The last key of a chunk waits for the next, so the
/// aliases of one key (adjacent in the dump) are compared together. An interrupted dump
/// (`NLM_F_DUMP_INTR`) is streamed again (what it applied is kernel state, only the sweep
/// needs a whole pass); one the kernel could not complete is applied without removals.
fn stream_route_resync(m: &Mirror, req: &mut ReqSocket, t0: Instant) -> Result<(), SourceError> {
    const ATTEMPTS: u32 = 5;
    let mut n = 0;
    for _attempt in 0..ATTEMPTS {
        m.stream_routes_begin();
        let mut groups: Vec<(crate::routes::RKey, Vec<ekho_plugin_api::object::Route>)> =
            Vec::with_capacity(ROUTE_CHUNK + 1);
        let (mut intr, mut complete) = (false, true);
        req.dumping(Some(ObjectKind::Route));
        for (t, h) in dump_requests(ObjectKind::Route) {
            let r = req.dump(t, &h, &mut |e| {
                let Event::NewRoute(r, _) = e else {
                    return;
                };
                let k = crate::routes::RKey::of(&r);
                match groups.last_mut() {
                    Some((last, v)) if *last == k => v.push(r),
                    _ => {
                        if groups.len() >= ROUTE_CHUNK {
                            let last = groups.pop();
                            m.stream_routes(&mut groups);
                            groups.extend(last);
                        }
                        groups.push((k, vec![r]));
                    }
                }
            });
            match r {
                Ok((c, i)) => {
                    n += c;
                    intr |= i;
                }
                Err(SourceError::Incomplete { source: e }) => {
                    tracing::warn!("dump of routes incomplete ({e}): reconciled without removals");
                    complete = false;
                }
                Err(e) => {
                    req.dumping(None);
                    m.stream_routes(&mut groups);
                    m.stream_routes_end(false, n, 0, false);
                    return Err(e);
                }
            }
        }
        req.dumping(None);
        m.stream_routes(&mut groups);
        if !intr {
            m.stream_routes_end(complete, n, t0.elapsed().as_millis() as u64, true);
            return Ok(());
        }
        tracing::debug!("route dump interrupted, streaming it again");
    }
    m.stream_routes_end(false, n, 0, false);
    Err(SourceError::Interrupted { attempts: ATTEMPTS })
}

/// The initial dump, handed to `stream` as it arrives: kinds before routes once dumped, routes as
/// they come, kinds after routes at the end. An interrupted dump (`NLM_F_DUMP_INTR`) is not
/// started over (what was streamed cannot be taken back); its kinds are returned for a re-dump.
fn snapshot_streamed(
    req: &mut ReqSocket,
    kinds: &BTreeSet<ObjectKind>,
    stream: &mut dyn InitialStream,
) -> Result<(Snapshot, u64, BTreeSet<ObjectKind>), SourceError> {
    const CHUNK: usize = 1024;
    let mut snap = Snapshot {
        kinds: kinds.clone(),
        ..Default::default()
    };
    let mut n = 0;
    let mut interrupted = BTreeSet::new();
    let mut buf: Vec<Initial> = Vec::with_capacity(CHUNK);
    // Shared attribute sets handed out so far, by address (none is freed during the dump).
    let mut numbered: std::collections::HashMap<usize, u32> = Default::default();
    let mut new_attrs: Vec<Arc<crate::routes::Attrs>> = Vec::new();
    let mut routes_sent = false;
    for k in kinds {
        req.dumping(Some(*k));
        if *k >= ObjectKind::Route && !routes_sent {
            routes_sent = true;
            stream_objects(&snap, |o| o.kind() < ObjectKind::Route, &mut buf, stream);
        }
        if *k < ObjectKind::Route {
            // Not streamed yet: an interrupted dump of these kinds is simply done again.
            for attempt in 0..5 {
                if *k == ObjectKind::Link {
                    snap.links.clear();
                } else {
                    snap.objs.retain(|key, _| key.kind() != *k);
                }
                let mut intr = false;
                for (t, h) in dump_requests(*k) {
                    let r = req.dump(t, &h, &mut |e| snap.add(e));
                    if let Some((c, i)) = dump_outcome(*k, r, &mut snap)? {
                        n += c;
                        intr |= i;
                    }
                }
                if !intr {
                    break;
                }
                if attempt == 4 {
                    interrupted.insert(*k);
                }
            }
            continue;
        }
        for (t, h) in dump_requests(*k) {
            let r = if *k == ObjectKind::Route {
                // Routes go out as they arrive, named and rendered with the links and netconf
                // dumped before them.
                let view = crate::state::State::view(
                    std::mem::take(&mut snap.links),
                    std::mem::take(&mut snap.objs),
                );
                let routes = &mut snap.routes;
                let r = req.dump(t, &h, &mut |e| {
                    if let Event::NewRoute(r, _) = e {
                        let item = match view.install_dumped_route(routes, r) {
                            None => return,
                            Some(crate::state::Installed::Route(o)) => {
                                Initial::Object(Box::new(Change::Add(Object::Route(o))))
                            }
                            Some(crate::state::Installed::Shared(rk, a)) => {
                                let next = numbered.len() as u32;
                                let i = *numbered.entry(Arc::as_ptr(&a) as usize).or_insert_with(
                                    || {
                                        new_attrs.push(a.clone());
                                        next
                                    },
                                );
                                Initial::Route(rk, i)
                            }
                        };
                        buf.push(item);
                        if buf.len() >= CHUNK {
                            stream.objects(&new_attrs, &mut buf);
                            new_attrs.clear();
                            buf.clear();
                        }
                    }
                });
                (snap.links, snap.objs) = view.into_parts();
                r
            } else {
                req.dump(t, &h, &mut |e| snap.add(e))
            };
            if let Some((c, i)) = dump_outcome(*k, r, &mut snap)? {
                n += c;
                if i {
                    interrupted.insert(*k);
                }
            }
        }
        if nftables::is_nft(*k) {
            let r = req.dump_nft(*k, &mut |e| snap.add(e));
            snap.derive_nft();
            if let Some((c, i)) = dump_outcome(*k, r, &mut snap)? {
                n += c;
                if i {
                    interrupted.insert(*k);
                }
            }
        }
    }
    if !buf.is_empty() || !new_attrs.is_empty() {
        stream.objects(&new_attrs, &mut buf);
        buf.clear();
    }
    if !routes_sent {
        stream_objects(&snap, |o| o.kind() < ObjectKind::Route, &mut buf, stream);
    }
    stream_objects(&snap, |o| o.kind() > ObjectKind::Route, &mut buf, stream);
    Ok((snap, n, interrupted))
}

/// Hands `stream` the snapshot's links and other objects matching `which`, named, in key order,
/// in chunks that never split nexthop objects.
fn stream_objects(
    snap: &Snapshot,
    which: impl Fn(&Object) -> bool,
    buf: &mut Vec<Initial>,
    stream: &mut dyn InitialStream,
) {
    let objs = snap
        .links
        .values()
        .map(|l| Object::Link(l.clone()))
        .filter(|o| which(o))
        .chain(snap.objs.values().filter(|o| which(o)).cloned());
    for mut o in objs {
        if buf.len() >= 1024
            && !(o.kind() == ObjectKind::Nexthop
                && buf.last().is_some_and(|c| c.kind() == ObjectKind::Nexthop))
        {
            stream.objects(&[], buf);
            buf.clear();
        }
        crate::state::name_with(&snap.links, &mut o);
        buf.push(Initial::Object(Box::new(Change::Add(o))));
    }
    if !buf.is_empty() {
        stream.objects(&[], buf);
        buf.clear();
    }
}

fn proxy_snapshot(req: &mut ReqSocket) -> Result<(Snapshot, u64), SourceError> {
    let mut snap = Snapshot {
        kinds: [ObjectKind::Neighbour].into(),
        proxies_only: true,
        ..Default::default()
    };
    let mut n = 0;
    for (t, h) in proxy_requests() {
        n += req.dump(t, &h, &mut |e| snap.add(e))?.0;
    }
    Ok((snap, n))
}

fn thread_main(
    m: &Mirror,
    cfg: &SourceConfig,
    opts: &SourceOptions,
    stop: &AtomicBool,
    mut stream: Option<Box<dyn InitialStream>>,
) -> Result<(), SourceError> {
    if let Some(p) = &cfg.netns {
        enter_netns(p)?;
    }
    // 1. Subscribe first.
    let ev = new_socket()?;
    set_rcvbuf(
        &ev,
        if cfg.rcvbuf == 0 {
            DEFAULT_RCVBUF
        } else {
            cfg.rcvbuf
        },
    );
    for g in GROUPS {
        if let Err(e) = ev.add_membership(*g) {
            tracing::warn!(group = g, "cannot join rtnetlink group: {e}");
        }
    }
    tracing::info!(
        rcvbuf = ev.get_rx_buf_sz().unwrap_or(0),
        "mirror event socket ready"
    );
    let nft_ev = nftables::event_socket(if cfg.rcvbuf == 0 {
        DEFAULT_RCVBUF
    } else {
        cfg.rcvbuf
    });
    // SAFETY: creating an eventfd; checked below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(nl_err("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: efd is a fresh descriptor we own.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let efd_raw = efd.as_raw_fd();
    // SAFETY: dup of a valid descriptor.
    let wfd = unsafe { OwnedFd::from_raw_fd(libc::dup(efd_raw)) };
    *m.control().waker.lock().unwrap() = Some(wfd);
    *m.control().req.lock().unwrap() = Some(ReqSocket::new()?);

    // 2. Dump everything, its progress counted for `ekho status`.
    let mut req = ReqSocket::new()?;
    m.control().progress.reset();
    req.progress = Some(m.control().progress.clone());
    let all: BTreeSet<ObjectKind> = ObjectKind::ALL.iter().copied().collect();
    let t0 = Instant::now();
    let (snap, n) = match stream.as_deref_mut() {
        None => snapshot(&mut req, &all)?,
        Some(s) => {
            let (snap, n, interrupted) = snapshot_streamed(&mut req, &all, s)?;
            if !interrupted.is_empty() {
                // The streamed routes cannot be taken back: install what was dumped and repair
                // by a re-dump (mark and sweep), which emits the differences.
                tracing::debug!(
                    ?interrupted,
                    "initial dump interrupted: re-dumping after install"
                );
                m.control().resync.lock().unwrap().extend(interrupted);
                m.control().wake();
            }
            (snap, n)
        }
    };
    req.dumping(None);
    // tc after the other kinds (its API objects are derived from this dump).
    let (mut snap, mut n) = (snap, n);
    let (tc, c, intr) = req.dump_tc()?;
    n += c;
    snap.tc = Some(tc);
    if intr {
        m.control().tc_resync.store(true, Ordering::SeqCst);
    }
    // A restarted source's dump (the mirror already synced) is a full resync: reconciled by mark
    // and sweep, the listeners get only what changed while no source ran.
    req.progress = None;
    let resync = m.stats().synced;
    m.reconcile(snap, n, t0.elapsed().as_millis() as u64, resync);
    // The plugin API's tc objects are derived from the tc dump at the reconcile: the stream
    // gets them last (they rank last), before the changes that follow (this thread applies
    // them, after `done`).
    let tc_objects: Vec<Initial> = match stream.is_some() {
        true => ObjectKind::ALL
            .iter()
            .copied()
            .filter(|k| crate::state::tc::is_tc_kind(*k))
            .flat_map(|k| m.dump(Some(k)))
            .map(|o| Initial::Object(Box::new(Change::Add(o))))
            .collect(),
        false => Vec::new(),
    };
    m.set_synced(t0.elapsed().as_millis() as u64);
    if let Some(s) = stream.as_deref_mut() {
        if !tc_objects.is_empty() {
            let mut chunk = tc_objects;
            s.objects(&[], &mut chunk);
        }
        s.done();
    }
    drop(stream);
    tracing::info!(
        ms = t0.elapsed().as_millis() as u64,
        messages = n,
        "mirror synced"
    );

    // 3. Listen.
    let mut reader = EventReader::new();
    // The nftables event socket's receive buffer.
    let mut buf = vec![0u8; 1 << 20];
    let mut next_proxy = opts.proxy_poll.map(|d| Instant::now() + d);
    let mut fail_at = opts.fail_after_sync.map(|d| Instant::now() + d);
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if fail_at.is_some_and(|t| Instant::now() >= t) {
            fail_at = None;
            break_socket(&ev)?;
        }
        let timeout = next_proxy
            .into_iter()
            .chain(fail_at)
            .min()
            .map(|t| {
                t.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(60_000) as i32
            })
            .unwrap_or(60_000);
        let mut fds = [
            libc::pollfd {
                fd: ev.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: efd_raw,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // A negative descriptor is skipped by poll.
                fd: nft_ev.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polling valid descriptors (or -1, ignored).
        unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout) };
        if fds[1].revents != 0 {
            let mut v = 0u64;
            // SAFETY: reading 8 bytes from our eventfd into a u64.
            unsafe { libc::read(efd_raw, &mut v as *mut u64 as *mut libc::c_void, 8) };
        }
        // Overruns of the rtnetlink and the nftables event socket: each resyncs the kinds its
        // socket carries, not the other's.
        let mut overrun = false;
        let mut nft_overrun = false;
        let mut proxy = false;
        // Drain the event socket, many datagrams per call, applying a batch (one mirror lock,
        // one hand-off to the plugins) per 1024 events or so.
        let mut evs = Vec::with_capacity(2 * EVENT_SLOTS);
        let mut count = 0u64;
        loop {
            match reader.recv(ev.as_raw_fd()) {
                Ok(0) => break,
                Ok(k) => {
                    for i in 0..k {
                        let (dgram, truncated) = reader.datagram(i);
                        if truncated {
                            tracing::warn!(
                                "netlink notification larger than {EVENT_SLOT_BYTES} bytes: lost, resyncing"
                            );
                            m.count_overrun("rtnetlink");
                            overrun = true;
                            continue;
                        }
                        for (h, payload) in netlink::split(dgram) {
                            count += 1;
                            match netlink::decode(&h, payload) {
                                Ok(Event::Ignored) => {}
                                Ok(e) => evs.push(e),
                                Err(e) => crate::undecodable::note(
                                    crate::undecodable::Protocol::Route,
                                    h.message_type,
                                    "notification",
                                    &e,
                                ),
                            }
                        }
                    }
                    if evs.len() >= 1024 {
                        proxy |= m.apply_events(&mut evs, std::mem::take(&mut count));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!(
                        "netlink event socket overrun (ENOBUFS): messages lost, resyncing"
                    );
                    m.count_overrun("rtnetlink");
                    overrun = true;
                }
                Err(e) => return Err(nl_err("event recv", e)),
            }
        }
        if let Some(s) = &nft_ev {
            match nftables::drain(s, &mut buf, &mut evs) {
                Ok(c) => count += c,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!(
                        "nftables event socket overrun (ENOBUFS): messages lost, resyncing the nftables kinds"
                    );
                    m.count_overrun("nftables");
                    nft_overrun = true;
                    // Read on to the end of the queue before the re-dump.
                    read_past_overruns(
                        || {
                            // `drain` reads until the queue is empty.
                            count += nftables::drain(s, &mut buf, &mut evs)?;
                            Ok(false)
                        },
                        || m.count_overrun("nftables"),
                    )
                    .map_err(|e| nl_err("nftables event recv", e))?;
                }
                Err(e) => return Err(nl_err("nftables event recv", e)),
            }
        }
        proxy |= m.apply_events(&mut evs, count);
        let mut kinds: BTreeSet<ObjectKind> =
            std::mem::take(&mut *m.control().resync.lock().unwrap());
        if overrun {
            // Flows are the conntrack source's (another socket): not dumped here.
            kinds.extend(
                ObjectKind::ALL
                    .iter()
                    .filter(|k| !nftables::is_nft(**k) && **k != ObjectKind::Flow),
            );
        }
        if nft_overrun {
            kinds.extend(ObjectKind::ALL.iter().filter(|k| nftables::is_nft(**k)));
        }
        // tc's notifications come on the rtnetlink socket.
        let tc = overrun | m.control().tc_resync.swap(false, Ordering::SeqCst);
        let overrun = overrun | nft_overrun;
        if !kinds.is_empty() || tc {
            let t = Instant::now();
            // Routes are streamed into the table (mark and sweep), after the other kinds.
            let routes = kinds.contains(&ObjectKind::Route);
            let mut others = kinds.clone();
            others.remove(&ObjectKind::Route);
            let r = snapshot(&mut req, &others).and_then(|(mut snap, mut n)| {
                if tc {
                    let (state, c, intr) = req.dump_tc()?;
                    if intr {
                        m.control().tc_resync.store(true, Ordering::SeqCst);
                    }
                    n += c;
                    snap.tc = Some(state);
                }
                Ok((snap, n))
            });
            match r {
                Ok((snap, n)) => {
                    m.count_redump(&kinds, tc);
                    m.reconcile(snap, n, t.elapsed().as_millis() as u64, !routes);
                    if routes {
                        if let Err(e) = stream_route_resync(m, &mut req, t) {
                            tracing::warn!(error = %e, "route resync failed, retrying");
                            m.control().resync.lock().unwrap().insert(ObjectKind::Route);
                            std::thread::sleep(Duration::from_millis(100));
                            m.control().wake();
                            continue;
                        }
                    }
                    // After an overrun this is news; a targeted re-dump (eBPF saw a neighbour
                    // created, ring-buffer loss) is routine.
                    let ms = t.elapsed().as_millis() as u64;
                    if overrun {
                        tracing::info!(ms, ?kinds, "mirror resynced");
                    } else {
                        tracing::debug!(ms, ?kinds, "mirror re-dumped");
                    }
                }
                Err(e) => {
                    // Not fatal: keep listening and try again shortly.
                    tracing::warn!(error = %e, ?kinds, tc, "resync failed, retrying");
                    m.control().resync.lock().unwrap().extend(kinds);
                    if tc {
                        m.control().tc_resync.store(true, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    m.control().wake();
                }
            }
            continue;
        }
        let due = next_proxy.is_some_and(|t| Instant::now() >= t);
        if proxy || due {
            match proxy_snapshot(&mut req) {
                Ok((snap, n)) => m.reconcile(snap, n, 0, false),
                Err(e) => tracing::warn!(error = %e, "proxy neighbour re-dump failed"),
            }
            if due {
                next_proxy = opts.proxy_poll.map(|d| Instant::now() + d);
            }
        }
    }
}

/// [`SourceOptions::fail_after_sync`]: puts `/dev/null` in place of the socket's descriptor.
fn break_socket(s: &Socket) -> Result<(), SourceError> {
    tracing::warn!("fault injection (fail_after_sync): breaking the netlink event socket");
    let null = std::fs::File::open("/dev/null").map_err(|e| nl_err("fault injection", e))?;
    // SAFETY: dup2 between two valid descriptors; the socket's number keeps being owned by `s`.
    if unsafe { libc::dup2(null.as_raw_fd(), s.as_raw_fd()) } < 0 {
        return Err(nl_err("fault injection", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_the_errno() {
        let e = enter_netns(std::path::Path::new("/nonexistent/ekho-netns")).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
        let e = refused("dump of type 26", -libc::EPERM);
        assert_eq!(e.errno(), Some(libc::EPERM));
        assert_eq!(
            e.to_string(),
            "netlink: dump of type 26: Operation not permitted (os error 1)"
        );
        assert_eq!(SourceError::ThreadDied.errno(), None);
        let e = Mirror::new()
            .resolve_neighbour(1, "10.0.0.1".parse().unwrap())
            .unwrap_err();
        assert!(matches!(e, SourceError::NotRunning), "{e}");
    }
}
