//! The flow benchmark: conntrack set-ups and tear-downs through the daemon's conntrack mirror,
//! every figure beside its reference from the same run.
//!
//! `cargo run --release -p ekho-tests --example bench_flows -- [FLOWS=100000] [RATES=25000,50000,0]`
//! (as root; builds the release `ekho` and `null`; the namespace is deleted on exit, also on
//! panic). For each rate (set-ups per second; 0: as fast as one sender goes) it starts a daemon
//! with one `null` plugin (`[flows] limit` above FLOWS, `refresh_s = 0`: no periodic re-dump
//! hides a loss) and `conntrack -E` beside it, makes FLOWS UDP flows (one datagram each to a
//! distinct address and port on the namespace's loopback, dropped at input so no ICMP error
//! follows: one NEW entry each), waits for the mirror to settle, flushes them (`conntrack -F`,
//! FLOWS DESTROY events) and prints:
//!
//! - the set-up rate reached, and how many NEW and DESTROY events ekho read against made, with
//!   `conntrack -E` (the peer, the same events on its own socket) printed against made;
//! - overruns and resyncs (zero loss means no overrun: a resync repairs the table, but what a
//!   plugin is fed from events was lost);
//! - the final table against the kernel's (`conntrack -C`);
//! - the daemon's resident memory per flow held (RSS growth over the daemon before the flows)
//!   against the mirror table's own cost per entry.
//!
//! Then offload candidates into a plugin: a ctnetlink writer of its own (`IPCTNL_MSG_CT_NEW`
//! and `_DELETE` requests, about 32 KiB per `send`, no ack) creates FLOWS `ESTABLISHED`
//! `ASSURED` TCP entries and deletes them, once with nobody listening (the reference) and once
//! with the daemon (its `null` plugin takes flows) and `conntrack -E` listening: the kernel's
//! accept rate with against without, the time from the writer's last `send` until the plugin
//! holds the final set (every flow; none), changes/s into the plugin, overruns and resyncs,
//! and `conntrack -E`'s lines against made. `RATES` empty (`""`) runs only this part.

use ekho_tests::bench::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `conntrack -E -e KIND` in the namespace, counting the lines it prints on a thread.
struct Peer {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Peer {
    fn start(ns: &str, kind: &str, stderr: &std::path::Path) -> Peer {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "conntrack", "-E", "-e", kind])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .expect("conntrack -E");
        let out = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let l = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                if line.is_err() {
                    break;
                }
                l.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        // Its socket joins the group before the first flow is made.
        std::thread::sleep(Duration::from_millis(300));
        Peer {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// Lets it print what it still has (until its output stops growing for 1 s, what it
    /// wrote to the pipe counted), then stops it with SIGINT, on which it flushes its buffered
    /// output and exits; returns the lines it printed.
    fn stop(mut self) -> u64 {
        let count = || self.lines.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = count();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if count() == last {
                break;
            }
            last = count();
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        count()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `n` UDP flows from one socket inside the netns: datagram `i` goes to 127.(1 + i /
/// 60000 / 256).(i / 60000 % 256).1, port 1000 + i % 60000; paced to `rate` per second (0:
/// unpaced). Returns the time taken.
fn make_flows(ns: &std::path::Path, n: u32, rate: u32) -> Duration {
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = Instant::now();
        for i in 0..n {
            let block = i / 60_000;
            let addr =
                std::net::Ipv4Addr::new(127, 1 + (block / 256) as u8, (block % 256) as u8, 1);
            let port = 1000 + (i % 60_000) as u16;
            s.send_to(b"x", (addr, port)).unwrap();
            if rate > 0 && i % 256 == 255 {
                let due = Duration::from_secs_f64(f64::from(i + 1) / f64::from(rate));
                if let Some(wait) = due.checked_sub(t.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        t.elapsed()
    })
}

/// The conntrack writer's requests for TCP entries `0..n` (original 10.1.x.y:sport ->
/// 10.2.0.1:80, the reply reversed), about 32 KiB per chunk, no acknowledgement asked:
/// `create`, entries in `ESTABLISHED` with `ASSURED` and `SEEN_REPLY` and a 600 s timeout (what
/// `conntrack -I` makes, one offload candidate each by the default policy), or their deletes.
/// The status also carries `CONFIRMED`, as `conntrack -I` sends it: the kernel refuses a status
/// without it with `EBUSY` (it would clear a bit user space may not change).
fn ct_requests(n: u32, create: bool) -> Vec<Vec<u8>> {
    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
    };
    use netlink_packet_netfilter::conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
        Protocol, Status, Tuple,
    };
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
    let tuple = |src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, sport: u16, dport: u16| {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src.into()),
                IPTuple::DestinationAddress(dst.into()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Tcp),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    };
    let mut chunks = Vec::new();
    let mut b: Vec<u8> = Vec::with_capacity(33 << 10);
    for i in 0..n {
        let src = std::net::Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8);
        let dst = std::net::Ipv4Addr::new(10, 2, 0, 1);
        let (sport, dport) = (1024 + (i >> 16) as u16, 80);
        let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple(
            src, dst, sport, dport,
        ))];
        if create {
            attrs.push(ConntrackAttribute::CtaTupleReply(tuple(
                dst, src, dport, sport,
            )));
            attrs.push(ConntrackAttribute::CtaStatus(
                Status::Assured | Status::SeenReply | Status::Confirmed,
            ));
            attrs.push(ConntrackAttribute::CtaTimeout(600));
            attrs.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(
                vec![
                    ProtoInfoTCP::State(3), // TCP_CONNTRACK_ESTABLISHED
                ],
            )]));
        }
        let nf = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::from(2u8), 0, 0),
            if create {
                ConntrackMessage::New(attrs)
            } else {
                ConntrackMessage::Delete(attrs)
            },
        );
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if create { NLM_F_CREATE | NLM_F_EXCL } else { 0 };
        header.sequence_number = i + 1;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(nf));
        msg.finalize();
        let at = b.len();
        b.resize(at + msg.buffer_len(), 0);
        msg.serialize(&mut b[at..]);
        if b.len() >= 32 << 10 {
            chunks.push(std::mem::replace(&mut b, Vec::with_capacity(33 << 10)));
        }
    }
    if !b.is_empty() {
        chunks.push(b);
    }
    chunks
}

/// The flows held for the `null` plugin.
fn offloaded(d: &ekho_tests::Daemon) -> u64 {
    status(d)["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "null-0")
        .and_then(|p| p["flows_offloaded"].as_u64())
        .unwrap_or(0)
}

/// Polls (every 2 ms) until the `null` plugin holds `flows` flows; when that was first seen.
fn wait_offloaded(d: &ekho_tests::Daemon, flows: u64, timeout: Duration) -> Option<Instant> {
    ekho_tests::wait_for(timeout, || {
        if offloaded(d) == flows {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(2));
        None
    })
}

/// conntrack's own count of the namespace's entries.
fn kernel_count(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack", "-C"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The daemon's `conntrack` status object.
fn ct(d: &ekho_tests::Daemon) -> serde_json::Value {
    status(d)["conntrack"].clone()
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// Waits until the daemon's table holds `flows` entries and its event count stops moving
/// (nothing more to read); returns the last status seen.
fn settle(d: &ekho_tests::Daemon, flows: u64, timeout: Duration) -> serde_json::Value {
    let t = Instant::now();
    let mut last = ct(d);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = ct(d);
        if num(&now, "flows") == flows && num(&now, "events") == num(&last, "events") {
            return now;
        }
        if t.elapsed() > timeout {
            eprintln!("not settled in {timeout:?}: {now}");
            return now;
        }
        last = now;
    }
}

fn main() {
    let mut a = std::env::args().skip(1);
    let n: u32 = a.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let rates: Vec<u32> = a
        .next()
        .unwrap_or_else(|| "25000,50000,0".into())
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| {
            r.parse()
                .expect("RATES: set-ups per second, comma-separated (0: unpaced)")
        })
        .collect();
    let bin_dir = ekho_tests::bench::release_build(&["ekho", "ekho-null"]);
    if ekho_tests::conntrack_unavailable() {
        return;
    }
    let b = Bench::new(&bin_dir);
    ekho_tests::track(&b.ns);
    b.ns.ip("link set lo up");
    for i in 0..(n / 60_000 + 1) {
        b.ns.ip(&[
            "addr",
            "add",
            &format!("127.{}.{}.1/32", 1 + i / 256, i % 256),
            "dev",
            "lo",
        ]);
    }
    // Dropped at input (after conntrack confirmed the entry at postrouting): no port
    // unreachable, no reply, each datagram one UNREPLIED entry.
    b.ns.run(&[
        "nft",
        "add chain inet track in { type filter hook input priority 0 ; }",
    ]);
    b.ns.run(&["nft", "add rule inet track in udp dport 1000-61000 drop"]);
    let table_entry = ekho_mirror::conntrack::Table::ENTRY_BYTES + 1;
    println!(
        "flows: {n} per round; load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if !rates.is_empty() {
        println!("| set-up rate asked | reached | ekho NEW read / made | `conntrack -E` NEW / made (its ENOBUFS reports) | overruns, resyncs (set-up) | table = kernel | flush: ekho DESTROY / made | `conntrack -E` DESTROY / made (ENOBUFS) | overruns, resyncs (flush) | RSS per flow (table entry {table_entry} B) |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
    }
    for rate in rates {
        let extra = format!("[flows]\nlimit = {}\nrefresh_s = 0\n", u64::from(n) * 2);
        let (d, _) = b.daemon(1, &extra);
        let pid = Bench::pid(&d);
        // The conntrack source starts once the mirror is synced.
        ekho_tests::wait_for(Duration::from_secs(30), || {
            (ct(&d)["state"] == "running").then_some(())
        })
        .expect("the daemon's conntrack source runs");
        let before = ct(&d);
        let rss0 = rss_kb(pid);
        let peer_err = b.dir.path().join("conntrack-E.err");
        let enobufs = || {
            std::fs::read_to_string(&peer_err)
                .unwrap_or_default()
                .matches("ENOBUFS")
                .count()
        };
        let new_peer = Peer::start(&b.ns.name, "NEW", &peer_err);
        let took = make_flows(&b.ns.path(), n, rate);
        let made = kernel_count(&b.ns.name);
        let up = settle(&d, made, Duration::from_secs(60));
        let rss1 = rss_kb(pid);
        let peer_new = new_peer.stop();
        let peer_new_enobufs = enobufs();
        let exact = num(&up, "flows") == kernel_count(&b.ns.name);

        let del_peer = Peer::start(&b.ns.name, "DESTROY", &peer_err);
        let t = Instant::now();
        let st = Command::new("ip")
            .args(["netns", "exec", &b.ns.name, "conntrack", "-F"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let flush = t.elapsed();
        let down = settle(&d, 0, Duration::from_secs(60));
        let peer_del = del_peer.stop();
        let peer_del_enobufs = enobufs();

        let ev = |a: &serde_json::Value, b: &serde_json::Value| num(a, "events") - num(b, "events");
        let new_read = ev(&up, &before);
        let del_read = ev(&down, &up);
        let ratio = |x: u64| format!("{:.2}", x as f64 / made.max(1) as f64);
        println!(
            "| {} | {:.0}k/s | {} | {} ({}) | {}, {} | {} | {} ({:.0}k/s) | {} ({}) | {}, {} | {:.0} B ({:.2}x) |",
            if rate == 0 { "unpaced".to_string() } else { format!("{}k/s", rate / 1000) },
            f64::from(n) / took.as_secs_f64() / 1e3,
            ratio(new_read),
            ratio(peer_new),
            peer_new_enobufs,
            num(&up, "overruns") - num(&before, "overruns"),
            num(&up, "resyncs") - num(&before, "resyncs"),
            if exact { "exact" } else { "DIFFERS" },
            ratio(del_read),
            made as f64 / flush.as_secs_f64() / 1e3,
            ratio(peer_del),
            peer_del_enobufs,
            num(&down, "overruns") - num(&up, "overruns"),
            num(&down, "resyncs") - num(&up, "resyncs"),
            (rss1.saturating_sub(rss0) * 1024) as f64 / made.max(1) as f64,
            (rss1.saturating_sub(rss0) * 1024) as f64 / made.max(1) as f64 / table_entry as f64,
        );
        drop(d);
    }

    // Candidates into a plugin: the conntrack writer creates then deletes ESTABLISHED
    // ASSURED TCP entries, nobody listening (the reference), then with the daemon and its
    // `null` plugin (which takes flows) and `conntrack -E` listening.
    let netfilter = libc::NETLINK_NETFILTER;
    let reference = [true, false].map(|create| {
        let w = send_requests(
            &b.ns.path(),
            netfilter,
            ct_requests(n, create),
            u64::from(n),
        );
        assert_eq!(w.refused, 0, "the kernel refused requests: {w:?}");
        w
    });
    let extra = format!("[flows]\nlimit = {}\nrefresh_s = 0\n", u64::from(n) * 2);
    let (d, _) = b.daemon(1, &extra);
    ekho_tests::wait_for(Duration::from_secs(30), || {
        (ct(&d)["state"] == "running").then_some(())
    })
    .expect("the daemon's conntrack source runs");
    let peer_err = b.dir.path().join("conntrack-E-tcp.err");
    let mut cells = Vec::new();
    for (i, create) in [true, false].into_iter().enumerate() {
        let before = ct(&d);
        let peer = Peer::start(
            &b.ns.name,
            if create { "NEW" } else { "DESTROY" },
            &peer_err,
        );
        let w = send_requests(
            &b.ns.path(),
            netfilter,
            ct_requests(n, create),
            u64::from(n),
        );
        assert_eq!(w.refused, 0, "the kernel refused requests: {w:?}");
        let want = if create { u64::from(n) } else { 0 };
        let held = wait_offloaded(&d, want, Duration::from_secs(300));
        let after = ct(&d);
        let printed = peer.stop();
        let enobufs = std::fs::read_to_string(&peer_err)
            .unwrap_or_default()
            .matches("ENOBUFS")
            .count();
        cells.push((w, reference[i], held, before, after, printed, enobufs));
    }
    println!();
    println!("| {n} TCP entries by a ctnetlink writer (batched, no ack), one `null` plugin | create | delete |");
    println!("|---|---|---|");
    let row =
        |what: &str, f: &dyn Fn(usize) -> String| println!("| {what} | {} | {} |", f(0), f(1));
    row("kernel accept rate, ekho listening / nobody", &|i| {
        let (w, r, ..) = &cells[i];
        format!(
            "{:.0}k/s / {:.0}k/s = {:.2}",
            w.rate() / 1e3,
            r.rate() / 1e3,
            w.rate() / r.rate()
        )
    });
    row(
        "the plugin holds the final set, after the writer's last send",
        &|i| {
            let (w, _, held, ..) = &cells[i];
            match (held, w.ended) {
                (Some(h), Some(e)) => format!(
                    "{:.0} ms",
                    h.saturating_duration_since(e).as_secs_f64() * 1e3
                ),
                _ => "NOT REACHED in 300 s".into(),
            }
        },
    );
    row(
        "changes/s into the plugin (writer start to plugin holding all)",
        &|i| {
            let (w, _, held, ..) = &cells[i];
            match (held, w.ended) {
                (Some(h), Some(e)) => format!(
                    "{:.0}k/s",
                    f64::from(n) / (w.took + h.saturating_duration_since(e)).as_secs_f64() / 1e3
                ),
                _ => "-".into(),
            }
        },
    );
    row("overruns, resyncs (0, 0: zero loss)", &|i| {
        let (_, _, _, before, after, ..) = &cells[i];
        format!(
            "{}, {}",
            num(after, "overruns") - num(before, "overruns"),
            num(after, "resyncs") - num(before, "resyncs")
        )
    });
    row(
        "`conntrack -E` under the same writer: printed / made",
        &|i| {
            let (.., printed, enobufs) = &cells[i];
            format!("{:.2} ({enobufs} ENOBUFS)", *printed as f64 / f64::from(n))
        },
    );
}
