//! Notifier chains through fentry: run where the kernel allows fentry, skip with the kernel's
//! reason where it does not. The verifier check of the handlers runs everywhere.

mod common;

use common::{privileged, v4, Collector, Netns};
use ekho_ebpf::{verify_fentry_handlers, EbpfConfig, EbpfSource, HookState, StartOptions};
use ekho_plugin_api::NotifierKind;
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

/// The fentry handlers pass the verifier (as raw_tp twins), on every kernel.
#[test]
fn fentry_handlers_pass_the_verifier() {
    if !privileged() {
        return;
    }
    let checks = verify_fentry_handlers().unwrap();
    assert_eq!(checks.len(), 5);
    for c in checks {
        assert_eq!(c.result, Ok(()), "{}", c.hook);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fentry_notifier_events() {
    if !privileged() {
        return;
    }
    let ns = Netns::new();
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
    let state = |name: &str| {
        src.hooks
            .iter()
            .find(|h| h.name == name)
            .unwrap()
            .state
            .clone()
    };
    // Every fentry hook is accounted for, one way or the other.
    for name in [
        "fentry/call_fib_notifiers",
        "fentry/call_netevent_notifiers",
        "fentry/call_netdevice_notifiers_info",
    ] {
        match state(name) {
            HookState::Live => {}
            HookState::FallenBack { reason, .. } | HookState::Unavailable { reason } => {
                assert!(!reason.is_empty());
                println!("SKIP: {name}: {reason}");
                return;
            }
        }
    }
    ns.veth_topology();
    ns.ip("link set v0 mtu 1400");
    ns.ip("neigh add 10.9.0.2 lladdr 02:00:00:00:00:01 dev v0 nud permanent");
    ns.ip("route add 10.7.0.0/24 via 10.9.0.2 dev v0 table 100");
    let e = c
        .wait_for("NETDEV_CHANGEMTU", T, |e| {
            e.event == "NETDEV_CHANGEMTU" && e.dev == "v0"
        })
        .await;
    assert_eq!(e.kind, NotifierKind::Netdevice);
    assert_eq!(e.value, 1400);
    assert_eq!(e.hook.as_str(), "fentry/call_netdevice_notifiers_info");
    c.wait_for("NETDEV_REGISTER", T, |e| {
        e.event == "NETDEV_REGISTER" && e.dev == "v1"
    })
    .await;
    let e = c
        .wait_for("NETEVENT_NEIGH_UPDATE", T, |e| {
            e.event == "NETEVENT_NEIGH_UPDATE" && e.addr.into_option() == Some(v4("10.9.0.2"))
        })
        .await;
    assert_eq!(e.lladdr.to_string(), "02:00:00:00:00:01");
    assert_eq!(e.dev.as_str(), "v0");
    let e = c
        .wait_for("FIB entry", T, |e| {
            e.kind == NotifierKind::Fib
                && e.dst.into_option().map(|d| d.to_route_string()) == Some("10.7.0.0/24".into())
        })
        .await;
    assert!(e.event.starts_with("FIB_EVENT_ENTRY_"), "{}", e.event);
    assert_eq!(e.table, 100);
    assert_eq!(e.addr.into_option(), Some(v4("10.9.0.2")));
    assert_eq!(e.dev.as_str(), "v0");
}
