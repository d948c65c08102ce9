//! The churn benchmark harness (`examples/bench_churn.rs` runs it in full, `tests/churn.rs` runs
//! a 10k-route version in the test suite): a fast route writer of its own (many requests per
//! `send`, no acknowledgement asked, messages built before the clock starts), raw and parsed
//! dumps as references, and the daemon driven through its CLI while the writer churns.
//!
//! Every figure it measures has its reference from the same run: the kernel's accept rate with
//! ekho listening against the same writer with nobody listening; the daemon's initial sync
//! against a raw dump of the same table; its memory against an idle daemon.

use crate::{host_config, Daemon, Netns, TempDir};
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const RT_TABLE_MAIN: u8 = 254;

/// Address family of a churn set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4: `32.0.0.0/24` upwards (a /24 per route), via the gateways 10.0.1.1-4 on `va`.
    V4,
    /// IPv6: `2a00:0:0::/48` upwards (a /48 per route), on `va` without gateway.
    V6,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }

    /// `-4` or `-6` for iproute2.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// The `i`-th destination of the family's churn set and its prefix length.
    fn dst(self, i: u32) -> (Vec<u8>, u8) {
        match self {
            Family::V4 => ((0x2000_0000u32 + (i << 8)).to_be_bytes().to_vec(), 24),
            Family::V6 => {
                let mut a = [0u8; 16];
                a[0] = 0x2a;
                a[2..6].copy_from_slice(&i.to_be_bytes());
                (a.to_vec(), 48)
            }
        }
    }
}

/// Add or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `RTM_NEWROUTE` with `NLM_F_CREATE | NLM_F_EXCL`.
    Add,
    /// `RTM_DELROUTE`.
    Delete,
}

fn push_attr(b: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    b.extend_from_slice(&(len as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(data);
    b.resize(b.len() + (4 - len % 4) % 4, 0);
}

/// One route request, appended to `b`.
fn route_msg(b: &mut Vec<u8>, op: Op, fam: Family, i: u32, ifindex: u32) {
    let start = b.len();
    let (ty, flags) = match op {
        Op::Add => (RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL),
        Op::Delete => (RTM_DELROUTE, NLM_F_REQUEST),
    };
    b.extend_from_slice(&0u32.to_ne_bytes()); // length, below
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&i.to_ne_bytes()); // sequence
    b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    let (dst, len) = fam.dst(i);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let (proto, scope, rtype) = match op {
        Op::Add => (4u8, 0u8, 1u8), // static, universe, unicast
        Op::Delete => (0, 255, 0),  // as iproute2 deletes: any protocol, scope nowhere
    };
    b.extend_from_slice(&[fam.af(), len, 0, 0, RT_TABLE_MAIN, proto, scope, rtype]);
    b.extend_from_slice(&0u32.to_ne_bytes());
    push_attr(b, 1, &dst); // RTA_DST
    if op == Op::Add {
        match fam {
            Family::V4 => push_attr(b, 5, &[10, 0, 1, (i % 4) as u8 + 1]), // RTA_GATEWAY
            Family::V6 => push_attr(b, 4, &ifindex.to_ne_bytes()),         // RTA_OIF
        }
    }
    let n = (b.len() - start) as u32;
    b[start..start + 4].copy_from_slice(&n.to_ne_bytes());
}

/// Builds the release `packages` of this workspace (`cargo build --release -p ...`, as the
/// benchmarks run them) and returns `target/release`; the kit's CLI calls use that build too
/// (`EKHO_TEST_BUILD_DIR`).
pub fn release_build(packages: &[&str]) -> PathBuf {
    let ws = crate::workspace();
    let mut args = vec!["build", "--release"];
    for p in packages {
        args.extend(["-p", p]);
    }
    let st = std::process::Command::new(env!("CARGO"))
        .current_dir(&ws)
        .args(&args)
        .status()
        .expect("running cargo build");
    assert!(st.success(), "cargo {}: {st}", args.join(" "));
    let dir = ws.join("target/release");
    std::env::set_var("EKHO_TEST_BUILD_DIR", &dir);
    dir
}

/// Runs `f` on a scratch thread inside the netns at `path` (the caller's netns is untouched).
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        ekho_mirror::source::enter_netns(&p).unwrap();
        f()
    })
    .join()
    .expect("netns thread panicked")
}

fn netlink_socket(protocol: i32) -> OwnedFd {
    // SAFETY: plain socket call; checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    assert!(
        fd >= 0,
        "netlink socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn set_int_opt(fd: &OwnedFd, opt: i32, v: i32) {
    // SAFETY: setsockopt with a valid int.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &v as *const i32 as *const libc::c_void,
            4,
        )
    };
}

/// What one writer run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Written {
    /// Requests sent.
    pub requests: u64,
    /// Requests the kernel refused (its error replies, read after the run).
    pub refused: u64,
    /// From the first `send` to the return of the last: the kernel processes a request inside
    /// the writer's `send`, so this is the kernel's own time to accept them.
    pub took: Duration,
    /// When the last `send` returned.
    pub ended: Option<Instant>,
}

impl Written {
    /// Requests accepted per second.
    pub fn rate(&self) -> f64 {
        (self.requests - self.refused) as f64 / self.took.as_secs_f64()
    }
}

/// The fast writer: `op` on routes `range` of `fam` in the netns at `ns`, about 32 KiB of
/// requests per `send` (built before the clock starts), no acknowledgement asked. Refusals come
/// back as error messages and are counted after the run.
pub fn write_routes(
    ns: &Path,
    op: Op,
    fam: Family,
    range: std::ops::Range<u32>,
    ifindex: u32,
) -> Written {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut b = Vec::with_capacity(33 << 10);
    for i in range.clone() {
        route_msg(&mut b, op, fam, i, ifindex);
        if b.len() >= 32 << 10 {
            chunks.push(std::mem::replace(&mut b, Vec::with_capacity(33 << 10)));
        }
    }
    if !b.is_empty() {
        chunks.push(b);
    }
    send_requests(ns, libc::NETLINK_ROUTE, chunks, range.len() as u64)
}

/// Sends `chunks` (each a run of requests, no acknowledgement asked) on a fresh netlink socket
/// of `protocol` in the netns at `ns`, as fast as the kernel takes them, then counts the error
/// replies (the refusals). `requests` is how many the chunks hold.
pub fn send_requests(ns: &Path, protocol: i32, chunks: Vec<Vec<u8>>, requests: u64) -> Written {
    in_netns(ns, move || {
        let fd = netlink_socket(protocol);
        set_int_opt(&fd, libc::SO_RCVBUFFORCE, 64 << 20);
        set_int_opt(&fd, libc::SO_SNDBUFFORCE, 4 << 20);
        let t = Instant::now();
        for c in &chunks {
            let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            sa.nl_family = libc::AF_NETLINK as u16;
            // SAFETY: sending a valid buffer to the kernel's netlink address.
            let r = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    c.as_ptr() as *const libc::c_void,
                    c.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                )
            };
            assert_eq!(
                r,
                c.len() as isize,
                "send: {}",
                std::io::Error::last_os_error()
            );
        }
        let took = t.elapsed();
        let ended = Instant::now();
        // Count the refusals (error replies; nothing else is sent to this socket).
        let mut refused = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: receiving into a valid buffer.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
            let mut at = 0usize;
            while at + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
                if ty == NLMSG_ERROR {
                    refused += 1;
                }
                if len < 16 {
                    break;
                }
                at += (len + 3) & !3;
            }
        }
        Written {
            requests,
            refused,
            took,
            ended: Some(ended),
        }
    })
}

/// A listener that only receives: the IPv4 and IPv6 route groups on a socket with the daemon's
/// buffer ([`ekho_mirror::source::DEFAULT_RCVBUF`]), every datagram read and dropped, its
/// messages counted. The kernel's accept rate with it listening is the floor of any listener's:
/// what building and queueing the notifications costs the kernel (and the reader's `recv`), with
/// nothing done with them.
pub struct Drain {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Tenths of a second since the last datagram, as the caller counts them (the thread
    /// resets it to 0 at each datagram).
    idle: std::sync::Arc<std::sync::atomic::AtomicU32>,
    thread: Option<std::thread::JoinHandle<Drained>>,
}

/// What a [`Drain`] received.
#[derive(Clone, Copy, Debug, Default)]
pub struct Drained {
    /// Netlink messages received.
    pub messages: u64,
    /// Receive errors `ENOBUFS` (the socket's buffer overran: notifications lost).
    pub overruns: u64,
    /// When the last datagram came.
    pub last: Option<Instant>,
}

impl Drain {
    /// Starts listening in the netns at `ns`; returns once the socket is bound.
    pub fn start(ns: &Path) -> Drain {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let p = ns.to_path_buf();
        let st = stop.clone();
        let idle = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let quiet = idle.clone();
        let thread = std::thread::spawn(move || {
            ekho_mirror::source::enter_netns(&p).unwrap();
            let fd = netlink_socket(libc::NETLINK_ROUTE);
            set_int_opt(
                &fd,
                libc::SO_RCVBUFFORCE,
                ekho_mirror::source::DEFAULT_RCVBUF as i32,
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: setsockopt with a valid timeval; bind with a valid sockaddr_nl.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                let mut sa: libc::sockaddr_nl = std::mem::zeroed();
                sa.nl_family = libc::AF_NETLINK as u16;
                sa.nl_groups = (libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_ROUTE) as u32;
                let r = libc::bind(
                    fd.as_raw_fd(),
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                );
                assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            }
            ready_tx.send(()).unwrap();
            let mut got = Drained::default();
            let mut buf = vec![0u8; 1 << 16];
            while !st.load(Ordering::Relaxed) {
                // SAFETY: receiving into a valid buffer.
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    match std::io::Error::last_os_error().raw_os_error() {
                        Some(libc::ENOBUFS) => got.overruns += 1,
                        Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                        e => panic!("drain recv: errno {e:?}"),
                    }
                    continue;
                }
                got.last = Some(Instant::now());
                quiet.store(0, Ordering::Relaxed);
                let mut at = 0usize;
                while at + 16 <= n as usize {
                    let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                    got.messages += 1;
                    if len < 16 {
                        break;
                    }
                    at += (len + 3) & !3;
                }
            }
            got
        });
        ready.recv().expect("drain thread started");
        Drain {
            stop,
            idle,
            thread: Some(thread),
        }
    }

    /// Stops listening once nothing came for a second (the writer done, the queue read);
    /// returns what it received.
    pub fn stop(mut self) -> Drained {
        use std::sync::atomic::Ordering;
        while self.idle.load(Ordering::Relaxed) < 10 {
            self.idle.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("drain thread")
    }
}

/// A dump of every route of `fam` in `ns` (all tables) on a raw request socket: received and
/// split only, or (`parse`) also parsed with netlink-packet-route. Returns (messages, time).
pub fn dump_routes(ns: &Path, fam: Family, parse: bool) -> (u64, Duration) {
    in_netns(ns, move || {
        let mut s = ekho_mirror::source::ReqSocket::new().unwrap();
        let mut h = vec![0u8; 12];
        h[0] = fam.af();
        let t = Instant::now();
        let c = s.dump_baseline(RTM_GETROUTE, &h, parse).unwrap();
        (c, t.elapsed())
    })
}

/// Best of `n` runs of `f`.
pub fn best_of(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..n).map(|_| f()).min().unwrap()
}

/// A namespace ready for churn: `va` (veth, up, 10.0.0.1/16 and 2001:db8::1/64; the v4 gateways
/// 10.0.1.1-4 are on its subnet) and `vl` (10.9.0.1/24, for latency probes through a port of
/// its own).
pub struct Bench {
    /// The namespace (deleted on drop).
    pub ns: Netns,
    /// `va`'s ifindex.
    pub va: u32,
    /// Scratch directory (daemon configs, FIFOs).
    pub dir: TempDir,
    /// Directory of the `ekho` binary and the plugins used.
    pub bin_dir: PathBuf,
}

impl Bench {
    /// A fresh namespace; `bin_dir` holds `ekho`, `libekho_null.so`, `libekho_recorder.so`.
    pub fn new(bin_dir: &Path) -> Bench {
        let ns = Netns::new();
        ns.ip("link add va type veth peer name vb");
        ns.ip("link add vl type veth peer name vlp");
        for d in ["va", "vb", "vl", "vlp"] {
            ns.ip(&["link", "set", d, "up"]);
        }
        ns.ip("addr add 10.0.0.1/16 dev va");
        ns.ip("addr add 2001:db8::1/64 dev va nodad");
        ns.ip("addr add 10.9.0.1/24 dev vl");
        let va = ns.ifindex("va");
        // Link-local addresses (and their routes) come after duplicate address detection: let
        // them settle so the churn's counts start from a still table.
        crate::wait_for(Duration::from_secs(10), || {
            ns.ip("-6 addr show tentative")
                .trim()
                .is_empty()
                .then_some(())
        });
        std::thread::sleep(Duration::from_millis(200));
        Bench {
            ns,
            va,
            dir: TempDir::new(),
            bin_dir: bin_dir.to_path_buf(),
        }
    }

    /// The fast writer on this namespace.
    pub fn write(&self, op: Op, fam: Family, range: std::ops::Range<u32>) -> Written {
        write_routes(&self.ns.path(), op, fam, range, self.va)
    }

    /// Kernel routes of `fam`, all tables (a raw dump).
    pub fn kernel_routes(&self, fam: Family) -> u64 {
        dump_routes(&self.ns.path(), fam, false).0
    }

    /// Starts the daemon with `nulls` copies of the `null` plugin (and `extra` `[[plugins]]`
    /// text) and waits (polling every 5 ms) until the mirror is synced and no plugin is syncing.
    /// Returns it with the time from start to then.
    pub fn daemon(&self, nulls: usize, extra: &str) -> (Daemon, Duration) {
        self.daemon_under(&[], "", nulls, extra)
    }

    /// [`Bench::daemon`] run under `wrapper` (a command and its arguments the daemon's command
    /// line is appended to, e.g. `valgrind --tool=callgrind`; empty: none), with `host` lines
    /// added to the config's `[host]` table.
    pub fn daemon_under(
        &self,
        wrapper: &[String],
        host: &str,
        nulls: usize,
        extra: &str,
    ) -> (Daemon, Duration) {
        let mut plugins = String::new();
        for i in 0..nulls {
            plugins.push_str(&format!(
                "[[plugins]]\nname = \"null-{i}\"\npath = \"libekho_null.so\"\n\n"
            ));
        }
        plugins.push_str(extra);
        let dir = self.dir.path().join(crate::unique("d"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("ekho.sock");
        let config = dir.join("ekho.toml");
        let text = host_config(&self.ns.name, &self.bin_dir, false, &plugins)
            .replace("{socket}", &socket.display().to_string())
            .replacen("[host]\n", &format!("[host]\n{host}"), 1);
        std::fs::write(&config, text).unwrap();
        let log = dir.join("ekho.log");
        let t = Instant::now();
        let ekho = self.bin_dir.join("ekho");
        let mut cmd = match wrapper.split_first() {
            Some((w, args)) => {
                let mut c = std::process::Command::new(w);
                c.args(args).arg(&ekho);
                c
            }
            None => std::process::Command::new(&ekho),
        };
        let child = cmd
            .args(["--config", config.to_str().unwrap(), "run"])
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(dir.join("ekho.stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            config,
            socket,
            log,
        };
        loop {
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ekho exited ({st}) before it was ready:\n{}", d.log_text());
            }
            if let Ok(s) = d.try_cli_json(&["status", "--json"]) {
                let syncing = s["plugins"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["state"] == "syncing");
                if s["mirror"]["synced"] == true && !syncing {
                    return (d, t.elapsed());
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "ekho not ready in 300 s:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The daemon's process id.
    pub fn pid(d: &Daemon) -> u32 {
        d.child.as_ref().unwrap().id()
    }
}

/// The daemon's counters that the churn figures read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Mirror: socket overruns.
    pub overruns: u64,
    /// Mirror: resyncs.
    pub resyncs: u64,
    /// Mirror: routes held.
    pub routes: u64,
    /// The fewest routes held for a null plugin (its `outcomes.routes`, summed).
    pub plugin_routes_min: u64,
    /// The most routes held for a null plugin.
    pub plugin_routes_max: u64,
    /// Summed queue depth of the plugins.
    pub queued: u64,
}

/// The daemon's status, asked on its control socket directly (what `ekho status --json`
/// prints, without starting a process per poll: the polling must not compete with the daemon).
pub fn status(d: &Daemon) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", d.socket.display(), d.log_text()));
    s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

/// Reads [`Counters`] from the daemon's status (null plugins only: names `null-*`).
pub fn counters(d: &Daemon) -> Counters {
    let s = status(d);
    let m = &s["mirror"];
    let nulls: Vec<&serde_json::Value> = s["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap_or("").starts_with("null-"))
        .collect();
    // Routes only: the host also resolves the gateways, whose neighbours come and stay.
    let objs = nulls.iter().map(|p| {
        p["outcomes"]["routes"]
            .as_object()
            .map(|o| o.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0)
    });
    Counters {
        overruns: m["overruns"].as_u64().unwrap_or(0),
        resyncs: m["resyncs"].as_u64().unwrap_or(0),
        routes: m["objects"]["routes"].as_u64().unwrap_or(0),
        plugin_routes_min: objs.clone().min().unwrap_or(0),
        plugin_routes_max: objs.max().unwrap_or(0),
        queued: nulls
            .iter()
            .map(|p| p["queue_depth"].as_u64().unwrap_or(0))
            .sum(),
    }
}

/// Polls the daemon until every null plugin holds `routes` routes with nothing queued; returns
/// when that was first seen (`None` after `timeout`).
pub fn wait_plugins(d: &Daemon, routes: u64, timeout: Duration) -> Option<Instant> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        let c = counters(d);
        if c.plugin_routes_min == routes && c.plugin_routes_max == routes && c.queued == 0 {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The routes of table main of `fam` as (dst, gateway, dev) from a dump-shaped JSON list
/// (iproute2's `ip -j route` or `ekho dump routes --json`).
fn route_set(v: &serde_json::Value, fam: Family) -> BTreeSet<(String, String, String)> {
    let s = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["table"].as_str().unwrap_or("main") == "main")
        .filter(|r| {
            let dst = s(r, "dst");
            (fam == Family::V6) == dst.contains(':') && dst != "default"
        })
        .filter(|r| s(r, "type").is_empty() || s(r, "type") == "unicast")
        .map(|r| (s(r, "dst"), s(r, "gateway"), s(r, "dev")))
        .collect()
}

/// Whether the daemon's routes of table main (`fam`) are exactly the kernel's: same
/// destinations, gateways and devices. Returns the number compared, or the first differences.
pub fn same_routes(b: &Bench, d: &Daemon, fam: Family) -> Result<usize, String> {
    let kernel =
        b.ns.ip_json(&[fam.ip_flag(), "route", "show", "table", "main"]);
    let dump = d.cli_json(&["dump", "routes", "--json"]);
    let list = if dump.is_array() {
        dump
    } else {
        dump["routes"].clone()
    };
    let k = route_set(&kernel, fam);
    let m = route_set(&list, fam);
    if k == m {
        return Ok(k.len());
    }
    let missing: Vec<_> = k.difference(&m).take(5).collect();
    let extra: Vec<_> = m.difference(&k).take(5).collect();
    Err(format!(
        "{} kernel routes, {} in ekho; missing in ekho {missing:?}, extra {extra:?}",
        k.len(),
        m.len()
    ))
}

/// One churn phase with the daemon listening: the writer's run and how the daemon kept up.
#[derive(Clone, Debug, Default)]
pub struct Phase {
    /// The writer's run.
    pub written: Written,
    /// From the writer's last `send` to every plugin holding the final view (`None`: not
    /// reached in time).
    pub behind: Option<Duration>,
    /// Changes per second delivered to the plugins (writer start to caught up).
    pub delivered_per_s: f64,
    /// Overruns and resyncs during the phase.
    pub overruns: u64,
    /// Resyncs during the phase.
    pub resyncs: u64,
}

/// Runs `op` over `range` of `fam` with daemon `d` listening (caught up before), waiting until
/// its plugins hold that many routes more (or fewer).
pub fn churn_phase(
    b: &Bench,
    d: &Daemon,
    op: Op,
    fam: Family,
    range: std::ops::Range<u32>,
    timeout: Duration,
) -> Phase {
    let before = counters(d);
    let expect = match op {
        Op::Add => before.plugin_routes_max + range.len() as u64,
        Op::Delete => before.plugin_routes_max - range.len() as u64,
    };
    let n = range.len() as f64;
    let start = Instant::now();
    let written = b.write(op, fam, range);
    let caught = wait_plugins(d, expect, timeout);
    let after = counters(d);
    if caught.is_none() {
        eprintln!(
            "{fam:?} {op:?} of {n}: plugins never held {expect} routes in {timeout:?}: {after:?}"
        );
    }
    let ended = written.ended.unwrap();
    Phase {
        written,
        behind: caught.map(|c| c.saturating_duration_since(ended)),
        delivered_per_s: caught
            .map(|c| n / c.duration_since(start).as_secs_f64())
            .unwrap_or(0.0),
        overruns: after.overruns - before.overruns,
        resyncs: after.resyncs - before.resyncs,
    }
}

/// Peak resident set (VmHWM) of process `pid`, KiB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Percentile `p` (0..=100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i]
}

/// Latency probes through the `recorder` plugin, which owns only port `vl` (so the churn on `va`
/// never reaches it) and writes each change it applies as a JSON line into a FIFO read here.
pub struct Probe {
    lines: std::sync::mpsc::Receiver<(Instant, String)>,
    next: u32,
}

impl Probe {
    /// Creates the FIFO and its reader; returns the probe and the `[[plugins]]` text of the
    /// recorder to pass to [`Bench::daemon`].
    pub fn new(b: &Bench) -> (Probe, String) {
        let fifo = b
            .dir
            .path()
            .join(crate::unique("lat"))
            .with_extension("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Blocks until the recorder opens it.
            let Ok(file) = std::fs::File::open(&f) else {
                return;
            };
            for line in std::io::BufReader::new(file).lines() {
                let Ok(line) = line else { return };
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        let plugin = format!(
            "[[plugins]]\nname = \"recorder\"\nports = [\"vl\"]\n[plugins.config]\nevents_path = \"{}\"\nkinds = [\"route\"]\n\n",
            fifo.display()
        );
        (Probe { lines: rx, next: 1 }, plugin)
    }

    /// `rounds` probes, one at a time: a single `RTM_NEWROUTE` (10.250.x.y/32 via 10.9.0.2 on
    /// `vl`) sent, then its line from the recorder awaited. Returns each round's time from the
    /// `send` to the line (missed rounds, 2 s without the line, are counted apart), stopping
    /// early when `stop` returns true.
    pub fn run(
        &mut self,
        b: &Bench,
        rounds: u32,
        gap: Duration,
        stop: &dyn Fn() -> bool,
    ) -> (Vec<Duration>, u32) {
        let fd = in_netns(&b.ns.path(), || netlink_socket(libc::NETLINK_ROUTE));
        let mut lat = Vec::new();
        let mut missed = 0;
        for _ in 0..rounds {
            if stop() {
                break;
            }
            let i = self.next;
            self.next += 1;
            let dst = [10, 250, (i >> 8) as u8, i as u8];
            let want = format!("\"dst\":\"10.250.{}.{}\"", dst[2], dst[3]);
            let mut m = Vec::with_capacity(64);
            let start = m.len();
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
            m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL).to_ne_bytes());
            m.extend_from_slice(&i.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&[libc::AF_INET as u8, 32, 0, 0, RT_TABLE_MAIN, 4, 0, 1]);
            m.extend_from_slice(&0u32.to_ne_bytes());
            push_attr(&mut m, 1, &dst);
            push_attr(&mut m, 5, &[10, 9, 0, 2]);
            let n = (m.len() - start) as u32;
            m[0..4].copy_from_slice(&n.to_ne_bytes());
            let t = Instant::now();
            // SAFETY: sending a valid buffer on a connected-less netlink socket to the kernel.
            let r = unsafe {
                let mut sa: libc::sockaddr_nl = std::mem::zeroed();
                sa.nl_family = libc::AF_NETLINK as u16;
                libc::sendto(
                    fd.as_raw_fd(),
                    m.as_ptr() as *const libc::c_void,
                    m.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                )
            };
            assert_eq!(r, m.len() as isize, "probe send");
            let deadline = t + Duration::from_secs(2);
            let got = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok((at, line)) if line.contains(&want) && line.contains("\"op\":\"add\"") => {
                        break Some(at)
                    }
                    Ok(_) => continue,
                    Err(_) => break None,
                }
            };
            match got {
                Some(at) => lat.push(at - t),
                None => missed += 1,
            }
            std::thread::sleep(gap);
        }
        lat.sort();
        (lat, missed)
    }
}

/// Batch size of [`dispatch_cost`]: the dispatcher's batch.
pub const DISPATCH_BATCH: usize = 1024;

/// Per-change cost of handing route additions to a plugin across the ABI in batches of
/// [`DISPATCH_BATCH`], with its references from the same run (best of 3 each).
#[derive(Clone, Copy, Debug)]
pub struct Dispatch {
    /// Changes per round.
    pub changes: usize,
    /// Into the `null` plugin's `.so`, through abi_stable.
    pub abi: Duration,
    /// The same work (what `null` does per change) in-process, by a direct call.
    pub direct: Duration,
    /// One clone of each change (the queue's copy; a conversion for an older minor is one such
    /// copy).
    pub clone: Duration,
}

impl Dispatch {
    /// Nanoseconds per change of `d`.
    pub fn per_change(&self, d: Duration) -> f64 {
        d.as_nanos() as f64 / self.changes as f64
    }
}

/// Measures [`Dispatch`] with the `null` plugin at `so` over `n` route additions.
pub fn dispatch_cost(so: &Path, n: usize) -> Dispatch {
    use ekho_plugin_api::abi_stable::std_types::RSlice;
    use ekho_plugin_api::plugin::PluginModRef;
    use ekho_plugin_api::prelude::*;
    let module = ekho_plugin_api::abi_stable::library::lib_header_from_path(so)
        .and_then(|h| h.init_root_module::<PluginModRef>())
        .unwrap_or_else(|e| panic!("{}: {e}", so.display()));
    let mut plugin = (module.create())("".into(), ekho_plugin_api::DetachedHost::handle())
        .into_result()
        .unwrap();
    let changes: Vec<Change> = (0..n as u32)
        .map(|i| {
            let dst = IpPrefix::new(IpAddress::V4((0x2000_0000u32 + (i << 8)).to_be_bytes()), 24);
            let gw = IpAddress::V4([10, 0, 1, (i % 4) as u8 + 1]);
            Change::Add(Object::Route(Route::unicast(
                dst,
                vec![NextHop::via(gw, 2)],
            )))
        })
        .collect();
    let abi = best_of(3, || {
        let t = Instant::now();
        for chunk in changes.chunks(DISPATCH_BATCH) {
            let out = plugin
                .apply(RSlice::from_slice(chunk))
                .into_result()
                .unwrap();
            assert_eq!(out.len(), chunk.len());
        }
        t.elapsed()
    });
    // What plugins/null does per change, in-process.
    let mut counts = [0u64; ObjectKind::ALL.len()];
    let mut local = |changes: &[Change]| -> Vec<Outcome> {
        changes
            .iter()
            .map(|c| {
                counts[c.kind().index()] += 1;
                Outcome::Offloaded
            })
            .collect()
    };
    let direct = best_of(3, || {
        let t = Instant::now();
        for chunk in changes.chunks(DISPATCH_BATCH) {
            let out = local(std::hint::black_box(chunk));
            assert_eq!(out.len(), chunk.len());
        }
        t.elapsed()
    });
    let clone = best_of(3, || {
        let t = Instant::now();
        for chunk in changes.chunks(DISPATCH_BATCH) {
            let v: Vec<Change> = std::hint::black_box(chunk).to_vec();
            std::hint::black_box(&v);
        }
        t.elapsed()
    });
    Dispatch {
        changes: n,
        abi,
        direct,
        clone,
    }
}
