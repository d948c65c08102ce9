//! What the host refuses on a plugin's behalf without calling it: routes wider than its ECMP
//! width, additions beyond its declared per-kind limits, tc filters it cannot run whole
//! ([`tc_refusal`]). Additions refused at a limit are remembered and offered again when room
//! frees up, so a smaller table converges to what fits.

use super::ports::PortFilter;
use super::KINDS;
use ekho_plugin_api::object::{TcFilter, TcTarget, TcUnsupported};
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::ObjectKey;
use std::collections::BTreeSet;

/// Additions refused at a declared limit that are remembered and offered again when room frees
/// up, at most (beyond this, they are offered again only when they change).
pub const REFUSED_REMEMBERED: usize = 100_000;

/// Why the host answers for the plugin without calling it. `held`: objects held per kind;
/// `adding`: the plugin does not hold the object yet (the declared limit counts objects held, so
/// updates are never refused by it).
#[inline]
pub(super) fn host_refusal(
    caps: &Capabilities,
    held: &[u64; KINDS],
    o: &Object,
    adding: bool,
) -> Option<Outcome> {
    if let Object::Route(r) = o {
        let w = caps.features.max_ecmp_width;
        if w != 0 && r.nexthops.len() > w as usize {
            return Some(Outcome::unsupported(format!(
                "refused by the host: {} nexthops, the plugin declares max_ecmp_width {w}",
                r.nexthops.len()
            )));
        }
    }
    if let (true, Some(max)) = (adding, caps.limit_for(o.kind())) {
        if held[o.kind().index()] >= max {
            return Some(Outcome::failed(format!(
                "refused by the host: limit reached, the plugin declares at most {max} {} entries",
                o.kind()
            )));
        }
    }
    None
}

/// Why a tc filter that passed the kind and port filters is not taken (API 1.3), the host's
/// `unsupported`: its own reason ([`tc_own_refusal`]), or an earlier filter of its chain the
/// host does not hand over (`not_offloaded`: their `(pref, protocol)`, [`not_offloaded`]):
/// the kernel decides a frame both match by the earlier one, which the plugin never sees, so a
/// plugin running this one would decide it first (`after pref 1 chain 0, which is not
/// offloaded`).
pub(super) fn tc_refusal(
    caps: &Capabilities,
    o: &Object,
    ports: &PortFilter,
    not_offloaded: &[(u16, u16)],
) -> Option<TcUnsupported> {
    let Object::TcFilter(f) = o else {
        return None;
    };
    if let Some(why) = tc_own_refusal(caps, f, ports) {
        return Some(why);
    }
    // The earliest decides: a frame both match is the earlier one's. `not_offloaded` never
    // holds `f` itself (its own refusal came first above).
    not_offloaded
        .iter()
        .filter(|&&(prio, protocol)| prio <= f.prio && protocols_meet(protocol, f.protocol))
        .min_by_key(|&&(prio, _)| prio)
        .map(|&(prio, _)| {
            if prio < f.prio {
                TcUnsupported::After {
                    prio,
                    chain: f.chain,
                }
            } else {
                TcUnsupported::Beside {
                    prio,
                    chain: f.chain,
                }
            }
        })
}

/// Whether filters of these protocols can both see a frame (the kernel tries a filter when its
/// protocol is the frame's or `all`).
fn protocols_meet(a: u16, b: u16) -> bool {
    const ALL: u16 = 0x0003;
    a == b || a == ALL || b == ALL
}

/// A filter's own reason not to be handed over, whatever precedes it: the first reason
/// [`Capabilities::takes_filter`] gives (a mirred target must be an owned port), or a shared
/// block also bound to a port the plugin does not own (it could run the filter on some of the
/// block's devices only).
pub(super) fn tc_own_refusal(
    caps: &Capabilities,
    f: &TcFilter,
    ports: &PortFilter,
) -> Option<TcUnsupported> {
    if let Err(why) = caps.takes_filter(f, &|i| ports.owns(i)) {
        return Some(why);
    }
    match f.target {
        // Bound to no device, a block's filter runs nowhere: the port scope lets it through
        // (it names no port), but no plugin is to run it anywhere. The kernel frees a block
        // with its last binding, so the mirror holds one only between that qdisc's deletion
        // and its filters' (or while a dump is read).
        TcTarget::Block(block) if f.bindings.is_empty() => Some(TcUnsupported::UnboundBlock(block)),
        TcTarget::Block(block) => f
            .devices()
            .into_iter()
            .find(|&i| !ports.owns(i))
            .map(|ifindex| TcUnsupported::BlockPort { block, ifindex }),
        TcTarget::Dev(_) => None,
    }
}

/// The `(pref, protocol)` of the filters of one chain (`chain`: all of them, as the mirror
/// holds them) the host does not hand over for their own reason ([`tc_own_refusal`]). A filter
/// refused for coming after one of these is after that one too: the earliest decides.
pub(super) fn not_offloaded(
    caps: &Capabilities,
    ports: &PortFilter,
    chain: &[TcFilter],
) -> Vec<(u16, u16)> {
    chain
        .iter()
        .filter(|f| tc_own_refusal(caps, f, ports).is_some())
        .map(|f| (f.prio, f.protocol))
        .collect()
}

/// Additions refused at a declared limit, to offer again when room frees up.
#[derive(Default)]
pub(super) struct Refused {
    keys: BTreeSet<ObjectKey>,
}

impl Refused {
    /// Remembers an addition the host refused at a declared limit (`refusal`: the host's answer,
    /// [`host_refusal`]'s `failed`), to offer it again when room frees up. Nothing else is
    /// remembered: an ECMP-width refusal only a change of the route can lift, and a tc filter
    /// the plugin cannot run (`unsupported`, [`tc_refusal`]) is no limit refusal (offered again
    /// it would reach the plugin unchecked); both are judged again when they change.
    pub(super) fn remember(&mut self, o: &Object, refusal: &Outcome) {
        if matches!(refusal, Outcome::Failed(_)) && self.keys.len() < REFUSED_REMEMBERED {
            self.keys.insert(o.key());
        }
    }

    /// Forgets `key` (the object is gone).
    pub(super) fn forget(&mut self, key: &ObjectKey) {
        self.keys.remove(key);
    }

    /// Whether nothing is remembered.
    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Takes out the remembered keys that may fit now: of each kind, at most as many as its
    /// declared limit has room for (in kind, then key order). Refused again, they are
    /// remembered again.
    pub(super) fn take_offerable(
        &mut self,
        caps: &Capabilities,
        held: &[u64; KINDS],
    ) -> Vec<ObjectKey> {
        let mut out = Vec::new();
        for &kind in ObjectKind::ALL {
            let Some(max) = caps.limit_for(kind) else {
                continue;
            };
            let free = max.saturating_sub(held[kind.index()]);
            if free == 0 {
                continue;
            }
            let keys: Vec<ObjectKey> = self
                .keys
                .iter()
                .filter(|k| k.kind() == kind)
                .take(free as usize)
                .cloned()
                .collect();
            for k in &keys {
                self.keys.remove(k);
            }
            out.extend(keys);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::ports::takes;
    use crate::dispatch::test_objects::{link, route};

    #[test]
    fn limits_refuse_additions_and_wide_routes_not_updates() {
        let caps = Capabilities::everything()
            .limit(ObjectKind::Route, 1)
            .max_ecmp_width(1);
        let mut held = [0u64; KINDS];
        let r = route("10.0.0.0/24", 1, "10.1.0.1");
        assert!(host_refusal(&caps, &held, &r, true).is_none());
        held[ObjectKind::Route.index()] = 1;
        assert!(matches!(
            host_refusal(&caps, &held, &r, true),
            Some(Outcome::Failed(_))
        ));
        assert!(host_refusal(&caps, &held, &r, false).is_none(), "an update");
        let Object::Route(mut wide) = r else {
            unreachable!()
        };
        wide.nexthops.push(wide.nexthops[0].clone());
        assert_eq!(
            host_refusal(&caps, &[0; KINDS], &Object::Route(wide), true),
            Some(Outcome::unsupported(
                "refused by the host: 2 nexthops, the plugin declares max_ecmp_width 1"
            ))
        );
        assert!(host_refusal(&caps, &held, &link(1, "a"), true).is_none());
    }

    #[test]
    fn tc_filters_refused_with_tc_s_reasons_and_a_block_on_an_unowned_port() {
        use ekho_plugin_api::object::{
            Link, TcActionSpec, TcBinding, TcCapabilities, TcControl, TcFilter, TC_H_MIN_INGRESS,
        };
        let caps = Capabilities::new()
            .kinds([ObjectKind::TcFilter])
            .port_names(["v*"])
            .tc(TcCapabilities::new()
                .classifiers(["matchall"])
                .actions(["gact"])
                .ingress(true)
                .shared_blocks(true));
        let mut ports = PortFilter::new(&caps.ports, None);
        for (i, n) in [(2, "v0"), (3, "p3")] {
            ports.note_link(&Link {
                ifindex: i,
                ifname: n.into(),
                ..Default::default()
            });
        }
        let mut f = TcFilter::new(TcTarget::Dev(2), TC_H_MIN_INGRESS, 1, 1);
        f.kind = "matchall".into();
        f.actions.push(TcActionSpec::gact(TcControl::Shot));
        assert_eq!(
            tc_refusal(&caps, &Object::TcFilter(f.clone()), &ports, &[]),
            None
        );
        let mut pedit = f.clone();
        pedit
            .actions
            .push(TcActionSpec::raw("pedit", 1, TcControl::Pipe));
        let why = tc_refusal(&caps, &Object::TcFilter(pedit), &ports, &[]).unwrap();
        assert_eq!(why.to_string(), "action pedit not supported");
        let mut block = f.clone();
        block.target = TcTarget::Block(7);
        block.bindings = vec![
            TcBinding {
                ifindex: 2,
                egress: false,
            },
            TcBinding {
                ifindex: 3,
                egress: false,
            },
        ]
        .into();
        let why = tc_refusal(&caps, &Object::TcFilter(block), &ports, &[]).unwrap();
        assert_eq!(
            why.describe(&|i| ports.name(i)),
            "block 7 is bound to p3, not an owned port"
        );
        // A block bound to no device: its filter runs nowhere, for a scoped plugin and for one
        // taking every port and filter alike.
        let mut unbound = f.clone();
        unbound.target = TcTarget::Block(8);
        unbound.bindings = vec![].into();
        assert!(takes(&caps, &ports, &Object::TcFilter(unbound.clone())));
        let unbound = Object::TcFilter(unbound);
        let why = tc_refusal(&caps, &unbound, &ports, &[]).unwrap();
        assert_eq!(why.to_string(), "block 8 is bound to no device");
        let all = Capabilities::everything();
        let all_ports = PortFilter::new(&all.ports, None);
        assert!(takes(&all, &all_ports, &unbound));
        assert_eq!(
            tc_refusal(&all, &unbound, &all_ports, &[]),
            Some(TcUnsupported::UnboundBlock(8))
        );
        // Not a filter: nothing to say.
        assert_eq!(tc_refusal(&caps, &link(2, "v0"), &ports, &[]), None);
    }

    #[test]
    fn a_filter_after_one_not_handed_over_is_refused_when_both_may_see_a_frame() {
        use ekho_plugin_api::object::{
            Link, TcActionSpec, TcCapabilities, TcControl, TC_H_MIN_INGRESS,
        };
        let caps = Capabilities::new()
            .kinds([ObjectKind::TcFilter])
            .port_names(["v*"])
            .tc(TcCapabilities::new()
                .classifiers(["matchall"])
                .actions(["gact"])
                .ingress(true));
        let mut ports = PortFilter::new(&caps.ports, None);
        ports.note_link(&Link {
            ifindex: 2,
            ifname: "v0".into(),
            ..Default::default()
        });
        let filter = |prio: u16, protocol: u16, action: TcActionSpec| {
            let mut f = TcFilter::new(TcTarget::Dev(2), TC_H_MIN_INGRESS, prio, 1);
            f.kind = "matchall".into();
            f.protocol = protocol;
            f.actions.push(action);
            f
        };
        let drop = || TcActionSpec::gact(TcControl::Shot);
        let pedit = || TcActionSpec::raw("pedit", 1, TcControl::Ok);
        // pref 1 ip with pedit (not handed over), pref 2 ip drop, pref 3 ipv6 drop, pref 4 all.
        let chain = [
            filter(1, 0x0800, pedit()),
            filter(2, 0x0800, drop()),
            filter(3, 0x86dd, drop()),
            filter(4, 0x0003, drop()),
        ];
        let before = not_offloaded(&caps, &ports, &chain);
        assert_eq!(before, [(1, 0x0800)]);
        let why = |f: &TcFilter| {
            tc_refusal(&caps, &Object::TcFilter(f.clone()), &ports, &before)
                .map(|w| w.describe(&|i| ports.name(i)))
        };
        assert_eq!(
            why(&chain[0]).as_deref(),
            Some("action pedit not supported")
        );
        assert_eq!(
            why(&chain[1]).as_deref(),
            Some("after pref 1 chain 0, which is not offloaded")
        );
        assert_eq!(why(&chain[2]), None, "ipv6 frames never meet an ip filter");
        assert_eq!(
            why(&chain[3]).as_deref(),
            Some("after pref 1 chain 0, which is not offloaded")
        );
        // With pref 1 gone, the chain's own reasons only.
        let rest = not_offloaded(&caps, &ports, &chain[1..]);
        assert!(rest.is_empty());
        let f = Object::TcFilter(chain[1].clone());
        assert_eq!(tc_refusal(&caps, &f, &ports, &rest), None);
        // A second filter of pref 1 (handle 2): which of the two decides is the classifier's
        // own order, so it stays with the kernel too; pref 2 is still after pref 1.
        let mut sibling = filter(1, 0x0800, drop());
        sibling.handle = 2;
        assert_eq!(
            why(&sibling).as_deref(),
            Some("beside pref 1 chain 0, which is not offloaded")
        );
        let with_sibling = [chain[0].clone(), sibling.clone(), chain[1].clone()];
        let now = not_offloaded(&caps, &ports, &with_sibling);
        assert_eq!(
            now,
            [(1, 0x0800)],
            "a sibling refused beside is no own refusal"
        );
        let f = Object::TcFilter(chain[1].clone());
        assert_eq!(
            tc_refusal(&caps, &f, &ports, &now).map(|w| w.to_string()),
            Some("after pref 1 chain 0, which is not offloaded".into())
        );
    }

    #[test]
    fn refusals_at_a_limit_are_offered_again_as_room_frees_up() {
        let caps = Capabilities::everything().limit(ObjectKind::Route, 2);
        let mut held = [0u64; KINDS];
        held[ObjectKind::Route.index()] = 2;
        let mut refused = Refused::default();
        let routes: Vec<Object> = (1..=3)
            .map(|i| route(&format!("10.0.{i}.0/24"), 1, "10.1.0.1"))
            .collect();
        for r in &routes {
            let why = host_refusal(&caps, &held, r, true).unwrap();
            refused.remember(r, &why);
        }
        // Not a limit refusal: a route too wide, a tc filter the plugin cannot run.
        refused.remember(&link(1, "a"), &Outcome::Unsupported);
        assert!(refused.take_offerable(&caps, &held).is_empty(), "no room");
        held[ObjectKind::Route.index()] = 1;
        assert_eq!(refused.take_offerable(&caps, &held), [routes[0].key()]);
        refused.forget(&routes[1].key());
        held[ObjectKind::Route.index()] = 0;
        assert_eq!(refused.take_offerable(&caps, &held), [routes[2].key()]);
        assert!(refused.is_empty());
    }
}
