//! Notifier chains through fentry, field by field, on every kernel that allows fentry; where a
//! kernel refuses it, the test checks that every hook says so (and falls back where it can) and
//! prints `SKIP:` with the kernel and the reason. The verifier check of the handlers runs
//! everywhere.
//!
//! Expectations per kernel:
//! - Debian's 6.1 (`6.1.*-amd64`, the VM suite, `tests/vm/run`): fentry is allowed, so all five
//!   hooks must be live, each chain delivering typed events.
//! - a kernel that refuses fentry (the 6.18 development kernel: EPERM): every hook whose function
//!   exists reports "fentry refused by this kernel", a function the kernel does not have (no
//!   CONFIG_NET_SWITCHDEV) reports that, and the tracepoint fallbacks are live.
//! - any other kernel: fentry all or nothing, one of the two cases above.

mod common;

use common::{kernel, privileged, short, v4, Collector, Netns};
use ekho_ebpf::{verify_fentry_handlers, EbpfConfig, EbpfSource, HookState, StartOptions};
use ekho_plugin_api::object::{Family, RouteType};
use ekho_plugin_api::{NotifierEvent, NotifierKind};
use ekho_testkit::FENTRY_TARGETS as FENTRY;
use std::time::Duration;

/// Generous: the VM suite runs emulated (10-50x slower than native).
const T: Duration = Duration::from_secs(20);
const NUD_PERMANENT: u16 = 0x80;
const IFF_UP: u32 = 0x1;
const BRIDGE_VLAN_INFO_PVID: u16 = 0x2;
const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 0x4;
const SWITCHDEV_OBJ_ID_PORT_VLAN: u64 = 1;
const SWITCHDEV_ATTR_ID_PORT_STP_STATE: u64 = 1;
const BR_STATE_BLOCKING: u16 = 4;

/// The fentry handlers pass the verifier (as raw_tp twins), on every kernel.
#[test]
fn fentry_handlers_pass_the_verifier() {
    if !privileged() {
        return;
    }
    let checks = verify_fentry_handlers().unwrap();
    assert_eq!(checks.len(), 5);
    for c in checks {
        assert_eq!(c.result, Ok(()), "{} on kernel {}", c.hook, kernel());
    }
}

/// Whether the running kernel has function `f` (in /proc/kallsyms), independently of BPF.
fn kernel_has(f: &str) -> bool {
    let syms = std::fs::read_to_string("/proc/kallsyms").expect("read /proc/kallsyms");
    syms.lines().any(|l| l.split_whitespace().nth(2) == Some(f))
}

/// Debian's 6.1 LTS kernel, the one the VM suite boots.
fn debian_6_1() -> bool {
    let k = kernel();
    k.starts_with("6.1.") && k.ends_with("-amd64")
}

fn wait_fentry<'a>(
    c: &'a Collector,
    what: &'a str,
    pred: impl Fn(&NotifierEvent) -> bool + 'a,
) -> impl std::future::Future<Output = NotifierEvent> + 'a {
    c.wait_for(what, T, move |e| e.hook.starts_with("fentry/") && pred(e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fentry_notifier_events() {
    if !privileged() {
        return;
    }
    let ns = Netns::new();
    let other = Netns::new();
    let c = Collector::default();
    let (ev, loss) = c.sinks();
    let opts = StartOptions {
        fib_lookups: false,
        ..StartOptions::default()
    };
    let src = EbpfSource::start_with(
        EbpfConfig {
            netns: Some(ns.path()),
        },
        opts,
        ev,
        loss,
    )
    .unwrap();
    let state = |f: &str| {
        src.hooks
            .iter()
            .find(|h| h.name == format!("fentry/{f}"))
            .unwrap_or_else(|| panic!("no hook fentry/{f}"))
            .state
            .clone()
    };
    let live: Vec<&str> = FENTRY
        .iter()
        .copied()
        .filter(|f| state(f) == HookState::Live)
        .collect();
    if live.is_empty() {
        assert!(
            !debian_6_1(),
            "kernel {}: Debian's 6.1 allows fentry, expected all five hooks live: {:?}",
            kernel(),
            src.hooks
        );
        for f in FENTRY {
            let (reason, to) = match state(f) {
                HookState::FallenBack { reason, to } => (reason, Some(to)),
                HookState::Unavailable { reason } => (reason, None),
                HookState::Live => unreachable!(),
            };
            if kernel_has(f) {
                assert!(
                    reason.starts_with("fentry refused by this kernel: EPERM"),
                    "kernel {}: fentry/{f}: {reason}",
                    kernel()
                );
            } else {
                assert!(
                    reason.contains("is not in this kernel's BTF"),
                    "kernel {}: fentry/{f} (no such function): {reason}",
                    kernel()
                );
            }
            // The fallbacks: the bridge FDB tracepoints for the switchdev chain (where the
            // kernel has a bridge), the neighbour tracepoints for the netevent chain.
            match f {
                "call_netevent_notifiers" => assert_eq!(
                    to.as_deref(),
                    Some("tp_btf/neigh_update, tp_btf/neigh_update_done"),
                    "kernel {}",
                    kernel()
                ),
                "call_switchdev_notifiers" => assert_eq!(
                    to.as_deref(),
                    Some("tp_btf/br_fdb_add, tp_btf/br_fdb_update, tp_btf/br_fdb_external_learn_add, tp_btf/fdb_delete"),
                    "kernel {}",
                    kernel()
                ),
                _ => assert_eq!(to, None, "kernel {}: fentry/{f}", kernel()),
            }
        }
        println!(
            "SKIP: fentry_notifier_events: kernel {} refuses fentry: {:?}",
            kernel(),
            state("call_fib_notifiers")
        );
        return;
    }
    // fentry allowed: every chain whose function this kernel has must be live.
    for f in FENTRY {
        if kernel_has(f) {
            assert_eq!(state(f), HookState::Live, "kernel {}: fentry/{f}", kernel());
        } else {
            assert!(!debian_6_1(), "Debian's 6.1 has {f}");
            println!("kernel {}: no {f} (no CONFIG_NET_SWITCHDEV)", kernel());
        }
    }
    let switchdev = kernel_has("call_switchdev_notifiers");

    ns.veth_topology();
    ns.bridge_topology();
    let (v0, br0, p0) = (ns.ifindex("v0"), ns.ifindex("br0"), ns.ifindex("p0"));
    let v0_mac = ns.mac("v0");
    // The same in another namespace: none of it may arrive (namespace filter in the kernel).
    other.veth_topology();
    other.ip("link set v0 mtu 1300");
    other.ip("neigh add 10.9.0.3 lladdr 02:00:00:00:99:01 dev v0 nud permanent");
    other.ip("route add 10.6.0.0/24 via 10.9.0.3 dev v0 table 100");

    ns.ip("link set v0 mtu 1400");
    ns.ip("neigh add 10.9.0.2 lladdr 02:00:00:00:00:01 dev v0 nud permanent");
    ns.ip("route add 10.7.0.0/24 via 10.9.0.2 dev v0 table 100");
    ns.ip("-6 addr add 2001:db8:9::1/64 dev v0 nodad");
    ns.ip("-6 route add 2001:db8:7::/48 via 2001:db8:9::2 dev v0");
    ns.ip("rule add pref 1000 table 100");

    // netdevice chain.
    let e = wait_fentry(&c, "NETDEV_CHANGEMTU v0", |e| {
        e.event == "NETDEV_CHANGEMTU" && e.dev == "v0"
    })
    .await;
    assert_eq!(e.kind, NotifierKind::Netdevice);
    assert_eq!(e.hook.as_str(), "fentry/call_netdevice_notifiers_info");
    assert_eq!(e.ifindex, v0);
    assert_eq!(e.value, 1400, "new MTU: {}", short(&e));
    assert_eq!(e.table, 1500, "old MTU: {}", short(&e));
    assert_eq!(e.lladdr.to_string(), v0_mac);
    assert!(e.flags & IFF_UP != 0, "{}", short(&e));
    // The event numbering differs between 6.1 and 6.18 (NETDEV_PRE_UNINIT): the name must
    // still be right, with the upper's fields that only NETDEV_CHANGEUPPER has.
    let e = wait_fentry(&c, "NETDEV_CHANGEUPPER p0 -> br0", |e| {
        e.event == "NETDEV_CHANGEUPPER" && e.dev == "p0"
    })
    .await;
    assert_eq!(e.ifindex, p0);
    assert_eq!(e.value, br0 as u64, "upper ifindex: {}", short(&e));
    assert_eq!(e.detail.as_str(), "br0");
    assert_eq!(e.state, 1, "linking: {}", short(&e));
    wait_fentry(&c, "NETDEV_REGISTER v1", |e| {
        e.event == "NETDEV_REGISTER" && e.dev == "v1"
    })
    .await;

    // netevent chain.
    let e = wait_fentry(&c, "NETEVENT_NEIGH_UPDATE 10.9.0.2", |e| {
        e.event == "NETEVENT_NEIGH_UPDATE" && e.addr.into_option() == Some(v4("10.9.0.2"))
    })
    .await;
    assert_eq!(e.kind, NotifierKind::Netevent);
    assert_eq!(e.hook.as_str(), "fentry/call_netevent_notifiers");
    assert_eq!((e.dev.as_str(), e.ifindex), ("v0", v0));
    assert_eq!(e.family, Family::INET);
    assert_eq!(e.lladdr.to_string(), "02:00:00:00:00:01");
    assert_eq!(e.state, NUD_PERMANENT, "{}", short(&e));

    // FIB chain: IPv4 and IPv6 routes, a rule.
    let is_dst = |e: &NotifierEvent, d: &str| {
        e.kind == NotifierKind::Fib
            && e.dst.into_option().map(|p| p.to_route_string()) == Some(d.to_string())
    };
    let e = wait_fentry(&c, "FIB IPv4 10.7.0.0/24", |e| is_dst(e, "10.7.0.0/24")).await;
    assert_eq!(e.hook.as_str(), "fentry/call_fib_notifiers");
    assert_eq!(e.event.as_str(), "FIB_EVENT_ENTRY_REPLACE");
    assert_eq!(e.family, Family::INET);
    assert_eq!(e.table, 100);
    assert_eq!(e.route_type, RouteType::UNICAST);
    assert_eq!(e.addr.into_option(), Some(v4("10.9.0.2")));
    assert_eq!((e.dev.as_str(), e.ifindex), ("v0", v0));
    assert_eq!(e.value, 1, "one nexthop: {}", short(&e));
    let e = wait_fentry(&c, "FIB IPv6 2001:db8:7::/48", |e| {
        is_dst(e, "2001:db8:7::/48")
    })
    .await;
    assert_eq!(e.event.as_str(), "FIB_EVENT_ENTRY_REPLACE");
    assert_eq!(e.family, Family::INET6);
    assert_eq!(e.table, 254);
    assert_eq!(e.route_type, RouteType::UNICAST);
    assert_eq!(e.addr.into_option(), Some("2001:db8:9::2".parse().unwrap()));
    assert_eq!((e.dev.as_str(), e.ifindex), ("v0", v0));
    assert_eq!(e.value, 1);
    let e = wait_fentry(&c, "FIB_EVENT_RULE_ADD pref 1000", |e| {
        e.event == "FIB_EVENT_RULE_ADD" && e.value == 1000
    })
    .await;
    assert_eq!(e.table, 100);
    ns.ip("route del 10.7.0.0/24 table 100");
    let e = wait_fentry(&c, "FIB_EVENT_ENTRY_DEL 10.7.0.0/24", |e| {
        e.event == "FIB_EVENT_ENTRY_DEL" && is_dst(e, "10.7.0.0/24")
    })
    .await;
    assert_eq!(e.table, 100);

    // switchdev chains (the bridge notifies them for every port, offloaded or not).
    if switchdev {
        ns.bridge("fdb add 02:00:00:00:aa:01 dev p0 master static");
        let e = wait_fentry(&c, "SWITCHDEV_FDB_ADD_TO_DEVICE", |e| {
            e.event == "SWITCHDEV_FDB_ADD_TO_DEVICE" && e.lladdr.to_string() == "02:00:00:00:aa:01"
        })
        .await;
        assert_eq!(e.kind, NotifierKind::Switchdev);
        assert_eq!(e.hook.as_str(), "fentry/call_switchdev_notifiers");
        assert_eq!((e.dev.as_str(), e.ifindex), ("p0", p0));
        assert_eq!(e.family, Family::BRIDGE);
        assert_eq!(e.vlan, 0);
        // bit0 added_by_user, bit1 is_local, bit2 locked, bit3 offloaded.
        assert_eq!(e.flags, 0b0001, "{}", short(&e));
        ns.bridge("fdb del 02:00:00:00:aa:01 dev p0 master");
        let e = wait_fentry(&c, "SWITCHDEV_FDB_DEL_TO_DEVICE", |e| {
            e.event == "SWITCHDEV_FDB_DEL_TO_DEVICE" && e.lladdr.to_string() == "02:00:00:00:aa:01"
        })
        .await;
        assert_eq!(e.dev.as_str(), "p0");

        ns.bridge("vlan add vid 10 dev p0 pvid untagged");
        let e = wait_fentry(&c, "SWITCHDEV_PORT_OBJ_ADD vlan 10", |e| {
            e.event == "SWITCHDEV_PORT_OBJ_ADD" && e.vlan == 10
        })
        .await;
        assert_eq!(e.hook.as_str(), "fentry/call_switchdev_blocking_notifiers");
        assert_eq!((e.dev.as_str(), e.ifindex), ("p0", p0));
        assert_eq!(e.value, SWITCHDEV_OBJ_ID_PORT_VLAN, "{}", short(&e));
        assert_eq!(
            e.state & (BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED),
            BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED,
            "{}",
            short(&e)
        );
        ns.bridge("link set dev p0 state 4");
        let e = wait_fentry(&c, "SWITCHDEV_PORT_ATTR_SET stp state", |e| {
            e.event == "SWITCHDEV_PORT_ATTR_SET"
                && e.value == SWITCHDEV_ATTR_ID_PORT_STP_STATE
                && e.state == BR_STATE_BLOCKING
        })
        .await;
        assert_eq!((e.dev.as_str(), e.ifindex), ("p0", p0));
        assert_eq!(e.hook.as_str(), "fentry/call_switchdev_blocking_notifiers");
    }

    // Nothing from the other namespace, on any chain.
    let leaked: Vec<String> = c
        .snapshot()
        .iter()
        .filter(|e| {
            e.value == 1300
                || e.lladdr.to_string() == "02:00:00:00:99:01"
                || e.dst.into_option().map(|p| p.to_route_string()) == Some("10.6.0.0/24".into())
        })
        .map(short)
        .collect();
    assert!(leaked.is_empty(), "other namespace's events: {leaked:#?}");
    assert_eq!(src.stats().lost, 0);
}
