//! Initial-sync benchmark: loads N IPv4 routes into a scratch netns with a batched netlink
//! writer, times a raw netlink dump (receive and split only) against the mirror's initial sync
//! (dump, decode, convert, intern, store), and reports the mirror's peak RSS per route.
//!
//! `cargo run --release -p ekho-mirror --example bench_sync -- [N] [GATEWAYS]`
//! (defaults 1000000 routes through 4 gateways). Needs root (creates `ekho-mir-bench-<pid>`).

use ekho_mirror::source::{ReqSocket, SourceConfig, SourceOptions};
use ekho_mirror::Mirror;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(ns: &str, args: &str) {
    let st = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .status()
        .unwrap();
    assert!(st.success(), "ip {args}");
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut a = std::env::args().skip(1);
    let n: u32 = a.next().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let gws: u32 = a.next().and_then(|s| s.parse().ok()).unwrap_or(4).max(1);
    let name = format!("ekho-mir-bench-{}", std::process::id());
    let st = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success(), "cannot create netns");
    let ns = Ns(name);
    let path = std::path::PathBuf::from(format!("/run/netns/{}", ns.0));
    ip(&ns.0, "link add va type veth peer name vb");
    ip(&ns.0, "link set va up");
    ip(&ns.0, "link set vb up");
    ip(&ns.0, "addr add 10.0.0.1/16 dev va");

    let t = Instant::now();
    let routes: Vec<(Ipv4Addr, u8, Ipv4Addr)> = (0..n)
        .map(|i| {
            (
                Ipv4Addr::from(0x2000_0000u32 + (i << 8)),
                24,
                Ipv4Addr::new(10, 0, 1, (i % gws) as u8 + 1),
            )
        })
        .collect();
    let sent =
        ekho_mirror::testing::route_writer::add_routes_v4(Some(&path), routes, 254, 2000).unwrap();
    println!("sent {sent} route requests");
    // Wait until the kernel has them all (the writer does not wait for acks).
    let count = |p: &std::path::Path| -> (u64, Duration) {
        let p = p.to_path_buf();
        std::thread::spawn(move || {
            ekho_mirror::source::enter_netns(&p).unwrap();
            let mut s = ReqSocket::new().unwrap();
            let t = Instant::now();
            let c = s
                .dump_baseline(
                    26,
                    &{
                        let mut h = vec![0u8; 12];
                        h[0] = 2;
                        h
                    },
                    false,
                )
                .unwrap();
            (c, t.elapsed())
        })
        .join()
        .unwrap()
    };
    loop {
        let (c, _) = count(&path);
        if c >= n as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "loaded {n} routes via {gws} gateways in {:.2?}",
        t.elapsed()
    );
    let mut raw = Duration::MAX;
    let mut msgs = 0;
    for _ in 0..3 {
        let (c, d) = count(&path);
        raw = raw.min(d);
        msgs = c;
    }
    println!(
        "raw netlink dump (recv + split, IPv4 routes): {msgs} messages in {raw:.2?} (best of 3)"
    );

    // Baseline, then reset the peak counter.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let base = status_kb("VmRSS:");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let m = Mirror::new();
    let m2 = m.clone();
    let t = Instant::now();
    rt.spawn(ekho_mirror::source::run_with(
        m2,
        SourceConfig {
            netns: Some(path.clone()),
            rcvbuf: 0,
        },
        SourceOptions {
            proxy_poll: None,
            ..Default::default()
        },
    ));
    while !m.stats().synced {
        std::thread::sleep(Duration::from_millis(1));
    }
    let sync = t.elapsed();
    let st = m.stats();
    let peak = status_kb("VmHWM:");
    let now = status_kb("VmRSS:");
    let routes = st.objects["routes"];
    println!(
        "mirror initial sync (all kinds): {sync:.2?}; {routes} routes, {} shared attribute sets, {} messages",
        st.route_attr_sets, st.messages
    );
    println!(
        "ratio sync / raw dump: {:.2}",
        sync.as_secs_f64() / raw.as_secs_f64()
    );
    println!(
        "RSS: baseline {base} KiB, after sync {now} KiB, peak {peak} KiB -> peak {:.1} bytes/route, steady {:.1} bytes/route",
        (peak.saturating_sub(base)) as f64 * 1024.0 / routes as f64,
        (now.saturating_sub(base)) as f64 * 1024.0 / routes as f64
    );
    // A full route resync (as after an overrun) with nothing changed: time and extra peak.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kb("VmRSS:");
    let r0 = m.stats().resyncs;
    let t = Instant::now();
    m.request_resync(&[ekho_plugin_api::ObjectKind::Route]);
    while m.stats().resyncs == r0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let st = m.stats();
    println!(
        "route resync with nothing changed: {:.2?} ({} ms in the source), {} changes emitted, extra peak {:.1} bytes/route",
        t.elapsed(),
        st.last_resync_ms,
        st.changes,
        (status_kb("VmHWM:").saturating_sub(before)) as f64 * 1024.0 / routes as f64
    );
    drop(rt);
}
