//! Rust mirrors of the BPF map keys and values in `bpf/xdp_router.bpf.c` (same layout; a unit
//! test compares the sizes with the BTF of the committed object).

/// Legs per route (`MAX_LEGS`); also the widest ECMP group declared.
pub const MAX_LEGS: usize = 16;
/// Hash slots per route (`N_SLOTS`).
pub const N_SLOTS: usize = 128;

pub const TABLE_DEFAULT: u32 = 253;
pub const TABLE_MAIN: u32 = 254;
pub const TABLE_LOCAL: u32 = 255;

pub const ACT_FORWARD: u32 = 1;
pub const ACT_PASS: u32 = 2;
pub const ACT_DROP: u32 = 3;

pub const LEG_GATEWAY: u8 = 1;
pub const PORT_UP: u16 = 1;

pub const CFG_PUNT_V4: u32 = 1;
pub const CFG_PUNT_V6: u32 = 2;
/// The flow path hands the family to the kernel too (policy rules, sync, unprogrammed prefix).
pub const CFG_NOFLOW_V4: u32 = 4;
pub const CFG_NOFLOW_V6: u32 = 8;

/// `FlowStats::flags`: the flow saw a TCP FIN or RST; its packets go to the kernel.
pub const FLOW_HANDBACK: u32 = 1;
pub const FLOW_DIR_ORIG: u32 = 0;
pub const FLOW_DIR_REPLY: u32 = 1;
/// Flows the data path holds (two `FLOWS` entries each).
pub const MAX_FLOWS: usize = 65_536;

/// Names of the pass/drop reasons, indexed like `enum reason` in the C source.
pub const REASON_NAMES: [&str; 22] = [
    "not_ip",
    "not_for_us",
    "punt_all",
    "malformed",
    "ip_options",
    "fragment",
    "special_addr",
    "ttl_expired",
    "no_route",
    "local",
    "route_trap",
    "no_leg",
    "no_neighbour",
    "egress_not_owned",
    "egress_down",
    "mtu",
    "blackhole",
    "redirect_failed",
    "forwarded",
    "flow_forwarded",
    "flow_teardown",
    "flow_handed_back",
];

/// Data part of the IPv4 LPM key (after `prefixlen`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmV4 {
    pub table: u32,
    pub addr: [u8; 4],
}

/// Data part of the IPv6 LPM key (after `prefixlen`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmV6 {
    pub table: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Leg {
    pub ifindex: u32,
    pub flags: u8,
    pub family: u8,
    pub pad: u16,
    pub gw: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteVal {
    pub action: u32,
    pub counter_id: u32,
    pub n_legs: u16,
    pub n_slots: u16,
    pub slots: [u8; N_SLOTS],
    pub legs: [Leg; MAX_LEGS],
}

impl RouteVal {
    pub fn new(action: u32, counter_id: u32) -> RouteVal {
        RouteVal {
            action,
            counter_id,
            n_legs: 0,
            n_slots: 0,
            slots: [0; N_SLOTS],
            legs: [Leg::default(); MAX_LEGS],
        }
    }

    /// Fills legs and hash slots; each leg gets a share of the slots proportional to its weight.
    pub fn set_legs(&mut self, legs: &[(Leg, u16)]) {
        let legs = &legs[..legs.len().min(MAX_LEGS)];
        self.n_legs = legs.len() as u16;
        for (i, (l, _)) in legs.iter().enumerate() {
            self.legs[i] = *l;
        }
        let total: u32 = legs.iter().map(|(_, w)| (*w).max(1) as u32).sum();
        if total == 0 {
            self.n_slots = 0;
            return;
        }
        let n = total.min(N_SLOTS as u32);
        self.n_slots = n as u16;
        // Slot s covers weight position s*total/n; the leg whose cumulative range holds it wins.
        for s in 0..n {
            let pos = s * total / n;
            let mut cum = 0u32;
            let mut chosen = 0usize;
            for (i, (_, w)) in legs.iter().enumerate() {
                cum += (*w).max(1) as u32;
                if pos < cum {
                    chosen = i;
                    break;
                }
            }
            self.slots[s as usize] = chosen as u8;
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeighKey {
    pub ifindex: u32,
    pub family: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighVal {
    pub mac: [u8; 6],
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortVal {
    pub mac: [u8; 6],
    pub flags: u16,
    pub mtu: u32,
    /// The conntrack zone of the packets the port receives: the flow path looks flows up in
    /// it (`Config::zones`).
    pub zone: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortStats {
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
    pub forwarded_bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouteStats {
    pub packets: u64,
    pub bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConfigVal {
    pub flags: u32,
    pub resolve_interval_ms: u32,
}

/// Key of `FLOWS`: a 5-tuple as a packet carries it (network order; IPv4 in the first 4 bytes)
/// and the conntrack zone (the ingress port's, [`PortVal::zone`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network order.
    pub sport: u16,
    /// Network order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub zone: u16,
}

/// Value of `FLOWS`: what a packet of that direction is rewritten to, the flow's counter id and
/// the direction (`FLOW_DIR_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowVal {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub id: u32,
    pub dir: u32,
    pub pad: u32,
}

/// Value of `FLOW_STATS` (per flow, index 0 original, 1 reply direction).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// `CLOCK_MONOTONIC` nanoseconds of the last packet, 0 = none yet.
    pub lastused: [u64; 2],
    pub flags: u32,
    pub pad: u32,
}

/// A `FLOW_EVENTS` record: flow `id` saw a FIN or RST in direction `dir`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    pub id: u32,
    pub dir: u32,
}

/// A RESOLVE ring buffer event: the neighbour key the data path missed.
pub type ResolveEvent = NeighKey;

// SAFETY: all of these are repr(C), Copy, without padding holes that matter to the kernel
// (explicit pad fields) and valid for any bit pattern.
unsafe impl aya::Pod for LpmV4 {}
unsafe impl aya::Pod for LpmV6 {}
unsafe impl aya::Pod for Leg {}
unsafe impl aya::Pod for RouteVal {}
unsafe impl aya::Pod for NeighKey {}
unsafe impl aya::Pod for NeighVal {}
unsafe impl aya::Pod for PortVal {}
unsafe impl aya::Pod for PortStats {}
unsafe impl aya::Pod for RouteStats {}
unsafe impl aya::Pod for ConfigVal {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for FlowVal {}
unsafe impl aya::Pod for FlowStats {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_weights() {
        let l = Leg::default();
        let mut v = RouteVal::new(ACT_FORWARD, 1);
        v.set_legs(&[(l, 1), (l, 3)]);
        assert_eq!(v.n_slots, 4);
        let counts = |v: &RouteVal| {
            let mut c = [0usize; 2];
            for s in &v.slots[..v.n_slots as usize] {
                c[*s as usize] += 1;
            }
            c
        };
        assert_eq!(counts(&v), [1, 3]);
        v.set_legs(&[(l, 256), (l, 128)]);
        assert_eq!(v.n_slots, 128);
        let c = counts(&v);
        assert_eq!(c[0] + c[1], 128);
        assert!((84..=86).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn layouts_match_the_bpf_object() {
        // Sizes as recorded in the object's BTF (bpftool btf dump file xdp_router.bpf.o).
        let obj = crate::dataplane::BPF_OBJECT;
        let btf = ekho_xdp_common::btf::struct_sizes(obj).expect("BTF in the committed object");
        for (name, size) in [
            ("lpm_v4_key", 4 + std::mem::size_of::<LpmV4>()),
            ("lpm_v6_key", 4 + std::mem::size_of::<LpmV6>()),
            ("leg", std::mem::size_of::<Leg>()),
            ("route_val", std::mem::size_of::<RouteVal>()),
            ("neigh_key", std::mem::size_of::<NeighKey>()),
            ("neigh_val", std::mem::size_of::<NeighVal>()),
            ("port_val", std::mem::size_of::<PortVal>()),
            ("port_stats", std::mem::size_of::<PortStats>()),
            ("route_stats", std::mem::size_of::<RouteStats>()),
            ("config_val", std::mem::size_of::<ConfigVal>()),
            ("flow_key", std::mem::size_of::<FlowKey>()),
            ("flow_val", std::mem::size_of::<FlowVal>()),
            ("flow_stats", std::mem::size_of::<FlowStats>()),
        ] {
            assert_eq!(btf.get(name).copied(), Some(size), "struct {name}");
        }
        // struct flow_event is a ring-buffer record (no map type names it, so no BTF): 2 x u32.
        assert_eq!(std::mem::size_of::<FlowEvent>(), 8);
    }
}
