//! Namespaces whose traffic conntrack tracks, for the conntrack mirror's and the daemon's flow
//! tests.

use crate::netns::Netns;
use crate::skip::{missing_tools, needs_root, say_skip};

/// Whether a conntrack test cannot run here (not root, or `ip`, `conntrack`, `nft` or `python3`
/// missing): prints the `SKIP:` line and returns true then.
pub fn conntrack_unavailable() -> bool {
    let r = needs_root("network namespaces, conntrack").or_else(|| {
        missing_tools(
            &["ip", "conntrack", "nft", "python3"],
            "iproute2 conntrack nftables python3",
        )
    });
    match r {
        Some(r) => {
            say_skip(&r);
            true
        }
        None => false,
    }
}

/// A namespace (named after the test binary, [`Netns::new`]) whose local traffic is tracked (a rule using conntrack
/// registers its hooks: table `inet track`, chain `out` on the output hook), with per-flow
/// counters on and unreplied UDP flows kept 600 s.
pub fn tracked_netns() -> Netns {
    let ns = Netns::new();
    track(&ns);
    ns
}

/// Makes `ns`'s local traffic tracked, as [`tracked_netns`] does.
pub fn track(ns: &Netns) {
    // Where conntrack is a module (Debian's 6.1) its sysctls exist once it is loaded; built in
    // (6.18 here) this does nothing.
    let _ = std::process::Command::new("modprobe")
        .args(["-q", "nf_conntrack"])
        .status();
    ns.run(&["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"]);
    // Unreplied UDP flows live 30 s by default: a test's rounds outlast that in the emulated VM,
    // and the flows of the first would expire under the test.
    ns.run(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_udp_timeout=600",
    ]);
    ns.run(&["nft", "add", "table", "inet", "track"]);
    ns.run(&[
        "nft",
        "add chain inet track out { type filter hook output priority 0 ; }",
    ]);
    ns.run(&["nft", "add rule inet track out ct state new counter"]);
}

/// A process in a namespace, killed on drop (also on panic).
pub struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP connection on 127.0.0.1:`port` in `ns` held open (`ESTABLISHED`, `ASSURED`: a byte
/// each way) until dropped; returns once it is up.
pub fn held_tcp(ns: &Netns, port: u16) -> Background {
    let py = format!(
        "import socket, time\n\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('127.0.0.1', {port})); l.listen(1)\n\
         c = socket.create_connection(('127.0.0.1', {port})); s, _ = l.accept()\n\
         c.send(b'x'); s.recv(1); s.send(b'y'); c.recv(1)\n\
         print('up', flush=True)\n\
         time.sleep(120)\n"
    );
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", &py])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let bg = Background(child);
    assert_eq!(line.trim(), "up", "the held TCP connection did not come up");
    bg
}
