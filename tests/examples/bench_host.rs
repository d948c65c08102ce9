//! Host benchmark: initial sync of N IPv4 routes through the whole daemon (netlink source ->
//! mirror -> dispatch -> the `null` plugin), against dumps of the same table in the same run, and
//! the daemon's peak RSS per route. The dumps, cheapest first: receive and split only (the
//! kernel's own cost); receive and parse every message with netlink-packet-route (what any
//! rust-netlink program pays before it can read a field); the rtnetlink crate's route dump
//! (`handle.route().get(..).execute()`, collected); iproute2 (`ip -4 route show table all`).
//!
//! `cargo run --release -p ekho-tests --example bench_host -- [N] [GATEWAYS] [OTHER_EKHO]`
//! (default 1000000 routes through 4 gateways; needs root; builds the release `ekho` and `null`).
//! With `OTHER_EKHO` (another build's `ekho`, its `libekho_null.so` beside it), both daemons sync
//! the same table three times each, alternating, and the ratio of their best times is printed:
//! how a change to the host compares with the build before it, in one run.

use ekho_tests::{unique, Netns, TempDir};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn vm_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Starts the daemon on `ns` with the null plugin; returns (time to in_sync, peak RSS KiB).
fn run_daemon(bin: &Path, dir: &Path, ns: &Netns) -> (Duration, u64, serde_json::Value) {
    let socket = dir.join(format!("{}.sock", unique("b")));
    let cfg = dir.join("ekho.toml");
    std::fs::write(
        &cfg,
        format!(
            "[host]\nnetns = \"{}\"\nplugin_dir = \"{}\"\ncontrol_socket = \"{}\"\nebpf = false\n\n[[plugins]]\nname = \"null\"\n",
            ns.name,
            bin.parent().unwrap().display(),
            socket.display()
        ),
    )
    .unwrap();
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env(
            "RUST_LOG",
            std::env::var("EKHO_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = loop {
        let out = Command::new(bin)
            .args(["--config", cfg.to_str().unwrap(), "status", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["plugins"][0]["state"] == "in_sync" {
                break v;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(600), "no sync in 10 min");
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t.elapsed();
    let peak = vm_kb(pid, "VmHWM:");
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    (took, peak, status)
}

/// A dump of every IPv4 route in `ns` on a raw request socket: messages received and split, or
/// (`parse`) also parsed with netlink-packet-route. Returns (messages, time).
fn dump_v4(ns: &Path, parse: bool) -> (u64, Duration) {
    let p = ns.to_path_buf();
    std::thread::spawn(move || {
        ekho_mirror::source::enter_netns(&p).unwrap();
        let mut s = ekho_mirror::source::ReqSocket::new().unwrap();
        let mut h = vec![0u8; 12];
        h[0] = 2; // AF_INET
        let t = Instant::now();
        let c = s.dump_baseline(26, &h, parse).unwrap();
        (c, t.elapsed())
    })
    .join()
    .unwrap()
}

/// The rtnetlink crate's IPv4 route dump of every table, collected; panics unless it returns at
/// least `n` routes.
fn rtnetlink_dump(ns: &Path, n: u32) -> Duration {
    use futures::TryStreamExt;
    use netlink_packet_route::route::{RouteProtocol, RouteScope, RouteType};
    let p = ns.to_path_buf();
    std::thread::spawn(move || {
        ekho_mirror::source::enter_netns(&p).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let mut req = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
            // Every table, protocol and type (the builder presets main/static/unicast).
            req.header.table = 0;
            req.header.protocol = RouteProtocol::Unspec;
            req.header.kind = RouteType::Unspec;
            req.header.scope = RouteScope::Universe;
            let t = Instant::now();
            let v: Vec<_> = handle
                .route()
                .get(req)
                .execute()
                .try_collect()
                .await
                .unwrap();
            let took = t.elapsed();
            assert!(v.len() >= n as usize, "rtnetlink dump returned {}", v.len());
            took
        })
    })
    .join()
    .unwrap()
}

fn main() {
    let mut a = std::env::args().skip(1);
    let n: u32 = a.next().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let gws: u32 = a.next().and_then(|s| s.parse().ok()).unwrap_or(4).max(1);
    let bin_dir = ekho_tests::bench::release_build(&["ekho", "ekho-null"]);
    let bin = bin_dir.join("ekho");
    let dir = TempDir::new();

    // Baseline: the daemon on an empty namespace.
    let empty = Netns::new();
    let (_, base_kb, _) = run_daemon(&bin, dir.path(), &empty);

    let ns = Netns::new();
    ns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    ns.ip(&["link", "set", "va", "up"]);
    ns.ip(&["link", "set", "vb", "up"]);
    ns.ip(&["addr", "add", "10.0.0.1/16", "dev", "va"]);
    let routes: Vec<_> = (0..n)
        .map(|i| {
            (
                std::net::Ipv4Addr::from(0x2000_0000u32 + (i << 8)),
                24u8,
                std::net::Ipv4Addr::new(10, 0, 1, (i % gws) as u8 + 1),
            )
        })
        .collect();
    let t = Instant::now();
    ekho_mirror::testing::route_writer::add_routes_v4(Some(&ns.path()), routes, 254, 2000).unwrap();
    // Raw dump (receive + split), best of 3, once the kernel has them all.
    let raw = |p: &Path| dump_v4(p, false);
    while raw(&ns.path()).0 < n as u64 {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "loaded {n} IPv4 routes via {gws} gateways in {:.2?}",
        t.elapsed()
    );
    let mut best = Duration::MAX;
    for _ in 0..3 {
        best = best.min(raw(&ns.path()).1);
    }
    println!("raw netlink dump of the IPv4 routes (recv + split): {best:.2?} (best of 3)");
    let mut parse_best = Duration::MAX;
    for _ in 0..3 {
        parse_best = parse_best.min(dump_v4(&ns.path(), true).1);
    }
    println!(
        "netlink dump parsed with netlink-packet-route (recv + parse): {parse_best:.2?} (best of 3)"
    );
    let mut crate_best = Duration::MAX;
    for _ in 0..3 {
        crate_best = crate_best.min(rtnetlink_dump(&ns.path(), n));
    }
    println!("rtnetlink crate route dump (collected): {crate_best:.2?} (best of 3)");
    // The peer an operator uses: iproute2 dumping and printing the same table.
    let mut ip_best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let out = Command::new("ip")
            .args(["-n", &ns.name, "-4", "route", "show", "table", "all"])
            .output()
            .unwrap();
        assert!(out.status.success());
        ip_best = ip_best.min(t.elapsed());
    }
    println!("`ip -4 route show table all` (iproute2 dump + print): {ip_best:.2?} (best of 3)");

    if let Some(other) = a.next() {
        let other = std::path::PathBuf::from(other);
        let (mut this_best, mut other_best) = (Duration::MAX, Duration::MAX);
        for round in 0..3 {
            let (t_other, _, _) = run_daemon(&other, dir.path(), &ns);
            let (t_this, _, _) = run_daemon(&bin, dir.path(), &ns);
            println!(
                "round {round}: this build {t_this:.2?}, {} {t_other:.2?}",
                other.display()
            );
            this_best = this_best.min(t_this);
            other_best = other_best.min(t_other);
        }
        println!(
            "daemon start -> in_sync, best of 3: this build {this_best:.2?}, the other {other_best:.2?}: this/other {:.3}",
            this_best.as_secs_f64() / other_best.as_secs_f64()
        );
    }
    let (sync, peak_kb, status) = run_daemon(&bin, dir.path(), &ns);
    let routes_held = status["mirror"]["objects"]["routes"].as_u64().unwrap_or(0);
    println!(
        "daemon start -> null plugin in_sync: {sync:.2?} ({} objects to the plugin, its sync {} ms, alongside the dump)",
        status["plugins"][0]["objects"], status["plugins"][0]["last_sync_ms"]
    );
    let r = |d: Duration| sync.as_secs_f64() / d.as_secs_f64();
    println!(
        "ratios, daemon start -> in_sync over: raw dump {:.2}, netlink-packet-route dump {:.2}, rtnetlink crate dump {:.2}, iproute2 dump {:.2}",
        r(best),
        r(parse_best),
        r(crate_best),
        r(ip_best)
    );
    println!(
        "daemon peak RSS: {peak_kb} KiB (empty-namespace baseline {base_kb} KiB) -> {:.0} bytes/route over baseline ({routes_held} routes mirrored)",
        (peak_kb.saturating_sub(base_kb)) as f64 * 1024.0 / n as f64
    );
}
