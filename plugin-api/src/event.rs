//! Kernel notifier events captured with eBPF (FIB, switchdev, netevent, netdevice notifier chains
//! and the neighbour / bridge-FDB tracepoints), delivered on the `ebpf` stream.

use crate::object::{Family, IpAddress, IpPrefix, LinkAddr, RouteType};
use abi_stable::std_types::{ROption, RString};
use abi_stable::StableAbi;

crate::open_tag! {
    /// Which notifier chain or tracepoint family an event comes from. An open set: a minor
    /// release may add kinds (a plugin never gets a kind its API version does not know).
    pub struct NotifierKind;
    /// Name in `ekho status`, the config and event records.
    names(name) {
        /// FIB notifier chain (`call_fib_notifiers`): route and rule add/replace/del.
        0 => Fib("fib"),
        /// Switchdev notifier chain (`call_switchdev_notifiers`): FDB to device/bridge, port objects.
        1 => Switchdev("switchdev"),
        /// Netevent chain (`call_netevent_notifiers`): neighbour update, redirect, ...
        2 => Netevent("netevent"),
        /// Netdevice chain (`call_netdevice_notifiers_info`): register, change upper, mtu, ...
        3 => Netdevice("netdevice"),
        /// Neighbour tracepoints (`neigh_update`, `neigh_create`, ...): state transitions.
        4 => Neighbour("neighbour"),
        /// Bridge FDB tracepoints (`br_fdb_add`, `br_fdb_update`, `fdb_delete`, ...): learning and aging.
        5 => BridgeFdb("bridge_fdb"),
        /// Route activity from `fib_table_lookup` / `fib6_table_lookup`, aggregated per prefix.
        6 => FibLookup("fib_lookup"),
    }
}

impl NotifierKind {
    /// Parses a name.
    pub fn from_name(s: &str) -> Option<NotifierKind> {
        NotifierKind::ALL.iter().copied().find(|k| k.name() == s)
    }
}

/// One notifier event. Fields that do not apply to an event are zero / empty / `None`.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct NotifierEvent {
    pub kind: NotifierKind,
    /// The hook that captured it, e.g. `fentry/call_fib_notifiers` or `tp_btf/neigh_update`.
    pub hook: RString,
    /// The event, in the kernel's words: `FIB_EVENT_ENTRY_REPLACE`, `NETDEV_CHANGEMTU`,
    /// `SWITCHDEV_FDB_ADD_TO_DEVICE`, `NETEVENT_NEIGH_UPDATE`, `neigh_update`, `br_fdb_add`, ...
    pub event: RString,
    /// Kernel timestamp (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub dev: RString,
    pub family: Family,
    /// Route prefix (FIB events, lookup counters).
    pub dst: ROption<IpPrefix>,
    /// Neighbour / gateway address.
    pub addr: ROption<IpAddress>,
    pub table: u32,
    pub route_type: RouteType,
    /// Link-layer address (neighbour, FDB).
    pub lladdr: LinkAddr,
    pub vlan: u16,
    /// New NUD state (neighbour events) or FDB state.
    pub state: u16,
    /// Previous NUD state, where known.
    pub old_state: u16,
    pub flags: u32,
    /// An event-specific number: new MTU, hit count, upper ifindex, ...
    pub value: u64,
    /// Anything else, as text.
    pub detail: RString,
}

impl Default for NotifierEvent {
    fn default() -> Self {
        NotifierEvent {
            kind: NotifierKind::Netdevice,
            hook: RString::new(),
            event: RString::new(),
            timestamp_ns: 0,
            ifindex: 0,
            dev: RString::new(),
            family: Family::UNSPEC,
            dst: ROption::RNone,
            addr: ROption::RNone,
            table: 0,
            route_type: RouteType::UNSPEC,
            lladdr: LinkAddr::default(),
            vlan: 0,
            state: 0,
            old_state: 0,
            flags: 0,
            value: 0,
            detail: RString::new(),
        }
    }
}

impl NotifierEvent {
    /// JSON rendering with iproute2-style names.
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("notifier".into(), self.kind.name().into());
        m.insert("hook".into(), self.hook.as_str().into());
        m.insert("event".into(), self.event.as_str().into());
        m.insert("timestamp_ns".into(), self.timestamp_ns.into());
        if self.ifindex != 0 {
            m.insert("ifindex".into(), self.ifindex.into());
            m.insert("dev".into(), self.dev.as_str().into());
        }
        if self.family != Family::UNSPEC {
            m.insert("family".into(), self.family.name().into());
        }
        if let Some(d) = self.dst.into_option() {
            m.insert("dst".into(), d.to_route_string().into());
        }
        if let Some(a) = self.addr.into_option() {
            m.insert("addr".into(), a.to_string().into());
        }
        if self.table != 0 {
            m.insert(
                "table".into(),
                crate::object::net::table_name(self.table).into(),
            );
        }
        if self.route_type != RouteType::UNSPEC {
            m.insert("type".into(), self.route_type.name().into());
        }
        if !self.lladdr.is_empty() {
            m.insert("lladdr".into(), self.lladdr.to_string().into());
        }
        if self.vlan != 0 {
            m.insert("vlan".into(), self.vlan.into());
        }
        if self.kind == NotifierKind::Neighbour || self.kind == NotifierKind::Netevent {
            m.insert(
                "state".into(),
                crate::object::neighbour::nud_state_names(self.state).into(),
            );
            if self.old_state != 0 {
                m.insert(
                    "old_state".into(),
                    crate::object::neighbour::nud_state_names(self.old_state).into(),
                );
            }
        } else if self.state != 0 {
            m.insert("state".into(), self.state.into());
        }
        if self.flags != 0 {
            m.insert("flags".into(), self.flags.into());
        }
        if self.value != 0 {
            m.insert("value".into(), self.value.into());
        }
        if !self.detail.is_empty() {
            m.insert("detail".into(), self.detail.as_str().into());
        }
        m.into()
    }
}
