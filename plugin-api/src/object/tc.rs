//! tc (API 1.3): qdiscs, classes, filters and actions, as `tc -d` shows them.
//!
//! The kinds are [`ObjectKind::Qdisc`](super::ObjectKind::Qdisc),
//! [`TcClass`](super::ObjectKind::TcClass), [`TcAction`](super::ObjectKind::TcAction) and
//! [`TcFilter`](super::ObjectKind::TcFilter). Most plugins need only filters: a [`TcFilter`]
//! carries its whole match ([`TcMatch`]) and its ordered action list, each action with its full
//! parameters ([`TcActionSpec`]), so one filter object says what to do. Which filters reach a
//! plugin is decided by [`TcCapabilities`] through
//! [`Capabilities::takes_filter`](crate::Capabilities::takes_filter): the host hands a plugin
//! only the filters it can run whole, and reports each other one `unsupported` with the reason
//! in tc's words ([`TcUnsupported`]); the kernel keeps running those in software.
//!
//! Field names are tc's (`pref` is [`TcFilter::prio`], `fh` [`TcFilter::handle`]); numbers are
//! as the kernel holds them (handles `major << 16 | minor`, protocols host order, u32 keys
//! network order).
//!
//! The host never sets `skip_sw`: the kernel's classifier stays in place and sees only what the
//! plugin's dataplane passes on. A packet a dataplane in XDP drops never reaches tc, so tc's own
//! software counter of that filter stays still while the plugin's
//! ([`ObjectStats::tc_filter`](crate::ObjectStats::tc_filter)) rises.
//!
//! ```
//! use ekho_plugin_api::prelude::*;
//!
//! // What a plugin that runs ingress flower with drop, pass and mirred redirects takes:
//! let caps = Capabilities::new()
//!     .kinds([ObjectKind::TcFilter])
//!     .port_names(["v*"])
//!     .tc(TcCapabilities::new()
//!         .classifiers(["flower"])
//!         .flower_keys([FlowerKey::EthType, FlowerKey::IpProto, FlowerKey::DstIp,
//!                       FlowerKey::SrcIp, FlowerKey::DstPort])
//!         .actions(["gact", "mirred"])
//!         .mirred([TcMirredAction::EgressRedirect])
//!         .ingress(true));
//!
//! // tc filter add dev v0 ingress protocol ip pref 1 flower ip_proto udp dst_port 53
//! //     action drop
//! let mut f = TcFilter::new(TcTarget::Dev(2), TC_H_MIN_INGRESS, 1, 1);
//! f.protocol = 0x0800;
//! f.kind = "flower".into();
//! f.matches = TcMatch::flower(FlowerKeys {
//!     eth_type: ROption::RSome(0x0800),
//!     ip_proto: ROption::RSome(17),
//!     dst_port: ROption::RSome(Masked::exact(53)),
//!     ..Default::default()
//! });
//! f.actions.push(TcActionSpec::gact(TcControl::Shot));
//! let owned = |ifindex: u32| ifindex == 2;
//! assert_eq!(caps.takes_filter(&f, &owned), Ok(()));
//!
//! // The same filter with `action pedit ...` stays with the kernel:
//! f.actions = vec![TcActionSpec::raw("pedit", 1, TcControl::Pipe)].into();
//! let why = caps.takes_filter(&f, &owned).unwrap_err();
//! assert_eq!(why.to_string(), "action pedit not supported");
//! ```

use super::net::IpAddress;
use super::rule::PortRange;
use abi_stable::std_types::{RBox, ROption, RString, RVec};
use abi_stable::StableAbi;

/// `TC_H_ROOT`: the parent of a device's root qdisc.
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// `TC_H_INGRESS`: the parent of `ingress` and `clsact`.
pub const TC_H_INGRESS: u32 = 0xffff_fff1;
/// clsact's (and ingress's) ingress hook: the parent of an ingress filter (`tc filter add dev
/// X ingress`).
pub const TC_H_MIN_INGRESS: u32 = 0xffff_fff2;
/// clsact's egress hook: the parent of an egress filter.
pub const TC_H_MIN_EGRESS: u32 = 0xffff_fff3;

/// A value and its mask: a packet matches when `packet & mask == value & mask`. Flower masks
/// need not be contiguous (`dst_ip 10.0.0.0/255.0.255.0`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Masked<T> {
    pub value: T,
    pub mask: T,
}

/// Values a [`Masked`] holds a full mask of (`u8`, `u16`, `u32`, MAC and 128-bit labels).
pub trait MaskBits: Copy + PartialEq {
    /// Every bit set.
    const ONES: Self;
}

macro_rules! mask_bits {
    ($($t:ty => $ones:expr),*) => {$(
        impl MaskBits for $t {
            const ONES: $t = $ones;
        }
    )*};
}
mask_bits!(u8 => u8::MAX, u16 => u16::MAX, u32 => u32::MAX, [u8; 6] => [0xff; 6], [u8; 16] => [0xff; 16]);

impl<T: MaskBits> Masked<T> {
    /// The value, every bit matched.
    pub fn exact(value: T) -> Masked<T> {
        Masked {
            value,
            mask: T::ONES,
        }
    }
    /// Whether every bit is matched.
    pub fn is_exact(&self) -> bool {
        self.mask == T::ONES
    }
}

impl Masked<IpAddress> {
    /// An address and a prefix length (`10.0.0.0/8`).
    pub fn prefix(addr: IpAddress, len: u8) -> Masked<IpAddress> {
        let ones = match addr {
            IpAddress::V4(_) => IpAddress::V4([0xff; 4]),
            IpAddress::V6(_) => IpAddress::V6([0xff; 16]),
        };
        Masked {
            value: addr.masked(len),
            mask: ones.masked(len),
        }
    }
}

/// A raw attribute (type and value), for what 1.3 does not type: nothing is lost.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct TcRawAttr {
    /// The attribute's type (`NLA_F_NESTED` included when nested).
    pub kind: u16,
    pub value: RVec<u8>,
}

/// Where a filter lives: a device's block (under its [`TcFilter::parent`]) or a shared block
/// (`tc filter add block 7 ...`).
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum TcTarget {
    /// A device (ifindex).
    Dev(u32),
    /// A shared block (its index).
    Block(u32),
}

impl Default for TcTarget {
    fn default() -> Self {
        TcTarget::Dev(0)
    }
}

/// A qdisc (`tc qdisc show`), kind `qdisc`. Key: device and parent (one qdisc per parent).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct Qdisc {
    pub ifindex: u32,
    /// `htb`, `clsact`, `ingress`, `fq_codel`, ...
    pub kind: RString,
    /// `1:` is `0x0001_0000`.
    pub handle: u32,
    /// [`TC_H_ROOT`], [`TC_H_INGRESS`] or a class.
    pub parent: u32,
    /// The shared block bound to the ingress hook (`ingress_block 7`).
    pub ingress_block: ROption<u32>,
    /// The shared block bound to the egress hook.
    pub egress_block: ROption<u32>,
    /// `TCA_OPTIONS`, its attributes raw (kind-specific).
    pub options: RVec<TcRawAttr>,
}

/// A class of a classful qdisc (`tc class show`), kind `class`. Key: device and handle.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct TcClass {
    pub ifindex: u32,
    /// The qdisc's kind.
    pub kind: RString,
    /// Class id (`1:10`).
    pub handle: u32,
    /// Parent class or qdisc.
    pub parent: u32,
    /// `TCA_OPTIONS`, raw.
    pub options: RVec<TcRawAttr>,
}

/// One device a shared block is bound to.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TcBinding {
    pub ifindex: u32,
    /// Bound as the egress block (`egress_block`), else ingress.
    pub egress: bool,
}

/// Flags of a filter (`TCA_CLS_FLAGS_*`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TcFilterFlags {
    /// Hardware only (`skip_sw`): the kernel does not run it.
    pub skip_sw: bool,
    /// Software only (`skip_hw`): the operator asked that it not be offloaded; never taken.
    pub skip_hw: bool,
}

/// A filter (`tc filter show`), kind `filter`. Key: target, parent, chain, prio, handle.
///
/// Classifier instances (the line without `fh` in `tc filter show`) and chains are not
/// objects: a filter key names the chain, and `goto chain N` is a [`TcControl`].
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct TcFilter {
    pub target: TcTarget,
    /// The hook ([`TC_H_MIN_INGRESS`], [`TC_H_MIN_EGRESS`]) or class; for a shared block, the
    /// block index.
    pub parent: u32,
    pub chain: u32,
    /// `pref`.
    pub prio: u16,
    /// `fh`.
    pub handle: u32,
    /// Ethernet protocol, host order (`0x0003` is `all`, `0x0800` `ip`).
    pub protocol: u16,
    /// Classifier: `flower`, `u32`, `matchall`, `bpf`, ...
    pub kind: RString,
    pub matches: TcMatch,
    /// The actions, in order (tc's `order 1`, `order 2`, ...).
    pub actions: RVec<TcActionSpec>,
    pub flags: TcFilterFlags,
    /// `classid` (`flowid`), when set.
    pub classid: ROption<u32>,
    /// For a shared block's filter, the devices the block is bound to (filled by the host
    /// from the qdiscs, so a plugin need not track them); empty for a device's filter.
    pub bindings: RVec<TcBinding>,
}

/// Which hook a filter runs at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TcHook {
    Ingress,
    Egress,
    /// Under a class or classful qdisc (the parent).
    Class(u32),
}

impl TcFilter {
    /// A filter with this key, matching nothing yet (`kind` empty, [`TcMatch::MatchAll`]).
    pub fn new(target: TcTarget, parent: u32, prio: u16, handle: u32) -> TcFilter {
        TcFilter {
            target,
            parent,
            prio,
            handle,
            protocol: 0x0003,
            ..Default::default()
        }
    }

    /// The hooks it runs at: a device's filter its parent's; a shared block's those of its
    /// bindings (ingress first).
    pub fn hooks(&self) -> Vec<TcHook> {
        let of_parent = |p: u32| match p {
            TC_H_MIN_INGRESS => TcHook::Ingress,
            TC_H_MIN_EGRESS => TcHook::Egress,
            p if p & 0xffff_0000 == 0xffff_0000 => TcHook::Ingress,
            p => TcHook::Class(p),
        };
        match self.target {
            TcTarget::Dev(_) => vec![of_parent(self.parent)],
            TcTarget::Block(_) => {
                let mut v = Vec::new();
                if self.bindings.iter().any(|b| !b.egress) {
                    v.push(TcHook::Ingress);
                }
                if self.bindings.iter().any(|b| b.egress) {
                    v.push(TcHook::Egress);
                }
                v
            }
        }
    }

    /// The devices it runs on: its device, or its block's.
    pub fn devices(&self) -> Vec<u32> {
        match self.target {
            TcTarget::Dev(i) => vec![i],
            TcTarget::Block(_) => {
                let mut v: Vec<u32> = self.bindings.iter().map(|b| b.ifindex).collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        }
    }
}

/// What a filter matches, by classifier. Non-exhaustive: a minor may type more classifiers.
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum TcMatch {
    /// Boxed: flower's keys are large, and every [`Object`](super::Object) is as large as its
    /// largest kind.
    Flower(RBox<FlowerKeys>),
    U32(TcU32),
    /// Every packet.
    #[default]
    MatchAll,
    Bpf(TcBpf),
    /// A classifier 1.3 does not type: its options raw (the kind is [`TcFilter::kind`]).
    Other {
        options: RVec<TcRawAttr>,
    },
}

impl TcMatch {
    /// flower's match, boxed.
    pub fn flower(keys: FlowerKeys) -> TcMatch {
        TcMatch::Flower(RBox::new(keys))
    }
}

crate::open_tag! {
    /// A flower key, by tc's name: what [`TcCapabilities::flower_keys`] lists and an
    /// `unsupported` reason names (`key enc_opts not supported`). An open set.
    pub struct FlowerKey;
    /// tc's keyword.
    names(name) {
        0 => Indev("indev"),
        1 => EthType("eth_type"),
        2 => DstMac("dst_mac"),
        3 => SrcMac("src_mac"),
        4 => VlanId("vlan_id"),
        5 => VlanPrio("vlan_prio"),
        6 => VlanEthtype("vlan_ethtype"),
        7 => CvlanId("cvlan_id"),
        8 => CvlanPrio("cvlan_prio"),
        9 => CvlanEthtype("cvlan_ethtype"),
        10 => IpProto("ip_proto"),
        11 => DstIp("dst_ip"),
        12 => SrcIp("src_ip"),
        13 => DstPort("dst_port"),
        14 => SrcPort("src_port"),
        15 => DstPortRange("dst_port_range"),
        16 => SrcPortRange("src_port_range"),
        17 => TcpFlags("tcp_flags"),
        18 => IpTos("ip_tos"),
        19 => IpTtl("ip_ttl"),
        20 => IcmpType("type"),
        21 => IcmpCode("code"),
        22 => CtState("ct_state"),
        23 => CtZone("ct_zone"),
        24 => CtMark("ct_mark"),
        25 => CtLabel("ct_label"),
        26 => EncKeyId("enc_key_id"),
        27 => EncDstIp("enc_dst_ip"),
        28 => EncSrcIp("enc_src_ip"),
        29 => EncDstPort("enc_dst_port"),
        30 => EncSrcPort("enc_src_port"),
        31 => EncTos("enc_tos"),
        32 => EncTtl("enc_ttl"),
        33 => IpFlags("ip_flags"),
        // Keys 1.3 does not type (in `FlowerKeys::others`, their attributes in `raw`).
        34 => EncOpts("enc_opts"),
        35 => Mpls("mpls"),
        36 => MplsLabel("mpls_label"),
        37 => MplsTc("mpls_tc"),
        38 => MplsBos("mpls_bos"),
        39 => MplsTtl("mpls_ttl"),
        40 => ArpSip("arp_sip"),
        41 => ArpTip("arp_tip"),
        42 => ArpOp("arp_op"),
        43 => ArpSha("arp_sha"),
        44 => ArpTha("arp_tha"),
        45 => Hash("hash"),
        46 => L2Miss("l2_miss"),
        47 => Cfm("cfm"),
        48 => Spi("spi"),
        49 => EncFlags("enc_flags"),
        /// An attribute this version of the host does not know.
        50 => Unknown("unknown"),
    }
}

/// flower's match (`TCA_FLOWER_KEY_*`): each key present or not, with its mask. Ports are
/// those of [`Self::ip_proto`]'s protocol (tcp, udp, sctp), ICMP type and code those of the
/// family of [`Self::eth_type`]. Keys 1.3 does not type are listed in [`Self::others`] (their
/// attributes kept in [`Self::raw`]), so a capability check can name them.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct FlowerKeys {
    /// Input device name (`indev`).
    pub indev: ROption<RString>,
    pub eth_type: ROption<u16>,
    pub dst_mac: ROption<Masked<[u8; 6]>>,
    pub src_mac: ROption<Masked<[u8; 6]>>,
    pub vlan_id: ROption<u16>,
    pub vlan_prio: ROption<u8>,
    pub vlan_ethtype: ROption<u16>,
    pub cvlan_id: ROption<u16>,
    pub cvlan_prio: ROption<u8>,
    pub cvlan_ethtype: ROption<u16>,
    pub ip_proto: ROption<u8>,
    /// IPv4 or IPv6 address and mask (not a prefix: masks need not be contiguous).
    pub dst_ip: ROption<Masked<IpAddress>>,
    pub src_ip: ROption<Masked<IpAddress>>,
    pub dst_port: ROption<Masked<u16>>,
    pub src_port: ROption<Masked<u16>>,
    /// `dst_port MIN-MAX`, both ends included.
    pub dst_port_range: ROption<PortRange>,
    pub src_port_range: ROption<PortRange>,
    pub tcp_flags: ROption<Masked<u16>>,
    pub ip_tos: ROption<Masked<u8>>,
    pub ip_ttl: ROption<Masked<u8>>,
    /// ICMP (IPv4) or ICMPv6 type.
    pub icmp_type: ROption<Masked<u8>>,
    pub icmp_code: ROption<Masked<u8>>,
    /// `TCA_FLOWER_KEY_CT_FLAGS_*` bits (new 1, established 2, related 4, tracked 8, ...).
    pub ct_state: ROption<Masked<u16>>,
    pub ct_zone: ROption<Masked<u16>>,
    pub ct_mark: ROption<Masked<u32>>,
    pub ct_labels: ROption<Masked<[u8; 16]>>,
    /// Tunnel id (VNI) of a decapsulated packet.
    pub enc_key_id: ROption<u32>,
    pub enc_dst_ip: ROption<Masked<IpAddress>>,
    pub enc_src_ip: ROption<Masked<IpAddress>>,
    pub enc_dst_port: ROption<Masked<u16>>,
    pub enc_src_port: ROption<Masked<u16>>,
    pub enc_tos: ROption<Masked<u8>>,
    pub enc_ttl: ROption<Masked<u8>>,
    /// `TCA_FLOWER_KEY_FLAGS_*` (`frag` 1, `firstfrag` 2).
    pub ip_flags: ROption<Masked<u32>>,
    /// The keys present that 1.3 does not type.
    pub others: RVec<FlowerKey>,
    /// Their attributes, as the kernel sent them.
    pub raw: RVec<TcRawAttr>,
}

impl FlowerKeys {
    /// Every key present, typed or not (in [`FlowerKey`] order for typed keys, then
    /// [`Self::others`]).
    pub fn present(&self) -> Vec<FlowerKey> {
        use FlowerKey as K;
        let mut v = Vec::new();
        let mut has = |yes: bool, k: FlowerKey| {
            if yes {
                v.push(k)
            }
        };
        has(self.indev.is_some(), K::Indev);
        has(self.eth_type.is_some(), K::EthType);
        has(self.dst_mac.is_some(), K::DstMac);
        has(self.src_mac.is_some(), K::SrcMac);
        has(self.vlan_id.is_some(), K::VlanId);
        has(self.vlan_prio.is_some(), K::VlanPrio);
        has(self.vlan_ethtype.is_some(), K::VlanEthtype);
        has(self.cvlan_id.is_some(), K::CvlanId);
        has(self.cvlan_prio.is_some(), K::CvlanPrio);
        has(self.cvlan_ethtype.is_some(), K::CvlanEthtype);
        has(self.ip_proto.is_some(), K::IpProto);
        has(self.dst_ip.is_some(), K::DstIp);
        has(self.src_ip.is_some(), K::SrcIp);
        has(self.dst_port.is_some(), K::DstPort);
        has(self.src_port.is_some(), K::SrcPort);
        has(self.dst_port_range.is_some(), K::DstPortRange);
        has(self.src_port_range.is_some(), K::SrcPortRange);
        has(self.tcp_flags.is_some(), K::TcpFlags);
        has(self.ip_tos.is_some(), K::IpTos);
        has(self.ip_ttl.is_some(), K::IpTtl);
        has(self.icmp_type.is_some(), K::IcmpType);
        has(self.icmp_code.is_some(), K::IcmpCode);
        has(self.ct_state.is_some(), K::CtState);
        has(self.ct_zone.is_some(), K::CtZone);
        has(self.ct_mark.is_some(), K::CtMark);
        has(self.ct_labels.is_some(), K::CtLabel);
        has(self.enc_key_id.is_some(), K::EncKeyId);
        has(self.enc_dst_ip.is_some(), K::EncDstIp);
        has(self.enc_src_ip.is_some(), K::EncSrcIp);
        has(self.enc_dst_port.is_some(), K::EncDstPort);
        has(self.enc_src_port.is_some(), K::EncSrcPort);
        has(self.enc_tos.is_some(), K::EncTos);
        has(self.enc_ttl.is_some(), K::EncTtl);
        has(self.ip_flags.is_some(), K::IpFlags);
        v.extend(self.others.iter().copied());
        v
    }
}

/// One key of a u32 selector (`match u32 VAL MASK at OFF`): `val` and `mask` in network byte
/// order as the kernel holds them (`u32::from_be(val)` is the number the packet's 4 bytes at
/// `off` spell).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TcU32Key {
    pub mask: u32,
    pub val: u32,
    pub off: i32,
    pub offmask: i32,
}

/// A u32 selector (`struct tc_u32_sel`).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct TcU32Selector {
    /// `TC_U32_TERMINAL` 1, `TC_U32_OFFSET` 2, `TC_U32_VAROFFSET` 4, `TC_U32_EAT` 8.
    pub flags: u8,
    pub offshift: u8,
    pub offmask: u16,
    pub off: u16,
    pub offoff: i16,
    pub hoff: i16,
    pub hmask: u32,
    pub keys: RVec<TcU32Key>,
}

/// u32's match: its selector and where it sits among u32's hash tables.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct TcU32 {
    pub selector: ROption<TcU32Selector>,
    /// `ht`: the hash table (and bucket) the key node is in.
    pub hash: ROption<u32>,
    /// `link`: the hash table a match continues in.
    pub link: ROption<u32>,
    /// A hash table's number of buckets (a hash table node, not a key node).
    pub divisor: ROption<u32>,
    pub indev: ROption<RString>,
    /// `mark VAL MASK`.
    pub mark: ROption<Masked<u32>>,
}

/// bpf's match: the program, by id (a plugin that can run it opens it with
/// `bpf_prog_get_fd_by_id`).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct TcBpf {
    pub id: u32,
    pub name: RString,
    pub tag: [u8; 8],
    /// `da`: the program's return value is the verdict.
    pub direct_action: bool,
}

/// A tc control action (`TC_ACT_*`): what happens after an action, or a gact's verdict.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
#[non_exhaustive]
pub enum TcControl {
    /// `continue` (`TC_ACT_UNSPEC`): the next filter.
    Continue,
    /// `pass` (`TC_ACT_OK`): accepted, classification ends.
    Ok,
    /// `reclassify`.
    Reclassify,
    /// `drop` (`TC_ACT_SHOT`).
    Shot,
    /// `pipe`: the next action of the list.
    #[default]
    Pipe,
    /// `stolen`: consumed (a redirect).
    Stolen,
    Queued,
    Repeat,
    Redirect,
    /// `trap`: to the CPU (hardware's word).
    Trap,
    /// `jump N`: the action list starts again from its first action, skipping N, so it
    /// resumes at action N (counted from 0; `tcf_action_exec`). N = 0 or N greater than the
    /// list's length stops the list with `ok` (a faulty jump); a jump to N not after itself
    /// runs actions N.. again, and the 32nd jump of one list stops it with `ok`.
    Jump(u32),
    /// `goto chain N`.
    GotoChain(u32),
    /// A value this version does not know.
    Other(i32),
}

impl TcControl {
    /// From the kernel's `int` (`TC_ACT_*`, `TC_ACT_JUMP | n`, `TC_ACT_GOTO_CHAIN | n`).
    pub fn from_raw(v: i32) -> TcControl {
        const EXT_MASK: u32 = 0xf000_0000;
        let u = v as u32;
        match u & EXT_MASK {
            0x1000_0000 => return TcControl::Jump(u & !EXT_MASK),
            0x2000_0000 => return TcControl::GotoChain(u & !EXT_MASK),
            _ => {}
        }
        match v {
            -1 => TcControl::Continue,
            0 => TcControl::Ok,
            1 => TcControl::Reclassify,
            2 => TcControl::Shot,
            3 => TcControl::Pipe,
            4 => TcControl::Stolen,
            5 => TcControl::Queued,
            6 => TcControl::Repeat,
            7 => TcControl::Redirect,
            8 => TcControl::Trap,
            v => TcControl::Other(v),
        }
    }

    /// Whether it jumps (`goto chain`, `jump`).
    pub fn is_goto(&self) -> bool {
        matches!(self, TcControl::Jump(_) | TcControl::GotoChain(_))
    }
}

impl std::fmt::Display for TcControl {
    /// tc's words: `pass`, `drop`, `pipe`, `goto chain 2`, ...
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcControl::Continue => f.write_str("continue"),
            TcControl::Ok => f.write_str("pass"),
            TcControl::Reclassify => f.write_str("reclassify"),
            TcControl::Shot => f.write_str("drop"),
            TcControl::Pipe => f.write_str("pipe"),
            TcControl::Stolen => f.write_str("stolen"),
            TcControl::Queued => f.write_str("queued"),
            TcControl::Repeat => f.write_str("repeat"),
            TcControl::Redirect => f.write_str("redirect"),
            TcControl::Trap => f.write_str("trap"),
            TcControl::Jump(n) => write!(f, "jump {n}"),
            TcControl::GotoChain(n) => write!(f, "goto chain {n}"),
            TcControl::Other(v) => write!(f, "{v:#x}"),
        }
    }
}

crate::open_tag! {
    /// mirred's `eaction` (`TCA_EGRESS_REDIR` ...), tag = the kernel's value minus 1. An open set.
    pub struct TcMirredAction;
    /// tc's words.
    names(name) {
        0 => EgressRedirect("egress redirect"),
        1 => EgressMirror("egress mirror"),
        2 => IngressRedirect("ingress redirect"),
        3 => IngressMirror("ingress mirror"),
    }
}

crate::open_tag! {
    /// vlan's operation (`TCA_VLAN_ACT_*`, tag = the kernel's value minus 1). An open set.
    pub struct TcVlanOp;
    /// tc's words.
    names(name) {
        0 => Pop("pop"),
        1 => Push("push"),
        2 => Modify("modify"),
        3 => PopEth("pop_eth"),
        4 => PushEth("push_eth"),
    }
}

/// gact's random verdict (`random determ|netrand VERDICT VAL`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TcGactProb {
    /// `PGACT_NETRAND` 1 (random, 1 in `pval`), `PGACT_DETERM` 2 (every `pval`th).
    pub ptype: u16,
    pub pval: u16,
    /// The verdict taken then.
    pub control: TcControl,
}

/// police's parameters, converted to bytes and packets (the kernel's burst is in psched
/// ticks at the rate: no plugin repeats that arithmetic).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TcPolice {
    /// Bytes per second; 0: no byte rate.
    pub rate_bytes_ps: u64,
    /// Bucket size, bytes.
    pub burst_bytes: u64,
    /// Largest packet passed (`mtu`); 0: no limit.
    pub mtu: u32,
    /// Peak rate, bytes per second; 0: none.
    pub peakrate_bytes_ps: u64,
    /// Packets per second (`pkts_rate`); 0: none.
    pub pkts_rate: u64,
    /// Packet bucket size (`pkts_burst`).
    pub pkts_burst: u64,
    /// `avrate`, bytes per second; 0: none.
    pub avrate: u32,
    /// What happens to a packet over the rate (`conform-exceed EXCEED/...`).
    pub exceed: TcControl,
    /// What happens to a conforming packet.
    pub conform: TcControl,
}

/// One pedit key (`struct tc_pedit_key` and its extended header type and command): `val` and
/// `mask` as the kernel holds them (network byte order, like [`TcU32Key`]'s).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TcPeditKey {
    /// `TCA_PEDIT_KEY_EX_HDR_TYPE_*`: 0 network (raw), 1 eth, 2 ip4, 3 ip6, 4 tcp, 5 udp.
    pub htype: u16,
    /// `TCA_PEDIT_KEY_EX_CMD_*`: 0 set, 1 add.
    pub cmd: u16,
    pub mask: u32,
    pub val: u32,
    pub off: u32,
    pub at: u32,
    pub offmask: u32,
    pub shift: u32,
}

/// ct's NAT range.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TcCtNat {
    pub min_addr: ROption<IpAddress>,
    pub max_addr: ROption<IpAddress>,
    pub min_port: ROption<u16>,
    pub max_port: ROption<u16>,
}

/// ct's parameters.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct TcCt {
    /// `TCA_CT_ACT_*`: commit 1, force 2, clear 4, nat 8, nat src 16, nat dst 32.
    pub flags: u16,
    pub zone: u16,
    pub mark: ROption<Masked<u32>>,
    pub labels: ROption<Masked<[u8; 16]>>,
    pub nat: ROption<TcCtNat>,
    /// Helper name (`helper ftp`), when set.
    pub helper: ROption<RString>,
}

/// tunnel_key's parameters.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct TcTunnelKey {
    /// `unset` (release) when false.
    pub set: bool,
    pub src_ip: ROption<IpAddress>,
    pub dst_ip: ROption<IpAddress>,
    pub key_id: ROption<u32>,
    pub dst_port: ROption<u16>,
    pub tos: ROption<u8>,
    pub ttl: ROption<u8>,
    pub no_csum: bool,
    /// Attributes 1.3 does not type (`enc_opts`), raw.
    pub raw: RVec<TcRawAttr>,
}

/// An action's own parameters, by kind. Non-exhaustive: a minor may type more kinds; a kind
/// not typed here is [`TcActionParams::Raw`].
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum TcActionParams {
    /// `gact`: the verdict is [`TcActionSpec::control`].
    Gact {
        prob: ROption<TcGactProb>,
    },
    Mirred {
        eaction: TcMirredAction,
        ifindex: u32,
    },
    Vlan {
        op: TcVlanOp,
        id: u16,
        /// `0x8100` or `0x88a8`, host order.
        protocol: u16,
        priority: u8,
        dst_mac: ROption<[u8; 6]>,
        src_mac: ROption<[u8; 6]>,
    },
    Police(TcPolice),
    Skbedit {
        priority: ROption<u32>,
        queue_mapping: ROption<u16>,
        mark: ROption<u32>,
        mask: ROption<u32>,
        ptype: ROption<u16>,
    },
    Pedit {
        keys: RVec<TcPeditKey>,
    },
    /// `TCA_CSUM_UPDATE_FLAG_*` (iph 1, icmp 2, igmp 4, tcp 8, udp 16, udplite 32, sctp 64).
    Csum {
        flags: u32,
    },
    Ct(TcCt),
    TunnelKey(TcTunnelKey),
    /// `nat`: stateless IPv4 address rewrite (`egress`: the source, else the destination).
    Nat {
        old_addr: [u8; 4],
        new_addr: [u8; 4],
        mask: [u8; 4],
        egress: bool,
    },
    /// Every other kind (mpls, sample, skbmod, connmark, ...): its options raw.
    Raw {
        attrs: RVec<TcRawAttr>,
    },
}

impl Default for TcActionParams {
    fn default() -> Self {
        TcActionParams::Raw { attrs: RVec::new() }
    }
}

/// One action of a filter (or a standalone one): kind, index in its kind's table, control
/// action, parameters. An action bound by index in two filters (`action police index 5`)
/// appears in both with the same `(kind, index)`: a plugin sharing a police bucket keys it by
/// that; replacing the action re-sends every filter holding it.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct TcActionSpec {
    /// `gact`, `mirred`, `vlan`, `police`, `pedit`, ...
    pub kind: RString,
    pub index: u32,
    /// What follows the action (for gact: its verdict, `drop` is [`TcControl::Shot`]).
    pub control: TcControl,
    pub params: TcActionParams,
    /// The operator's cookie (`cookie HEX`), empty when none.
    pub cookie: RVec<u8>,
}

impl TcActionSpec {
    /// `action drop`, `action pass`, ... (gact, index 0: the host's real ones carry the index).
    pub fn gact(verdict: TcControl) -> TcActionSpec {
        TcActionSpec {
            kind: "gact".into(),
            control: verdict,
            params: TcActionParams::Gact {
                prob: ROption::RNone,
            },
            ..Default::default()
        }
    }
    /// `action mirred egress redirect dev IFINDEX`.
    pub fn mirred(eaction: TcMirredAction, ifindex: u32) -> TcActionSpec {
        let redirect = matches!(
            eaction,
            TcMirredAction::EgressRedirect | TcMirredAction::IngressRedirect
        );
        TcActionSpec {
            kind: "mirred".into(),
            control: if redirect {
                TcControl::Stolen
            } else {
                TcControl::Pipe
            },
            params: TcActionParams::Mirred { eaction, ifindex },
            ..Default::default()
        }
    }
    /// An action of a kind with raw parameters.
    pub fn raw(kind: &str, index: u32, control: TcControl) -> TcActionSpec {
        TcActionSpec {
            kind: kind.into(),
            index,
            control,
            ..Default::default()
        }
    }
}

/// A tc action (`tc actions show`), kind `action`. Key: kind and index. Standalone actions and
/// those bound to filters alike; most plugins need only the filters, which carry their
/// actions whole.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct TcAction {
    pub spec: TcActionSpec,
    /// `ref`: references held (bindings and `tc actions add`'s own).
    pub refcnt: u32,
    /// `bind`: filters holding it.
    pub bindcnt: u32,
}

/// What of tc a plugin runs (API 1.3), beside the tc kinds in
/// [`Capabilities::kinds`](crate::Capabilities::kinds): a filter is taken only when the plugin
/// can run it whole ([`Capabilities::takes_filter`](crate::Capabilities::takes_filter)).
/// Empty (the default): no filter is taken. An empty list means none, except
/// [`mirred`](Self::mirred), where empty means all four operations (fails open: list the ones
/// run).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct TcCapabilities {
    /// Every filter, whatever its classifier, keys, actions, hook or block (a recorder, a
    /// test); the port scope still applies.
    pub all: bool,
    /// Classifiers run: `flower`, `u32`, `matchall`, `bpf`. Empty: no filter taken.
    pub classifiers: RVec<RString>,
    /// flower keys matched. A flower filter using another key is not taken.
    pub flower_keys: RVec<FlowerKey>,
    /// Action kinds executed (`gact`, `mirred`, `vlan`, `police`, ...).
    pub actions: RVec<RString>,
    /// mirred's operations executed (with `mirred` in `actions`).
    ///
    /// **Empty means all four, unlike every other list here** (where empty means none):
    /// a plugin with `mirred` in [`Self::actions`] and this list empty is handed filters with
    /// `egress redirect`, `egress mirror`, `ingress redirect` and `ingress mirror` alike. This
    /// fails open and cannot change: 1.3 is released. A plugin that runs only some of them
    /// must list those (`.mirred([TcMirredAction::EgressRedirect])`); `ekho check-plugin`
    /// prints the operations a plugin takes (`mirred [all four: ...]` when the list is empty).
    pub mirred: RVec<TcMirredAction>,
    /// Filters at a device's ingress hook (clsact's or ingress's).
    pub ingress: bool,
    /// Filters at clsact's egress hook.
    pub egress: bool,
    /// Filters of shared blocks (`tc filter add block N`).
    pub shared_blocks: bool,
    /// `goto chain N` and `jump N` executed (else a filter using them is not taken).
    pub goto_chain: bool,
}

impl TcCapabilities {
    /// The mirred operations a plugin declaring these capabilities runs: none unless `mirred`
    /// is among the actions (or [`Self::all`]); then those in `mirred`, **an empty list
    /// meaning all four**. `ekho check-plugin` prints this list.
    pub fn mirred_taken(&self) -> Vec<TcMirredAction> {
        if !self.all && !self.actions.iter().any(|a| a.as_str() == "mirred") {
            return Vec::new();
        }
        if self.mirred.is_empty() {
            return vec![
                TcMirredAction::EgressRedirect,
                TcMirredAction::EgressMirror,
                TcMirredAction::IngressRedirect,
                TcMirredAction::IngressMirror,
            ];
        }
        self.mirred.to_vec()
    }

    /// Nothing taken: start here and add.
    pub fn new() -> TcCapabilities {
        TcCapabilities::default()
    }
    /// Every filter (see [`Self::all`]).
    pub fn everything() -> TcCapabilities {
        TcCapabilities {
            all: true,
            ..Default::default()
        }
    }
    pub fn classifiers<S: Into<String>>(mut self, c: impl IntoIterator<Item = S>) -> Self {
        self.classifiers
            .extend(c.into_iter().map(|s| RString::from(s.into())));
        self
    }
    pub fn flower_keys(mut self, k: impl IntoIterator<Item = FlowerKey>) -> Self {
        self.flower_keys.extend(k);
        self
    }
    pub fn actions<S: Into<String>>(mut self, a: impl IntoIterator<Item = S>) -> Self {
        self.actions
            .extend(a.into_iter().map(|s| RString::from(s.into())));
        self
    }
    /// Adds mirred operations run. Not calling it (the list left empty) takes **all four**
    /// (see [`Self::mirred`](TcCapabilities::mirred)'s field): call it with every operation the
    /// plugin runs.
    pub fn mirred(mut self, m: impl IntoIterator<Item = TcMirredAction>) -> Self {
        self.mirred.extend(m);
        self
    }
    pub fn ingress(mut self, yes: bool) -> Self {
        self.ingress = yes;
        self
    }
    pub fn egress(mut self, yes: bool) -> Self {
        self.egress = yes;
        self
    }
    pub fn shared_blocks(mut self, yes: bool) -> Self {
        self.shared_blocks = yes;
        self
    }
    pub fn goto_chain(mut self, yes: bool) -> Self {
        self.goto_chain = yes;
        self
    }

    /// Whether a filter can be run whole, or the first reason it cannot, in this order:
    /// `skip_hw`, classifier, hook, shared block, flower key, action, mirred operation, mirred
    /// target port (`owned` says whether the plugin owns an ifindex), goto chain. The port
    /// scope of the filter's own devices is the host's (see
    /// [`TcUnsupported::BlockPort`]).
    pub fn takes_filter(
        &self,
        f: &TcFilter,
        owned: &dyn Fn(u32) -> bool,
    ) -> Result<(), TcUnsupported> {
        if f.flags.skip_hw {
            return Err(TcUnsupported::SkipHw);
        }
        if self.all {
            return Ok(());
        }
        if !self
            .classifiers
            .iter()
            .any(|c| c.as_str() == f.kind.as_str())
        {
            return Err(TcUnsupported::Classifier(f.kind.to_string()));
        }
        for h in f.hooks() {
            let ok = match h {
                TcHook::Ingress => self.ingress,
                TcHook::Egress => self.egress,
                TcHook::Class(_) => false,
            };
            if !ok {
                return Err(TcUnsupported::Hook(h));
            }
        }
        if let TcTarget::Block(b) = f.target {
            if !self.shared_blocks {
                return Err(TcUnsupported::SharedBlock(b));
            }
        }
        if let TcMatch::Flower(k) = &f.matches {
            if let Some(k) = k
                .present()
                .into_iter()
                .find(|k| !self.flower_keys.contains(k))
            {
                return Err(TcUnsupported::FlowerKey(k));
            }
        }
        for a in f.actions.iter() {
            if !self.actions.iter().any(|k| k.as_str() == a.kind.as_str()) {
                return Err(TcUnsupported::Action(a.kind.to_string()));
            }
        }
        for a in f.actions.iter() {
            if let TcActionParams::Mirred { eaction, ifindex } = a.params {
                if !self.mirred_taken().contains(&eaction) {
                    return Err(TcUnsupported::Mirred(eaction));
                }
                if !owned(ifindex) {
                    return Err(TcUnsupported::MirredPort(ifindex));
                }
            }
        }
        let gotos = f.actions.iter().any(|a| {
            a.control.is_goto()
                || matches!(a.params, TcActionParams::Gact { prob: ROption::RSome(p) } if p.control.is_goto())
                || matches!(a.params, TcActionParams::Police(p) if p.exceed.is_goto() || p.conform.is_goto())
        });
        if gotos && !self.goto_chain {
            return Err(TcUnsupported::GotoChain);
        }
        Ok(())
    }
}

/// Why a filter is not taken (`unsupported`), in tc's words: `Display` gives the reason the
/// host records in the plugin's status and `ekho dump filters` shows
/// (`offload: unsupported (action pedit not supported)`). Device names are the host's to
/// fill: `Display` shows an ifindex as `if7`; the host renders with names
/// ([`TcUnsupported::describe`]).
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum TcUnsupported {
    /// The filter is `skip_hw`: the operator asked that it not be offloaded.
    SkipHw,
    /// `classifier basic not supported`.
    Classifier(String),
    /// `hook egress not supported` (a class's filter: `hook 1:10 not supported`).
    Hook(TcHook),
    /// `shared block 7 not supported`.
    SharedBlock(u32),
    /// `key enc_opts not supported`.
    FlowerKey(FlowerKey),
    /// `action pedit not supported`.
    Action(String),
    /// `mirred ingress redirect not supported`.
    Mirred(TcMirredAction),
    /// `mirred to p3 (not an owned port)`.
    MirredPort(u32),
    /// `goto chain not supported`.
    GotoChain,
    /// The host's port scope: `block 7 is bound to p3, not an owned port`.
    BlockPort { block: u32, ifindex: u32 },
    /// The host's: `after pref 1 chain 0, which is not offloaded`. An earlier filter of the
    /// same hook and chain (lower `pref`, a protocol both may see) is not handed to the
    /// plugin: the kernel decides a frame both match by that one, so this one is left to the
    /// kernel too (the host sees every filter of a hook; a plugin only those it is given).
    After { prio: u16, chain: u32 },
    /// The host's: `beside pref 1 chain 0, which is not offloaded`. Another filter of the same
    /// hook, chain and `pref` (so of the same protocol and classifier: one kernel instance) is
    /// not handed to the plugin: which of the two decides a frame both match is the
    /// classifier's own order (flower's: its masks' creation order), which the host does not
    /// model, so this one is left to the kernel too.
    Beside { prio: u16, chain: u32 },
    /// The host's: `block 7 is bound to no device` (a shared block's filter runs nowhere).
    UnboundBlock(u32),
}

impl TcUnsupported {
    /// The reason, device names by `name` (an ifindex's name, `None` when unknown).
    pub fn describe(&self, name: &dyn Fn(u32) -> Option<String>) -> String {
        let dev = |i: u32| name(i).unwrap_or_else(|| format!("if{i}"));
        match self {
            TcUnsupported::SkipHw => "skip_hw".into(),
            TcUnsupported::Classifier(k) => format!("classifier {k} not supported"),
            TcUnsupported::Hook(TcHook::Ingress) => "hook ingress not supported".into(),
            TcUnsupported::Hook(TcHook::Egress) => "hook egress not supported".into(),
            TcUnsupported::Hook(TcHook::Class(p)) => {
                let (maj, min) = (p >> 16, p & 0xffff);
                format!("hook {maj:x}:{min:x} not supported")
            }
            TcUnsupported::SharedBlock(b) => format!("shared block {b} not supported"),
            TcUnsupported::FlowerKey(k) => format!("key {k} not supported"),
            TcUnsupported::Action(k) => format!("action {k} not supported"),
            TcUnsupported::Mirred(m) => format!("mirred {m} not supported"),
            TcUnsupported::MirredPort(i) => format!("mirred to {} (not an owned port)", dev(*i)),
            TcUnsupported::GotoChain => "goto chain not supported".into(),
            TcUnsupported::BlockPort { block, ifindex } => {
                format!(
                    "block {block} is bound to {}, not an owned port",
                    dev(*ifindex)
                )
            }
            TcUnsupported::After { prio, chain } => {
                format!("after pref {prio} chain {chain}, which is not offloaded")
            }
            TcUnsupported::Beside { prio, chain } => {
                format!("beside pref {prio} chain {chain}, which is not offloaded")
            }
            TcUnsupported::UnboundBlock(b) => format!("block {b} is bound to no device"),
        }
    }
}

impl std::fmt::Display for TcUnsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(&|_| None))
    }
}

impl std::error::Error for TcUnsupported {}

impl TcFilter {
    /// Its identity ([`ObjectKey::TcFilter`](super::ObjectKey::TcFilter)).
    pub fn key(&self) -> super::ObjectKey {
        super::ObjectKey::TcFilter {
            target: self.target,
            parent: self.parent,
            chain: self.chain,
            prio: self.prio,
            handle: self.handle,
        }
    }
}

/// tc's handle form: `1:`, `1:10`, `ffff:fff2`.
pub fn handle_name(h: u32) -> String {
    let (maj, min) = (h >> 16, h & 0xffff);
    if min == 0 {
        format!("{maj:x}:")
    } else {
        format!("{maj:x}:{min:x}")
    }
}

/// tc's name of a parent: `root`, `ingress`, `egress`, or the handle.
pub fn parent_name(p: u32) -> String {
    match p {
        TC_H_ROOT => "root".into(),
        TC_H_INGRESS => "ingress".into(),
        TC_H_MIN_INGRESS => "ingress".into(),
        TC_H_MIN_EGRESS => "egress".into(),
        p => handle_name(p),
    }
}

/// tc's protocol names (`all`, `ip`, `ipv6`, `802.1Q`, ...; else `0x88cc`).
pub fn protocol_name(p: u16) -> String {
    match p {
        0x0003 => "all".into(),
        0x0800 => "ip".into(),
        0x86dd => "ipv6".into(),
        0x0806 => "arp".into(),
        0x8100 => "802.1Q".into(),
        0x88a8 => "802.1ad".into(),
        0x8847 => "mpls_uc".into(),
        0x8848 => "mpls_mc".into(),
        p => format!("0x{p:04x}"),
    }
}

#[cfg(feature = "json")]
mod json {
    use super::*;
    use serde_json::{json, Map, Value};

    fn raw(v: &[TcRawAttr]) -> Value {
        v.iter()
            .map(|a| {
                let hex: String = a.value.iter().map(|b| format!("{b:02x}")).collect();
                json!({"type": a.kind, "value": hex})
            })
            .collect()
    }
    fn mac(m: &[u8; 6]) -> String {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
    fn ip(a: &IpAddress) -> String {
        std::net::IpAddr::from(*a).to_string()
    }

    impl Qdisc {
        /// `tc -j qdisc show`'s shape (`ifindex` for `dev`; options raw).
        pub fn to_json(&self) -> Value {
            let mut m = Map::new();
            m.insert("kind".into(), self.kind.as_str().into());
            m.insert("handle".into(), handle_name(self.handle).into());
            m.insert("ifindex".into(), self.ifindex.into());
            m.insert("parent".into(), parent_name(self.parent).into());
            if let ROption::RSome(b) = self.ingress_block {
                m.insert("ingress_block".into(), b.into());
            }
            if let ROption::RSome(b) = self.egress_block {
                m.insert("egress_block".into(), b.into());
            }
            m.insert("options".into(), raw(&self.options));
            Value::Object(m)
        }
    }

    impl TcClass {
        /// `tc -j class show`'s shape.
        pub fn to_json(&self) -> Value {
            json!({
                "class": self.kind.as_str(),
                "handle": handle_name(self.handle),
                "ifindex": self.ifindex,
                "parent": parent_name(self.parent),
                "options": raw(&self.options),
            })
        }
    }

    impl TcActionSpec {
        /// One action as `tc -j` lists it in a filter (without `order`, which is its place).
        pub fn to_json(&self) -> Value {
            let mut m = Map::new();
            m.insert("kind".into(), self.kind.as_str().into());
            m.insert("index".into(), self.index.into());
            m.insert(
                "control_action".into(),
                json!({"type": self.control.to_string()}),
            );
            match &self.params {
                TcActionParams::Gact { prob } => {
                    if let ROption::RSome(p) = prob {
                        m.insert(
                            "prob".into(),
                            json!({"random_type": if p.ptype == 2 { "determ" } else { "netrand" },
                                "control_action": {"type": p.control.to_string()}, "val": p.pval}),
                        );
                    }
                }
                TcActionParams::Mirred { eaction, ifindex } => {
                    m.insert("mirred_action".into(), eaction.name().into());
                    m.insert("ifindex".into(), (*ifindex).into());
                }
                TcActionParams::Vlan {
                    op,
                    id,
                    protocol,
                    priority,
                    dst_mac,
                    src_mac,
                } => {
                    m.insert("vlan_action".into(), op.name().into());
                    if matches!(*op, TcVlanOp::Push | TcVlanOp::Modify) {
                        m.insert("id".into(), (*id).into());
                        m.insert("protocol".into(), protocol_name(*protocol).into());
                        m.insert("priority".into(), (*priority).into());
                    }
                    if let ROption::RSome(d) = dst_mac {
                        m.insert("dst_mac".into(), mac(d).into());
                    }
                    if let ROption::RSome(s) = src_mac {
                        m.insert("src_mac".into(), mac(s).into());
                    }
                }
                TcActionParams::Police(p) => {
                    m.insert("rate".into(), p.rate_bytes_ps.into());
                    m.insert("burst".into(), p.burst_bytes.into());
                    m.insert("mtu".into(), p.mtu.into());
                    m.insert("peakrate".into(), p.peakrate_bytes_ps.into());
                    m.insert("pkts_rate".into(), p.pkts_rate.into());
                    m.insert("pkts_burst".into(), p.pkts_burst.into());
                    m.insert("avrate".into(), p.avrate.into());
                    m.insert(
                        "control_action".into(),
                        json!({"type": p.exceed.to_string()}),
                    );
                    m.insert(
                        "overhead_control_action".into(),
                        json!({"type": p.conform.to_string()}),
                    );
                }
                TcActionParams::Skbedit {
                    priority,
                    queue_mapping,
                    mark,
                    mask,
                    ptype,
                } => {
                    if let ROption::RSome(v) = priority {
                        m.insert("priority".into(), handle_name(*v).into());
                    }
                    if let ROption::RSome(v) = queue_mapping {
                        m.insert("queue_mapping".into(), (*v).into());
                    }
                    if let ROption::RSome(v) = mark {
                        m.insert("mark".into(), (*v).into());
                    }
                    if let ROption::RSome(v) = mask {
                        m.insert("mask".into(), format!("{v:#x}").into());
                    }
                    if let ROption::RSome(v) = ptype {
                        m.insert("ptype".into(), (*v).into());
                    }
                }
                TcActionParams::Pedit { keys } => {
                    let k: Vec<Value> = keys
                        .iter()
                        .map(|k| {
                            json!({"htype": k.htype, "cmd": k.cmd, "off": k.off,
                                "val": format!("{:08x}", u32::from_be(k.val)),
                                "mask": format!("{:08x}", u32::from_be(k.mask))})
                        })
                        .collect();
                    m.insert("keys".into(), k.into());
                }
                TcActionParams::Csum { flags } => {
                    m.insert("csum".into(), (*flags).into());
                }
                TcActionParams::Ct(c) => {
                    m.insert("ct_action".into(), c.flags.into());
                    m.insert("zone".into(), c.zone.into());
                    if let ROption::RSome(x) = c.mark {
                        m.insert("mark".into(), x.value.into());
                        m.insert("mark_mask".into(), x.mask.into());
                    }
                    if let ROption::RSome(h) = &c.helper {
                        m.insert("helper".into(), h.as_str().into());
                    }
                }
                TcActionParams::TunnelKey(t) => {
                    m.insert("mode".into(), if t.set { "set" } else { "unset" }.into());
                    if let ROption::RSome(a) = &t.src_ip {
                        m.insert("src_ip".into(), ip(a).into());
                    }
                    if let ROption::RSome(a) = &t.dst_ip {
                        m.insert("dst_ip".into(), ip(a).into());
                    }
                    if let ROption::RSome(k) = t.key_id {
                        m.insert("key_id".into(), k.into());
                    }
                    if let ROption::RSome(p) = t.dst_port {
                        m.insert("dst_port".into(), p.into());
                    }
                }
                TcActionParams::Nat {
                    old_addr,
                    new_addr,
                    mask,
                    egress,
                } => {
                    let a = |b: &[u8; 4]| std::net::Ipv4Addr::from(*b).to_string();
                    m.insert(
                        "direction".into(),
                        if *egress { "egress" } else { "ingress" }.into(),
                    );
                    m.insert("old_addr".into(), a(old_addr).into());
                    m.insert("new_addr".into(), a(new_addr).into());
                    m.insert("mask".into(), a(mask).into());
                }
                TcActionParams::Raw { attrs } => {
                    m.insert("options".into(), raw(attrs));
                }
            }
            if !self.cookie.is_empty() {
                let hex: String = self.cookie.iter().map(|b| format!("{b:02x}")).collect();
                m.insert("cookie".into(), hex.into());
            }
            Value::Object(m)
        }
    }

    impl TcAction {
        /// `tc -j actions list`'s shape of one action.
        pub fn to_json(&self) -> Value {
            let mut v = self.spec.to_json();
            v["ref"] = self.refcnt.into();
            v["bind"] = self.bindcnt.into();
            v
        }
    }

    fn masked_ip(m: &Masked<IpAddress>) -> String {
        let ones = match m.mask {
            IpAddress::V4(b) => b.iter().map(|x| x.count_ones()).sum::<u32>(),
            IpAddress::V6(b) => b.iter().map(|x| x.count_ones()).sum::<u32>(),
        };
        if m.mask == m.mask.masked(ones as u8) {
            format!("{}/{}", ip(&m.value), ones)
        } else {
            format!("{}/{}", ip(&m.value), ip(&m.mask))
        }
    }

    fn flower(k: &FlowerKeys) -> Value {
        let mut m = Map::new();
        let u = |v: u64, mask: u64, full: u64| -> Value {
            if mask == full {
                v.into()
            } else {
                format!("{v:#x}/{mask:#x}").into()
            }
        };
        if let ROption::RSome(d) = &k.indev {
            m.insert("indev".into(), d.as_str().into());
        }
        if let ROption::RSome(e) = k.eth_type {
            let name = match e {
                0x0800 => "ipv4".to_string(),
                0x86dd => "ipv6".into(),
                0x0806 => "arp".into(),
                0x8035 => "rarp".into(),
                e => format!("{e:04x}"),
            };
            m.insert("eth_type".into(), name.into());
        }
        for (n, v) in [("dst_mac", &k.dst_mac), ("src_mac", &k.src_mac)] {
            if let ROption::RSome(x) = v {
                let s = if x.is_exact() {
                    mac(&x.value)
                } else {
                    format!("{}/{}", mac(&x.value), mac(&x.mask))
                };
                m.insert(n.into(), s.into());
            }
        }
        for (n, v) in [("vlan_id", k.vlan_id), ("cvlan_id", k.cvlan_id)] {
            if let ROption::RSome(x) = v {
                m.insert(n.into(), x.into());
            }
        }
        for (n, v) in [("vlan_prio", k.vlan_prio), ("cvlan_prio", k.cvlan_prio)] {
            if let ROption::RSome(x) = v {
                m.insert(n.into(), x.into());
            }
        }
        for (n, v) in [
            ("vlan_ethtype", k.vlan_ethtype),
            ("cvlan_ethtype", k.cvlan_ethtype),
        ] {
            if let ROption::RSome(x) = v {
                m.insert(n.into(), protocol_name(x).into());
            }
        }
        if let ROption::RSome(p) = k.ip_proto {
            let name = match p {
                1 => "icmp".to_string(),
                6 => "tcp".into(),
                17 => "udp".into(),
                58 => "icmpv6".into(),
                132 => "sctp".into(),
                p => format!("{p:#x}"),
            };
            m.insert("ip_proto".into(), name.into());
        }
        for (n, v) in [
            ("dst_ip", &k.dst_ip),
            ("src_ip", &k.src_ip),
            ("enc_dst_ip", &k.enc_dst_ip),
            ("enc_src_ip", &k.enc_src_ip),
        ] {
            if let ROption::RSome(x) = v {
                m.insert(n.into(), masked_ip(x).into());
            }
        }
        for (n, v) in [
            ("dst_port", k.dst_port),
            ("src_port", k.src_port),
            ("tcp_flags", k.tcp_flags),
            ("enc_dst_port", k.enc_dst_port),
            ("enc_src_port", k.enc_src_port),
            ("ct_state", k.ct_state),
            ("ct_zone", k.ct_zone),
        ] {
            if let ROption::RSome(x) = v {
                m.insert(n.into(), u(x.value.into(), x.mask.into(), 0xffff));
            }
        }
        for (n, v) in [
            ("dst_port", k.dst_port_range),
            ("src_port", k.src_port_range),
        ] {
            if let ROption::RSome(r) = v {
                m.insert(n.into(), format!("{}-{}", r.start, r.end).into());
            }
        }
        for (n, v) in [
            ("ip_tos", k.ip_tos),
            ("ip_ttl", k.ip_ttl),
            ("icmp_type", k.icmp_type),
            ("icmp_code", k.icmp_code),
            ("enc_tos", k.enc_tos),
            ("enc_ttl", k.enc_ttl),
        ] {
            if let ROption::RSome(x) = v {
                m.insert(n.into(), u(x.value.into(), x.mask.into(), 0xff));
            }
        }
        for (n, v) in [("ct_mark", k.ct_mark), ("ip_flags", k.ip_flags)] {
            if let ROption::RSome(x) = v {
                m.insert(n.into(), u(x.value.into(), x.mask.into(), 0xffff_ffff));
            }
        }
        if let ROption::RSome(x) = k.ct_labels {
            let h = |b: &[u8; 16]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            m.insert(
                "ct_label".into(),
                format!("{}/{}", h(&x.value), h(&x.mask)).into(),
            );
        }
        if let ROption::RSome(x) = k.enc_key_id {
            m.insert("enc_key_id".into(), x.into());
        }
        if !k.others.is_empty() {
            let o: Vec<Value> = k.others.iter().map(|k| k.name().into()).collect();
            m.insert("others".into(), o.into());
            m.insert("raw".into(), raw(&k.raw));
        }
        Value::Object(m)
    }

    impl TcFilter {
        /// `tc -j filter show`'s shape (`ifindex` or `block` for the device; `actions` with
        /// `order` from 1).
        pub fn to_json(&self) -> Value {
            let mut m = Map::new();
            match self.target {
                TcTarget::Dev(i) => {
                    m.insert("ifindex".into(), i.into());
                    m.insert("parent".into(), parent_name(self.parent).into());
                }
                TcTarget::Block(b) => {
                    m.insert("block".into(), b.into());
                }
            }
            m.insert("protocol".into(), protocol_name(self.protocol).into());
            m.insert("pref".into(), self.prio.into());
            m.insert("kind".into(), self.kind.as_str().into());
            m.insert("chain".into(), self.chain.into());
            let mut o = Map::new();
            o.insert("handle".into(), self.handle.into());
            if let ROption::RSome(c) = self.classid {
                o.insert("flowid".into(), handle_name(c).into());
            }
            match &self.matches {
                TcMatch::Flower(k) => {
                    o.insert("keys".into(), flower(k));
                }
                TcMatch::U32(u) => {
                    if let ROption::RSome(s) = &u.selector {
                        let keys: Vec<Value> = s
                            .keys
                            .iter()
                            .map(|k| {
                                json!({"match": format!("{:08x}/{:08x}", u32::from_be(k.val),
                                    u32::from_be(k.mask)), "off": k.off, "offmask": k.offmask})
                            })
                            .collect();
                        o.insert("match".into(), keys.into());
                        o.insert("flags".into(), s.flags.into());
                    }
                    if let ROption::RSome(h) = u.hash {
                        o.insert("ht".into(), h.into());
                    }
                    if let ROption::RSome(l) = u.link {
                        o.insert("link".into(), l.into());
                    }
                    if let ROption::RSome(d) = u.divisor {
                        o.insert("divisor".into(), d.into());
                    }
                }
                TcMatch::MatchAll => {}
                TcMatch::Bpf(b) => {
                    o.insert("prog".into(), json!({"id": b.id, "name": b.name.as_str()}));
                    o.insert("direct_action".into(), b.direct_action.into());
                }
                TcMatch::Other { options } => {
                    o.insert("raw".into(), raw(options));
                }
            }
            if self.flags.skip_sw {
                o.insert("skip_sw".into(), true.into());
            }
            if self.flags.skip_hw {
                o.insert("skip_hw".into(), true.into());
            }
            let acts: Vec<Value> = self
                .actions
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let mut v = a.to_json();
                    v["order"] = (i + 1).into();
                    v
                })
                .collect();
            o.insert("actions".into(), acts.into());
            m.insert("options".into(), Value::Object(o));
            if !self.bindings.is_empty() {
                let b: Vec<Value> = self
                    .bindings
                    .iter()
                    .map(|b| json!({"ifindex": b.ifindex, "egress": b.egress}))
                    .collect();
                m.insert("bindings".into(), b.into());
            }
            Value::Object(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Capabilities;

    fn flower_filter() -> TcFilter {
        let mut f = TcFilter::new(TcTarget::Dev(2), TC_H_MIN_INGRESS, 1, 1);
        f.kind = "flower".into();
        f.matches = TcMatch::flower(FlowerKeys {
            eth_type: ROption::RSome(0x0800),
            dst_ip: ROption::RSome(Masked::prefix("10.0.0.1".parse().unwrap(), 32)),
            ..Default::default()
        });
        f.actions.push(TcActionSpec::gact(TcControl::Shot));
        f
    }

    fn caps() -> Capabilities {
        Capabilities::new()
            .kinds([crate::ObjectKind::TcFilter])
            .tc(TcCapabilities::new()
                .classifiers(["flower"])
                .flower_keys([FlowerKey::EthType, FlowerKey::DstIp])
                .actions(["gact", "mirred"])
                .mirred([TcMirredAction::EgressRedirect])
                .ingress(true))
    }

    /// Each reason, and that the first applying one is given: every filter below fails every
    /// check from its own on, so the order is the one documented.
    #[test]
    fn takes_filter_gives_the_first_reason_in_order() {
        let owned = |i: u32| i == 2 || i == 3;
        let c = caps();
        assert_eq!(c.takes_filter(&flower_filter(), &owned), Ok(()));
        let goto = |mut f: TcFilter| {
            f.actions.push(TcActionSpec::gact(TcControl::GotoChain(1)));
            f
        };
        let mirred_p9 = |mut f: TcFilter| {
            f.actions
                .push(TcActionSpec::mirred(TcMirredAction::EgressRedirect, 9));
            goto(f)
        };
        let mirred_in = |mut f: TcFilter| {
            f.actions
                .push(TcActionSpec::mirred(TcMirredAction::IngressRedirect, 3));
            mirred_p9(f)
        };
        let pedit = |mut f: TcFilter| {
            f.actions
                .insert(0, TcActionSpec::raw("pedit", 1, TcControl::Pipe));
            mirred_in(f)
        };
        let enc_opts = |mut f: TcFilter| {
            if let TcMatch::Flower(k) = &mut f.matches {
                k.others.push(FlowerKey::EncOpts);
            }
            pedit(f)
        };
        let block = |mut f: TcFilter| {
            f.target = TcTarget::Block(7);
            f.parent = 7;
            f.bindings.push(TcBinding {
                ifindex: 2,
                egress: false,
            });
            enc_opts(f)
        };
        let egress = |mut f: TcFilter| {
            f.parent = TC_H_MIN_EGRESS;
            enc_opts(f)
        };
        let basic = |mut f: TcFilter| {
            f.kind = "basic".into();
            f.parent = TC_H_MIN_EGRESS;
            block(f)
        };
        let skip_hw = |mut f: TcFilter| {
            f.flags.skip_hw = true;
            basic(f)
        };
        let reason = |f: TcFilter| c.takes_filter(&f, &owned).unwrap_err().to_string();
        let f = flower_filter;
        assert_eq!(reason(skip_hw(f())), "skip_hw");
        assert_eq!(reason(basic(f())), "classifier basic not supported");
        assert_eq!(reason(egress(f())), "hook egress not supported");
        assert_eq!(reason(block(f())), "shared block 7 not supported");
        assert_eq!(reason(enc_opts(f())), "key enc_opts not supported");
        assert_eq!(reason(pedit(f())), "action pedit not supported");
        assert_eq!(
            reason(mirred_in(f())),
            "mirred ingress redirect not supported"
        );
        assert_eq!(reason(mirred_p9(f())), "mirred to if9 (not an owned port)");
        assert_eq!(reason(goto(f())), "goto chain not supported");
        let named = c
            .takes_filter(&mirred_p9(f()), &owned)
            .unwrap_err()
            .describe(&|i| (i == 9).then(|| "p3".to_string()));
        assert_eq!(named, "mirred to p3 (not an owned port)");
        let mut class = f();
        class.parent = 0x0001_0010;
        assert_eq!(reason(class), "hook 1:10 not supported");
        let b = TcUnsupported::BlockPort {
            block: 7,
            ifindex: 4,
        };
        assert_eq!(b.to_string(), "block 7 is bound to if4, not an owned port");
    }

    #[test]
    fn goto_chain_taken_when_declared_and_everything_takes_all_but_skip_hw() {
        let owned = |_| true;
        let mut f = flower_filter();
        f.actions.push(TcActionSpec::gact(TcControl::GotoChain(1)));
        let mut c = caps();
        c.tc.goto_chain = true;
        assert_eq!(c.takes_filter(&f, &owned), Ok(()));
        f.kind = "basic".into();
        let all = Capabilities::everything();
        assert_eq!(all.takes_filter(&f, &owned), Ok(()));
        f.flags.skip_hw = true;
        assert_eq!(all.takes_filter(&f, &owned), Err(TcUnsupported::SkipHw));
        assert!(Capabilities::new()
            .takes_filter(&flower_filter(), &owned)
            .is_err());
    }

    #[test]
    fn controls_from_the_kernel() {
        assert_eq!(TcControl::from_raw(2), TcControl::Shot);
        assert_eq!(TcControl::from_raw(-1), TcControl::Continue);
        assert_eq!(TcControl::from_raw(0x2000_0003), TcControl::GotoChain(3));
        assert_eq!(TcControl::from_raw(0x1000_0002), TcControl::Jump(2));
        assert_eq!(TcControl::from_raw(0).to_string(), "pass");
        assert_eq!(TcControl::GotoChain(3).to_string(), "goto chain 3");
    }

    #[test]
    fn present_keys_typed_then_others() {
        let k = FlowerKeys {
            ip_proto: ROption::RSome(6),
            eth_type: ROption::RSome(0x0800),
            others: vec![FlowerKey::EncOpts].into(),
            ..Default::default()
        };
        assert_eq!(
            k.present(),
            vec![FlowerKey::EthType, FlowerKey::IpProto, FlowerKey::EncOpts]
        );
    }

    #[cfg(feature = "json")]
    #[test]
    fn filter_json_uses_tc_names() {
        let j = flower_filter().to_json();
        assert_eq!(j["pref"], 1);
        assert_eq!(j["parent"], "ingress");
        assert_eq!(j["options"]["keys"]["dst_ip"], "10.0.0.1/32");
        assert_eq!(j["options"]["keys"]["eth_type"], "ipv4");
        assert_eq!(j["options"]["actions"][0]["order"], 1);
        assert_eq!(j["options"]["actions"][0]["control_action"]["type"], "drop");
    }
}
