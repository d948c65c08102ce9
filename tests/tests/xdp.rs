//! The xdp-router plugin through the daemon: h1 - r - h2, r's kernel forwarding off; traffic
//! between h1 and h2 flows only while `ekho run` (mirroring r) has the plugin owning r's ports,
//! and route changes on r are reflected in forwarding.

use ekho_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The plugin table: xdp-router owning r's ports.
const XDP_ROUTER: &str = "[[plugins]]\nname = \"xdp-router\"\nports = [\"p*\"]\n";

/// Prints an explicit skip reason and returns true when a tool the test needs is missing.
fn missing_tools() -> bool {
    for (tool, arg) in [
        ("ping", "-V"),
        ("ethtool", "--version"),
        ("python3", "--version"),
    ] {
        if !have(tool, arg) {
            println!(
                "SKIP: {tool} is not installed (apt-get install iputils-ping ethtool python3)"
            );
            return true;
        }
    }
    false
}

struct Topo {
    h1: Netns,
    r: Netns,
    h2: Netns,
}

fn exec(ns: &Netns, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ping(from: &Netns, to: &str) -> bool {
    exec(from, &["ping", "-n", "-q", "-c", "1", "-W", "1", to])
}

fn ping_within(from: &Netns, to: &str, t: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < t {
        if ping(from, to) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Sends `n` bytes over TCP from h1 to `to` (a listener in h2), returns what arrived.
fn tcp(h1: &Netns, h2: &Netns, to: &str, port: u16, n: usize) -> usize {
    let listen = if to.contains(':') { "::" } else { "0.0.0.0" };
    let fam = if to.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let server = format!(
        "import socket\ns=socket.socket(socket.{fam});s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{listen}',{port}));s.listen(1);s.settimeout(15);c,_=s.accept();c.settimeout(15);t=0\n\
         while True:\n  b=c.recv(65536)\n  if not b: break\n  t+=len(b)\nprint(t)\n"
    );
    let srv = Command::new("ip")
        .args(["netns", "exec", &h2.name, "python3", "-c", &server])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let client = format!(
        "import socket\ns=socket.create_connection(('{to}',{port}),timeout=15)\ns.sendall(b'x'*{n})\ns.close()\n"
    );
    let ok = exec(h1, &["python3", "-c", &client]);
    let out = srv.wait_with_output().unwrap();
    if !ok {
        return 0;
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

impl Topo {
    /// Adds a second link r(p3) - h2(veth1): 10.0.3.1 / 10.0.3.2.
    fn second_link(&self) {
        self.r.ip(&[
            "link",
            "add",
            "p3",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            &self.h2.name,
        ]);
        self.h2
            .ip_batch("addr add 10.0.3.2/24 dev veth1\nlink set veth1 up\n");
        self.r
            .ip_batch("addr add 10.0.3.1/24 dev p3\nlink set p3 up\n");
        assert!(exec(
            &self.h2,
            &["ethtool", "-K", "veth1", "gro", "on", "tx", "off"]
        ));
        assert!(exec(
            &self.r,
            &["ethtool", "-K", "p3", "gro", "on", "tx", "off"]
        ));
    }

    fn new() -> Topo {
        let t = Topo {
            h1: Netns::new(),
            r: Netns::new(),
            h2: Netns::new(),
        };
        t.r.ip(&[
            "link", "add", "p1", "type", "veth", "peer", "name", "veth0", "netns", &t.h1.name,
        ]);
        t.r.ip(&[
            "link", "add", "p2", "type", "veth", "peer", "name", "veth0", "netns", &t.h2.name,
        ]);
        for (ns, k) in [
            (&t.r, "net.ipv4.ip_forward=0"),
            (&t.r, "net.ipv6.conf.all.forwarding=0"),
            (&t.r, "net.ipv6.conf.all.accept_ra=0"),
        ] {
            assert!(exec(ns, &["sysctl", "-qw", k]));
        }
        t.h1.ip_batch("addr add 10.0.1.2/24 dev veth0\naddr add fd00:1::2/64 dev veth0 nodad\nlink set veth0 up\n");
        t.h2.ip_batch("addr add 10.0.2.2/24 dev veth0\naddr add fd00:2::2/64 dev veth0 nodad\nlink set veth0 up\n");
        t.r.ip_batch(
            "addr add 10.0.1.1/24 dev p1\naddr add fd00:1::1/64 dev p1 nodad\n\
             addr add 10.0.2.1/24 dev p2\naddr add fd00:2::1/64 dev p2 nodad\nlink set p1 up\nlink set p2 up\n",
        );
        // XDP_REDIRECT into a veth needs NAPI on the receiving peer (GRO on); veth leaves L4
        // checksums to "hardware", which a redirected raw frame never gets: senders fill them.
        for ns in [&t.h1, &t.h2] {
            assert!(exec(
                ns,
                &["ethtool", "-K", "veth0", "gro", "on", "tx", "off"]
            ));
        }
        for p in ["p1", "p2"] {
            assert!(exec(&t.r, &["ethtool", "-K", p, "gro", "on", "tx", "off"]));
        }
        t.h1.ip_batch("route add default via 10.0.1.1\nroute add default via fd00:1::1\n");
        t.h2.ip_batch("route add default via 10.0.2.1\nroute add default via fd00:2::1\n");
        t
    }
}

#[test]
fn xdp_router_forwards_only_while_ekho_runs() {
    if missing_tools() {
        return;
    }
    let t = Topo::new();
    assert!(
        !ping(&t.h1, "10.0.2.2"),
        "the kernel on r must not forward (ip_forward=0)"
    );
    assert!(
        !ping(&t.h1, "fd00:2::2"),
        "the kernel on r must not forward (IPv6 forwarding=0)"
    );

    let dir = TempDir::new();
    let cfg = host_config(&t.r.name, build(), true, XDP_ROUTER);
    let mut d = Daemon::start(dir.path(), &cfg);
    let st = d.plugin("xdp-router");
    assert_eq!(st["state"], "in_sync", "{st}\n{}", d.log_text());
    let s = Duration::from_secs(10);
    assert!(
        ping_within(&t.h1, "10.0.2.2", s),
        "v4 through XDP:\n{}",
        d.log_text()
    );
    assert!(
        ping_within(&t.h1, "fd00:2::2", s),
        "v6 through XDP:\n{}",
        d.log_text()
    );
    assert_eq!(
        tcp(&t.h1, &t.h2, "10.0.2.2", 5101, 2 << 20),
        2 << 20,
        "v4 TCP transfer"
    );
    assert_eq!(
        tcp(&t.h1, &t.h2, "fd00:2::2", 5102, 2 << 20),
        2 << 20,
        "v6 TCP transfer"
    );
    // Plugin counters reach `ekho status` when the worker refreshes them (about every second).
    let forwarded = |d: &Daemon| -> (u64, serde_json::Value) {
        let counters = d.plugin("xdp-router")["counters"].clone();
        let fwd = counters
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "forwarded")
            .map(|c| c["value"].as_u64().unwrap())
            .sum();
        (fwd, counters)
    };
    let (fwd, counters) = wait_for(Duration::from_secs(5), || {
        let (f, c) = forwarded(&d);
        (f > 1000).then_some((f, c))
    })
    .unwrap_or_else(|| forwarded(&d));
    assert!(fwd > 1000, "packets forwarded by XDP: {fwd} ({counters})");

    // A route change on r reaches the data path: a new prefix behind h2.
    t.h2.ip(&["addr", "add", "10.9.0.1/32", "dev", "lo"]);
    assert!(!ping(&t.h1, "10.9.0.1"), "no route on r yet");
    t.r.ip(&["route", "add", "10.9.0.0/24", "via", "10.0.2.2"]);
    assert!(
        ping_within(&t.h1, "10.9.0.1", s),
        "new prefix forwarded:\n{}",
        d.log_text()
    );
    t.r.ip(&["route", "del", "10.9.0.0/24"]);
    d.settle();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !ping(&t.h1, "10.9.0.1"),
        "deleted prefix no longer forwarded"
    );

    // Stopping ekho stops forwarding (programs detached).
    assert!(d.stop(), "clean exit:\n{}", d.log_text());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!ping(&t.h1, "10.0.2.2"), "forwarding must stop with ekho");
    let links = t.r.ip(&["-d", "link", "show"]);
    assert!(
        !links.contains("prog/xdp"),
        "no XDP program left on r's ports:\n{links}"
    );
}

fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let v = ns.ip_json(&["-s", "link", "show", dev]);
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0)
}

/// UDP datagrams from h1 to `to` over `flows` source ports.
fn udp_flows(h1: &Netns, to: &str, flows: u16) {
    let code = format!(
        "import socket\nfor p in range(20000, 20000 + {flows}):\n  s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n  s.bind(('0.0.0.0', p))\n  for _ in range(5): s.sendto(b'x'*64, ('{to}', 9))\n  s.close()\n"
    );
    assert!(exec(h1, &["python3", "-c", &code]));
}

#[test]
fn xdp_router_follows_route_changes_made_on_r() {
    if missing_tools() {
        return;
    }
    let t = Topo::new();
    t.second_link();
    t.h2.ip(&["addr", "add", "10.9.0.1/32", "dev", "lo"]);
    t.r.ip(&["route", "add", "10.9.0.0/24", "via", "10.0.2.2"]);
    let dir = TempDir::new();
    let cfg = host_config(&t.r.name, build(), false, XDP_ROUTER);
    let d = Daemon::start(dir.path(), &cfg);
    let s = Duration::from_secs(10);
    assert!(
        ping_within(&t.h1, "10.9.0.1", s),
        "prefix via p2:\n{}",
        d.log_text()
    );

    // Gateway change: the prefix now goes out through p3, arriving on h2's veth1.
    t.r.ip(&["route", "replace", "10.9.0.0/24", "via", "10.0.3.2"]);
    d.settle();
    let before = rx_packets(&t.h2, "veth1");
    assert!(
        ping_within(&t.h1, "10.9.0.1", s),
        "after gateway change:\n{}",
        d.log_text()
    );
    udp_flows(&t.h1, "10.9.0.1", 4);
    assert!(
        rx_packets(&t.h2, "veth1") >= before + 20,
        "traffic must follow the new gateway"
    );

    // ECMP across both links: flows spread over veth0 and veth1.
    t.r.ip(&[
        "route",
        "replace",
        "10.9.0.0/24",
        "nexthop",
        "via",
        "10.0.2.2",
        "nexthop",
        "via",
        "10.0.3.2",
    ]);
    d.settle();
    assert!(ping_within(&t.h1, "10.9.0.1", s));
    let (a0, b0) = (rx_packets(&t.h2, "veth0"), rx_packets(&t.h2, "veth1"));
    udp_flows(&t.h1, "10.9.0.1", 64);
    let (a1, b1) = (rx_packets(&t.h2, "veth0"), rx_packets(&t.h2, "veth1"));
    assert!(
        a1 - a0 >= 20 && b1 - b0 >= 20,
        "64 flows over two legs: {} via p2, {} via p3",
        a1 - a0,
        b1 - b0
    );

    // Link down on one leg: the kernel drops the leg without a netlink message; the mirror infers
    // it, and all flows go the other way.
    t.r.ip(&["link", "set", "p3", "down"]);
    d.settle();
    let (a0, b0) = (rx_packets(&t.h2, "veth0"), rx_packets(&t.h2, "veth1"));
    udp_flows(&t.h1, "10.9.0.1", 32);
    let (a1, b1) = (rx_packets(&t.h2, "veth0"), rx_packets(&t.h2, "veth1"));
    assert!(
        a1 - a0 >= 150 && b1 == b0,
        "after p3 down: {} via p2, {} via p3",
        a1 - a0,
        b1 - b0
    );

    // Neighbour MAC change: a wrong MAC for h2 breaks forwarding, the right one restores it.
    let mac = t.h2.ip_json(&["link", "show", "veth0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    t.r.ip(&[
        "neigh",
        "replace",
        "10.0.2.2",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "p2",
        "nud",
        "permanent",
    ]);
    d.settle();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !ping(&t.h1, "10.0.2.2"),
        "frames to a wrong MAC must not reach h2"
    );
    t.r.ip(&[
        "neigh",
        "replace",
        "10.0.2.2",
        "lladdr",
        &mac,
        "dev",
        "p2",
        "nud",
        "permanent",
    ]);
    assert!(
        ping_within(&t.h1, "10.0.2.2", s),
        "the right MAC again:\n{}",
        d.log_text()
    );
}
