//! The mirror's tc objects ([`super::tc`]: qdiscs, classes, filters, actions, their options as
//! netlink-packet-route and [`super::tc_act`] type them) as the plugin API's tc kinds (API 1.3:
//! [`ekho_plugin_api::object::tc`]): the one conversion, used by the state
//! (`state/tc.rs`, [`crate::state::tc::Tc::objects`]) for what plugins receive.
//!
//! What the API types is converted field by field; what it does not (a qdisc's options, an
//! untyped action kind, a flower key 1.3 has no field for) travels as raw attributes, so
//! nothing is lost. police's burst (psched ticks at the rate) becomes bytes and packets here.

use super::tc::{filter_actions, Action, Class, Filter, Qdisc, Target};
use super::tc_act::{
    police::ticks_at, ActionOptions, TcActionCsumOption, TcActionCtOption, TcActionGactOption,
    TcActionPeditOption, TcActionPoliceOption, TcActionSkbeditOption, TcActionVlanOption,
};
use ekho_plugin_api::abi_stable::std_types::{ROption, RString, RVec};
use ekho_plugin_api::object::tc as api;
use ekho_plugin_api::object::{IpAddress, Masked, PortRange};
use netlink_packet_core::{DefaultNla, Nla, NlasIterator, Parseable};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionNatOption, TcActionOption,
    TcActionTunnelKeyOption, TcActionType, TcFilterBpfOption, TcFilterFlowerOption,
    TcFilterMatchAllOption, TcFilterU32Option, TcNatFlags, TcOption,
};

fn some<T>(v: Option<T>) -> ROption<T> {
    v.into()
}

/// An attribute as the API's raw form.
fn raw_attr<T: Nla>(n: &T) -> api::TcRawAttr {
    let mut v = vec![0; n.value_len()];
    n.emit_value(&mut v);
    let mut kind = n.kind();
    if n.is_nested() {
        kind |= netlink_packet_core::NLA_F_NESTED;
    }
    api::TcRawAttr {
        kind,
        value: v.into(),
    }
}

fn control(t: TcActionType) -> api::TcControl {
    api::TcControl::from_raw(i32::from(t))
}

/// The target of a filter (device or block).
pub fn target(t: Target) -> api::TcTarget {
    match t {
        Target::Dev(i) => api::TcTarget::Dev(i),
        Target::Block(b) => api::TcTarget::Block(b),
    }
}

/// A qdisc (its options raw).
pub fn qdisc(q: &Qdisc) -> api::Qdisc {
    api::Qdisc {
        ifindex: q.ifindex,
        kind: q.kind.as_str().into(),
        handle: q.handle,
        parent: q.parent,
        ingress_block: some(q.ingress_block),
        egress_block: some(q.egress_block),
        options: q.options.iter().map(raw_attr).collect(),
    }
}

/// A class (its options raw).
pub fn class(c: &Class) -> api::TcClass {
    api::TcClass {
        ifindex: c.ifindex,
        kind: c.kind.as_str().into(),
        handle: c.handle,
        parent: c.parent,
        options: c.options.iter().map(raw_attr).collect(),
    }
}

/// A standalone or bound action, with its reference counts.
pub fn action(a: &Action) -> api::TcAction {
    api::TcAction {
        spec: action_spec(a),
        refcnt: a.refcnt.max(0) as u32,
        bindcnt: a.bindcnt.max(0) as u32,
    }
}

/// An action's kind, index, control action and parameters.
pub fn action_spec(a: &Action) -> api::TcActionSpec {
    let cookie = a
        .attributes
        .iter()
        .find_map(|x| match x {
            TcActionAttribute::Cookie(c) => Some(RVec::from(c.clone())),
            _ => None,
        })
        .unwrap_or_default();
    let (control, params) = params(&a.options);
    api::TcActionSpec {
        kind: a.kind.as_str().into(),
        index: a.index,
        control,
        params,
        cookie,
    }
}

/// The control action and the parameters of an action's options.
fn params(o: &ActionOptions) -> (api::TcControl, api::TcActionParams) {
    use api::TcActionParams as P;
    let generic = o.generic().map(|g| control(g.action));
    let ctl = generic.unwrap_or_default();
    match o {
        ActionOptions::Gact(v) => {
            let prob = v.iter().find_map(|x| match x {
                TcActionGactOption::Prob(p) => Some(api::TcGactProb {
                    ptype: p.ptype.into(),
                    pval: p.pval,
                    control: control(p.paction),
                }),
                _ => None,
            });
            (ctl, P::Gact { prob: some(prob) })
        }
        ActionOptions::Vlan(v) => {
            let (mut op, mut id, mut protocol, mut priority) = (0i32, 0, 0x8100, 0);
            let (mut dst, mut src) = (None, None);
            for x in v {
                match x {
                    TcActionVlanOption::Parms(p) => op = i32::from(p.v_action),
                    TcActionVlanOption::PushVlanId(i) => id = *i,
                    TcActionVlanOption::PushVlanProtocol(p) => protocol = *p,
                    TcActionVlanOption::PushVlanPriority(p) => priority = *p,
                    TcActionVlanOption::PushEthDst(m) => dst = Some(*m),
                    TcActionVlanOption::PushEthSrc(m) => src = Some(*m),
                    _ => {}
                }
            }
            (
                ctl,
                P::Vlan {
                    op: api::TcVlanOp::from_raw((op - 1).max(0) as u16),
                    id,
                    protocol,
                    priority,
                    dst_mac: some(dst),
                    src_mac: some(src),
                },
            )
        }
        ActionOptions::Police(v) => {
            let mut p = api::TcPolice {
                conform: api::TcControl::Ok,
                ..Default::default()
            };
            let (mut rate64, mut peak64, mut pkt_rate, mut pkt_burst) = (None, None, None, None);
            for x in v {
                match x {
                    TcActionPoliceOption::Rate64(r) => rate64 = Some(*r),
                    TcActionPoliceOption::PeakRate64(r) => peak64 = Some(*r),
                    TcActionPoliceOption::PktRate64(r) => pkt_rate = Some(*r),
                    TcActionPoliceOption::PktBurst64(r) => pkt_burst = Some(*r),
                    TcActionPoliceOption::AvRate(r) => p.avrate = *r,
                    TcActionPoliceOption::Result(r) => p.conform = control(*r),
                    _ => {}
                }
            }
            for x in v {
                if let TcActionPoliceOption::Tbf(t) = x {
                    let r = rate64.unwrap_or(t.rate.rate.into());
                    p.rate_bytes_ps = r;
                    p.burst_bytes = ticks_at(r, t.burst.into());
                    p.mtu = t.mtu;
                    p.peakrate_bytes_ps = peak64.unwrap_or(t.peakrate.rate.into());
                    p.exceed = control(t.action);
                }
            }
            if let (Some(r), Some(b)) = (pkt_rate, pkt_burst) {
                p.pkts_rate = r;
                p.pkts_burst = ticks_at(r, b);
            }
            // The kernel charges a packet `len + overhead`, at least `mpu`, in whole ATM cells
            // for `linklayer atm` (psched_l2t_ns): API 1.3's TcPolice has no fields for them, so
            // such a police stays raw rather than reach a plugin as a bucket it would fill at
            // another pace (a plugin taking `police` sees its kind with raw parameters and
            // answers unsupported). Typed from API 1.4 on.
            if police_sizes_packets_otherwise(v) {
                let attrs: Vec<api::TcRawAttr> = v.iter().map(raw_attr).collect();
                return (
                    p.conform,
                    P::Raw {
                        attrs: attrs.into(),
                    },
                );
            }
            // What follows a conforming packet.
            (p.conform, P::Police(p))
        }
        ActionOptions::Skbedit(v) => {
            let (mut priority, mut queue_mapping, mut mark, mut mask, mut ptype) =
                (None, None, None, None, None);
            for x in v {
                match x {
                    TcActionSkbeditOption::Priority(p) => priority = Some(*p),
                    TcActionSkbeditOption::QueueMapping(q) => queue_mapping = Some(*q),
                    TcActionSkbeditOption::Mark(m) => mark = Some(*m),
                    TcActionSkbeditOption::Mask(m) => mask = Some(*m),
                    TcActionSkbeditOption::Ptype(t) => ptype = Some(u16::from(*t)),
                    _ => {}
                }
            }
            (
                ctl,
                P::Skbedit {
                    priority: some(priority),
                    queue_mapping: some(queue_mapping),
                    mark: some(mark),
                    mask: some(mask),
                    ptype: some(ptype),
                },
            )
        }
        ActionOptions::Pedit(v) => {
            let sel = v.iter().find_map(|x| match x {
                TcActionPeditOption::ParmsEx(s) | TcActionPeditOption::Parms(s) => Some(s),
                _ => None,
            });
            let ex = v.iter().find_map(|x| match x {
                TcActionPeditOption::KeysEx(k) => Some(k.as_slice()),
                _ => None,
            });
            let keys = sel
                .map(|s| {
                    s.keys
                        .iter()
                        .enumerate()
                        .map(|(i, k)| {
                            let e = ex.and_then(|e| e.get(i));
                            api::TcPeditKey {
                                htype: e.and_then(|e| e.htype()).map_or(0, u16::from),
                                cmd: e.and_then(|e| e.cmd()).map_or(0, u16::from),
                                mask: k.mask,
                                val: k.val,
                                off: k.off,
                                at: k.at,
                                offmask: k.offmask,
                                shift: k.shift,
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            (ctl, P::Pedit { keys })
        }
        ActionOptions::Csum(v) => {
            let flags = v
                .iter()
                .find_map(|x| match x {
                    TcActionCsumOption::Parms(p) => Some(p.update_flags.0),
                    _ => None,
                })
                .unwrap_or(0);
            (ctl, P::Csum { flags })
        }
        ActionOptions::Ct(v) => {
            let mut c = api::TcCt::default();
            let (mut mark, mut mark_mask, mut labels, mut labels_mask) = (None, None, None, None);
            let mut nat = api::TcCtNat {
                min_addr: ROption::RNone,
                max_addr: ROption::RNone,
                min_port: ROption::RNone,
                max_port: ROption::RNone,
            };
            for x in v {
                match x {
                    TcActionCtOption::Action(f) => c.flags = f.0,
                    TcActionCtOption::Zone(z) => c.zone = *z,
                    TcActionCtOption::Mark(m) => mark = Some(*m),
                    TcActionCtOption::MarkMask(m) => mark_mask = Some(*m),
                    TcActionCtOption::Labels(l) => labels = Some(*l),
                    TcActionCtOption::LabelsMask(l) => labels_mask = Some(*l),
                    TcActionCtOption::NatIpv4Min(a) => {
                        nat.min_addr = ROption::RSome(IpAddress::from(*a))
                    }
                    TcActionCtOption::NatIpv4Max(a) => {
                        nat.max_addr = ROption::RSome(IpAddress::from(*a))
                    }
                    TcActionCtOption::NatIpv6Min(a) => {
                        nat.min_addr = ROption::RSome(IpAddress::from(*a))
                    }
                    TcActionCtOption::NatIpv6Max(a) => {
                        nat.max_addr = ROption::RSome(IpAddress::from(*a))
                    }
                    TcActionCtOption::NatPortMin(p) => nat.min_port = ROption::RSome(*p),
                    TcActionCtOption::NatPortMax(p) => nat.max_port = ROption::RSome(*p),
                    TcActionCtOption::HelperName(h) => {
                        c.helper = ROption::RSome(RString::from(h.as_str()))
                    }
                    _ => {}
                }
            }
            c.mark = some(mark.map(|value| Masked {
                value,
                mask: mark_mask.unwrap_or(u32::MAX),
            }));
            c.labels = some(labels.map(|value| Masked {
                value,
                mask: labels_mask.unwrap_or([0xff; 16]),
            }));
            let has_nat = nat.min_addr.is_some() || nat.min_port.is_some();
            c.nat = if has_nat {
                ROption::RSome(nat)
            } else {
                ROption::RNone
            };
            (ctl, P::Ct(c))
        }
        // Typed in the mirror, not yet in the plugin API (1.3 has no parameters for them: from
        // 1.4 on): a plugin sees their attributes raw (timestamps removed, reference counts
        // zeroed, as the mirror holds them).
        ActionOptions::Mpls(v) => (
            ctl,
            P::Raw {
                attrs: v.iter().map(raw_attr).collect::<Vec<_>>().into(),
            },
        ),
        ActionOptions::Skbmod(v) => (
            ctl,
            P::Raw {
                attrs: v.iter().map(raw_attr).collect::<Vec<_>>().into(),
            },
        ),
        ActionOptions::Connmark(v) => (
            ctl,
            P::Raw {
                attrs: v.iter().map(raw_attr).collect::<Vec<_>>().into(),
            },
        ),
        ActionOptions::Sample(v) => (
            ctl,
            P::Raw {
                attrs: v.iter().map(raw_attr).collect::<Vec<_>>().into(),
            },
        ),
        ActionOptions::Route(v) => route_params(ctl, v),
    }
}

/// The parameters of an action netlink-packet-route parsed (mirred, nat, tunnel_key typed;
/// every other kind raw).
fn route_params(
    ctl: api::TcControl,
    v: &[TcActionOption],
) -> (api::TcControl, api::TcActionParams) {
    use api::TcActionParams as P;
    let mut mirred = None;
    let mut nat = None;
    let mut tk: Option<api::TcTunnelKey> = None;
    let mut raw = Vec::new();
    let mut ctl = ctl;
    for o in v {
        match o {
            TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) => {
                ctl = control(m.generic.action);
                let e = i32::from(m.eaction);
                mirred = Some(P::Mirred {
                    eaction: api::TcMirredAction::from_raw((e - 1).max(0) as u16),
                    ifindex: m.ifindex,
                });
            }
            TcActionOption::Nat(TcActionNatOption::Parms(n)) => {
                ctl = control(n.generic.action);
                nat = Some(P::Nat {
                    old_addr: n.old_addr.octets(),
                    new_addr: n.new_addr.octets(),
                    mask: n.mask.octets(),
                    egress: n.flags.contains(TcNatFlags::Egress),
                });
            }
            TcActionOption::TunnelKey(t) => {
                let k = tk.get_or_insert_with(Default::default);
                match t {
                    TcActionTunnelKeyOption::Parms(p) => {
                        ctl = control(p.generic.action);
                        k.set = p.t_action == 1;
                    }
                    TcActionTunnelKeyOption::EncIpv4Src(a) => {
                        k.src_ip = ROption::RSome(IpAddress::from(*a))
                    }
                    TcActionTunnelKeyOption::EncIpv4Dst(a) => {
                        k.dst_ip = ROption::RSome(IpAddress::from(*a))
                    }
                    TcActionTunnelKeyOption::EncIpv6Src(a) => {
                        k.src_ip = ROption::RSome(IpAddress::from(*a))
                    }
                    TcActionTunnelKeyOption::EncIpv6Dst(a) => {
                        k.dst_ip = ROption::RSome(IpAddress::from(*a))
                    }
                    TcActionTunnelKeyOption::EncKeyId(i) => k.key_id = ROption::RSome(*i),
                    TcActionTunnelKeyOption::EncDstPort(p) => k.dst_port = ROption::RSome(*p),
                    TcActionTunnelKeyOption::EncTos(t) => k.tos = ROption::RSome(*t),
                    TcActionTunnelKeyOption::EncTtl(t) => k.ttl = ROption::RSome(*t),
                    TcActionTunnelKeyOption::NoCsum(n) => k.no_csum = *n,
                    TcActionTunnelKeyOption::Tm(_) => {}
                    other => k.raw.push(raw_attr(other)),
                }
            }
            TcActionOption::Other(n) => raw.push(raw_attr(n)),
            _ => {}
        }
    }
    let p = mirred
        .or(nat)
        .or(tk.map(P::TunnelKey))
        .unwrap_or(P::Raw { attrs: raw.into() });
    (ctl, p)
}

/// `TC_LINKLAYER_ATM`: a packet is charged whole 53-byte cells of 48 bytes' payload.
const TC_LINKLAYER_ATM: u8 = 2;

/// Whether a police's rate or peak rate charges a packet other than its length (`overhead`,
/// `mpu`, `linklayer atm`).
fn police_sizes_packets_otherwise(v: &[TcActionPoliceOption]) -> bool {
    v.iter().any(|x| match x {
        TcActionPoliceOption::Tbf(t) => [&t.rate, &t.peakrate]
            .iter()
            .any(|r| r.overhead != 0 || r.mpu != 0 || r.linklayer == TC_LINKLAYER_ATM),
        _ => false,
    })
}

/// `TCA_CLS_FLAGS_SKIP_HW`, `TCA_CLS_FLAGS_SKIP_SW`.
const SKIP_HW: u32 = 1;
const SKIP_SW: u32 = 2;

fn flags(bits: u32) -> api::TcFilterFlags {
    api::TcFilterFlags {
        skip_sw: bits & SKIP_SW != 0,
        skip_hw: bits & SKIP_HW != 0,
    }
}

/// flower keys netlink-packet-route leaves raw, by attribute type (`TCA_FLOWER_*`).
fn flower_other(kind: u16) -> api::FlowerKey {
    use api::FlowerKey as K;
    match kind & !netlink_packet_core::NLA_F_NESTED {
        84 | 85 => K::EncOpts,
        99 => K::Mpls,
        100 | 101 => K::Hash,
        106 => K::L2Miss,
        107 => K::Cfm,
        108 | 109 => K::Spi,
        110 | 111 => K::EncFlags,
        _ => K::Unknown,
    }
}

fn flower(opts: &[TcFilterFlowerOption]) -> (api::FlowerKeys, u32, Option<u32>) {
    use TcFilterFlowerOption as F;
    let mut k = api::FlowerKeys::default();
    let (mut bits, mut classid) = (0, None);
    // Values and masks arrive as separate attributes: gathered, then paired.
    macro_rules! pair {
        ($field:ident, $v:expr, $m:expr, $ones:expr) => {
            k.$field = match ($v, $m) {
                (Some(value), mask) => ROption::RSome(Masked {
                    value,
                    mask: mask.unwrap_or($ones),
                }),
                _ => ROption::RNone,
            }
        };
    }
    let find = |f: &dyn Fn(&F) -> Option<u64>| opts.iter().find_map(f);
    let find_ip = |f: &dyn Fn(&F) -> Option<IpAddress>| opts.iter().find_map(f);
    let find_mac = |f: &dyn Fn(&F) -> Option<[u8; 6]>| opts.iter().find_map(f);
    let mut others = Vec::new();
    for o in opts {
        match o {
            F::ClassId(c) => classid = Some(*c),
            F::InDev(d) => k.indev = ROption::RSome(d.as_str().into()),
            F::Flags(f) => bits = *f,
            F::EthType(e) => k.eth_type = ROption::RSome(*e),
            F::IpProto(p) => k.ip_proto = ROption::RSome(*p),
            F::VlanId(v) => k.vlan_id = ROption::RSome(*v),
            F::VlanPrio(p) => k.vlan_prio = ROption::RSome(*p),
            F::VlanEthType(e) => k.vlan_ethtype = ROption::RSome(*e),
            F::CvlanId(v) => k.cvlan_id = ROption::RSome(*v),
            F::CvlanPrio(p) => k.cvlan_prio = ROption::RSome(*p),
            F::CvlanEthType(e) => k.cvlan_ethtype = ROption::RSome(*e),
            F::EncKeyId(i) => k.enc_key_id = ROption::RSome(*i),
            F::MplsTtl(_) => others.push(api::FlowerKey::MplsTtl),
            F::MplsBos(_) => others.push(api::FlowerKey::MplsBos),
            F::MplsTc(_) => others.push(api::FlowerKey::MplsTc),
            F::MplsLabel(_) => others.push(api::FlowerKey::MplsLabel),
            F::MplsOpts(_) => others.push(api::FlowerKey::Mpls),
            F::ArpSip(_) => others.push(api::FlowerKey::ArpSip),
            F::ArpTip(_) => others.push(api::FlowerKey::ArpTip),
            F::ArpOp(_) => others.push(api::FlowerKey::ArpOp),
            F::ArpSha(_) => others.push(api::FlowerKey::ArpSha),
            F::ArpTha(_) => others.push(api::FlowerKey::ArpTha),
            F::KeyHash(_) => others.push(api::FlowerKey::Hash),
            F::Other(n) => {
                others.push(flower_other(n.kind()));
                k.raw.push(raw_attr(n));
            }
            _ => {}
        }
        if matches!(
            o,
            F::MplsTtl(_)
                | F::MplsBos(_)
                | F::MplsTc(_)
                | F::MplsLabel(_)
                | F::MplsOpts(_)
                | F::ArpSip(_)
                | F::ArpTip(_)
                | F::ArpOp(_)
                | F::ArpSha(_)
                | F::ArpTha(_)
                | F::KeyHash(_)
        ) {
            k.raw.push(raw_attr(o));
        }
    }
    others.sort();
    others.dedup();
    k.others = others.into();
    let mac = |v: Option<[u8; 6]>, m: Option<[u8; 6]>| v.map(|value| (value, m));
    if let Some((value, m)) = mac(
        find_mac(&|o| if let F::EthDst(a) = o { Some(*a) } else { None }),
        find_mac(&|o| {
            if let F::EthDstMask(a) = o {
                Some(*a)
            } else {
                None
            }
        }),
    ) {
        k.dst_mac = ROption::RSome(Masked {
            value,
            mask: m.unwrap_or([0xff; 6]),
        });
    }
    if let Some((value, m)) = mac(
        find_mac(&|o| if let F::EthSrc(a) = o { Some(*a) } else { None }),
        find_mac(&|o| {
            if let F::EthSrcMask(a) = o {
                Some(*a)
            } else {
                None
            }
        }),
    ) {
        k.src_mac = ROption::RSome(Masked {
            value,
            mask: m.unwrap_or([0xff; 6]),
        });
    }
    let ip = |v: Option<IpAddress>, m: Option<IpAddress>| {
        v.map(|value| {
            let ones = match value {
                IpAddress::V4(_) => IpAddress::V4([0xff; 4]),
                IpAddress::V6(_) => IpAddress::V6([0xff; 16]),
            };
            Masked {
                value,
                mask: m.unwrap_or(ones),
            }
        })
    };
    k.dst_ip = some(ip(
        find_ip(&|o| match o {
            F::Ipv4Dst(a) => Some(IpAddress::from(*a)),
            F::Ipv6Dst(a) => Some(IpAddress::from(*a)),
            _ => None,
        }),
        find_ip(&|o| match o {
            F::Ipv4DstMask(a) => Some(IpAddress::from(*a)),
            F::Ipv6DstMask(a) => Some(IpAddress::from(*a)),
            _ => None,
        }),
    ));
    k.src_ip = some(ip(
        find_ip(&|o| match o {
            F::Ipv4Src(a) => Some(IpAddress::from(*a)),
            F::Ipv6Src(a) => Some(IpAddress::from(*a)),
            _ => None,
        }),
        find_ip(&|o| match o {
            F::Ipv4SrcMask(a) => Some(IpAddress::from(*a)),
            F::Ipv6SrcMask(a) => Some(IpAddress::from(*a)),
            _ => None,
        }),
    ));
    k.enc_dst_ip = some(ip(
        find_ip(&|o| match o {
            F::EncKeyIpv4Dst(a) => Some(IpAddress::from(*a)),
            F::EncKeyIpv6Dst(a) => Some(IpAddress::from(*a)),
            _ => None,
        }),
        find_ip(&|o| match o {
            F::EncKeyIpv4DstMask(a) => Some(IpAddress::from(*a)),
            F::EncKeyIpv6DstMask(a) => Some(IpAddress::from(*a)),
            _ => None,
        }),
    ));
    k.enc_src_ip = some(ip(
        find_ip(&|o| match o {
            F::EncKeyIpv4Src(a) => Some(IpAddress::from(*a)),
            F::EncKeyIpv6Src(a) => Some(IpAddress::from(*a)),
            _ => None,
        }),
        find_ip(&|o| match o {
            F::EncKeyIpv4SrcMask(a) => Some(IpAddress::from(*a)),
            F::EncKeyIpv6SrcMask(a) => Some(IpAddress::from(*a)),
            _ => None,
        }),
    ));
    // netlink-packet-route gives ports, ether types and flags in host order already.
    let be = |v: u16| v as u64;
    let port = |v: Option<u64>, m: Option<u64>| v.map(|v| (v as u16, m.map(|m| m as u16)));
    let dport = port(
        find(&|o| match o {
            F::TcpDst(p) | F::UdpDst(p) | F::SctpDst(p) => Some(be(*p)),
            _ => None,
        }),
        find(&|o| match o {
            F::TcpDstMask(p) | F::UdpDstMask(p) | F::SctpDstMask(p) => Some(be(*p)),
            _ => None,
        }),
    );
    pair!(
        dst_port,
        dport.map(|p| p.0),
        dport.and_then(|p| p.1),
        u16::MAX
    );
    let sport = port(
        find(&|o| match o {
            F::TcpSrc(p) | F::UdpSrc(p) | F::SctpSrc(p) => Some(be(*p)),
            _ => None,
        }),
        find(&|o| match o {
            F::TcpSrcMask(p) | F::UdpSrcMask(p) | F::SctpSrcMask(p) => Some(be(*p)),
            _ => None,
        }),
    );
    pair!(
        src_port,
        sport.map(|p| p.0),
        sport.and_then(|p| p.1),
        u16::MAX
    );
    let range = |lo: Option<u64>, hi: Option<u64>| match (lo, hi) {
        (Some(a), Some(b)) => ROption::RSome(PortRange {
            start: a as u16,
            end: b as u16,
        }),
        _ => ROption::RNone,
    };
    k.dst_port_range = range(
        find(&|o| {
            if let F::PortDstMin(p) = o {
                Some(be(*p))
            } else {
                None
            }
        }),
        find(&|o| {
            if let F::PortDstMax(p) = o {
                Some(be(*p))
            } else {
                None
            }
        }),
    );
    k.src_port_range = range(
        find(&|o| {
            if let F::PortSrcMin(p) = o {
                Some(be(*p))
            } else {
                None
            }
        }),
        find(&|o| {
            if let F::PortSrcMax(p) = o {
                Some(be(*p))
            } else {
                None
            }
        }),
    );
    macro_rules! simple {
        ($field:ident, $t:ty, $ones:expr, $v:ident, $m:ident, $conv:expr) => {{
            let v = opts.iter().find_map(|o| {
                if let F::$v(x) = o {
                    Some($conv(*x))
                } else {
                    None
                }
            });
            let m = opts.iter().find_map(|o| {
                if let F::$m(x) = o {
                    Some($conv(*x))
                } else {
                    None
                }
            });
            pair!($field, v, m, $ones);
        }};
    }
    let id8 = |x: u8| x;
    let id16 = |x: u16| x;
    let id32 = |x: u32| x;
    simple!(tcp_flags, u16, u16::MAX, TcpFlags, TcpFlagsMask, id16);
    simple!(ip_tos, u8, u8::MAX, IpTos, IpTosMask, id8);
    simple!(ip_ttl, u8, u8::MAX, IpTtl, IpTtlMask, id8);
    simple!(
        enc_dst_port,
        u16,
        u16::MAX,
        EncKeyUdpDstPort,
        EncKeyUdpDstPortMask,
        id16
    );
    simple!(
        enc_src_port,
        u16,
        u16::MAX,
        EncKeyUdpSrcPort,
        EncKeyUdpSrcPortMask,
        id16
    );
    simple!(enc_tos, u8, u8::MAX, EncKeyIpTos, EncKeyIpTosMask, id8);
    simple!(enc_ttl, u8, u8::MAX, EncKeyIpTtl, EncKeyIpTtlMask, id8);
    simple!(ct_state, u16, u16::MAX, CtState, CtStateMask, id16);
    simple!(ct_zone, u16, u16::MAX, CtZone, CtZoneMask, id16);
    simple!(ct_mark, u32, u32::MAX, CtMark, CtMarkMask, id32);
    simple!(ip_flags, u32, u32::MAX, KeyFlags, KeyFlagsMask, id32);
    {
        let v = opts.iter().find_map(|o| {
            if let F::CtLabels(x) = o {
                Some(*x)
            } else {
                None
            }
        });
        let m = opts.iter().find_map(|o| {
            if let F::CtLabelsMask(x) = o {
                Some(*x)
            } else {
                None
            }
        });
        pair!(ct_labels, v, m, [0xff; 16]);
    }
    // ICMP type and code: ICMPv4's or ICMPv6's attributes, by family.
    let icmp = |v4: Option<u8>, v6: Option<u8>| v4.or(v6);
    let t = icmp(
        opts.iter().find_map(|o| {
            if let F::Icmpv4Type(x) = o {
                Some(*x)
            } else {
                None
            }
        }),
        opts.iter().find_map(|o| {
            if let F::Icmpv6Type(x) = o {
                Some(*x)
            } else {
                None
            }
        }),
    );
    let tm = icmp(
        opts.iter().find_map(|o| {
            if let F::Icmpv4TypeMask(x) = o {
                Some(*x)
            } else {
                None
            }
        }),
        opts.iter().find_map(|o| {
            if let F::Icmpv6TypeMask(x) = o {
                Some(*x)
            } else {
                None
            }
        }),
    );
    pair!(icmp_type, t, tm, u8::MAX);
    let c = icmp(
        opts.iter().find_map(|o| {
            if let F::Icmpv4Code(x) = o {
                Some(*x)
            } else {
                None
            }
        }),
        opts.iter().find_map(|o| {
            if let F::Icmpv6Code(x) = o {
                Some(*x)
            } else {
                None
            }
        }),
    );
    let cm = icmp(
        opts.iter().find_map(|o| {
            if let F::Icmpv4CodeMask(x) = o {
                Some(*x)
            } else {
                None
            }
        }),
        opts.iter().find_map(|o| {
            if let F::Icmpv6CodeMask(x) = o {
                Some(*x)
            } else {
                None
            }
        }),
    );
    pair!(icmp_code, c, cm, u8::MAX);
    (k, bits, classid)
}

/// `TCA_BPF_ACT`: bpf's action list, which netlink-packet-route leaves raw.
const TCA_BPF_ACT: u16 = 1;

/// The actions of a raw nested action list (bpf's).
fn raw_actions(n: &DefaultNla) -> Vec<TcAction> {
    let mut v = vec![0; n.value_len()];
    n.emit_value(&mut v);
    NlasIterator::new(&v[..])
        .filter_map(|nla| TcAction::parse(&nla.ok()?).ok())
        .collect()
}

/// A filter (handle 0, a classifier instance, is not one: `None`; nor a u32 hash table), with the devices its shared
/// block is bound to (`(ifindex, hook parent)`, [`crate::state::tc::Tc::blocks`]). An action
/// the kernel reported since (`latest`, by kind and index: `tc actions replace` changes every
/// filter holding it without a filter message) replaces the filter's copy of it.
pub fn filter(
    f: &Filter,
    block_bindings: &[(u32, u32)],
    latest: &dyn Fn(&str, u32) -> Option<Action>,
) -> Option<api::TcFilter> {
    // Nor is a u32 hash table (`fh 800:`, node bits 0): a key node matches, its `link` names
    // the table it continues in.
    if f.handle == 0 || (f.kind == "u32" && f.handle & 0xfff == 0) {
        return None;
    }
    let mut out = api::TcFilter {
        target: target(f.target),
        parent: f.parent,
        chain: f.chain,
        prio: f.prio,
        handle: f.handle,
        protocol: f.protocol,
        kind: f.kind.as_str().into(),
        ..Default::default()
    };
    let mut actions: Vec<TcAction> = filter_actions(f).cloned().collect();
    match f.kind.as_str() {
        "flower" => {
            let opts: Vec<TcFilterFlowerOption> = f
                .options
                .iter()
                .filter_map(|o| match o {
                    TcOption::Flower(x) => Some(x.clone()),
                    _ => None,
                })
                .collect();
            let (k, bits, classid) = flower(&opts);
            out.matches = api::TcMatch::flower(k);
            out.flags = flags(bits);
            out.classid = some(classid);
        }
        "u32" => {
            let mut u = api::TcU32::default();
            for o in &f.options {
                let TcOption::U32(o) = o else { continue };
                match o {
                    TcFilterU32Option::ClassId(c) => out.classid = ROption::RSome((*c).into()),
                    TcFilterU32Option::Hash(h) => u.hash = ROption::RSome(*h),
                    TcFilterU32Option::Link(l) => u.link = ROption::RSome(*l),
                    TcFilterU32Option::Divisor(d) => u.divisor = ROption::RSome(*d),
                    TcFilterU32Option::Flags(b) => out.flags = flags(b.bits()),
                    TcFilterU32Option::Indev(d) => {
                        let s = String::from_utf8_lossy(d);
                        u.indev = ROption::RSome(s.trim_end_matches('\0').into());
                    }
                    TcFilterU32Option::Mark(m) if m.len() >= 8 => {
                        let w = |i: usize| u32::from_ne_bytes(m[i..i + 4].try_into().unwrap());
                        u.mark = ROption::RSome(Masked {
                            value: w(0),
                            mask: w(4),
                        });
                    }
                    TcFilterU32Option::Selector(s) => {
                        u.selector = ROption::RSome(api::TcU32Selector {
                            flags: s.flags.bits(),
                            offshift: s.offshift,
                            offmask: s.offmask,
                            off: s.off,
                            offoff: s.offoff,
                            hoff: s.hoff,
                            hmask: s.hmask,
                            keys: s
                                .keys
                                .iter()
                                // netlink-packet-route gives them in host order; the API's
                                // are the kernel's (network order).
                                .map(|k| api::TcU32Key {
                                    mask: k.mask.to_be(),
                                    val: k.val.to_be(),
                                    off: k.off,
                                    offmask: k.offmask,
                                })
                                .collect(),
                        })
                    }
                    _ => {}
                }
            }
            out.matches = api::TcMatch::U32(u);
        }
        "matchall" => {
            for o in &f.options {
                match o {
                    TcOption::MatchAll(TcFilterMatchAllOption::ClassId(c)) => {
                        out.classid = ROption::RSome((*c).into())
                    }
                    TcOption::MatchAll(TcFilterMatchAllOption::Flags(b)) => out.flags = flags(*b),
                    _ => {}
                }
            }
            out.matches = api::TcMatch::MatchAll;
        }
        "bpf" => {
            let mut b = api::TcBpf::default();
            for o in &f.options {
                match o {
                    TcOption::Bpf(x) => match x {
                        TcFilterBpfOption::ClassId(c) => out.classid = ROption::RSome((*c).into()),
                        TcFilterBpfOption::ProgName(n) => b.name = n.as_str().into(),
                        TcFilterBpfOption::ProgId(i) => b.id = *i,
                        TcFilterBpfOption::ProgTag(t) => b.tag = *t,
                        // TCA_BPF_FLAG_ACT_DIRECT.
                        TcFilterBpfOption::Flags(fl) => b.direct_action = fl.bits() & 1 != 0,
                        TcFilterBpfOption::FlagsGeneric(fl) => out.flags = flags(fl.bits()),
                        TcFilterBpfOption::Other(n) if n.kind() == TCA_BPF_ACT => {
                            actions = raw_actions(n)
                        }
                        _ => {}
                    },
                    TcOption::Other(n) if n.kind() == TCA_BPF_ACT => actions = raw_actions(n),
                    _ => {}
                }
            }
            out.matches = api::TcMatch::Bpf(b);
        }
        _ => {
            out.matches = api::TcMatch::Other {
                options: f.options.iter().map(raw_attr).collect(),
            };
        }
    }
    out.actions = actions
        .iter()
        .filter_map(super::tc::action_of)
        .map(|a| action_spec(&latest(&a.kind, a.index).unwrap_or(a)))
        .collect();
    out.bindings = block_bindings
        .iter()
        .map(|&(ifindex, hook)| api::TcBinding {
            ifindex,
            egress: hook == super::tc::H_MIN_EGRESS,
        })
        .collect();
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    //! From messages the 6.1 kernel produced (`tc_act/vectors-6.1.txt`, the commands beside
    //! each).
    use super::*;
    use crate::netlink::tc::{H_MIN_EGRESS, H_MIN_INGRESS};
    use crate::netlink::tc_act::tests::{dumped, VECTORS};
    use ekho_plugin_api::object::tc::{
        TcActionParams as P, TcControl, TcMatch, TcMirredAction, TcVlanOp,
    };
    use ekho_plugin_api::Capabilities;
    use netlink_packet_core::NetlinkMessage;
    use netlink_packet_core::NetlinkPayload::InnerMessage;
    use netlink_packet_route::RouteNetlinkMessage as R;

    /// The filters dumped under `# filters of WHAT`.
    pub(crate) fn filters(what: &str) -> Vec<Filter> {
        let mut on = false;
        let mut out = Vec::new();
        for l in VECTORS.lines() {
            if let Some(w) = l.strip_prefix("# filters of ") {
                on = w == what;
            } else if l.starts_with("# ") {
                on = false;
            } else if let (true, Some(h)) = (on, l.strip_prefix("hex ")) {
                let m = NetlinkMessage::<R>::deserialize(&crate::netlink::tests::hex(h)).unwrap();
                let InnerMessage(R::NewTrafficFilter(m)) = m.payload else {
                    panic!("not a filter: {m:?}")
                };
                out.push(crate::netlink::tc::filter(&m));
            }
        }
        assert!(!out.is_empty(), "no filters of {what}");
        out
    }

    fn actions(kind: &str) -> Vec<api::TcAction> {
        dumped(kind)
            .iter()
            .flat_map(|m| {
                let msg = NetlinkMessage::<R>::deserialize(m).unwrap();
                let (InnerMessage(R::GetTrafficAction(m)) | InnerMessage(R::NewTrafficAction(m))) =
                    msg.payload
                else {
                    panic!("not an action message")
                };
                crate::netlink::tc::actions(&m)
            })
            .map(|a| action(&a))
            .collect()
    }

    #[test]
    fn the_captured_flower_filter_with_vlan_skbedit_and_gact() {
        let f = filters("d0 ingress");
        // The classifier instance (no `fh`) is not a filter of the API.
        assert_eq!(filter(&f[0], &[], &|_, _| None), None);
        let o = filter(&f[1], &[], &|_, _| None).unwrap();
        assert_eq!((o.prio, o.handle, o.chain), (1, 1, 0));
        assert_eq!((o.protocol, o.parent), (0x0800, H_MIN_INGRESS));
        assert_eq!(o.kind.as_str(), "flower");
        let TcMatch::Flower(k) = &o.matches else {
            panic!("{:?}", o.matches)
        };
        assert_eq!(k.eth_type, ROption::RSome(0x0800));
        assert_eq!(k.ip_proto, ROption::RSome(6));
        assert_eq!(
            k.dst_ip,
            ROption::RSome(Masked::prefix("10.0.0.1".parse().unwrap(), 32))
        );
        assert!(k.others.is_empty(), "{:?}", k.others);
        let kinds: Vec<(&str, u32, TcControl)> = o
            .actions
            .iter()
            .map(|a| (a.kind.as_str(), a.index, a.control))
            .collect();
        assert_eq!(
            kinds,
            [
                ("vlan", 4, TcControl::Pipe),
                ("skbedit", 4, TcControl::Pipe),
                ("gact", 3, TcControl::Shot)
            ]
        );
        assert_eq!(
            o.actions[0].params,
            P::Vlan {
                op: TcVlanOp::Push,
                id: 5,
                protocol: 0x8100,
                priority: 0,
                dst_mac: ROption::RNone,
                src_mac: ROption::RNone,
            }
        );
        let P::Skbedit { mark, .. } = o.actions[1].params else {
            panic!("{:?}", o.actions[1].params)
        };
        assert_eq!(mark, ROption::RSome(7));
        // What a plugin running flower with gact and vlan but not skbedit is told.
        let caps = Capabilities::new().tc(api::TcCapabilities::new()
            .classifiers(["flower"])
            .flower_keys([
                api::FlowerKey::EthType,
                api::FlowerKey::IpProto,
                api::FlowerKey::DstIp,
            ])
            .actions(["gact", "vlan"])
            .ingress(true));
        let why = caps.takes_filter(&o, &|_| true).unwrap_err();
        assert_eq!(why.to_string(), "action skbedit not supported");
        // An action replaced since (`latest`) replaces the filter's copy.
        let mut gact = crate::netlink::tc::action_of(
            crate::netlink::tc::filter_actions(&f[1]).nth(2).unwrap(),
        )
        .unwrap();
        gact.options = crate::netlink::tc_act::ActionOptions::parse("gact", &[]);
        let replaced = filter(&f[1], &[], &|k, i| {
            (k == "gact" && i == 3).then(|| gact.clone())
        })
        .unwrap();
        assert_ne!(replaced.actions[2], o.actions[2]);
        assert_eq!(replaced.actions[..2], o.actions[..2]);
    }

    #[test]
    fn the_captured_matchall_with_mirred_and_a_block_binding() {
        let f = filters("d0 egress");
        let o = filter(&f[1], &[], &|_, _| None).unwrap();
        assert_eq!((o.protocol, o.parent), (0x0003, H_MIN_EGRESS));
        assert_eq!(o.matches, TcMatch::MatchAll);
        let a = &o.actions[0];
        assert_eq!((a.kind.as_str(), a.control), ("mirred", TcControl::Stolen));
        let P::Mirred { eaction, ifindex } = a.params else {
            panic!("{:?}", a.params)
        };
        assert_eq!(eaction, TcMirredAction::EgressRedirect);
        assert_ne!(ifindex, 0);
        // The same filter in a block bound to two devices' ingress and egress.
        let mut b = f[1].clone();
        b.target = Target::Block(7);
        let o = filter(&b, &[(2, H_MIN_INGRESS), (3, H_MIN_EGRESS)], &|_, _| None).unwrap();
        assert_eq!(o.target, api::TcTarget::Block(7));
        assert_eq!(o.devices(), [2, 3]);
        assert_eq!(o.hooks(), [api::TcHook::Ingress, api::TcHook::Egress]);
    }

    /// mpls, sample, skbmod and connmark are typed in the mirror but API 1.3 has no parameters for them: a
    /// plugin gets their attributes raw, as the mirror holds them (no timestamps, `tc_gen`'s
    /// counts zeroed), the control action typed.
    #[test]
    fn mpls_sample_skbmod_and_connmark_reach_a_plugin_raw() {
        // (kind, timestamps attribute, parameters attribute, its length, actions captured)
        for (kind, tm, parms, parms_len, n) in [
            ("mpls", 1, 2, 24, 6),
            ("sample", 1, 2, 20, 2),
            ("skbmod", 1, 2, 32, 3),
            ("connmark", 2, 1, 24, 2),
        ] {
            let v = actions(kind);
            assert_eq!(v.len(), n, "{kind}");
            for a in &v {
                assert_eq!(a.spec.kind.as_str(), kind);
                assert_eq!(a.spec.control, api::TcControl::Pipe, "{kind}");
                let P::Raw { attrs } = &a.spec.params else {
                    panic!("{kind} typed: {:?}", a.spec.params)
                };
                // No timestamps (TCA_*_TM).
                assert!(attrs.iter().all(|x| x.kind != tm), "{kind}: {attrs:?}");
                let parms = attrs.iter().find(|x| x.kind == parms).expect("parameters");
                assert_eq!(parms.value.len(), parms_len, "{kind}");
                // index, capab, action, then refcnt and bindcnt zeroed.
                assert_eq!(parms.value[12..20], [0; 8], "{kind}");
            }
        }
        // sample rate 100 group 5 trunc 128: TCA_SAMPLE_RATE (3), as the kernel sent it.
        let s = &actions("sample")[0];
        let P::Raw { attrs } = &s.spec.params else {
            unreachable!()
        };
        let rate = attrs.iter().find(|x| x.kind == 3).unwrap();
        assert_eq!(rate.value.as_slice(), 100u32.to_ne_bytes());
    }

    #[test]
    fn a_police_with_overhead_mpu_or_atm_stays_raw() {
        let dumped_police = || -> Vec<Action> {
            dumped("police")
                .iter()
                .flat_map(|m| {
                    let msg = NetlinkMessage::<R>::deserialize(m).unwrap();
                    let (InnerMessage(R::GetTrafficAction(m))
                    | InnerMessage(R::NewTrafficAction(m))) = msg.payload
                    else {
                        panic!("not an action message")
                    };
                    crate::netlink::tc::actions(&m)
                })
                .collect()
        };
        let a = dumped_police().remove(0);
        assert!(matches!(action_spec(&a).params, P::Police(_)));
        let edits: [fn(&mut crate::netlink::tc_act::police::TcPolice); 4] = [
            |t| t.rate.overhead = 24,
            |t| t.rate.mpu = 64,
            |t| t.rate.linklayer = TC_LINKLAYER_ATM,
            |t| t.peakrate.overhead = 8,
        ];
        for edit in edits {
            let mut b = a.clone();
            let ActionOptions::Police(v) = &mut b.options else {
                panic!("{:?}", b.options)
            };
            for x in v.iter_mut() {
                if let TcActionPoliceOption::Tbf(t) = x {
                    edit(t);
                }
            }
            let n = v.len();
            let spec = action_spec(&b);
            let P::Raw { attrs } = &spec.params else {
                panic!("typed: {:?}", spec.params)
            };
            assert_eq!(spec.kind.as_str(), "police");
            // Nothing lost: the options as the kernel sent them.
            assert_eq!(attrs.len(), n);
        }
    }

    #[test]
    fn police_in_bytes_and_packets_and_the_other_typed_kinds() {
        let p = actions("police");
        let P::Police(first) = p[0].spec.params else {
            panic!("{:?}", p[0])
        };
        // rate 1mbit burst 10k conform-exceed drop/pipe.
        assert_eq!((first.rate_bytes_ps, first.burst_bytes), (125_000, 10_240));
        assert_eq!(
            (first.exceed, first.conform),
            (TcControl::Shot, TcControl::Pipe)
        );
        // rate 10mbit burst 64k mtu 2000 peakrate 20mbit conform-exceed drop: tc sent the
        // burst as whole ticks (truncated), so the kernel's bucket holds 65534 bytes, not 65536
        // (tc prints it rounded, `64Kb`): the plugin gets the kernel's.
        let P::Police(second) = p[1].spec.params else {
            panic!()
        };
        assert_eq!(
            (second.burst_bytes, second.mtu, second.peakrate_bytes_ps),
            (65_534, 2000, 2_500_000)
        );
        // pkts_rate 1000 pkts_burst 100.
        let P::Police(third) = p[2].spec.params else {
            panic!()
        };
        assert_eq!((third.pkts_rate, third.pkts_burst), (1000, 100));

        let g = actions("gact");
        assert_eq!((g[0].spec.index, g[0].spec.control), (1, TcControl::Shot));
        let P::Gact { prob } = g[1].spec.params else {
            panic!()
        };
        let prob = prob.unwrap();
        assert_eq!(
            (prob.ptype, prob.pval, prob.control),
            (2, 10, TcControl::Shot)
        );
        assert_eq!((g[0].refcnt, g[0].bindcnt), (1, 0));

        let v = actions("vlan");
        assert!(matches!(
            v[1].spec.params,
            P::Vlan {
                op: TcVlanOp::Pop,
                ..
            }
        ));
        assert!(matches!(
            v[2].spec.params,
            P::Vlan {
                op: TcVlanOp::Modify,
                id: 200,
                protocol: 0x88a8,
                ..
            }
        ));

        let ct = actions("ct");
        let P::Ct(c) = &ct[1].spec.params else {
            panic!()
        };
        // commit zone 5 mark 0x1/0xff.
        assert_eq!((c.flags & 1, c.zone), (1, 5));
        assert_eq!(
            c.mark,
            ROption::RSome(Masked {
                value: 1,
                mask: 0xff
            })
        );
        let P::Ct(nat) = &ct[2].spec.params else {
            panic!()
        };
        let n = nat.nat.unwrap();
        assert_eq!(n.min_addr, ROption::RSome("10.0.0.1".parse().unwrap()));
        assert_eq!(
            (n.min_port, n.max_port),
            (ROption::RSome(1000), ROption::RSome(2000))
        );

        let pe = actions("pedit");
        let P::Pedit { keys } = &pe[0].spec.params else {
            panic!()
        };
        // ex munge eth dst: header type eth (1), two keys.
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].htype, 1);

        let cs = actions("csum");
        assert!(matches!(cs[0].spec.params, P::Csum { flags } if flags == 1 | 8));
    }
}
