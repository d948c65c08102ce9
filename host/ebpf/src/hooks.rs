//! The hooks of `bpf/ekho.bpf.c`: program names, attachment points, hook ids and the kernel's
//! names for the events each one reports.

use ekho_plugin_api::{NotifierKind, ObjectKind};

/// Hook ids, as in `bpf/ekho.h` (`EKHO_HOOK_*`).
pub(crate) const HOOK_FENTRY_FIB: u32 = 0;
pub(crate) const HOOK_FENTRY_SWITCHDEV: u32 = 1;
pub(crate) const HOOK_FENTRY_SWITCHDEV_BLOCKING: u32 = 2;
pub(crate) const HOOK_FENTRY_NETEVENT: u32 = 3;
pub(crate) const HOOK_FENTRY_NETDEV: u32 = 4;
pub(crate) const HOOK_TP_BASE: u32 = 16;

/// A notifier-chain function hooked with fentry.
pub(crate) struct FentrySpec {
    /// Hook id (`EKHO_HOOK_FENTRY_*`).
    pub id: u32,
    /// Program (C function) name.
    pub prog: &'static str,
    /// Kernel function.
    pub func: &'static str,
    /// Tracepoints that cover part of this chain when fentry is refused.
    pub fallback: &'static [&'static str],
    /// Raw-tracepoint twin that runs the same handler through the verifier.
    pub verify_prog: &'static str,
}

pub(crate) const FENTRIES: &[FentrySpec] = &[
    FentrySpec {
        id: HOOK_FENTRY_FIB,
        prog: "fentry_fib",
        func: "call_fib_notifiers",
        fallback: &[],
        verify_prog: "verify_fib",
    },
    FentrySpec {
        id: HOOK_FENTRY_SWITCHDEV,
        prog: "fentry_switchdev",
        func: "call_switchdev_notifiers",
        fallback: &[
            "br_fdb_add",
            "br_fdb_update",
            "br_fdb_external_learn_add",
            "fdb_delete",
        ],
        verify_prog: "verify_switchdev",
    },
    FentrySpec {
        id: HOOK_FENTRY_SWITCHDEV_BLOCKING,
        prog: "fentry_switchdev_blocking",
        func: "call_switchdev_blocking_notifiers",
        fallback: &[],
        verify_prog: "verify_switchdev",
    },
    FentrySpec {
        id: HOOK_FENTRY_NETEVENT,
        prog: "fentry_netevent",
        func: "call_netevent_notifiers",
        fallback: &["neigh_update", "neigh_update_done"],
        verify_prog: "verify_netevent",
    },
    FentrySpec {
        id: HOOK_FENTRY_NETDEV,
        prog: "fentry_netdev",
        func: "call_netdevice_notifiers_info",
        fallback: &[],
        verify_prog: "verify_netdev",
    },
];

/// A tracepoint, attached as `tp_btf` (program `btf_<name>`) or else as `raw_tp` (`raw_<name>`).
pub(crate) struct TracepointSpec {
    pub name: &'static str,
    pub kind: NotifierKind,
}

/// Index = `EKHO_TP_*`; hook id = `HOOK_TP_BASE + 2 * index + raw`.
pub(crate) const TRACEPOINTS: &[TracepointSpec] = &[
    TracepointSpec {
        name: "neigh_update",
        kind: NotifierKind::Neighbour,
    },
    TracepointSpec {
        name: "neigh_update_done",
        kind: NotifierKind::Neighbour,
    },
    TracepointSpec {
        name: "neigh_create",
        kind: NotifierKind::Neighbour,
    },
    TracepointSpec {
        name: "br_fdb_add",
        kind: NotifierKind::BridgeFdb,
    },
    TracepointSpec {
        name: "br_fdb_update",
        kind: NotifierKind::BridgeFdb,
    },
    TracepointSpec {
        name: "br_fdb_external_learn_add",
        kind: NotifierKind::BridgeFdb,
    },
    TracepointSpec {
        name: "fdb_delete",
        kind: NotifierKind::BridgeFdb,
    },
    TracepointSpec {
        name: "fib_table_lookup",
        kind: NotifierKind::FibLookup,
    },
    TracepointSpec {
        name: "fib6_table_lookup",
        kind: NotifierKind::FibLookup,
    },
];

/// Every hook id a program may report (`EKHO_HOOK_*`): the fentry hooks, then each
/// tracepoint's `tp_btf` and `raw_tp` program.
pub(crate) fn ids() -> impl Iterator<Item = u32> {
    FENTRIES
        .iter()
        .map(|f| f.id)
        .chain((0..2 * TRACEPOINTS.len() as u32).map(|i| HOOK_TP_BASE + i))
}

/// `tp_btf/NAME` or `raw_tp/NAME`.
pub(crate) fn tp_hook_name(name: &str, raw: bool) -> String {
    format!("{}/{name}", if raw { "raw_tp" } else { "tp_btf" })
}

/// (hook name, event name) of a ring-buffer record.
pub(crate) fn names(hook: u32, event: u32) -> (String, String) {
    if let Some(f) = FENTRIES.iter().find(|f| f.id == hook) {
        let ev = match hook {
            HOOK_FENTRY_FIB => table_name(FIB_EVENTS, event),
            HOOK_FENTRY_SWITCHDEV | HOOK_FENTRY_SWITCHDEV_BLOCKING => {
                table_name(SWITCHDEV_EVENTS, event)
            }
            HOOK_FENTRY_NETEVENT => table_name(NETEVENT_EVENTS, event),
            _ if event >= NETDEV_UNNAMED => format!("{}", event - NETDEV_UNNAMED),
            _ => table_name(NETDEV_EVENTS, event),
        };
        return (format!("fentry/{}", f.func), ev);
    }
    let idx = hook.wrapping_sub(HOOK_TP_BASE) / 2;
    match TRACEPOINTS.get(idx as usize) {
        Some(tp) => (tp_hook_name(tp.name, hook & 1 == 1), tp.name.to_string()),
        None => (format!("hook{hook}"), format!("event{event}")),
    }
}

fn table_name(table: &[(u32, &str)], v: u32) -> String {
    table
        .iter()
        .find(|(n, _)| *n == v)
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| format!("{v}"))
}

/// `enum fib_event_type`.
const FIB_EVENTS: &[(u32, &str)] = &[
    (0, "FIB_EVENT_ENTRY_REPLACE"),
    (1, "FIB_EVENT_ENTRY_APPEND"),
    (2, "FIB_EVENT_ENTRY_ADD"),
    (3, "FIB_EVENT_ENTRY_DEL"),
    (4, "FIB_EVENT_RULE_ADD"),
    (5, "FIB_EVENT_RULE_DEL"),
    (6, "FIB_EVENT_NH_ADD"),
    (7, "FIB_EVENT_NH_DEL"),
    (8, "FIB_EVENT_VIF_ADD"),
    (9, "FIB_EVENT_VIF_DEL"),
];

/// `enum netevent_notif_type`.
const NETEVENT_EVENTS: &[(u32, &str)] = &[
    (1, "NETEVENT_NEIGH_UPDATE"),
    (2, "NETEVENT_REDIRECT"),
    (3, "NETEVENT_DELAY_PROBE_TIME_UPDATE"),
    (4, "NETEVENT_IPV4_MPATH_HASH_UPDATE"),
    (5, "NETEVENT_IPV6_MPATH_HASH_UPDATE"),
    (6, "NETEVENT_IPV4_FWD_UPDATE_PRIORITY_UPDATE"),
];

/// `enum switchdev_notifier_type`.
const SWITCHDEV_EVENTS: &[(u32, &str)] = &[
    (1, "SWITCHDEV_FDB_ADD_TO_BRIDGE"),
    (2, "SWITCHDEV_FDB_DEL_TO_BRIDGE"),
    (3, "SWITCHDEV_FDB_ADD_TO_DEVICE"),
    (4, "SWITCHDEV_FDB_DEL_TO_DEVICE"),
    (5, "SWITCHDEV_FDB_OFFLOADED"),
    (6, "SWITCHDEV_FDB_FLUSH_TO_BRIDGE"),
    (7, "SWITCHDEV_PORT_OBJ_ADD"),
    (8, "SWITCHDEV_PORT_OBJ_DEL"),
    (9, "SWITCHDEV_PORT_ATTR_SET"),
    (10, "SWITCHDEV_VXLAN_FDB_ADD_TO_BRIDGE"),
    (11, "SWITCHDEV_VXLAN_FDB_DEL_TO_BRIDGE"),
    (12, "SWITCHDEV_VXLAN_FDB_ADD_TO_DEVICE"),
    (13, "SWITCHDEV_VXLAN_FDB_DEL_TO_DEVICE"),
    (14, "SWITCHDEV_VXLAN_FDB_OFFLOADED"),
    (15, "SWITCHDEV_BRPORT_OFFLOADED"),
    (16, "SWITCHDEV_BRPORT_UNOFFLOADED"),
    (17, "SWITCHDEV_BRPORT_REPLAY"),
];

/// `enum netdev_cmd`.
///
/// The kernel's numbers change between versions (6.1 has no `NETDEV_PRE_UNINIT`, so its later
/// events are one lower): the BPF side translates the running kernel's value into these
/// (committed `vmlinux.h`) numbers by name, with CO-RE enum relocations.
const NETDEV_EVENTS: &[(u32, &str)] = &[
    (1, "NETDEV_UP"),
    (2, "NETDEV_DOWN"),
    (3, "NETDEV_REBOOT"),
    (4, "NETDEV_CHANGE"),
    (5, "NETDEV_REGISTER"),
    (6, "NETDEV_UNREGISTER"),
    (7, "NETDEV_CHANGEMTU"),
    (8, "NETDEV_CHANGEADDR"),
    (9, "NETDEV_PRE_CHANGEADDR"),
    (10, "NETDEV_GOING_DOWN"),
    (11, "NETDEV_CHANGENAME"),
    (12, "NETDEV_FEAT_CHANGE"),
    (13, "NETDEV_BONDING_FAILOVER"),
    (14, "NETDEV_PRE_UP"),
    (15, "NETDEV_PRE_TYPE_CHANGE"),
    (16, "NETDEV_POST_TYPE_CHANGE"),
    (17, "NETDEV_POST_INIT"),
    (18, "NETDEV_PRE_UNINIT"),
    (19, "NETDEV_RELEASE"),
    (20, "NETDEV_NOTIFY_PEERS"),
    (21, "NETDEV_JOIN"),
    (22, "NETDEV_CHANGEUPPER"),
    (23, "NETDEV_RESEND_IGMP"),
    (24, "NETDEV_PRECHANGEMTU"),
    (25, "NETDEV_CHANGEINFODATA"),
    (26, "NETDEV_BONDING_INFO"),
    (27, "NETDEV_PRECHANGEUPPER"),
    (28, "NETDEV_CHANGELOWERSTATE"),
    (29, "NETDEV_UDP_TUNNEL_PUSH_INFO"),
    (30, "NETDEV_UDP_TUNNEL_DROP_INFO"),
    (31, "NETDEV_CHANGE_TX_QUEUE_LEN"),
    (32, "NETDEV_CVLAN_FILTER_PUSH_INFO"),
    (33, "NETDEV_CVLAN_FILTER_DROP_INFO"),
    (34, "NETDEV_SVLAN_FILTER_PUSH_INFO"),
    (35, "NETDEV_SVLAN_FILTER_DROP_INFO"),
    (36, "NETDEV_OFFLOAD_XSTATS_ENABLE"),
    (37, "NETDEV_OFFLOAD_XSTATS_DISABLE"),
    (38, "NETDEV_OFFLOAD_XSTATS_REPORT_USED"),
    (39, "NETDEV_OFFLOAD_XSTATS_REPORT_DELTA"),
    (40, "NETDEV_XDP_FEAT_CHANGE"),
];

/// A netdevice event the BPF side has no name for arrives as this plus the kernel's value
/// (`EKHO_NETDEV_UNNAMED`) and is shown as the kernel's number.
const NETDEV_UNNAMED: u32 = 0x10000;

/// `NotifierKind` from its discriminant (`EKHO_KIND_*`).
pub(crate) fn kind_from_u8(k: u8) -> Option<NotifierKind> {
    NotifierKind::ALL.get(k as usize).copied()
}

/// What the host must re-dump when events of `kind` were lost.
pub(crate) fn redump_kinds(kind: NotifierKind) -> &'static [ObjectKind] {
    match kind {
        NotifierKind::Neighbour | NotifierKind::Netevent => &[ObjectKind::Neighbour],
        NotifierKind::BridgeFdb => &[ObjectKind::Fdb],
        NotifierKind::Switchdev => &[ObjectKind::Vlan, ObjectKind::Fdb, ObjectKind::Mdb],
        NotifierKind::Fib => &[ObjectKind::Nexthop, ObjectKind::Route, ObjectKind::Rule],
        NotifierKind::Netdevice => &[ObjectKind::Link],
        NotifierKind::FibLookup => &[],
        // Kinds the programs of this version do not capture.
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_id_has_a_name_and_a_slot_in_lost_by_hook() {
        let ids: Vec<u32> = ids().collect();
        // EKHO_HOOK_COUNT in bpf/ekho.h: the LOST_BY_HOOK map's size.
        assert!(ids.iter().all(|id| *id < 64), "{ids:?}");
        let mut names: Vec<String> = ids.iter().map(|id| names(*id, 0).0).collect();
        assert!(names.iter().all(|n| !n.starts_with("hook")), "{names:?}");
        assert!(names.contains(&"tp_btf/neigh_update".to_string()));
        assert!(names.contains(&"raw_tp/fdb_delete".to_string()));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "unique");
    }

    #[test]
    fn kinds_match_plugin_api_discriminants() {
        // bpf/ekho.h EKHO_KIND_* must equal NotifierKind's repr(u8) values.
        for (i, k) in NotifierKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(kind_from_u8(i as u8), Some(*k));
        }
        assert_eq!(kind_from_u8(7), None);
    }

    #[test]
    fn hook_and_event_names() {
        assert_eq!(
            names(HOOK_FENTRY_NETEVENT, 1),
            (
                "fentry/call_netevent_notifiers".into(),
                "NETEVENT_NEIGH_UPDATE".into()
            )
        );
        assert_eq!(names(HOOK_FENTRY_FIB, 0).1, "FIB_EVENT_ENTRY_REPLACE");
        assert_eq!(names(HOOK_FENTRY_NETDEV, 22).1, "NETDEV_CHANGEUPPER");
        assert_eq!(names(HOOK_FENTRY_NETDEV, NETDEV_UNNAMED + 21).1, "21");
        assert_eq!(
            names(HOOK_FENTRY_SWITCHDEV, 3).1,
            "SWITCHDEV_FDB_ADD_TO_DEVICE"
        );
        assert_eq!(
            names(HOOK_TP_BASE, 0),
            ("tp_btf/neigh_update".into(), "neigh_update".into())
        );
        assert_eq!(
            names(HOOK_TP_BASE + 1, 0),
            ("raw_tp/neigh_update".into(), "neigh_update".into())
        );
        assert_eq!(
            names(HOOK_TP_BASE + 2 * 6, 0),
            ("tp_btf/fdb_delete".into(), "fdb_delete".into())
        );
        assert_eq!(names(HOOK_FENTRY_NETDEV, 999).1, "999");
    }
}
