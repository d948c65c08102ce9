//! A masqueraded TCP flow offloaded to XDP, with the plugin in-process: r is a NAT router (kernel
//! forwarding, conntrack, nftables masquerade on its h2 side, h2 without a route back to h1),
//! xdp-router owns r's ports; the test plays the host's flow part (it reads the entry with
//! `conntrack -L` and hands the plugin the flow, removes it after `conntrack -D`, removes it when
//! the plugin releases it) while the miniature host feeds links, routes and neighbours. The
//! daemon test (`daemon_flows.rs`) does the same through the real host.
//!
//! Needs root, iproute2, ethtool, python3, conntrack and nft; prints `SKIP:` otherwise.

mod common;

use common::nat::*;
use common::*;
use ekho_plugin_api::object::netfilter::{hook, verdict};
use ekho_plugin_api::prelude::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);
const PORT: u16 = 5301;

/// r's masquerade chain as the daemon's mirror gives it (the miniature host dumps only `ip`
/// state): with it the plugin hands every packet that is not of an offloaded flow to the kernel.
fn nat_chain() -> NfChain {
    NfChain {
        family: NfFamily::IPV4,
        table: "nat".into(),
        name: "post".into(),
        handle: 1,
        chain_type: "nat".into(),
        hook: hook::POSTROUTING,
        priority: 100,
        policy: verdict::ACCEPT,
        devices: Default::default(),
        rules: 1,
        flags: 1,
        table_dormant: false,
    }
}

fn flow_counters(m: &MiniHost, key: &ObjectKey) -> Option<(u64, u64)> {
    m.plugin
        .as_ref()?
        .object_stats(ObjectKind::Flow)
        .into_iter()
        .find(|s| &s.key == key)
        .map(|s| {
            (
                s.counters.iter().map(|c| c.packets).sum(),
                s.counters.iter().map(|c| c.lastused).max().unwrap_or(0),
            )
        })
}

#[test]
fn masqueraded_tcp_flow_runs_in_xdp_and_goes_back_to_the_kernel() {
    if skip_nat() {
        return;
    }
    let topo = Topo::new(false);
    let dir = TempDir::new();
    make_nat_router(&topo, dir.path());
    // The daemon's host marks the TCP entries it offers `IP_CT_TCP_FLAG_BE_LIBERAL` (conntrack
    // sees none of an offloaded flow's packets: without it the packets it sees again, the FIN,
    // can be out of its stale window, INVALID and not NATed). This test plays the host without
    // that part: the namespace's sysctl stands in for it.
    topo.exec(
        &topo.r,
        &[
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_tcp_be_liberal=1",
        ],
    );
    let run = Running::start(&topo, "ports = [\"p*\"]");
    let outs = run.with(|m| {
        m.plugin
            .as_mut()
            .unwrap()
            .apply(&[Change::Add(nat_chain().into())])
    });
    assert_eq!(
        outs,
        vec![Outcome::Trapped],
        "the masquerade chain punts IPv4"
    );

    // 64 MiB at about 8 MiB/s: 8 s to look at it.
    let bytes = 64 << 20;
    let mut xfer = Transfer::start(&topo, PORT, bytes, 8.0 * (1 << 20) as f64);
    let ct = established(&topo, PORT, T).expect("an ESTABLISHED, ASSURED conntrack entry");
    assert_ne!(ct.reply.1, ct.orig.0, "masqueraded: {ct:?}");
    let flow = ct.flow();
    let key = Object::Flow(flow.clone()).key();
    let outs = run.with(|m| {
        m.plugin
            .as_mut()
            .unwrap()
            .apply(&[Change::Add(flow.clone().into())])
    });
    assert_eq!(outs, vec![Outcome::Offloaded], "{}", run.report());

    // Offloaded: the kernel's counters stop, the plugin's grow.
    std::thread::sleep(Duration::from_millis(300));
    let k0 = ct_entries(&topo, PORT)[0].packets();
    let (p0, l0) = run.with(|m| flow_counters(m, &key)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let k1 = ct_entries(&topo, PORT)[0].packets();
    let (p1, l1) = run.with(|m| flow_counters(m, &key)).unwrap();
    assert!(xfer.running(), "the transfer is still running");
    assert_eq!(k1, k0, "kernel conntrack counters grew while offloaded");
    assert!(
        p1 > p0 + 500,
        "plugin counters: {p0} -> {p1}\n{}",
        run.report()
    );
    assert!(l1 > l0, "lastused advances");
    let fwd = run.with(|m| m.counter("xdp", "flow_forwarded"));
    assert!(fwd >= p1, "flow_forwarded {fwd} < {p1}");

    // conntrack -D: the host removes the offload (here: at once); the transfer carries on
    // through the kernel, which picks the connection up in a new entry.
    assert!(ct_delete(&topo, PORT), "conntrack -D");
    let outs = run.with(|m| {
        m.plugin
            .as_mut()
            .unwrap()
            .apply(&[Change::Remove(flow.clone().into())])
    });
    assert_eq!(outs, vec![Outcome::Offloaded]);
    assert_eq!(
        run.with(|m| m.plugin.as_ref().unwrap().offloaded_flows()),
        0
    );
    let again = wait_for(T, || {
        ct_entries(&topo, PORT)
            .into_iter()
            .find(|e| e.packets() > 200)
    });
    let again = again.unwrap_or_else(|| {
        panic!(
            "the kernel carries the transfer after conntrack -D: {:?}\n{}",
            ct_entries(&topo, PORT),
            run.report()
        )
    });
    assert!(xfer.running(), "the transfer survived conntrack -D");

    // Offloaded again (the new entry, once established), until the end: the FIN goes to the
    // kernel and the plugin hands the flow back.
    let ct2 = established(&topo, PORT, T).expect("the new entry established");
    assert_eq!(ct2.reply, again.reply);
    let flow2 = ct2.flow();
    let key2 = Object::Flow(flow2.clone()).key();
    let outs = run.with(|m| {
        m.plugin
            .as_mut()
            .unwrap()
            .apply(&[Change::Add(flow2.clone().into())])
    });
    assert_eq!(outs, vec![Outcome::Offloaded]);
    let res = xfer.finish();
    assert_eq!(res, Ok(bytes), "the transfer is intact\n{}", run.report());
    let released = wait_for(T, || {
        let r = run.with(|m| m.host.released.lock().unwrap().clone());
        r.iter().find(|(k, _)| *k == key2).map(|(_, t)| *t)
    });
    assert!(released.is_some(), "FIN: flow released\n{}", run.report());
    let t_fin = Instant::now();
    run.with(|m| {
        m.plugin
            .as_mut()
            .unwrap()
            .apply(&[Change::Remove(flow2.into())])
    });
    // The kernel saw the teardown: its entry left ESTABLISHED (FIN_WAIT, CLOSE_WAIT, LAST_ACK,
    // TIME_WAIT or CLOSE).
    let closed = wait_for(T, || {
        ct_entries(&topo, PORT)
            .into_iter()
            .find(|e| e.state != "ESTABLISHED")
    });
    assert!(
        closed.is_some(),
        "the kernel's entry after the FIN: {:?} ({:?} after the release)",
        ct_entries(&topo, PORT),
        t_fin.elapsed()
    );
    let teardown = run.with(|m| m.counter("xdp", "flow_teardown"));
    assert!(teardown >= 1, "the FIN was passed by the flow path");
}
