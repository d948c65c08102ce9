//! Test scaffolding for the xdp-router plugin (shared by the integration tests and the benchmark
//! example): an h1 - r - h2 veth topology in throw-away namespaces, an `ip -j` -> plugin-api
//! converter, and a miniature host that dumps r, diffs against what the plugin was given, feeds
//! the plugin the changes and performs its neighbour-resolution requests with `ip neigh ... use`.
#![allow(dead_code)]

pub mod nat;

use abi_stable::std_types::{RArc, RResult, RStr, RString, RVec};
use ekho_plugin_api::host::HostServices_TO;
use ekho_plugin_api::object::rule::{PortRange, UidRange, FIB_RULE_INVERT};
use ekho_plugin_api::prelude::*;
pub use ekho_testkit::*;
use ekho_xdp_router::XdpRouter;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---- skip reasons ----------------------------------------------------------------------------

/// Why this machine cannot run the forwarding tests, if it cannot.
pub fn skip_reason() -> Option<String> {
    needs_root("network namespaces, XDP").or_else(|| {
        missing_tools(
            &["ip", "ping", "ethtool", "python3"],
            "iproute2 iputils-ping ethtool python3",
        )
    })
}

/// Prints the skip reason and returns true when the test must be skipped.
pub fn skip() -> bool {
    match skip_reason() {
        Some(r) => {
            say_skip(&r);
            true
        }
        None => false,
    }
}

pub fn python() -> String {
    // The pyenv shim is slow to start; resolve the interpreter once.
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        sh("python3", &["-c", "import sys; print(sys.executable)"])
            .trim()
            .to_string()
    })
    .clone()
}

// ---- topology --------------------------------------------------------------------------------

/// h1 (veth0) --- (p1) r (p2) --- (veth0) h2, plus optionally (p3) r --- (veth1) h2.
/// h1: 10.0.1.2/24 fd00:1::2/64, r: 10.0.1.1 fd00:1::1 | 10.0.2.1 fd00:2::1 | 10.0.3.1 fd00:3::1,
/// h2: 10.0.2.2 fd00:2::2 | 10.0.3.2 fd00:3::2. Hosts route everything via r. r has forwarding
/// off (v4 and v6), so only the plugin can forward. The namespaces are the test kit's
/// (`ekho-xdp-h1-<pid>-<n>`, ...: deleted on drop, also on panic).
pub struct Topo {
    pub h1: String,
    pub r: String,
    pub h2: String,
    netns: [Netns; 3],
}

impl Topo {
    pub fn new(second_link: bool) -> Topo {
        let netns = ["h1", "r", "h2"].map(|n| Netns::named(&format!("ekho-xdp-{n}")));
        let [h1, r, h2] = [0, 1, 2].map(|i| netns[i].name.clone());
        let t = Topo {
            h1: h1.clone(),
            r: r.clone(),
            h2: h2.clone(),
            netns,
        };
        for ns in &t.netns {
            // Quiet links: no router solicitations / RA processing on the devices created below
            // (keeps the RX counters the tests compare free of stray IPv6 control traffic).
            for k in [
                "net.ipv6.conf.default.router_solicitations=0",
                "net.ipv6.conf.default.accept_ra=0",
            ] {
                ns.run(&["sysctl", "-qw", k]);
            }
        }
        let ip = |ns: &str, args: &str| {
            t.ip(ns, args);
        };
        ip(
            &r,
            &format!("link add p1 type veth peer name veth0 netns {h1}"),
        );
        ip(
            &r,
            &format!("link add p2 type veth peer name veth0 netns {h2}"),
        );
        if second_link {
            ip(
                &r,
                &format!("link add p3 type veth peer name veth1 netns {h2}"),
            );
        }
        for (ns, k, v) in [
            (&r, "net.ipv4.ip_forward", "0"),
            (&r, "net.ipv6.conf.all.forwarding", "0"),
            (&h1, "net.ipv6.conf.all.forwarding", "0"),
            (&h2, "net.ipv6.conf.all.forwarding", "0"),
            (&r, "net.ipv6.conf.all.accept_ra", "0"),
        ] {
            t.exec(ns, &["sysctl", "-qw", &format!("{k}={v}")]);
        }
        ip(&h1, "addr add 10.0.1.2/24 dev veth0");
        ip(&h1, "addr add fd00:1::2/64 dev veth0 nodad");
        ip(&r, "addr add 10.0.1.1/24 dev p1");
        ip(&r, "addr add fd00:1::1/64 dev p1 nodad");
        ip(&r, "addr add 10.0.2.1/24 dev p2");
        ip(&r, "addr add fd00:2::1/64 dev p2 nodad");
        ip(&h2, "addr add 10.0.2.2/24 dev veth0");
        ip(&h2, "addr add fd00:2::2/64 dev veth0 nodad");
        let mut ports = vec![(h1.clone(), "veth0"), (h2.clone(), "veth0")];
        if second_link {
            ip(&r, "addr add 10.0.3.1/24 dev p3");
            ip(&r, "addr add fd00:3::1/64 dev p3 nodad");
            ip(&h2, "addr add 10.0.3.2/24 dev veth1");
            ip(&h2, "addr add fd00:3::2/64 dev veth1 nodad");
            ports.push((h2.clone(), "veth1"));
        }
        for (ns, dev) in &ports {
            ip(ns, &format!("link set {dev} up"));
            // XDP_REDIRECT into a veth needs NAPI on the receiving peer: either an XDP program on
            // it or GRO enabled (kernel >= 5.13). GRO is the lighter of the two.
            t.exec(ns, &["ethtool", "-K", dev, "gro", "on"]);
            // veth hands frames over with CHECKSUM_PARTIAL (L4 checksum left to "hardware");
            // XDP_REDIRECT forwards the raw frame, so the receiver would see a bad TCP/UDP
            // checksum. Real NICs deliver complete checksums; on veth the senders must fill them.
            t.exec(ns, &["ethtool", "-K", dev, "tx", "off"]);
        }
        for p in ["p1", "p2"]
            .iter()
            .chain(if second_link { &["p3"][..] } else { &[][..] })
        {
            ip(&r, &format!("link set {p} up"));
        }
        ip(&h1, "route add default via 10.0.1.1");
        ip(&h1, "-6 route add default via fd00:1::1");
        ip(&h2, "route add default via 10.0.2.1");
        ip(&h2, "-6 route add default via fd00:2::1");
        t
    }

    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.r)
    }

    /// The namespace named `ns` (h1, r or h2).
    pub fn netns(&self, ns: &str) -> &Netns {
        self.netns
            .iter()
            .find(|n| n.name == ns)
            .unwrap_or_else(|| panic!("{ns} is not a namespace of this topology"))
    }

    /// `ip -n <ns> ARGS...` (split on whitespace).
    pub fn ip(&self, ns: &str, args: &str) -> String {
        self.netns(ns).ip(args)
    }

    /// `ip netns exec <ns> ARGS...`; panics on failure, returns stdout.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        self.netns(ns).run(args)
    }

    /// One ping (1 s timeout).
    pub fn ping_once(&self, from: &str, to: &str) -> bool {
        succeeds(
            "ip",
            &[
                "netns", "exec", from, "ping", "-n", "-q", "-c", "1", "-W", "1", to,
            ],
        )
    }

    /// Pings until one answer or `timeout`.
    pub fn ping_within(&self, from: &str, to: &str, timeout: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            if succeeds(
                "ip",
                &[
                    "netns", "exec", from, "ping", "-n", "-q", "-c", "1", "-W", "1", to,
                ],
            ) {
                return true;
            }
            if t0.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `count` pings 0.1 s apart; number answered.
    pub fn ping_count(&self, from: &str, to: &str, count: u32) -> u32 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                from,
                "ping",
                "-n",
                "-q",
                "-i",
                "0.1",
                "-W",
                "1",
                "-c",
                &count.to_string(),
                to,
            ])
            .output()
            .expect("ping");
        let s = String::from_utf8_lossy(&out.stdout);
        s.split(',')
            .find(|p| p.contains("received"))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// A TCP transfer of `bytes` from `from` to `server_addr` (listening in `server_ns`).
    /// Returns the byte count the server received, or None on failure/timeout.
    pub fn tcp_transfer(
        &self,
        from: &str,
        server_ns: &str,
        server_addr: &str,
        port: u16,
        bytes: usize,
    ) -> Option<usize> {
        let py = python();
        let server = r#"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(15)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(15)
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    n += len(d)
c.sendall(b"k")
print(n, flush=True)
"#;
        let client = r#"
import socket, sys
addr, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = socket.create_connection((addr, port), timeout=5)
c.settimeout(15)
buf = b"x" * (1 << 16)
sent = 0
while sent < total:
    sent += c.send(buf[: min(len(buf), total - sent)])
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(sent)
"#;
        let mut srv = Command::new("ip")
            .args([
                "netns",
                "exec",
                server_ns,
                &py,
                "-c",
                server,
                server_addr,
                &port.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // Wait for "ready".
        use std::io::{BufRead, BufReader};
        let mut lines = BufReader::new(srv.stdout.take()?).lines();
        if lines.next()?.ok()?.trim() != "ready" {
            let _ = srv.kill();
            return None;
        }
        let cl = Command::new("ip")
            .args([
                "netns",
                "exec",
                from,
                &py,
                "-c",
                client,
                server_addr,
                &port.to_string(),
                &bytes.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output();
        let got = lines
            .next()
            .and_then(|l| l.ok())
            .and_then(|l| l.trim().parse::<usize>().ok());
        let _ = srv.kill();
        let _ = srv.wait();
        match cl {
            Ok(o) if o.status.success() => got,
            _ => None,
        }
    }

    /// RX packets of `dev` in `ns`.
    pub fn rx_packets(&self, ns: &str, dev: &str) -> u64 {
        let j: Value =
            serde_json::from_str(&self.ip(ns, &format!("-j -s link show dev {dev}"))).unwrap();
        j[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0)
    }

    /// Sends one UDP datagram from each of `n` fresh source ports from `from` to `to:port`.
    pub fn udp_flows(&self, from: &str, to: &str, port: u16, n: u32) {
        let script = r#"
import socket, sys
to, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ':' in to else socket.AF_INET
for i in range(n):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.sendto(b"ekho", (to, port))
    s.close()
"#;
        self.exec(
            from,
            &[
                &python(),
                "-c",
                script,
                to,
                &port.to_string(),
                &n.to_string(),
            ],
        );
    }

    /// Device counters of the veths (ethtool -S) and GRO state: for assertion messages.
    pub fn diag(&self) -> String {
        let mut out = String::new();
        for (ns, dev) in [
            (&self.r, "p1"),
            (&self.r, "p2"),
            (&self.h1, "veth0"),
            (&self.h2, "veth0"),
        ] {
            let st = Command::new("ip")
                .args(["netns", "exec", ns, "ethtool", "-S", dev])
                .output();
            let k = Command::new("ip")
                .args(["netns", "exec", ns, "ethtool", "-k", dev])
                .output();
            let nz: Vec<String> = st
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| !l.trim_end().ends_with(": 0"))
                        .map(|l| l.trim().to_string())
                        .collect()
                })
                .unwrap_or_default();
            let gro = k
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| l.contains("generic-receive-offload"))
                        .map(|l| l.trim().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            out += &format!("{ns}/{dev}: {gro} {nz:?}\n");
        }
        out
    }

    /// Names of r's devices with an XDP program attached.
    pub fn xdp_attached_in_r(&self) -> Vec<String> {
        let j: Value = serde_json::from_str(&self.ip(&self.r, "-j -d link show")).unwrap();
        j.as_array()
            .unwrap()
            .iter()
            .filter(|l| l.get("xdp").is_some())
            .map(|l| l["ifname"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

// ---- ip -j -> plugin-api objects -------------------------------------------------------------

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn flag_bits(v: &Value, table: &[(&str, u32)]) -> u32 {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter_map(|n| table.iter().find(|(t, _)| *t == n).map(|(_, b)| *b))
                .fold(0, |x, b| x | b)
        })
        .unwrap_or(0)
}

const LINK_FLAGS: &[(&str, u32)] = &[
    ("UP", 0x1),
    ("BROADCAST", 0x2),
    ("LOOPBACK", 0x8),
    ("POINTOPOINT", 0x10),
    ("NOARP", 0x80),
    ("PROMISC", 0x100),
    ("ALLMULTI", 0x200),
    ("MASTER", 0x400),
    ("SLAVE", 0x800),
    ("MULTICAST", 0x1000),
    ("LOWER_UP", 0x10000),
    ("DORMANT", 0x20000),
    ("ECHO", 0x40000),
];
const NH_FLAGS: &[(&str, u32)] = &[
    ("dead", 1),
    ("pervasive", 2),
    ("onlink", 4),
    ("linkdown", 16),
    ("unresolved", 32),
];
const NUD: &[(&str, u32)] = &[
    ("INCOMPLETE", 0x01),
    ("REACHABLE", 0x02),
    ("STALE", 0x04),
    ("DELAY", 0x08),
    ("PROBE", 0x10),
    ("FAILED", 0x20),
    ("NOARP", 0x40),
    ("PERMANENT", 0x80),
];

fn table_id(v: Option<&str>) -> u32 {
    match v {
        None | Some("main") => 254,
        Some("local") => 255,
        Some("default") => 253,
        Some(n) => n.parse().unwrap_or(0),
    }
}

fn proto_id(v: Option<&str>) -> u8 {
    match v {
        None | Some("unspec") => 0,
        Some("redirect") => 1,
        Some("kernel") => 2,
        Some("boot") => 3,
        Some("static") => 4,
        Some("ra") => 9,
        Some("dhcp") => 16,
        Some(n) => n.parse().unwrap_or(0),
    }
}

fn scope_id(v: Option<&str>) -> u8 {
    match v {
        None | Some("global") | Some("universe") => 0,
        Some("site") => 200,
        Some("link") => 253,
        Some("host") => 254,
        Some("nowhere") => 255,
        Some(n) => n.parse().unwrap_or(0),
    }
}

fn route_type(v: Option<&str>) -> u8 {
    match v.unwrap_or("unicast") {
        "unicast" => 1,
        "local" => 2,
        "broadcast" => 3,
        "anycast" => 4,
        "multicast" => 5,
        "blackhole" => 6,
        "unreachable" => 7,
        "prohibit" => 8,
        "throw" => 9,
        "nat" => 10,
        _ => 0,
    }
}

pub fn link_from_json(v: &Value) -> Link {
    Link {
        ifindex: v["ifindex"].as_u64().unwrap_or(0) as u32,
        ifname: s(v, "ifname").unwrap_or("").into(),
        flags: flag_bits(&v["flags"], LINK_FLAGS),
        mtu: v["mtu"].as_u64().unwrap_or(0) as u32,
        operstate: match s(v, "operstate") {
            Some("NOTPRESENT") => 1,
            Some("DOWN") => 2,
            Some("LOWERLAYERDOWN") => 3,
            Some("TESTING") => 4,
            Some("DORMANT") => 5,
            Some("UP") => 6,
            _ => 0,
        },
        link_type: match s(v, "link_type") {
            Some("ether") => 1,
            Some("loopback") => 772,
            Some("none") => 65534,
            _ => 0,
        },
        address: s(v, "address")
            .and_then(|a| a.parse().ok())
            .unwrap_or_default(),
        broadcast: s(v, "broadcast")
            .and_then(|a| a.parse().ok())
            .unwrap_or_default(),
        master: 0,
        master_name: s(v, "master").unwrap_or("").into(),
        link: v["link_index"].as_u64().unwrap_or(0) as u32,
        link_netnsid: v["link_netnsid"].as_i64().unwrap_or(-1) as i32,
        kind: v["linkinfo"]["info_kind"].as_str().unwrap_or("").into(),
        slave_kind: v["linkinfo"]["info_slave_kind"]
            .as_str()
            .unwrap_or("")
            .into(),
        ifalias: s(v, "ifalias").unwrap_or("").into(),
        qdisc: s(v, "qdisc").unwrap_or("").into(),
        txqlen: v["txqlen"].as_u64().unwrap_or(0) as u32,
        group: 0,
    }
}

fn leg(v: &Value, names: &HashMap<String, u32>) -> NextHop {
    let gw = s(v, "gateway")
        .or_else(|| v.get("via").and_then(|x| s(x, "host")))
        .and_then(|g| g.parse::<IpAddress>().ok());
    let dev = s(v, "dev").unwrap_or("");
    NextHop {
        gateway: gw.into(),
        ifindex: names.get(dev).copied().unwrap_or(0),
        dev: dev.into(),
        weight: v["weight"].as_u64().unwrap_or(1) as u16,
        flags: flag_bits(&v["flags"], NH_FLAGS),
        encap: abi_stable::std_types::ROption::RNone,
    }
}

pub fn route_from_json(v: &Value, family: Family, names: &HashMap<String, u32>) -> Option<Route> {
    let dst = match s(v, "dst")? {
        "default" => IpPrefix::default_route(family),
        d => d.parse::<IpPrefix>().ok()?,
    };
    let mut r = Route::unicast(dst, vec![]);
    r.family = family;
    r.table = table_id(s(v, "table"));
    r.kind = RouteType(route_type(s(v, "type")));
    r.protocol = Protocol(proto_id(s(v, "protocol")));
    r.scope = Scope(scope_id(s(v, "scope")));
    r.metric = v["metric"].as_u64().unwrap_or(0) as u32;
    r.flags = flag_bits(&v["flags"], NH_FLAGS);
    r.prefsrc = s(v, "prefsrc").and_then(|p| p.parse().ok()).into();
    r.nhid = v["nhid"].as_u64().map(|x| x as u32).into();
    if let Some(legs) = v["nexthops"].as_array() {
        r.nexthops = legs
            .iter()
            .map(|l| leg(l, names))
            .collect::<Vec<_>>()
            .into();
    } else if v.get("gateway").is_some() || v.get("via").is_some() || v.get("dev").is_some() {
        let mut l = leg(v, names);
        l.flags = r.flags;
        r.nexthops = RVec::from(vec![l]);
    }
    Some(r)
}

pub fn neighbour_from_json(v: &Value, names: &HashMap<String, u32>) -> Option<Neighbour> {
    let dst: IpAddress = s(v, "dst")?.parse().ok()?;
    let dev = s(v, "dev").unwrap_or("");
    Some(Neighbour {
        family: dst.family(),
        ifindex: *names.get(dev)?,
        dev: dev.into(),
        dst,
        lladdr: s(v, "lladdr")
            .and_then(|a| a.parse().ok())
            .unwrap_or_default(),
        state: flag_bits(&v["state"], NUD) as u16,
        flags: if v.get("router").is_some() { 0x80 } else { 0 },
        proxy: false,
    })
}

pub fn nexthop_from_json(v: &Value, names: &HashMap<String, u32>) -> Option<Nexthop> {
    let gw: Option<IpAddress> = s(v, "gateway").and_then(|g| g.parse().ok());
    let dev = s(v, "dev").unwrap_or("");
    let group: Vec<GroupMember> = v["group"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| GroupMember {
                    id: m["id"].as_u64().unwrap_or(0) as u32,
                    weight: m["weight"].as_u64().unwrap_or(1) as u16,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Nexthop {
        id: v["id"].as_u64()? as u32,
        family: gw.map(|g| g.family()).unwrap_or(Family::UNSPEC),
        gateway: gw.into(),
        ifindex: names.get(dev).copied().unwrap_or(0),
        dev: dev.into(),
        blackhole: v.get("blackhole").is_some(),
        fdb: v.get("fdb").is_some(),
        flags: flag_bits(&v["flags"], NH_FLAGS),
        protocol: Protocol(proto_id(s(v, "protocol"))),
        scope: Scope(scope_id(s(v, "scope"))),
        group: group.into(),
        group_type: if s(v, "type") == Some("resilient") {
            1
        } else {
            0
        },
        encap: abi_stable::std_types::ROption::RNone,
    })
}

pub fn rule_from_json(v: &Value, family: Family) -> Option<Rule> {
    let pfx = |k: &str, lk: &str| -> Option<IpPrefix> {
        let a = s(v, k)?;
        if a == "all" {
            return None;
        }
        let addr: IpAddress = a.parse().ok()?;
        Some(IpPrefix::new(
            addr,
            v[lk].as_u64().map(|x| x as u8).unwrap_or(addr.max_len()),
        ))
    };
    Some(Rule {
        family,
        priority: v["priority"].as_u64()? as u32,
        src: pfx("src", "srclen").into(),
        dst: pfx("dst", "dstlen").into(),
        iif: s(v, "iif").unwrap_or("").into(),
        oif: s(v, "oif").unwrap_or("").into(),
        fwmark: s(v, "fwmark")
            .and_then(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0),
        fwmask: s(v, "fwmask")
            .and_then(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0),
        tos: 0,
        table: table_id(s(v, "table")),
        action: match s(v, "action") {
            None => 1,
            Some("goto") => 2,
            Some("nop") => 3,
            Some("blackhole") => 6,
            Some("unreachable") => 7,
            Some("prohibit") => 8,
            Some(_) => 1,
        },
        goto_target: 0,
        suppress_prefixlen: v["suppress_prefixlen"].as_u64().map(|x| x as u32).into(),
        ip_proto: 0,
        protocol: Protocol(proto_id(s(v, "protocol"))),
        flags: if v.get("not").is_some() {
            FIB_RULE_INVERT
        } else {
            0
        },
        l3mdev: v.get("l3mdev").is_some(),
        sport: port_range(v, "sport").into(),
        dport: port_range(v, "dport").into(),
        uid_range: match (v["uid_start"].as_u64(), v["uid_end"].as_u64()) {
            (Some(a), Some(b)) => Some(UidRange {
                start: a as u32,
                end: b as u32,
            }),
            _ => None,
        }
        .into(),
        tun_id: v["tun_id"].as_u64().into(),
        realms: s(v, "flow_to")
            .map(|to| {
                let n = |x: &str| x.parse::<u32>().unwrap_or(0);
                n(s(v, "flow_from").unwrap_or("0")) << 16 | n(to)
            })
            .into(),
        suppress_ifgroup: s(v, "suppress_ifgroup")
            .map(|g| {
                if g == "default" {
                    0
                } else {
                    g.parse().unwrap_or(0)
                }
            })
            .into(),
    })
}

/// `sport`/`dport` of an `ip -j rule` entry: a single port, or `_start`/`_end`.
fn port_range(v: &Value, name: &str) -> Option<PortRange> {
    if let Some(p) = v[name].as_u64() {
        return Some(PortRange {
            start: p as u16,
            end: p as u16,
        });
    }
    let a = v[format!("{name}_start")].as_u64()?;
    let b = v[format!("{name}_end")].as_u64()?;
    Some(PortRange {
        start: a as u16,
        end: b as u16,
    })
}

fn json(ns: &str, args: &str) -> Value {
    let mut v = vec!["-n", ns, "-j"];
    v.extend(args.split_whitespace());
    let out = sh("ip", &v);
    if out.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {args}: {e}: {out}"))
}

/// Everything of namespace `ns` as plugin-api objects, keyed by identity.
pub fn dump(ns: &str) -> BTreeMap<ObjectKey, Object> {
    let mut out = BTreeMap::new();
    let mut names = HashMap::new();
    for l in json(ns, "-d link show").as_array().unwrap() {
        let l = link_from_json(l);
        names.insert(l.ifname.to_string(), l.ifindex);
        let o = Object::Link(l);
        out.insert(o.key(), o);
    }
    for n in json(ns, "nexthop show").as_array().unwrap() {
        if let Some(n) = nexthop_from_json(n, &names) {
            let o = Object::Nexthop(n);
            out.insert(o.key(), o);
        }
    }
    for n in json(ns, "neigh show").as_array().unwrap() {
        if let Some(n) = neighbour_from_json(n, &names) {
            let o = Object::Neighbour(n);
            out.insert(o.key(), o);
        }
    }
    for (fam, flag) in [(Family::INET, "-4"), (Family::INET6, "-6")] {
        for r in json(ns, &format!("{flag} -d route show table all"))
            .as_array()
            .unwrap()
        {
            if let Some(r) = route_from_json(r, fam, &names) {
                let o = Object::Route(r);
                out.insert(o.key(), o);
            }
        }
        for r in json(ns, &format!("{flag} rule show")).as_array().unwrap() {
            if let Some(r) = rule_from_json(r, fam) {
                let o = Object::Rule(r);
                out.insert(o.key(), o);
            }
        }
    }
    out
}

/// Changes turning `old` into `new`, in the host's batch order ([`ekho_plugin_api::order`]).
pub fn diff(old: &BTreeMap<ObjectKey, Object>, new: &BTreeMap<ObjectKey, Object>) -> Vec<Change> {
    let mut up: Vec<Change> = Vec::new();
    for (k, o) in new {
        match old.get(k) {
            None => up.push(Change::Add(o.clone())),
            Some(p) if p != o => up.push(Change::Update {
                old: p.clone(),
                new: o.clone(),
            }),
            _ => {}
        }
    }
    let rm = old
        .iter()
        .filter(|(k, _)| !new.contains_key(k))
        .map(|(_, o)| Change::Remove(o.clone()));
    up.extend(rm);
    ekho_plugin_api::order::sort_batch(&mut up);
    up
}

// ---- host services ---------------------------------------------------------------------------

/// A host for tests: performs `ResolveNeighbour` with `ip -n NS neigh replace ADDR dev DEV use`
/// (NTF_USE: the kernel starts resolution), records requests (`ReleaseFlow` in `released`) and
/// log lines.
#[derive(Clone)]
pub struct TestHost {
    pub ns: String,
    pub requests: Arc<Mutex<Vec<(u32, IpAddress)>>>,
    pub released: Arc<Mutex<Vec<(ObjectKey, Instant)>>>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl TestHost {
    pub fn new(ns: &str) -> TestHost {
        TestHost {
            ns: ns.into(),
            requests: Default::default(),
            released: Default::default(),
            logs: Default::default(),
        }
    }
    pub fn handle(&self) -> HostHandle {
        HostServices_TO::from_ptr(RArc::new(self.clone()), abi_stable::sabi_trait::TD_Opaque)
    }
}

impl HostServices for TestHost {
    fn request(&self, req: Request) -> RResult<(), RString> {
        let (ifindex, addr) = match req {
            Request::ResolveNeighbour { ifindex, addr } => (ifindex, addr),
            Request::ReleaseFlow { key } => {
                self.released.lock().unwrap().push((key, Instant::now()));
                return RResult::ROk(());
            }
            req => return RResult::RErr(format!("test host: {req:?} not handled").into()),
        };
        self.requests.lock().unwrap().push((ifindex, addr));
        let links = json(&self.ns, "link show");
        let Some(dev) = links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifindex"].as_u64() == Some(ifindex as u64))
            .and_then(|l| l["ifname"].as_str().map(str::to_string))
        else {
            return RResult::RErr(format!("no device with ifindex {ifindex}").into());
        };
        let a = addr.to_string();
        if succeeds(
            "ip",
            &["-n", &self.ns, "neigh", "replace", &a, "dev", &dev, "use"],
        ) {
            RResult::ROk(())
        } else {
            RResult::RErr("ip neigh use failed".into())
        }
    }
    fn netns(&self) -> RString {
        format!("/run/netns/{}", self.ns).into()
    }
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let line = format!("[{level:?}] {message}");
        eprintln!("xdp-router: {line}");
        self.logs.lock().unwrap().push(line);
    }
}

// ---- the miniature host ----------------------------------------------------------------------

/// Owns the plugin and what it was given; `sync` = dump r, diff, apply.
pub struct MiniHost {
    pub ns: String,
    pub plugin: Option<XdpRouter>,
    pub given: BTreeMap<ObjectKey, Object>,
    pub outcomes: BTreeMap<ObjectKey, Outcome>,
    pub host: TestHost,
    pub batches: usize,
}

impl MiniHost {
    /// Creates the plugin for namespace `topo.r` (learnt from the host services, as from the
    /// daemon; `config` is the plugin's TOML table) and replays r's state between begin_sync /
    /// end_sync.
    pub fn start(topo: &Topo, config: &str) -> MiniHost {
        let host = TestHost::new(&topo.r);
        let config = config.to_string();
        let plugin = XdpRouter::create(CreateContext {
            config,
            host: host.handle(),
        })
        .expect("plugin create");
        let mut m = MiniHost {
            ns: topo.r.clone(),
            plugin: Some(plugin),
            given: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            host,
            batches: 0,
        };
        m.plugin.as_mut().unwrap().begin_sync();
        m.sync();
        m.plugin.as_mut().unwrap().end_sync();
        m
    }

    pub fn sync(&mut self) -> usize {
        let Some(p) = self.plugin.as_mut() else {
            return 0;
        };
        let now = dump(&self.ns);
        let changes = diff(&self.given, &now);
        if changes.is_empty() {
            return 0;
        }
        let outs = p.apply(&changes);
        assert_eq!(outs.len(), changes.len(), "one outcome per change");
        for (c, o) in changes.iter().zip(outs) {
            if let (Change::Remove(_), _) = (c, &o) {
                self.outcomes.remove(&c.key());
            } else {
                self.outcomes.insert(c.key(), o);
            }
        }
        self.given = now;
        self.batches += 1;
        changes.len()
    }

    pub fn stats(&self) -> Stats {
        self.plugin.as_ref().map(|p| p.stats()).unwrap_or_default()
    }

    pub fn counter(&self, kind: &str, name: &str) -> u64 {
        self.stats()
            .counters
            .iter()
            .find(|c| c.kind.as_str() == kind && c.name.as_str() == name)
            .map(|c| c.value)
            .unwrap_or(0)
    }

    pub fn shutdown(&mut self) {
        if let Some(mut p) = self.plugin.take() {
            p.shutdown();
        }
    }

    /// Non-zero counters, requests, r's neighbours: for assertion messages.
    pub fn report(&self) -> String {
        let st = self.stats();
        let mut out = format!("plugin: {}\n", st.text);
        for c in st.counters.iter().filter(|c| c.value != 0) {
            out += &format!("  {} {} = {}\n", c.kind, c.name, c.value);
        }
        out += &format!(
            "resolve requests: {:?}\n",
            self.host.requests.lock().unwrap()
        );
        out += &format!(
            "r neighbours:\n{}",
            sh("ip", &["-n", &self.ns, "neigh", "show"])
        );
        let bad: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
            .map(|(k, o)| format!("{k:?}: {o:?}"))
            .collect();
        out += &format!("failed outcomes: {bad:?}\n");
        out
    }

    pub fn outcome_of_route(&self, table: u32, dst: &str) -> Option<Outcome> {
        let dst: IpPrefix = dst.parse().unwrap();
        self.outcomes.iter().find_map(|(k, o)| match k {
            ObjectKey::Route {
                table: t, dst: d, ..
            } if *t == table && *d == dst => Some(o.clone()),
            _ => None,
        })
    }
}

/// A MiniHost syncing in the background every 50 ms (as a real host reacts to netlink).
pub struct Running {
    pub host: Arc<Mutex<MiniHost>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    pub fn start(topo: &Topo, extra_config: &str) -> Running {
        let host = Arc::new(Mutex::new(MiniHost::start(topo, extra_config)));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (host.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                h.lock().unwrap_or_else(|p| p.into_inner()).sync();
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Running {
            host,
            stop,
            thread: Some(thread),
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut MiniHost) -> R) -> R {
        f(&mut self.host.lock().unwrap())
    }

    pub fn report(&self) -> String {
        self.with(|m| m.report())
    }

    /// Syncs until r's state and the plugin's agree (the kernel may still be settling, e.g.
    /// neighbour state changes, so a few rounds).
    pub fn settle(&self) {
        self.with(|m| {
            for _ in 0..20 {
                if m.sync() == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    }

    /// Stops syncing and shuts the plugin down.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .shutdown();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
