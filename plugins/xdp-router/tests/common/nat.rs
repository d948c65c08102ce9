//! r as a NAT router (kernel forwarding on, conntrack with counters, an nftables `masquerade` on
//! its h2 side, h2 without a route back to h1), a paced TCP transfer whose bytes are checked
//! end to end, and conntrack entries read from `conntrack -L -o extended`: for the flow
//! offload tests and the NAT benchmark.

use super::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout};

/// The masquerade table on r (`ip nat`, chain `post`).
pub const NAT_RULES: &str = "table ip nat {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"p2\" masquerade\n }\n}\n";

/// A router's usual input filter: packets from h2's side that would open a new connection to r
/// itself are dropped. A guard for the `conntrack -D` in the middle of a masqueraded transfer:
/// the next packet the kernel sees makes the new entry, and if that were h2's ACK to the
/// masquerade address it would be a new connection to r, which r could answer with an RST.
/// Not needed in practice on 6.18 (the test passed 3 of 3 runs without it): h1's segments come
/// first.
pub const INPUT_RULES: &str = "table inet filt {\n chain input {\n  type filter hook input priority filter; policy accept;\n  iifname \"p2\" ct state new tcp flags & (syn | ack) != syn drop\n }\n}\n";

/// Makes r a NAT router: forwarding on, conntrack counters on, the masquerade rule and the
/// input filter; h2 loses its route back to h1. TCP window tracking stays the kernel's default
/// (`nf_conntrack_tcp_be_liberal = 0`): the host marks the entries it offers liberal.
pub fn make_nat_router(topo: &Topo, dir: &std::path::Path) {
    let r = &topo.r;
    let _ = Command::new("modprobe")
        .args(["-q", "nf_conntrack"])
        .status();
    for kv in ["net.ipv4.ip_forward=1", "net.netfilter.nf_conntrack_acct=1"] {
        topo.exec(r, &["sysctl", "-qw", kv]);
    }
    nft(topo, dir, &format!("{NAT_RULES}{INPUT_RULES}"));
    topo.ip(&topo.h2, "route del default");
}

/// The IPv6 masquerade table on r (`ip6 nat6`, chain `post`).
pub const NAT6_RULES: &str = "table ip6 nat6 {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"p2\" masquerade\n }\n}\n";

/// [`make_nat_router`] for IPv6: forwarding on, conntrack counters on, the IPv6 masquerade
/// rule and the input filter (an `inet` table); h2 loses its IPv6 route back to h1.
pub fn make_nat6_router(topo: &Topo, dir: &std::path::Path) {
    let r = &topo.r;
    let _ = Command::new("modprobe")
        .args(["-q", "nf_conntrack"])
        .status();
    for kv in [
        "net.ipv6.conf.all.forwarding=1",
        "net.netfilter.nf_conntrack_acct=1",
    ] {
        topo.exec(r, &["sysctl", "-qw", kv]);
    }
    nft(topo, dir, &format!("{NAT6_RULES}{INPUT_RULES}"));
    topo.ip(&topo.h2, "-6 route del default");
}

/// Loads `rules` into r's nftables (`nft -f`).
pub fn nft(topo: &Topo, dir: &std::path::Path, rules: &str) {
    let f = dir.join("rules.nft");
    std::fs::write(&f, rules).unwrap();
    topo.exec(&topo.r, &["nft", "-f", f.to_str().unwrap()]);
}

/// One conntrack entry as `conntrack -L -o extended` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub proto: String,
    pub timeout: u64,
    pub state: String,
    /// (src, dst, sport, dport) of the original direction.
    pub orig: (String, String, u16, u16),
    pub reply: (String, String, u16, u16),
    /// Kernel counters (packets, bytes) of each direction (0 without `nf_conntrack_acct`).
    pub orig_counters: (u64, u64),
    pub reply_counters: (u64, u64),
    pub assured: bool,
    pub zone: u16,
    pub id: u32,
}

impl CtEntry {
    pub fn packets(&self) -> u64 {
        self.orig_counters.0 + self.reply_counters.0
    }

    /// The flow object the host would give a plugin for this entry.
    pub fn flow(&self) -> Flow {
        let t = |(s, d, sp, dp): &(String, String, u16, u16)| FlowTuple {
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
            sport: *sp,
            dport: *dp,
        };
        let proto = match self.proto.as_str() {
            "tcp" => 6,
            "udp" => 17,
            p => panic!("protocol {p}"),
        };
        Flow {
            zone: self.zone,
            id: self.id,
            status: if self.assured {
                1 << 2 | 1 << 3
            } else {
                1 << 3
            },
            ..Flow::new(proto, t(&self.orig), t(&self.reply))
        }
    }
}

/// Parses one line of `conntrack -L -o extended,id`.
pub fn parse_ct_line(line: &str) -> Option<CtEntry> {
    let w: Vec<&str> = line.split_whitespace().collect();
    // ipv4 2 tcp 6 TIMEOUT [STATE] key=value ...
    if w.len() < 6 {
        return None;
    }
    let proto = w[2].to_string();
    let timeout = w[4].parse().ok()?;
    let mut i = 5;
    let state = if w[i].contains('=') {
        String::new()
    } else {
        i += 1;
        w[5].to_string()
    };
    let mut tuples: Vec<(String, String, u16, u16)> = Vec::new();
    let mut counters: Vec<(u64, u64)> = Vec::new();
    let (mut src, mut dst, mut sport) = (String::new(), String::new(), 0u16);
    let mut packets = 0u64;
    let mut e = CtEntry {
        proto,
        timeout,
        state,
        orig: Default::default(),
        reply: Default::default(),
        orig_counters: (0, 0),
        reply_counters: (0, 0),
        assured: false,
        zone: 0,
        id: 0,
    };
    for t in &w[i..] {
        if *t == "[ASSURED]" {
            e.assured = true;
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        match k {
            "src" => src = v.to_string(),
            "dst" => dst = v.to_string(),
            "sport" => sport = v.parse().ok()?,
            "dport" => tuples.push((src.clone(), dst.clone(), sport, v.parse().ok()?)),
            "packets" => packets = v.parse().ok()?,
            "bytes" => counters.push((packets, v.parse().ok()?)),
            "zone" => e.zone = v.parse().ok()?,
            "id" => e.id = v.parse().ok()?,
            _ => {}
        }
    }
    if tuples.len() != 2 {
        return None;
    }
    e.orig = tuples[0].clone();
    e.reply = tuples[1].clone();
    if counters.len() == 2 {
        e.orig_counters = counters[0];
        e.reply_counters = counters[1];
    }
    Some(e)
}

/// r's IPv4 TCP conntrack entries to `dport` (original direction).
pub fn ct_entries(topo: &Topo, dport: u16) -> Vec<CtEntry> {
    ct_entries_of(topo, "ipv4", dport)
}

/// r's TCP conntrack entries of `family` (`ipv4`, `ipv6`) to `dport`.
pub fn ct_entries_of(topo: &Topo, family: &str, dport: u16) -> Vec<CtEntry> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.r,
            "conntrack",
            "-L",
            "-f",
            family,
            "-p",
            "tcp",
        ])
        .args(["--dport", &dport.to_string(), "-o", "extended,id"])
        .stderr(Stdio::null())
        .output()
        .expect("conntrack -L");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_ct_line)
        .collect()
}

/// The one established, assured entry to `dport`, once there is one.
pub fn established(topo: &Topo, dport: u16, timeout: Duration) -> Option<CtEntry> {
    wait_for(timeout, || {
        ct_entries(topo, dport)
            .into_iter()
            .find(|e| e.state == "ESTABLISHED" && e.assured)
    })
}

/// `conntrack -D` of r's TCP entries to `dport`; whether one was deleted.
pub fn ct_delete(topo: &Topo, dport: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &topo.r, "conntrack", "-D", "-p", "tcp"])
        .args(["--dport", &dport.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A TCP transfer h1 -> h2:`port` of `bytes` (pseudo-random content), sent at about `rate`
/// bytes/s in 64 KiB writes, running in the background. Both ends hash what they sent and
/// received (SHA-256): [`Transfer::finish`] compares.
pub struct Transfer {
    server: Child,
    server_out: BufReader<ChildStdout>,
    client: Child,
}

const SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(30)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(30)
h = hashlib.sha256()
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d)
    n += len(d)
c.sendall(b"k")
c.close()
print(n, h.hexdigest(), flush=True)
"#;

const CLIENT: &str = r#"
import hashlib, socket, sys, time
addr, port, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
c = socket.create_connection((addr, port), timeout=5)
c.settimeout(30)
block = hashlib.sha256(b"ekho").digest() * 2048
h = hashlib.sha256()
sent = 0
t0 = time.monotonic()
i = 0
while sent < total:
    # a different 64 KiB each time: the counter in front of the block
    chunk = (i.to_bytes(8, "big") + block)[: min(1 << 16, total - sent)]
    c.sendall(chunk)
    h.update(chunk)
    sent += len(chunk)
    i += 1
    ahead = sent / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(sent, h.hexdigest(), flush=True)
"#;

impl Transfer {
    pub fn start(topo: &Topo, port: u16, bytes: usize, rate: f64) -> Transfer {
        Transfer::start_to(topo, "10.0.2.2", port, bytes, rate)
    }

    /// [`Transfer::start`] to h2's address `addr` (IPv4 or IPv6).
    pub fn start_to(topo: &Topo, addr: &str, port: u16, bytes: usize, rate: f64) -> Transfer {
        let py = python();
        let mut server = Command::new("ip")
            .args(["netns", "exec", &topo.h2, &py, "-c", SERVER, addr])
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("server");
        let mut server_out = BufReader::new(server.stdout.take().unwrap());
        let mut line = String::new();
        server_out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "transfer server");
        let client = Command::new("ip")
            .args(["netns", "exec", &topo.h1, &py, "-c", CLIENT, addr])
            .args([port.to_string(), bytes.to_string(), rate.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("client");
        Transfer {
            server,
            server_out,
            client,
        }
    }

    /// Whether the client is still sending.
    pub fn running(&mut self) -> bool {
        matches!(self.client.try_wait(), Ok(None))
    }

    /// Waits for both ends: `Ok(bytes)` when the server received exactly what the client sent
    /// (count and hash), else what each end said.
    pub fn finish(mut self) -> Result<usize, String> {
        let mut sent = String::new();
        if let Some(mut o) = self.client.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut sent);
        }
        let status = self.client.wait().map_err(|e| e.to_string())?;
        let sent = sent.trim().to_string();
        let mut got = String::new();
        let _ = self.server_out.read_line(&mut got);
        let _ = self.server.kill();
        let _ = self.server.wait();
        let got = got.trim().to_string();
        if status.success() && !sent.is_empty() && sent == got {
            Ok(sent.split(' ').next().unwrap().parse().unwrap())
        } else {
            Err(format!(
                "client sent {sent:?} ({status}), server got {got:?}"
            ))
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let _ = self.client.kill();
        let _ = self.server.kill();
    }
}

/// Whether a NAT test cannot run here (the XDP tests' reasons, or conntrack or nft missing):
/// prints the `SKIP:` line and returns true then.
pub fn skip_nat() -> bool {
    if skip() {
        return true;
    }
    if let Some(r) = missing_tools(&["conntrack", "nft"], "conntrack nftables") {
        say_skip(&r);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_conntrack_extended() {
        let l = "ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.1.2 dst=10.0.2.2 sport=40000 dport=5201 packets=10 bytes=600 src=10.0.2.2 dst=10.0.2.1 sport=5201 dport=61000 packets=8 bytes=500 [ASSURED] mark=0 use=1 id=1234";
        let e = super::parse_ct_line(l).unwrap();
        assert_eq!(e.state, "ESTABLISHED");
        assert_eq!(e.orig.2, 40000);
        assert_eq!(e.reply.1, "10.0.2.1");
        assert_eq!(e.reply.3, 61000);
        assert_eq!(e.orig_counters, (10, 600));
        assert_eq!(e.reply_counters, (8, 500));
        assert!(e.assured);
        assert_eq!(e.id, 1234);
        assert_eq!(e.packets(), 18);
    }
}
