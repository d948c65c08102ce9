//! Route change to first forwarded packet, through the whole daemon: `ip route add` (one netlink
//! request) on r -> netlink -> mirror -> dispatch -> xdp-router -> BPF maps -> the first UDP
//! datagram from h1 to the new prefix arriving at h2. Kernel forwarding on r is off, so only XDP
//! can deliver it.
//!
//! `cargo run --release -p ekho-tests --example bench_route_latency -- [ROUNDS]` (default 200;
//! needs root, ethtool; builds the release `ekho` and `xdp-router`).

use ekho_tests::{Netns, TempDir};
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn exec(ns: &Netns, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = ns.path();
    std::thread::spawn(move || {
        ekho_mirror::source::enter_netns(&path).unwrap();
        f()
    })
}

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let bin_dir = ekho_tests::bench::release_build(&["ekho", "ekho-xdp-router"]);
    let bin = bin_dir.join("ekho");

    let (h1, r, h2) = (Netns::new(), Netns::new(), Netns::new());
    r.ip(&[
        "link", "add", "p1", "type", "veth", "peer", "name", "veth0", "netns", &h1.name,
    ]);
    r.ip(&[
        "link", "add", "p2", "type", "veth", "peer", "name", "veth0", "netns", &h2.name,
    ]);
    exec(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    h1.ip_batch(
        "addr add 10.0.1.2/24 dev veth0\nlink set veth0 up\nroute add default via 10.0.1.1\n",
    );
    h2.ip_batch(
        "addr add 10.0.2.2/24 dev veth0\nlink set veth0 up\nroute add default via 10.0.2.1\n",
    );
    r.ip_batch("addr add 10.0.1.1/24 dev p1\naddr add 10.0.2.1/24 dev p2\nlink set p1 up\nlink set p2 up\n");
    for (ns, dev) in [(&h1, "veth0"), (&h2, "veth0"), (&r, "p1"), (&r, "p2")] {
        exec(ns, &["ethtool", "-K", dev, "gro", "on", "tx", "off"]);
    }
    let mut batch = String::new();
    for i in 0..rounds {
        batch += &format!("addr add 10.{}.{}.1/32 dev lo\n", 100 + i / 256, i % 256);
    }
    h2.ip_batch(&batch);

    let dir = TempDir::new();
    let cfg = dir.path().join("ekho.toml");
    let sock = dir.path().join("ekho.sock");
    std::fs::write(
        &cfg,
        format!(
            "[host]\nnetns = \"{}\"\nplugin_dir = \"{}\"\ncontrol_socket = \"{}\"\nebpf = false\n\n[[plugins]]\nname = \"xdp-router\"\nports = [\"p*\"]\n",
            r.name,
            bin.parent().unwrap().display(),
            sock.display()
        ),
    )
    .unwrap();
    let mut daemon = Command::new(&bin)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    // Ready when a ping crosses r (also resolves r's neighbour for h2).
    let t0 = Instant::now();
    while !Command::new("ip")
        .args(["netns", "exec", &h1.name, "ping", "-c1", "-W1", "10.0.2.2"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no forwarding through ekho"
        );
    }

    let round = Arc::new(AtomicU32::new(u32::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let arrived: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![None; rounds as usize]));
    let (arr, st2) = (arrived.clone(), stop.clone());
    let rx = in_netns(&h2, move || {
        let s = UdpSocket::bind("0.0.0.0:9999").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        while !st2.load(Ordering::Relaxed) {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                if n >= 4 {
                    let i = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
                    let mut a = arr.lock().unwrap();
                    if i < a.len() && a[i].is_none() {
                        a[i] = Some(Instant::now());
                    }
                }
            }
        }
    });
    let (rd, st3) = (round.clone(), stop.clone());
    let tx = in_netns(&h1, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        while !st3.load(Ordering::Relaxed) {
            let i = rd.load(Ordering::Relaxed);
            if i != u32::MAX {
                let dst = Ipv4Addr::new(10, 100 + (i / 256) as u8, (i % 256) as u8, 1);
                let _ = s.send_to(&i.to_le_bytes(), (dst, 9999));
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(10) {
                std::hint::spin_loop();
            }
        }
    });

    let mut lat = Vec::new();
    let mut missed = 0;
    for i in 0..rounds {
        round.store(i, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            arrived.lock().unwrap()[i as usize].is_none(),
            "round {i}: forwarded before its route existed"
        );
        let dst = Ipv4Addr::new(10, 100 + (i / 256) as u8, (i % 256) as u8, 0);
        let t = Instant::now();
        ekho_mirror::testing::route_writer::add_routes_v4(
            Some(&r.path()),
            vec![(dst, 24, Ipv4Addr::new(10, 0, 2, 2))],
            254,
            1,
        )
        .unwrap();
        loop {
            if let Some(at) = arrived.lock().unwrap()[i as usize] {
                lat.push(at - t);
                break;
            }
            if t.elapsed() > Duration::from_secs(2) {
                missed += 1;
                break;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tx.join();
    let _ = rx.join();
    unsafe {
        libc::kill(daemon.id() as i32, libc::SIGTERM);
    }
    let _ = daemon.wait();
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    println!(
        "route add on r -> first packet forwarded by XDP, through ekho ({} rounds, {missed} missed, sender every ~10 us):",
        lat.len()
    );
    println!(
        "  p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        q(0.5),
        q(0.99),
        lat[lat.len() - 1]
    );
}
