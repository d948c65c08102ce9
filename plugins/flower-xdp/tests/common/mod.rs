//! What the flower-xdp tests share: the topology (r's ports v0 and v1, veth, their peers h0
//! and h1 in namespaces of their own, r's forwarding off, no IPv6) and UDP traffic through it.
#![allow(dead_code)]

use ekho_testkit::*;
use ekho_xdp_common::netns::run_in;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

pub struct Topo {
    pub r: Netns,
    pub h0: Netns,
    pub h1: Netns,
}

/// The topology, its namespaces named `PREFIX-r`, `PREFIX-h0`, `PREFIX-h1`.
pub fn topo(prefix: &str) -> Topo {
    let (r, h0, h1) = (
        Netns::named(&format!("{prefix}-r")),
        Netns::named(&format!("{prefix}-h0")),
        Netns::named(&format!("{prefix}-h1")),
    );
    // No IPv6: its router solicitations and MLD reports would count as frames at h1.
    for ns in [&r, &h0, &h1] {
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    }
    r.ip(&format!(
        "link add v0 type veth peer name h0 netns {}",
        h0.name
    ));
    r.ip(&format!(
        "link add v1 type veth peer name h1 netns {}",
        h1.name
    ));
    r.ip("addr add 10.0.0.1/24 dev v0");
    r.ip("addr add 10.1.0.1/24 dev v1");
    r.ip("link set v0 up");
    r.ip("link set v1 up");
    h0.ip("addr add 10.0.0.2/24 dev h0");
    h0.ip("link set h0 up");
    h0.ip("route add default via 10.0.0.1");
    h1.ip("addr add 10.1.0.2/24 dev h1");
    h1.ip("link set h1 up");
    h1.ip("route add default via 10.1.0.1");
    // XDP frames redirected into v1 reach h1 through its NAPI: GRO on there.
    h1.run(&["ethtool", "-K", "h1", "gro", "on"]);
    Topo { r, h0, h1 }
}

/// A UDP socket bound in `ns` (sockets keep the namespace they were made in).
pub fn socket_in(ns: &Netns, bind: &str) -> UdpSocket {
    let bind = bind.to_string();
    let s = run_in(Some(&ns.path()), move || UdpSocket::bind(bind).unwrap()).unwrap();
    s.set_nonblocking(true).unwrap();
    // Room for every datagram of a burst: frames through veth's XDP path become page-sized
    // skbs, and 50 of them overflow the default receive buffer.
    let size: libc::c_int = 8 << 20;
    // SAFETY: a valid socket and option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    s
}

pub fn send(from: &UdpSocket, to: &str, n: usize) {
    for _ in 0..n {
        from.send_to(b"ekho", to).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Datagrams waiting on `s` (read within `wait`).
pub fn received(s: &UdpSocket, wait: Duration) -> usize {
    let mut n = 0;
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    while t0.elapsed() < wait {
        match s.recv_from(&mut buf) {
            Ok(_) => n += 1,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    n
}

pub fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let v = ns.ip_json(&format!("-s link show dev {dev}"));
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}
