//! Rust mirrors of the BPF map keys and values in `bpf/flower_xdp.bpf.c` (same layout; a unit
//! test compares the sizes with the BTF of the committed object).

/// `RULES` entries (all ports' compiled rules together).
pub const MAX_RULES: usize = 4096;
/// `CHAINS` entries (ports x generations x chains).
pub const MAX_CHAINS: usize = 8192;
/// `FILTER_STATS` entries: filters with counters.
pub const MAX_FILTERS: usize = 4096;
/// `POLICERS` entries: police actions (kind police, index).
pub const MAX_POLICERS: usize = 1024;
/// Actions per rule.
pub const MAX_ACTIONS: usize = 8;

// fkey.flags
pub const K_VLAN: u8 = 1;
pub const K_FRAG: u8 = 2;
pub const K_FIRSTFRAG: u8 = 4;

// action.kind
pub const A_GACT: u8 = 1;
pub const A_REDIRECT: u8 = 2;
pub const A_VLAN_PUSH: u8 = 3;
pub const A_VLAN_POP: u8 = 4;
pub const A_VLAN_MODIFY: u8 = 5;
pub const A_POLICE: u8 = 6;

// action.control / exceed
pub const C_PIPE: u8 = 0;
pub const C_OK: u8 = 1;
pub const C_SHOT: u8 = 2;
pub const C_CONTINUE: u8 = 3;
pub const C_GOTO: u8 = 4;
pub const C_JUMP: u8 = 5;
pub const C_KERNEL: u8 = 6;

pub const VF_PRIO: u8 = 1;

pub const POL_RATE: u32 = 1;
pub const POL_PPS: u32 = 2;

/// Names of the pass/drop reasons, indexed like `enum reason` in the C source.
pub const REASON_NAMES: [&str; 8] = [
    "not_owned",
    "unparsed",
    "no_match",
    "passed",
    "dropped",
    "redirected",
    "redirect_failed",
    "steps",
];

/// The flow key the program dissects from a frame (`struct fkey`): network order, 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct FKey {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub proto: [u8; 2],
    pub n_proto: [u8; 2],
    pub vlan_tci: [u8; 2],
    pub vlan_tpid: [u8; 2],
    pub ip_proto: u8,
    pub ip_tos: u8,
    pub ip_ttl: u8,
    pub flags: u8,
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub tcp_flags: [u8; 2],
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
}

impl FKey {
    /// `self & mask`, byte by byte (the program compares `(frame key & mask) == rule key`).
    pub fn masked(&self, mask: &FKey) -> FKey {
        let mut out = FKey::default();
        let (a, m, o) = (bytes(self), bytes(mask), bytes_mut(&mut out));
        for i in 0..o.len() {
            o[i] = a[i] & m[i];
        }
        out
    }
}

fn bytes(k: &FKey) -> &[u8] {
    // SAFETY: FKey is repr(C), 64 bytes of u8 fields, no padding.
    unsafe { std::slice::from_raw_parts(k as *const FKey as *const u8, 64) }
}
fn bytes_mut(k: &mut FKey) -> &mut [u8] {
    // SAFETY: as above; any byte pattern is a valid FKey.
    unsafe { std::slice::from_raw_parts_mut(k as *mut FKey as *mut u8, 64) }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Action {
    pub kind: u8,
    pub control: u8,
    pub exceed: u8,
    pub vflags: u8,
    /// Network order.
    pub vlan_proto: [u8; 2],
    /// Network order: VID | PCP << 13.
    pub vlan_tci: [u8; 2],
    pub arg: u32,
    pub goto_arg: u32,
    pub exceed_arg: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rule {
    pub key: FKey,
    pub mask: FKey,
    pub sport_min: u16,
    pub sport_max: u16,
    pub dport_min: u16,
    pub dport_max: u16,
    pub stats_id: u32,
    pub n_actions: u32,
    pub actions: [Action; MAX_ACTIONS],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainKey {
    pub ifindex: u32,
    pub gen: u32,
    pub chain: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainVal {
    pub first: u32,
    pub count: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortVal {
    pub gen: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FilterStats {
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
    pub lastused: u64,
}

/// `struct police`: the leading `bpf_spin_lock` (4 bytes) and pad are `lock`; the kernel keeps
/// the lock word when user space writes the value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Police {
    pub lock: u32,
    pub pad0: u32,
    pub toks: i64,
    pub ptoks: i64,
    pub t_c: u64,
    pub burst: i64,
    pub pburst: i64,
    pub mult: u32,
    pub shift: u32,
    pub pmult: u32,
    pub pshift: u32,
    pub mtu: u32,
    pub overhead: u32,
    pub mpu: u32,
    pub flags: u32,
}

// SAFETY: repr(C), Copy, explicit padding, valid for any bit pattern.
unsafe impl aya::Pod for FKey {}
unsafe impl aya::Pod for Action {}
unsafe impl aya::Pod for Rule {}
unsafe impl aya::Pod for ChainKey {}
unsafe impl aya::Pod for ChainVal {}
unsafe impl aya::Pod for PortVal {}
unsafe impl aya::Pod for FilterStats {}
unsafe impl aya::Pod for Police {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_bpf_object() {
        let obj = crate::dataplane::BPF_OBJECT;
        let btf = ekho_xdp_common::btf::struct_sizes(obj).expect("BTF in the committed object");
        for (name, size) in [
            ("fkey", std::mem::size_of::<FKey>()),
            ("action", std::mem::size_of::<Action>()),
            ("rule", std::mem::size_of::<Rule>()),
            ("chain_key", std::mem::size_of::<ChainKey>()),
            ("chain_val", std::mem::size_of::<ChainVal>()),
            ("port_val", std::mem::size_of::<PortVal>()),
            ("filter_stats", std::mem::size_of::<FilterStats>()),
            ("police", std::mem::size_of::<Police>()),
        ] {
            assert_eq!(btf.get(name).copied(), Some(size), "struct {name}");
        }
        assert_eq!(std::mem::size_of::<FKey>(), 64);
    }
}
