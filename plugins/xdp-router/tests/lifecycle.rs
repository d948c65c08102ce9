//! Lifecycle: a stale ekho program left on a port (netlink-attached by another tool, or a bpf_link
//! held by a leaked instance) is detached when the plugin is created; shutdown leaves nothing.
//! Needs root, iproute2, iputils-ping, ethtool and python3; prints `SKIP:` otherwise.

mod common;

use common::*;
use ekho_plugin_api::prelude::*;
use ekho_xdp_router::XdpRouter;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(8);

/// XDP program id attached to `dev` in `ns`, if any.
fn xdp_prog_id(topo: &Topo, ns: &str, dev: &str) -> Option<u64> {
    let j: Value =
        serde_json::from_str(&topo.ip(ns, &format!("-j -d link show dev {dev}"))).unwrap();
    j[0]["xdp"]["prog"]["id"]
        .as_u64()
        .or_else(|| j[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
}

#[test]
fn stale_netlink_program_is_replaced_and_shutdown_cleans_up() {
    if skip() {
        return;
    }
    let topo = Topo::new(false);
    let obj = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/xdp_router.bpf.o");
    // A leftover of an earlier run, attached through netlink by iproute2 (not a bpf_link: it
    // survives its loader).
    topo.ip(
        &topo.r,
        &format!("link set dev p1 xdpdrv obj {obj} sec xdp"),
    );
    let stale = xdp_prog_id(&topo, &topo.r, "p1").expect("iproute2 attached the stale program");

    let mut run = Running::start(&topo, "");
    let now = xdp_prog_id(&topo, &topo.r, "p1").expect("plugin program attached");
    assert_ne!(now, stale, "the stale program is still attached");
    let logs = run.with(|m| m.host.logs.lock().unwrap().clone());
    assert!(
        logs.iter()
            .any(|l| l.contains("detached stale") && l.contains("netlink")),
        "{logs:?}"
    );
    assert!(
        topo.ping_within(&topo.h1, "10.0.2.2", T),
        "forwarding after replacing the stale program\n{}",
        run.report()
    );
    run.stop();
    assert!(
        topo.xdp_attached_in_r().is_empty(),
        "left attached: {:?}",
        topo.xdp_attached_in_r()
    );
}

#[test]
fn stale_link_of_a_leaked_instance_is_detached() {
    if skip() {
        return;
    }
    let topo = Topo::new(false);
    // The namespace from the plugin's own `netns` key (a detached host tells none).
    let config = format!("netns = \"{}\"", topo.netns_path());
    // An instance that is never shut down nor dropped (as if its owner hung): its bpf_links stay.
    let mut leaked = XdpRouter::create(CreateContext {
        config,
        host: ekho_plugin_api::DetachedHost::handle(),
    })
    .unwrap();
    let changes: Vec<Change> = dump(&topo.r)
        .into_values()
        .filter(|o| matches!(o, Object::Link(_)))
        .map(Change::Add)
        .collect();
    leaked.apply(&changes);
    let old = xdp_prog_id(&topo, &topo.r, "p1").expect("leaked instance attached");
    std::mem::forget(leaked);

    let mut run = Running::start(&topo, "");
    let now = xdp_prog_id(&topo, &topo.r, "p1").expect("new instance attached");
    assert_ne!(now, old);
    let logs = run.with(|m| m.host.logs.lock().unwrap().clone());
    assert!(
        logs.iter()
            .any(|l| l.contains("detached stale") && l.contains("bpf_link")),
        "{logs:?}"
    );
    assert!(
        topo.ping_within(&topo.h1, "10.0.2.2", T),
        "{}",
        run.report()
    );
    run.stop();
    assert!(
        topo.xdp_attached_in_r().is_empty(),
        "left attached: {:?}",
        topo.xdp_attached_in_r()
    );
}

#[test]
fn resync_sweeps_what_the_replay_did_not_renew() {
    if skip() {
        return;
    }
    let topo = Topo::new(false);
    topo.ip(&topo.h2, "addr add 10.9.9.9/32 dev lo");
    topo.ip(&topo.r, "route add 10.9.9.9/32 via 10.0.2.2");
    let run = Running::start(&topo, "");
    assert!(
        topo.ping_within(&topo.h1, "10.9.9.9", T),
        "{}",
        run.report()
    );

    // The host replays its state (e.g. after a netlink overrun) but no longer has the route:
    // everything else is renewed, the route is swept at end_sync.
    run.with(|m| {
        let p = m.plugin.as_mut().unwrap();
        let replay: Vec<Change> = m
            .given
            .values()
            .filter(|o| !matches!(o, Object::Route(r) if r.dst.to_string() == "10.9.9.9/32"))
            .cloned()
            .map(Change::Add)
            .collect();
        p.begin_sync();
        let outs = p.apply(&replay);
        assert!(
            !outs.iter().any(|o| matches!(o, Outcome::Failed(_))),
            "{outs:?}"
        );
        p.end_sync();
        assert!(
            !p.stats()
                .counters
                .iter()
                .any(|c| c.kind.as_str() == "route:10.9.9.9/32"),
            "swept route still counted"
        );
    });
    // Forwarding of the other prefixes is untouched; the swept one is gone.
    assert_eq!(topo.ping_count(&topo.h1, "10.0.2.2", 3), 3);
    assert_eq!(topo.ping_count(&topo.h1, "10.9.9.9", 3), 0);
}

#[test]
fn native_refused_falls_back_to_generic_in_auto_mode() {
    if skip() {
        return;
    }
    let topo = Topo::new(false);
    // veth refuses native XDP (without multi-buffer support) when the peer's MTU exceeds a page.
    topo.ip(&topo.h1, "link set veth0 mtu 9000");
    topo.ip(&topo.r, "link set p1 mtu 9000");
    let mut run = Running::start(&topo, "");
    let logs = run.with(|m| m.host.logs.lock().unwrap().clone());
    assert!(
        logs.iter().any(|l| l.contains("generic (skb) mode")),
        "{logs:?}"
    );
    let j: Value = serde_json::from_str(&topo.ip(&topo.r, "-j -d link show dev p1")).unwrap();
    assert_eq!(
        j[0]["xdp"]["mode"].as_u64(),
        Some(2),
        "p1 in generic mode: {}",
        j[0]["xdp"]
    );
    assert!(
        topo.ping_within(&topo.h1, "10.0.2.2", T),
        "{}",
        run.report()
    );
    assert!(run.with(|m| m.counter("port:p1", "forwarded")) > 0);
    run.stop();
    assert!(topo.xdp_attached_in_r().is_empty());
}
