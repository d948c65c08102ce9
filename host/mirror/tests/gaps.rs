//! Differential test of every case of docs/netlink-gaps.md: after each step, once quiet,
//! the mirror must equal `ip -j`/`bridge -j` output of the namespace.

mod common;
use common::*;
use std::time::Duration;

/// How long the mirror may take to equal the kernel after a step. Only a failing step waits
/// this long: each comparison runs a dozen `ip`/`bridge` dumps, which take a second or more in
/// the emulated VM, where 3 s let a state changing mid-comparison (a lifetime expiring) end the
/// wait with a transient difference.
const STEP_TIMEOUT: Duration = Duration::from_secs(8);

fn run_steps(tag: &str, setup: &[&str], steps: &[&str]) {
    let Some(ns) = netns(tag) else { return };
    for s in setup {
        apply(&ns, s);
    }
    let r = start(&ns, 0);
    let d = converge(&ns, &r.mirror, STEP_TIMEOUT);
    assert!(
        d.is_empty(),
        "[{tag}] after initial sync:\n{}",
        d.join("\n")
    );
    for s in steps {
        apply(&ns, s);
        let d = converge(&ns, &r.mirror, STEP_TIMEOUT);
        assert!(d.is_empty(), "[{tag}] after `{s}`:\n{}", d.join("\n"));
    }
    eprintln!(
        "[{tag}] {} steps, no divergence; stats {:?}",
        steps.len(),
        r.mirror.stats()
    );
}

/// `ip ...`, `bridge ...` or `sysctl ...` (inside the namespace).
fn apply(ns: &Netns, s: &str) {
    if let Some(b) = s.strip_prefix("bridge ") {
        b.split(';').for_each(|x| {
            ns.bridge(x.trim());
        });
    } else if let Some(x) = s.strip_prefix("sleep ") {
        std::thread::sleep(Duration::from_secs_f64(x.parse().unwrap()));
    } else if let Some(x) = s.strip_prefix("sysctl ") {
        ns.sh(&format!("sysctl -qw {x}"));
    } else {
        ns.ip(s);
    }
}

const TOPO: &[&str] = &[
    "link add va type veth peer name vb",
    "link add vc type veth peer name vd",
    "link set va up",
    "link set vb up",
    "link set vc up",
    "link set vd up",
    "addr add 10.1.0.1/24 dev va",
    "addr add 10.2.0.1/24 dev vc",
    "addr add 2001:db8:1::1/64 dev va",
    "addr add 2001:db8:2::1/64 dev vc",
];

#[test]
fn ipv4_routes_on_link_down_and_delete() {
    let mut setup = TOPO.to_vec();
    setup.extend([
        "route add 10.10.0.0/24 via 10.1.0.2",
        "route add 10.11.0.0/24 dev va table 100",
        "route add 10.12.0.0/24 nexthop via 10.1.0.2 nexthop via 10.2.0.2",
        "route add 10.13.0.0/24 via 10.2.0.2 table 100",
    ]);
    run_steps(
        "v4down",
        &setup,
        &[
            "link set va down",
            "link set va up",
            "route add 10.10.0.0/24 via 10.1.0.2",
            "link set vb down",
            "link set vb up",
            "link del vc",
        ],
    );
}

#[test]
fn last_ipv4_address_and_prefsrc() {
    let mut setup = TOPO.to_vec();
    setup.extend([
        "addr add 10.1.1.1/24 dev va",
        "route add 10.20.0.0/24 via 10.1.0.2 src 10.1.1.1",
        "route add 10.21.0.0/24 via 10.1.0.2 table 50",
    ]);
    run_steps(
        "lastaddr",
        &setup,
        &[
            "addr del 10.1.1.1/24 dev va",
            "addr del 10.1.0.1/24 dev va",
            "addr add 10.1.0.1/24 dev va",
            "-6 route add 2001:db8:9::/64 via 2001:db8:1::2 src 2001:db8:1::1",
            "addr del 2001:db8:1::1/64 dev va",
        ],
    );
}

#[test]
fn nexthops_groups_and_devices() {
    let mut setup = TOPO.to_vec();
    setup.extend([
        "nexthop add id 1 via 10.1.0.2 dev va",
        "nexthop add id 2 via 10.2.0.2 dev vc",
        "nexthop add id 3 group 1/2",
        "nexthop add id 4 via 2001:db8:1::2 dev va",
        "nexthop add id 5 via 2001:db8:2::2 dev vc",
        "nexthop add id 6 group 4,3/5",
        "route add 10.30.0.0/24 nhid 3",
        "route add 10.31.0.0/24 nhid 1",
        "-6 route add 2001:db8:30::/64 nhid 6",
        "-6 route add 2001:db8:31::/64 nhid 5",
    ]);
    run_steps(
        "nexthop",
        &setup,
        &[
            "nexthop del id 1",
            "nexthop replace id 2 via 10.2.0.3 dev vc",
            "nexthop add id 1 via 10.1.0.2 dev va",
            "nexthop replace id 3 group 1/2",
            "route add 10.32.0.0/24 nhid 3 table 9",
            "link set va down",
            "link set va up",
            "addr add 2001:db8:1::1/64 dev va",
            "nexthop add id 1 via 10.1.0.2 dev va",
            "nexthop add id 4 via 2001:db8:1::2 dev va",
            "link set vd down",
            "link set vd up",
            "link del vc",
            "nexthop add id 30 blackhole",
            "route add 10.33.0.0/24 nhid 30",
            "nexthop add id 31 via 10.1.0.9 dev va",
            "nexthop add id 32 group 1/31 type resilient buckets 8 idle_timer 0",
            "route add 10.34.0.0/24 nhid 32",
            "nexthop add id 33 via 10.1.0.10 fdb",
            "nexthop add id 34 group 33 fdb",
            "nexthop del id 31",
            "nexthop flush",
        ],
    );
}

#[test]
fn ipv6_multipath_partial_and_append() {
    let mut setup = TOPO.to_vec();
    setup.push("-6 route add 2001:db8:40::/64 via 2001:db8:1::2");
    run_steps(
        "v6mp",
        &setup,
        &[
            "-6 route append 2001:db8:40::/64 via 2001:db8:2::2",
            "-6 route append 2001:db8:40::/64 via 2001:db8:1::3",
            "-6 route prepend 2001:db8:40::/64 via 2001:db8:2::3",
            "-6 route add 2001:db8:40::/64 via 2001:db8:2::4 metric 7",
            "-6 route del 2001:db8:40::/64 via 2001:db8:1::3",
            "-6 route replace 2001:db8:41::/64 nexthop via 2001:db8:1::2 nexthop via 2001:db8:2::2",
            "link set vd down",
            "link set vd up",
            "link set vc down",
            "link set vc up",
            "addr add 2001:db8:2::1/64 dev vc",
            "-6 route replace 2001:db8:41::/64 via 2001:db8:1::5",
            "-6 route add 2001:db8:42::/64 nexthop via 2001:db8:1::2 nexthop via 2001:db8:2::2",
            "link del vc",
            "-6 route del 2001:db8:40::/64",
        ],
    );
}

#[test]
fn ipv4_replace_append_prepend() {
    run_steps(
        "v4alias",
        TOPO,
        &[
            "route add 10.50.0.0/24 via 10.1.0.2",
            "route append 10.50.0.0/24 via 10.2.0.2",
            "route prepend 10.50.0.0/24 via 10.1.0.3",
            "route replace 10.50.0.0/24 via 10.1.0.4",
            "route change 10.50.0.0/24 via 10.1.0.5",
            "route del 10.50.0.0/24",
            "route append 10.50.0.0/24 dev vc table 100",
            "route add 10.51.0.0/24 via 10.1.0.2 metric 5",
            "route replace 10.51.0.0/24 via 10.1.0.9 metric 6",
            "route flush table 100",
            "route del 10.50.0.0/24 via 10.2.0.2",
        ],
    );
}

#[test]
fn proxy_neighbours_and_neighbours() {
    let mut setup = TOPO.to_vec();
    setup.extend([
        "neigh add proxy 10.1.0.50 dev va",
        "neigh add 10.1.0.2 lladdr 02:00:00:00:00:02 dev va",
    ]);
    run_steps(
        "proxy",
        &setup,
        &[
            "neigh add proxy 10.1.0.51 dev va",
            "neigh add proxy 2001:db8:1::51 dev va",
            "neigh del proxy 10.1.0.50 dev va",
            "neigh add 2001:db8:1::2 lladdr 02:00:00:00:00:03 dev va nud stale",
            "neigh replace 10.1.0.2 lladdr 02:00:00:00:00:04 dev va nud noarp",
            "link set va down",
            "link set va up",
            "neigh add proxy 10.1.0.52 dev vc",
            "link del vc",
        ],
    );
}

#[test]
fn rules_detach_and_reattach() {
    run_steps(
        "rules",
        TOPO,
        &[
            "rule add iif va table 100 prio 100",
            "rule add oif vc table 101 prio 101",
            "-6 rule add from 2001:db8::/32 table 102 prio 102",
            "rule add fwmark 0x10/0xff table 103 prio 103",
            "link del va",
            "link add va type veth peer name vb",
            "link del vc",
            "rule del prio 100",
        ],
    );
}

#[test]
fn netconf_partial_updates() {
    run_steps(
        "netconf",
        TOPO,
        &[
            "sysctl net.ipv4.conf.va.forwarding=1",
            "sysctl net.ipv4.conf.va.rp_filter=2",
            "sysctl net.ipv6.conf.vc.forwarding=1",
            "sysctl net.ipv4.conf.all.forwarding=1",
            "sysctl net.ipv4.conf.va.proxy_arp=1",
            "sysctl net.ipv4.conf.vc.ignore_routes_with_linkdown=1",
            "link add ve type veth peer name vf",
            "link del ve",
        ],
    );
}

#[test]
fn bridge_fdb_mdb_vxlan_macvlan() {
    let mut setup = TOPO.to_vec();
    setup.extend([
        "link add br0 type bridge",
        "link set br0 up",
        "link set vb master br0",
        "link set vd master br0",
    ]);
    run_steps(
        "bridge",
        &setup,
        &[
            "bridge fdb add 02:00:00:00:00:10 dev vb master static",
            "bridge fdb add 02:00:00:00:00:11 dev vd master",
            "link add vx0 type vxlan id 42 dstport 4789 local 10.1.0.1",
            "link set vx0 up",
            "bridge fdb append 00:00:00:00:00:00 dev vx0 dst 10.1.0.7; fdb append 00:00:00:00:00:00 dev vx0 dst 10.1.0.8",
            "bridge fdb del 00:00:00:00:00:00 dev vx0 dst 10.1.0.7",
            "bridge fdb add 02:00:00:00:00:12 dev vx0 dst 10.1.0.9",
            "bridge fdb replace 02:00:00:00:00:12 dev vx0 dst 10.1.0.10",
            "bridge mdb add dev br0 port vb grp 239.1.1.1 permanent",
            "bridge mdb add dev br0 port vd grp ff0e::1 permanent",
            "link add mv0 link va type macvlan",
            "link set mv0 up",
            "addr add 10.7.0.1/24 dev mv0",
            "link set vb nomaster",
            "bridge mdb del dev br0 port vd grp ff0e::1",
            "link del mv0",
            "link set vx0 down",
            "link del br0",
        ],
    );
}

#[test]
fn sysctl_driven_cases() {
    let mut setup = TOPO.to_vec();
    setup.extend([
        "route add 10.90.0.0/24 nexthop via 10.1.0.2 nexthop via 10.2.0.2",
        "-6 route add 2001:db8:90::/64 nexthop via 2001:db8:1::2 nexthop via 2001:db8:2::2",
        "route add 10.91.0.0/24 via 10.1.0.2",
        "addr add 10.1.0.5/24 dev va",
        "addr add 10.1.0.6/24 dev va",
    ]);
    run_steps(
        "sysctl2",
        &setup,
        &[
            // carrier loss with ignore_routes_with_linkdown: legs dead too
            "sysctl net.ipv4.conf.va.ignore_routes_with_linkdown=1",
            "link set vb down",
            "link set vb up",
            // keep_addr_on_down
            "sysctl net.ipv6.conf.vc.keep_addr_on_down=1",
            "link set vc down",
            "link set vc up",
            // promote_secondaries
            "sysctl net.ipv4.conf.va.promote_secondaries=1",
            "addr del 10.1.0.1/24 dev va",
            "sysctl net.ipv4.conf.va.promote_secondaries=0",
            "addr add 10.1.0.1/24 dev va",
            "addr del 10.1.0.5/24 dev va",
            // IPv6 torn down by a small MTU, then restored
            "link set vc mtu 1200",
            "link set vc mtu 1500",
            "sysctl net.ipv6.conf.va.disable_ipv6=1",
            "sysctl net.ipv6.conf.va.disable_ipv6=0",
            // rename: labels follow
            "link set vc down",
            "link set vc name vz",
            "link set vz up",
        ],
    );
}

#[test]
fn expiry_and_netns_move() {
    let mut setup = TOPO.to_vec();
    setup.extend([
        "route add 10.95.0.0/24 via 10.2.0.2",
        "neigh add proxy 10.2.0.77 dev vc",
    ]);
    let Some(other) = netns("other") else {
        return;
    };
    let mv = format!("link set vd netns {}", other.name);
    let mv2 = format!("link set vc netns {}", other.name);
    run_steps(
        "expiry",
        &setup,
        &[
            "-6 route add 2001:db8:95::/64 via 2001:db8:1::2 expires 2",
            "addr add 10.1.7.1/24 dev va valid_lft 2 preferred_lft 1",
            "sysctl net.ipv4.conf.all.forwarding=1",
            &mv,
            &mv2,
            // route and address expiry (~2 s after creation)
            "sleep 2.5",
        ],
    );
}

#[test]
fn learned_fdb_and_neighbours_from_traffic() {
    // va (10.1.0.1) -- vb [br0] vd -- vc (10.1.0.2, in another namespace): pings learn FDB
    // entries on the ports and an ARP neighbour on va.
    if std::process::Command::new("ping")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("SKIP: no ping binary to generate traffic");
        return;
    }
    let Some(other) = netns("peer") else {
        return;
    };
    let setup = [
        "link add br0 type bridge",
        "link set br0 up",
        "link add va type veth peer name vb",
        "link add vc type veth peer name vd",
        "link set vb master br0",
        "link set vd master br0",
        "link set va up",
        "link set vb up",
        "link set vd up",
        "addr add 10.1.0.1/24 dev va",
    ];
    let mv = format!("link set vc netns {}", other.name);
    let mut all: Vec<&str> = setup.to_vec();
    all.push(&mv);
    let Some(ns) = netns("learn") else {
        return;
    };
    for s in all {
        apply(&ns, s);
    }
    other.ip("addr add 10.1.0.2/24 dev vc");
    other.ip("link set vc up");
    let r = start(&ns, 0);
    let check = |step: &str| {
        let d = converge(&ns, &r.mirror, Duration::from_secs(4));
        assert!(d.is_empty(), "[learn] after `{step}`:\n{}", d.join("\n"));
    };
    check("initial sync");
    ns.sh("ping -c 2 -i 0.2 -W 1 10.1.0.2 >/dev/null");
    check("ping (learned FDB, ARP)");
    let fdb = r.mirror.dump(Some(ekho_plugin_api::ObjectKind::Fdb)).len();
    assert!(fdb >= 2, "expected learned FDB entries, mirror has {fdb}");
    for s in [
        "bridge fdb flush dev br0 dynamic",
        "sleep 0.2",
        "link set br0 type bridge mcast_snooping 0",
        "link set br0 type bridge mcast_snooping 1",
        "link set vd down",
        "link set vd up",
        "neigh flush dev va",
        "link set va address 02:00:00:00:00:aa",
    ] {
        if s.starts_with("sleep") {
            apply(&ns, s);
            ns.sh("ping -c 2 -i 0.2 -W 1 10.1.0.2 >/dev/null");
        } else {
            apply(&ns, s);
        }
        check(s);
    }
}

#[test]
fn rule_selectors_and_actions() {
    run_steps(
        "rulesel",
        TOPO,
        &[
            "rule add not from 10.0.0.0/8 table 7 prio 200",
            "rule add from all lookup main suppress_prefixlength 0 prio 201",
            "rule add fwmark 0x1 goto 32766 prio 202",
            "rule add to 10.9.0.0/16 prohibit prio 203",
            "rule add tos 0x10 blackhole prio 204",
            "rule add ipproto tcp table 9 prio 205",
            "-6 rule add to 2001:db8::/32 unreachable prio 206",
            "rule add from 10.1.0.0/24 nop prio 207",
            "rule del prio 203",
            // Rules that differ only by a port, uid, tunnel id or realm selector are distinct.
            "rule add ipproto tcp dport 80 table 10 prio 210",
            "rule add ipproto tcp dport 443 table 10 prio 210",
            "rule add ipproto udp sport 1000-2000 table 11 prio 211",
            "rule add uidrange 1000-2000 table 12 prio 212",
            "-6 rule add uidrange 1000-1000 table 12 prio 212",
            "rule add tun_id 7 table 13 prio 213",
            "rule add realms 3/4 table 14 prio 214",
            "rule add realms 5 table 14 prio 214",
            "rule add from all lookup main suppress_ifgroup 0 prio 215",
            "rule del ipproto tcp dport 443 table 10 prio 210",
        ],
    );
}

/// `run_steps` where the kernel has `feature` (common::DEVICE_FEATURES); a `SKIP:` line naming
/// the kernel and the feature otherwise.
fn run_steps_with(feature: &str, tag: &str, setup: &[&str], steps: &[&str]) {
    match kernel_has(feature) {
        Ok(()) => run_steps(tag, setup, steps),
        Err(reason) => say_skip(&format!("gaps::{tag}: {reason}")),
    }
}

#[test]
fn bridge_vlan_filtering() {
    // docs/netlink-gaps.md section 14: port VLANs (RTM_NEWVLAN/RTM_DELVLAN), pvid moves,
    // vlan_filtering toggled, vlan_default_pvid moving the ports still on the old default,
    // the VLANs of a removed port, VLAN-tagged FDB entries.
    let mut setup = TOPO.to_vec();
    setup.extend([
        "link add br0 type bridge vlan_filtering 1",
        "link set br0 up",
        "link set vb master br0",
        "link set vd master br0",
    ]);
    run_steps_with(
        "bridge VLAN filtering",
        "brvlan",
        &setup,
        &[
            "bridge vlan add dev vb vid 10",
            "bridge vlan add dev vd vid 20 pvid untagged",
            "bridge vlan add dev vb vid 30-32",
            "bridge vlan add dev br0 vid 30 self",
            "bridge vlan del dev vb vid 31",
            "bridge vlan add dev vb vid 32 untagged",
            "bridge fdb add 02:00:00:00:00:20 dev vb master static vlan 10",
            "link set br0 type bridge vlan_default_pvid 5",
            "link set br0 type bridge vlan_filtering 0",
            "link set br0 type bridge vlan_filtering 1",
            "link set vd nomaster",
            "link set vd master br0",
            "link set br0 type bridge vlan_default_pvid 0",
            "link set br0 type bridge vlan_default_pvid 7",
            "link del vb",
            "link del br0",
        ],
    );
}

#[test]
fn vlan_8021q_uppers() {
    // Section 14: the upper follows its lower down (announced), its IPv4 routes vanish
    // silently (section 1); deleting the lower deletes the upper (section 3).
    let mut setup = TOPO.to_vec();
    setup.extend(["link add link va name va.10 type vlan id 10"]);
    run_steps_with(
        "802.1Q VLAN devices",
        "dot1q",
        &setup,
        &[
            "link set va.10 up",
            "addr add 10.40.0.1/24 dev va.10",
            "addr add 2001:db8:40::1/64 dev va.10",
            "route add 10.41.0.0/24 via 10.40.0.2",
            "link add link va name va.20 type vlan id 20 protocol 802.1ad",
            "link set va down",
            "link set va up",
            "link set va.10 up",
            "route add 10.41.0.0/24 via 10.40.0.2",
            "link set va.10 type vlan egress 0:3",
            "link del va",
        ],
    );
}

#[test]
fn vrf_tables_and_l3mdev() {
    // Section 14: the l3mdev rule, connected routes moving between main/local and the VRF's
    // table on enslave/release (the old ones flushed silently, the new ones announced), static
    // routes through the device flushed with them (silent, section 1), the VRF's table on its
    // deletion.
    run_steps_with(
        "VRF devices",
        "vrf",
        TOPO,
        &[
            "link add vrf1 type vrf table 10",
            "link set vrf1 up",
            "route add 10.50.0.0/24 via 10.1.0.2",
            "link set va master vrf1",
            // Enslaving took va's IPv6 address (addrconf_ifdown, keep_addr_on_down=0: announced).
            "-6 addr add 2001:db8:1::1/64 dev va nodad",
            "route add 10.51.0.0/24 via 10.1.0.2 vrf vrf1",
            "-6 route add 2001:db8:51::/64 via 2001:db8:1::2 vrf vrf1",
            "rule add iif vrf1 table 10 prio 500",
            "link set va nomaster",
            "link set va master vrf1",
            "link set vrf1 down",
            "link set vrf1 up",
            "link del vrf1",
        ],
    );
}

#[test]
fn dummy_devices() {
    // Section 14: as any device, section 1 on `down` and section 3 on delete.
    run_steps_with(
        "dummy devices",
        "dummy",
        TOPO,
        &[
            "link add d0 type dummy",
            "link set d0 up",
            "addr add 10.30.0.1/24 dev d0",
            "addr add 2001:db8:30::1/64 dev d0",
            "route add 10.31.0.0/24 via 10.30.0.2",
            "nexthop add id 30 via 10.30.0.2 dev d0",
            "route add 10.32.0.0/24 nhid 30",
            "link set d0 down",
            "link set d0 up",
            "route add 10.31.0.0/24 via 10.30.0.2",
            "link del d0",
        ],
    );
}

#[test]
fn bonding_enslave_release() {
    // Section 14: enslaving changes the slave's MAC and flags (announced), releasing takes it
    // admin down with its IPv4 routes (silent, section 1), deleting the bond (section 3).
    run_steps_with(
        "bonding devices",
        "bond",
        TOPO,
        &[
            "link add bond0 type bond mode active-backup",
            "link set va down",
            "link set va master bond0",
            "link set vc down",
            "link set vc master bond0",
            "link set bond0 up",
            "addr add 10.60.0.1/24 dev bond0",
            "route add 10.61.0.0/24 via 10.60.0.2",
            "link set vc nomaster",
            "link set vc up",
            "route add 10.62.0.0/24 via 10.2.0.2",
            "link set va nomaster",
            "link del bond0",
        ],
    );
}

#[test]
fn learned_fdb_ageing() {
    // Learned entries age out after the bridge's ageing_time (10 s here) and come back with the
    // next frame: both announced (netlink-gaps section 8). IPv6 is off so that only the pings
    // below make traffic (no router solicitations refreshing the entries).
    let Some(ns) = netns("age") else { return };
    for s in [
        "sysctl net.ipv6.conf.default.disable_ipv6=1",
        "link add br0 type bridge ageing_time 1000",
        "link set br0 up",
        "link add va type veth peer name vb",
        "link add vc type veth peer name vd",
        "link set vb master br0",
        "link set vd master br0",
        "link set vb up",
        "link set vd up",
        "link set va up",
        "link set vc up",
        "addr add 10.1.0.1/24 dev va",
        "addr add 10.2.0.1/24 dev vc",
    ] {
        apply(&ns, s);
    }
    let r = start(&ns, 0);
    let learned = || {
        ns.bridge("-j fdb show br br0")
            .matches("\"state\":\"\"")
            .count()
    };
    let check = |step: &str| {
        let d = converge(&ns, &r.mirror, STEP_TIMEOUT);
        assert!(d.is_empty(), "[age] after {step}:\n{}", d.join("\n"));
    };
    // ARP requests from va and vc (nobody answers): one learned entry per port.
    let arp =
        || ns.sh("ping -c 1 -W 1 10.1.0.9 >/dev/null; ping -c 1 -W 1 10.2.0.9 >/dev/null; true");
    check("initial sync");
    arp();
    check("learning from ARP");
    assert_eq!(learned(), 2, "two learned entries expected");
    std::thread::sleep(Duration::from_secs(13));
    check("ageing out (RTM_DELNEIGH)");
    assert_eq!(learned(), 0, "the learned entries should have aged out");
    arp();
    check("learning again (RTM_NEWNEIGH)");
    std::thread::sleep(Duration::from_secs(7));
    arp();
    check("traffic again near the expiry (a silent refresh, or aged out and learned again)");
}
