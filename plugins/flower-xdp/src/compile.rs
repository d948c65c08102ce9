//! The compiler: one tc filter ([`TcFilter`], as the host hands it) into one data-path rule
//! ([`Rule`]: a masked [`FKey`], port ranges, up to [`MAX_ACTIONS`] actions), or the reason, in
//! tc's words, it cannot run in XDP exactly (`key enc_opts not supported`). What
//! [`tc_capabilities`] declares is what this compiles; the checks here that capabilities
//! cannot express (a vlan rewrite whose packet would reach the kernel, a jump backwards) make
//! the plugin answer `unsupported` itself.

use crate::maps::*;
use crate::tc::*;
use ekho_plugin_api::object::net::IpAddress;

/// tc's `protocol all`.
pub const ETH_P_ALL: u16 = 0x0003;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// `ip_flags` bits (`TCA_FLOWER_KEY_FLAGS_*`).
pub const FLAGS_IS_FRAGMENT: u32 = 1;
pub const FLAGS_FRAG_IS_FIRST: u32 = 2;

/// A police action of a compiled rule: the action's position, its tc index (the bucket is
/// shared by every filter holding that index) and the bucket's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoliceUse {
    pub position: usize,
    pub index: u32,
    pub params: Police,
}

/// A filter compiled: the rule (its `stats_id` and police slots are filled by the table) and
/// its police buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    pub rule: Rule,
    pub police: Vec<PoliceUse>,
}

fn is_vlan(t: u16) -> bool {
    t == ETH_P_8021Q || t == ETH_P_8021AD
}

fn ip16(a: &IpAddress) -> [u8; 16] {
    let mut o = [0u8; 16];
    match a {
        IpAddress::V4(b) => o[..4].copy_from_slice(b),
        IpAddress::V6(b) => o = *b,
    }
    o
}

/// The keys flower-xdp matches (its `TcCapabilities::flower_keys`).
pub const FLOWER_KEYS: &[FlowerKey] = &[
    FlowerKey::EthType,
    FlowerKey::DstMac,
    FlowerKey::SrcMac,
    FlowerKey::VlanId,
    FlowerKey::VlanPrio,
    FlowerKey::VlanEthtype,
    FlowerKey::IpProto,
    FlowerKey::DstIp,
    FlowerKey::SrcIp,
    FlowerKey::DstPort,
    FlowerKey::SrcPort,
    FlowerKey::DstPortRange,
    FlowerKey::SrcPortRange,
    FlowerKey::TcpFlags,
    FlowerKey::IpTos,
    FlowerKey::IpTtl,
    FlowerKey::IcmpType,
    FlowerKey::IcmpCode,
    FlowerKey::IpFlags,
];

/// The action kinds it executes.
pub const ACTIONS: &[&str] = &["gact", "mirred", "vlan", "police"];

/// What flower-xdp runs, as it declares it to the host: flower at the ingress hook of a device
/// or of a shared block bound to owned ports only, the keys of [`FLOWER_KEYS`], the actions of
/// [`ACTIONS`] (mirred: egress redirect), goto chain. The host hands it nothing else; what this
/// cannot say (a vlan rewrite whose packet would reach the kernel, a jump backwards, gact's
/// random verdict, police's peakrate and avrate) [`compile`] refuses with the reason.
pub fn tc_capabilities() -> TcCapabilities {
    TcCapabilities::new()
        .classifiers(["flower"])
        .flower_keys(FLOWER_KEYS.iter().copied())
        .actions(ACTIONS.iter().copied())
        .mirred([TcMirredAction::EgressRedirect])
        .ingress(true)
        .shared_blocks(true)
        .goto_chain(true)
}

/// Compiles the match of `f` (its protocol and flower keys).
pub fn compile_match(f: &TcFilter) -> Result<(FKey, FKey, [u16; 4]), String> {
    let keys = match &f.matches {
        TcMatch::Flower(k) => &**k,
        _ => return Err(format!("classifier {} not supported", f.kind)),
    };
    let mut key = FKey::default();
    let mut mask = FKey::default();
    if f.protocol != ETH_P_ALL {
        key.proto = f.protocol.to_be_bytes();
        mask.proto = [0xff; 2];
    }
    if let Some(t) = keys.eth_type.into_option() {
        if is_vlan(t) {
            // flower: the VLAN keys count only under a VLAN eth_type; its TPID is matched.
            key.vlan_tpid = t.to_be_bytes();
            mask.vlan_tpid = [0xff; 2];
            let mut tci = 0u16;
            let mut tci_mask = 0u16;
            if let Some(id) = keys.vlan_id.into_option() {
                tci |= id & 0x0fff;
                tci_mask |= 0x0fff;
            }
            if let Some(p) = keys.vlan_prio.into_option() {
                tci |= ((p & 7) as u16) << 13;
                tci_mask |= 0xe000;
            }
            key.vlan_tci = tci.to_be_bytes();
            mask.vlan_tci = tci_mask.to_be_bytes();
            if let Some(inner) = keys.vlan_ethtype.into_option() {
                if is_vlan(inner) {
                    return Err(format!(
                        "key vlan_ethtype {inner:#06x} (a second tag, cvlan) not supported"
                    ));
                }
                key.n_proto = inner.to_be_bytes();
                mask.n_proto = [0xff; 2];
            }
        } else {
            key.n_proto = t.to_be_bytes();
            mask.n_proto = [0xff; 2];
        }
    }
    if let Some(m) = keys.dst_mac.into_option() {
        key.dst_mac = m.value;
        mask.dst_mac = m.mask;
    }
    if let Some(m) = keys.src_mac.into_option() {
        key.src_mac = m.value;
        mask.src_mac = m.mask;
    }
    if let Some(p) = keys.ip_proto.into_option() {
        key.ip_proto = p;
        mask.ip_proto = 0xff;
    }
    if let Some(m) = keys.dst_ip.into_option() {
        key.dst_ip = ip16(&m.value);
        mask.dst_ip = ip16(&m.mask);
    }
    if let Some(m) = keys.src_ip.into_option() {
        key.src_ip = ip16(&m.value);
        mask.src_ip = ip16(&m.mask);
    }
    if let Some(m) = keys.dst_port.into_option() {
        key.dst_port = m.value.to_be_bytes();
        mask.dst_port = m.mask.to_be_bytes();
    }
    if let Some(m) = keys.src_port.into_option() {
        key.src_port = m.value.to_be_bytes();
        mask.src_port = m.mask.to_be_bytes();
    }
    let mut ranges = [0u16; 4];
    if let Some(r) = keys.src_port_range.into_option() {
        ranges[0] = r.start;
        ranges[1] = r.end;
    }
    if let Some(r) = keys.dst_port_range.into_option() {
        ranges[2] = r.start;
        ranges[3] = r.end;
    }
    if let Some(m) = keys.tcp_flags.into_option() {
        key.tcp_flags = (m.value & 0x0fff).to_be_bytes();
        mask.tcp_flags = (m.mask & 0x0fff).to_be_bytes();
    }
    if let Some(m) = keys.ip_tos.into_option() {
        key.ip_tos = m.value;
        mask.ip_tos = m.mask;
    }
    if let Some(m) = keys.ip_ttl.into_option() {
        key.ip_ttl = m.value;
        mask.ip_ttl = m.mask;
    }
    if let Some(m) = keys.icmp_type.into_option() {
        key.icmp_type = m.value;
        mask.icmp_type = m.mask;
    }
    if let Some(m) = keys.icmp_code.into_option() {
        key.icmp_code = m.value;
        mask.icmp_code = m.mask;
    }
    if let Some(m) = keys.ip_flags.into_option() {
        let known = FLAGS_IS_FRAGMENT | FLAGS_FRAG_IS_FIRST;
        if m.mask & !known != 0 {
            return Err(format!(
                "key ip_flags {:#x}/{:#x} not supported (only frag and firstfrag)",
                m.value, m.mask
            ));
        }
        let bits = |v: u32| {
            (if v & FLAGS_IS_FRAGMENT != 0 {
                K_FRAG
            } else {
                0
            }) | (if v & FLAGS_FRAG_IS_FIRST != 0 {
                K_FIRSTFRAG
            } else {
                0
            })
        };
        key.flags = bits(m.value & m.mask);
        mask.flags = bits(m.mask);
    }
    Ok((key.masked(&mask), mask, ranges))
}

/// The control encoding of the data path: (C_*, argument). `position` is the action's index
/// (tc's jump counts from the start of the list: `jump N` resumes at action N).
fn control(c: TcControl, position: usize, n: usize) -> Result<(u8, u32), String> {
    Ok(match c {
        TcControl::Pipe => (C_PIPE, 0),
        TcControl::Ok => (C_OK, 0),
        TcControl::Shot => (C_SHOT, 0),
        TcControl::Continue => (C_CONTINUE, 0),
        TcControl::GotoChain(ch) => (C_GOTO, ch),
        TcControl::Jump(j) => {
            let j = j as usize;
            if j == 0 || j > n {
                // act_api: a faulty jump stops the list with TC_ACT_OK
                (C_OK, 0)
            } else if j <= position {
                return Err(format!(
                    "jump {j} from action {} (backwards) not supported",
                    position + 1
                ));
            } else {
                (C_JUMP, (j - position - 1) as u32)
            }
        }
        // reclassify, stolen, trap, ...: the kernel decides on the frame as it came
        _ => (C_KERNEL, 0),
    })
}

/// psched_ratecfg_precompute's mult and shift for `rate` (bytes or packets per second): the
/// cost of `len` is `(len * mult) >> shift` nanoseconds.
pub fn ratecfg(rate: u64) -> (u32, u32) {
    let mut factor: u64 = 1_000_000_000;
    let mut shift = 0u32;
    if rate == 0 {
        return (1, 0);
    }
    let mut mult;
    loop {
        mult = factor / rate;
        if mult & (1 << 31) != 0 || factor & (1 << 63) != 0 {
            break;
        }
        factor <<= 1;
        shift += 1;
    }
    (mult as u32, shift)
}

fn police(p: &TcPolice) -> Result<Police, String> {
    if p.peakrate_bytes_ps != 0 {
        return Err(String::from("police peakrate not supported"));
    }
    if p.avrate != 0 {
        return Err(String::from("police avrate not supported"));
    }
    let mut out = Police {
        mtu: if p.mtu == 0 { u32::MAX } else { p.mtu },
        ..Default::default()
    };
    if p.rate_bytes_ps != 0 {
        out.flags |= POL_RATE;
        (out.mult, out.shift) = ratecfg(p.rate_bytes_ps);
        out.burst = (p.burst_bytes as u128 * 1_000_000_000 / p.rate_bytes_ps as u128) as i64;
    }
    if p.pkts_rate != 0 {
        out.flags |= POL_PPS;
        (out.pmult, out.pshift) = ratecfg(p.pkts_rate);
        out.pburst = (p.pkts_burst as u128 * 1_000_000_000 / p.pkts_rate as u128) as i64;
    }
    Ok(out)
}

/// Compiles the actions; `owned` says whether an ifindex is a port of the plugin (a mirred
/// target must be).
pub fn compile_actions(
    f: &TcFilter,
    owned: &dyn Fn(u32) -> bool,
) -> Result<(Vec<Action>, Vec<PoliceUse>), String> {
    let n = f.actions.len();
    if n > MAX_ACTIONS {
        return Err(format!("{n} actions (at most {MAX_ACTIONS} run in XDP)"));
    }
    let mut out = Vec::with_capacity(n);
    let mut pol = Vec::new();
    let mut first_vlan: Option<usize> = None;
    for (i, a) in f.actions.iter().enumerate() {
        let kind = a.kind.as_str();
        let (c, arg) = control(a.control, i, n)?;
        let mut act = Action {
            control: c,
            goto_arg: arg,
            ..Default::default()
        };
        match &a.params {
            TcActionParams::Gact { prob } => {
                if prob.is_some() {
                    return Err(String::from("gact random not supported"));
                }
                act.kind = A_GACT;
            }
            TcActionParams::Mirred { eaction, ifindex } => {
                if *eaction != TcMirredAction::EgressRedirect || !owned(*ifindex) {
                    // takes_filter (in compile) refused it already
                    return Err(format!("mirred {eaction} to {ifindex}"));
                }
                if a.control != TcControl::Stolen {
                    return Err(format!(
                        "mirred egress redirect with control {} not supported",
                        a.control
                    ));
                }
                act.kind = A_REDIRECT;
                act.arg = *ifindex;
            }
            TcActionParams::Vlan {
                op,
                id,
                protocol,
                priority,
                ..
            } => {
                let proto = if *protocol == 0 {
                    ETH_P_8021Q
                } else {
                    *protocol
                };
                act.vlan_proto = proto.to_be_bytes();
                act.vlan_tci = ((id & 0x0fff) | ((*priority as u16 & 7) << 13)).to_be_bytes();
                act.kind = match *op {
                    TcVlanOp::Push => A_VLAN_PUSH,
                    TcVlanOp::Pop => A_VLAN_POP,
                    TcVlanOp::Modify => {
                        // act_vlan keeps the frame's PCP when no priority was given and sets
                        // it when one was; the API's `priority` is 0 for both "absent" and
                        // "priority 0", so a modify with 0 could be either: refused.
                        if *priority == 0 {
                            return Err(String::from(
                                "vlan modify without priority (or with priority 0) not supported: the API cannot tell the two apart; give a priority 1-7",
                            ));
                        }
                        act.vflags |= VF_PRIO;
                        A_VLAN_MODIFY
                    }
                    other => return Err(format!("vlan {other} not supported")),
                };
                first_vlan.get_or_insert(i);
            }
            TcActionParams::Police(p) => {
                act.kind = A_POLICE;
                let (c, arg) = control(p.conform, i, n)?;
                act.control = c;
                act.goto_arg = arg;
                let (e, earg) = control(p.exceed, i, n)?;
                act.exceed = e;
                act.exceed_arg = earg;
                pol.push(PoliceUse {
                    position: i,
                    index: a.index,
                    params: police(p)?,
                });
            }
            _ => return Err(format!("action {kind} not supported")),
        }
        out.push(act);
    }
    if let Some(v) = first_vlan {
        // A rewritten frame must not reach the kernel (its tc would classify it again): from
        // the first vlan action on, every path ends in the redirect or a drop.
        let why = || {
            format!(
                "vlan {} not followed by mirred egress redirect or drop only (the kernel would classify the rewritten packet again)",
                f.actions[v].params_name()
            )
        };
        if out
            .iter()
            .any(|a| a.control == C_JUMP || a.exceed == C_JUMP)
        {
            return Err(why());
        }
        let last = out.len() - 1;
        for (j, a) in out.iter().enumerate().skip(v) {
            let tail = j == last;
            let ok = match a.kind {
                A_REDIRECT => tail,
                A_GACT => a.control == C_SHOT,
                A_POLICE => {
                    !tail
                        && matches!(a.control, C_PIPE | C_SHOT)
                        && matches!(a.exceed, C_PIPE | C_SHOT)
                }
                _ => !tail && a.control == C_PIPE,
            };
            if !ok {
                return Err(why());
            }
            if a.kind == A_GACT {
                break;
            }
        }
    }
    Ok((out, pol))
}

trait ParamsName {
    fn params_name(&self) -> String;
}

impl ParamsName for TcActionSpec {
    fn params_name(&self) -> String {
        match &self.params {
            TcActionParams::Vlan { op, .. } => op.to_string(),
            _ => self.kind.to_string(),
        }
    }
}

/// The rule that stands for a filter held but not run here (refused by [`compile`]): at the
/// filter's place in the order, a frame it may match goes to the kernel untouched, so no later
/// filter run in XDP decides a frame tc would have given to this one first. Its keys when they
/// compile, else every frame (of its protocol).
pub fn trap(f: &TcFilter) -> Rule {
    let (key, mask, r) = compile_match(f).unwrap_or_else(|_| {
        let mut key = FKey::default();
        let mut mask = FKey::default();
        if f.protocol != ETH_P_ALL {
            key.proto = f.protocol.to_be_bytes();
            mask.proto = [0xff; 2];
        }
        (key, mask, [0; 4])
    });
    let mut rule = Rule {
        key,
        mask,
        sport_min: r[0],
        sport_max: r[1],
        dport_min: r[2],
        dport_max: r[3],
        n_actions: 1,
        ..Default::default()
    };
    rule.actions[0] = Action {
        kind: A_GACT,
        control: C_KERNEL,
        ..Default::default()
    };
    rule
}

/// Whether a filter held but refused still stands in the order of `ifindex`'s ingress hook (a
/// trap rule): it runs there in the kernel.
pub fn traps_on(f: &TcFilter, ifindex: u32) -> bool {
    f.devices().contains(&ifindex) && f.hooks().iter().all(|h| *h == TcHook::Ingress)
}

/// Compiles a whole filter: first what [`tc_capabilities`] says (the API's `takes_filter`,
/// the host's own check: skip_hw, classifier, hook, keys, actions, mirred), then the devices
/// (every one owned) and what only the compiler sees.
pub fn compile(f: &TcFilter, owned: &dyn Fn(u32) -> bool) -> Result<Compiled, String> {
    tc_capabilities()
        .takes_filter(f, owned)
        .map_err(|e| e.to_string())?;
    for d in f.devices() {
        if !owned(d) {
            return Err(match f.target {
                TcTarget::Block(b) => format!("block {b} is bound to if{d}, not an owned port"),
                TcTarget::Dev(_) => format!("if{d} is not an owned port"),
            });
        }
    }
    let (key, mask, r) = compile_match(f)?;
    let (actions, police) = compile_actions(f, owned)?;
    let mut rule = Rule {
        key,
        mask,
        sport_min: r[0],
        sport_max: r[1],
        dport_min: r[2],
        dport_max: r[3],
        n_actions: actions.len() as u32,
        ..Default::default()
    };
    rule.actions[..actions.len()].copy_from_slice(&actions);
    Ok(Compiled { rule, police })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flower(actions: Vec<TcActionSpec>) -> TcFilter {
        let mut f = TcFilter::new(TcTarget::Dev(2), TC_H_MIN_INGRESS, 1, 1);
        f.protocol = 0x0800;
        f.kind = "flower".into();
        f.matches = TcMatch::flower(FlowerKeys {
            eth_type: Some(0x0800).into(),
            ..Default::default()
        });
        f.actions = actions.into();
        f
    }

    fn vlan_push() -> TcActionSpec {
        TcActionSpec {
            kind: "vlan".into(),
            control: TcControl::Pipe,
            params: TcActionParams::Vlan {
                op: TcVlanOp::Push,
                id: 10,
                protocol: 0x8100,
                priority: 0,
                dst_mac: None.into(),
                src_mac: None.into(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn ratecfg_is_the_kernels() {
        // 1 Mbit/s: psched_ratecfg_precompute gives mult 4194304000, shift 19; 1000 bytes
        // cost 8 ms.
        assert_eq!(ratecfg(125_000), (4_194_304_000, 19));
        let (m, s) = ratecfg(125_000);
        assert_eq!((1000u64 * m as u64) >> s, 8_000_000);
        // 10 Gbit/s: 1250 bytes are 1000 ns, 999 after the division's truncation (the
        // kernel's too: the same mult and shift)
        let (m, s) = ratecfg(1_250_000_000);
        assert_eq!((m, s), (3_435_973_836, 32));
        assert_eq!((1250u64 * m as u64) >> s, 999);
    }

    #[test]
    fn jumps_are_relative_to_the_action_and_forward_only() {
        assert_eq!(control(TcControl::Jump(2), 0, 3), Ok((C_JUMP, 1)));
        assert_eq!(control(TcControl::Jump(4), 0, 3), Ok((C_OK, 0)));
        assert!(control(TcControl::Jump(1), 1, 3).is_err());
        assert_eq!(control(TcControl::GotoChain(7), 0, 1), Ok((C_GOTO, 7)));
        assert_eq!(control(TcControl::Trap, 0, 1), Ok((C_KERNEL, 0)));
    }

    #[test]
    fn a_vlan_rewrite_must_end_in_a_redirect_or_a_drop() {
        let owned = |_| true;
        let redirect = TcActionSpec::mirred(TcMirredAction::EgressRedirect, 3);
        assert!(compile(&flower(vec![vlan_push(), redirect.clone()]), &owned).is_ok());
        assert!(compile(
            &flower(vec![vlan_push(), TcActionSpec::gact(TcControl::Shot)]),
            &owned
        )
        .is_ok());
        for bad in [
            vec![vlan_push()],
            vec![vlan_push(), TcActionSpec::gact(TcControl::Ok)],
            vec![vlan_push(), TcActionSpec::gact(TcControl::GotoChain(1))],
            vec![
                TcActionSpec::gact(TcControl::Jump(2)),
                vlan_push(),
                redirect.clone(),
            ],
        ] {
            let why = compile(&flower(bad), &owned).unwrap_err();
            assert!(why.starts_with("vlan push not followed by"), "{why}");
        }
    }

    #[test]
    fn vlan_modify_needs_a_priority() {
        let owned = |_| true;
        let redirect = TcActionSpec::mirred(TcMirredAction::EgressRedirect, 3);
        let modify = |priority| {
            let mut a = vlan_push();
            if let TcActionParams::Vlan {
                op, priority: p, ..
            } = &mut a.params
            {
                *op = TcVlanOp::Modify;
                *p = priority;
            }
            a
        };
        let why = compile(&flower(vec![modify(0), redirect.clone()]), &owned).unwrap_err();
        assert!(why.starts_with("vlan modify without priority"), "{why}");
        let c = compile(&flower(vec![modify(5), redirect]), &owned).unwrap();
        assert_eq!(c.rule.actions[0].kind, A_VLAN_MODIFY);
        assert_eq!(c.rule.actions[0].vflags & VF_PRIO, VF_PRIO);
    }

    #[test]
    fn the_hosts_reasons_come_first() {
        let mut f = flower(vec![TcActionSpec::raw("pedit", 1, TcControl::Pipe)]);
        assert_eq!(
            compile(&f, &|_| true).unwrap_err(),
            "action pedit not supported"
        );
        f.flags.skip_hw = true;
        assert_eq!(compile(&f, &|_| true).unwrap_err(), "skip_hw");
        let f = flower(vec![TcActionSpec::gact(TcControl::Shot)]);
        assert_eq!(
            compile(&f, &|i| i != 2).unwrap_err(),
            "if2 is not an owned port"
        );
    }

    #[test]
    fn keys_are_masked_and_in_network_order() {
        let mut f = flower(vec![TcActionSpec::gact(TcControl::Shot)]);
        f.matches = TcMatch::flower(FlowerKeys {
            eth_type: Some(0x8100).into(),
            vlan_id: Some(0x123).into(),
            vlan_prio: Some(5).into(),
            vlan_ethtype: Some(0x86dd).into(),
            dst_port: Some(Masked {
                value: 0x1234,
                mask: 0xff00,
            })
            .into(),
            ..Default::default()
        });
        f.protocol = 0x8100;
        let c = compile(&f, &|_| true).unwrap();
        assert_eq!(c.rule.key.proto, [0x81, 0x00]);
        assert_eq!(c.rule.key.vlan_tpid, [0x81, 0x00]);
        assert_eq!(c.rule.key.vlan_tci, ((5u16 << 13) | 0x123).to_be_bytes());
        assert_eq!(c.rule.mask.vlan_tci, [0xef, 0xff]);
        assert_eq!(c.rule.key.n_proto, [0x86, 0xdd]);
        assert_eq!(c.rule.key.dst_port, [0x12, 0x00]);
        assert_eq!(c.rule.mask.dst_port, [0xff, 0x00]);
    }
}
