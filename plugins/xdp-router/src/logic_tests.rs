//! The plugin's logic over an in-memory backend: what it writes into the maps for each change,
//! and the outcomes. Runs without root or a kernel (the integration tests cover the data path).

use crate::dataplane::{Backend, Error};
use crate::maps::*;
use crate::XdpRouter;
use abi_stable::std_types::{ROption, RVec};
use ekho_plugin_api::object::route::RTNH_F_DEAD;
use ekho_plugin_api::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    attached: BTreeSet<u32>,
    ports: HashMap<u32, PortVal>,
    neighbours: HashMap<NeighKey, NeighVal>,
    /// (table, prefix text) -> value
    routes: BTreeMap<(u32, String), RouteVal>,
    counters: BTreeSet<u32>,
    config: ConfigVal,
    /// Maximum number of route entries (None: unlimited).
    capacity: Option<usize>,
    flows: HashMap<FlowKey, FlowVal>,
    flow_stats: HashMap<u32, FlowStats>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
    fn route(&self, table: u32, prefix: &str) -> Option<RouteVal> {
        self.st().routes.get(&(table, prefix.to_string())).copied()
    }
    fn set_route(&mut self, key: (u32, String), v: Option<&RouteVal>) -> Result<(), Error> {
        let mut st = self.st();
        match v {
            Some(v) => {
                if !st.routes.contains_key(&key)
                    && st.capacity.is_some_and(|c| st.routes.len() >= c)
                {
                    return Err(Error::Other("map full".into()));
                }
                st.routes.insert(key, *v);
            }
            None => {
                st.routes.remove(&key);
            }
        }
        Ok(())
    }
}

impl Backend for Fake {
    fn attach(&mut self, ifindex: u32) -> Result<Option<String>, Error> {
        self.st().attached.insert(ifindex);
        Ok(None)
    }
    fn detach(&mut self, ifindex: u32) -> Result<(), Error> {
        self.st().attached.remove(&ifindex);
        Ok(())
    }
    fn attached(&self) -> Vec<u32> {
        self.st().attached.iter().copied().collect()
    }
    fn set_port(&mut self, ifindex: u32, v: Option<PortVal>) -> Result<(), Error> {
        match v {
            Some(v) => self.st().ports.insert(ifindex, v),
            None => self.st().ports.remove(&ifindex),
        };
        Ok(())
    }
    fn set_neighbour(&mut self, k: NeighKey, v: Option<NeighVal>) -> Result<(), Error> {
        match v {
            Some(v) => self.st().neighbours.insert(k, v),
            None => self.st().neighbours.remove(&k),
        };
        Ok(())
    }
    fn set_route_v4(
        &mut self,
        table: u32,
        addr: [u8; 4],
        len: u8,
        v: Option<&RouteVal>,
    ) -> Result<(), Error> {
        self.set_route((table, format!("{}/{len}", IpAddress::V4(addr))), v)
    }
    fn set_route_v6(
        &mut self,
        table: u32,
        addr: [u8; 16],
        len: u8,
        v: Option<&RouteVal>,
    ) -> Result<(), Error> {
        self.set_route((table, format!("{}/{len}", IpAddress::V6(addr))), v)
    }
    fn set_route_counter(&mut self, id: u32, present: bool) -> Result<(), Error> {
        if present {
            self.st().counters.insert(id);
        } else {
            self.st().counters.remove(&id);
        }
        Ok(())
    }
    fn route_counter(&self, _id: u32) -> RouteStats {
        RouteStats::default()
    }
    fn port_counter(&self, _ifindex: u32) -> PortStats {
        PortStats::default()
    }
    fn reasons(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    fn set_config(&mut self, v: ConfigVal) -> Result<(), Error> {
        self.st().config = v;
        Ok(())
    }
    fn set_flow(&mut self, id: u32, entries: &[(FlowKey, FlowVal); 2]) -> Result<(), Error> {
        let mut st = self.st();
        st.flow_stats.insert(id, FlowStats::default());
        for (k, v) in entries {
            st.flows.insert(*k, *v);
        }
        Ok(())
    }
    fn remove_flow(&mut self, id: u32, keys: &[FlowKey; 2]) -> Result<(), Error> {
        let mut st = self.st();
        for k in keys {
            st.flows.remove(k);
        }
        st.flow_stats.remove(&id);
        Ok(())
    }
    fn flow_stats(&self, id: u32) -> Option<FlowStats> {
        self.st().flow_stats.get(&id).copied()
    }
    fn detach_all(&mut self) -> Vec<(u32, Error)> {
        self.st().attached.clear();
        Vec::new()
    }
}

fn router(config: &str) -> (XdpRouter, Fake) {
    let fake = Fake::default();
    let p = XdpRouter::with_backend(
        config,
        ekho_plugin_api::DetachedHost::handle(),
        Box::new(fake.clone()),
    )
    .unwrap();
    (p, fake)
}

fn link(ifindex: u32, name: &str, up: bool) -> Link {
    Link {
        ifindex,
        ifname: name.into(),
        flags: if up { 0x1 | 0x10000 } else { 0 },
        mtu: 1500,
        link_type: 1,
        address: LinkAddr::new(&[2, 0, 0, 0, 0, ifindex as u8]),
        kind: "veth".into(),
        ..Default::default()
    }
}

fn neigh(ifindex: u32, addr: &str, mac_last: u8) -> Neighbour {
    let dst: IpAddress = addr.parse().unwrap();
    Neighbour {
        family: dst.family(),
        ifindex,
        dev: "".into(),
        dst,
        lladdr: LinkAddr::new(&[2, 0xaa, 0, 0, 0, mac_last]),
        state: 0x02,
        flags: 0,
        proxy: false,
    }
}

fn route(dst: &str, legs: &[(&str, u32, u16)]) -> Route {
    let dst: IpPrefix = dst.parse().unwrap();
    let legs: Vec<NextHop> = legs
        .iter()
        .map(|(gw, i, w)| {
            let mut n = NextHop::via(gw.parse().unwrap(), *i);
            n.weight = *w;
            n
        })
        .collect();
    Route::unicast(dst, legs)
}

fn add(p: &mut XdpRouter, objs: Vec<Object>) -> Vec<Outcome> {
    let changes: Vec<Change> = objs.into_iter().map(Change::Add).collect();
    p.apply(&changes)
}

/// Three up ports p1..p3 (ifindex 1..3), neighbours 10.0.{2,3}.2 resolved.
fn base(config: &str) -> (XdpRouter, Fake) {
    let (mut p, f) = router(config);
    let outs = add(
        &mut p,
        vec![
            link(1, "p1", true).into(),
            link(2, "p2", true).into(),
            link(3, "p3", true).into(),
            neigh(2, "10.0.2.2", 2).into(),
            neigh(3, "10.0.3.2", 3).into(),
        ],
    );
    // Unowned ports (and their neighbours) are `unsupported`, owned ones `offloaded`.
    assert!(
        outs.iter()
            .all(|o| matches!(o, Outcome::Offloaded | Outcome::Unsupported)),
        "{outs:?}"
    );
    (p, f)
}

fn slot_counts(v: &RouteVal) -> Vec<usize> {
    let mut c = vec![0; v.n_legs as usize];
    for s in &v.slots[..v.n_slots as usize] {
        c[*s as usize] += 1;
    }
    c
}

#[test]
fn ports_are_attached_and_programmed() {
    let (_p, f) = base("");
    let st = f.st();
    assert_eq!(st.attached, BTreeSet::from([1, 2, 3]));
    assert_eq!(st.ports[&2].flags, PORT_UP);
    assert_eq!(st.ports[&2].mtu, 1500);
    assert_eq!(st.ports[&2].mac, [2, 0, 0, 0, 0, 2]);
    assert_eq!(st.neighbours.len(), 2);
}

#[test]
fn ecmp_weights_become_slots() {
    let (mut p, f) = base("");
    let outs = add(
        &mut p,
        vec![route("10.9.0.0/16", &[("10.0.2.2", 2, 1), ("10.0.3.2", 3, 3)]).into()],
    );
    assert_eq!(outs, vec![Outcome::Offloaded]);
    let v = f.route(254, "10.9.0.0/16").unwrap();
    assert_eq!(v.action, ACT_FORWARD);
    assert_eq!(v.n_legs, 2);
    assert_eq!(slot_counts(&v), vec![1, 3]);
    assert_eq!(v.legs[0].ifindex, 2);
    assert_eq!(v.legs[0].flags, LEG_GATEWAY);
    assert_eq!(&v.legs[1].gw[..4], &[10, 0, 3, 2]);
    assert!(f.st().counters.contains(&v.counter_id));
}

#[test]
fn dead_and_down_legs_are_left_out_and_come_back() {
    let (mut p, f) = base("");
    let mut r = route("10.9.0.0/16", &[("10.0.2.2", 2, 1), ("10.0.3.2", 3, 1)]);
    add(&mut p, vec![r.clone().into()]);
    assert_eq!(f.route(254, "10.9.0.0/16").unwrap().n_legs, 2);

    // Port p3 loses carrier: its leg goes.
    let down = link(3, "p3", false);
    p.apply(&[Change::Update {
        old: link(3, "p3", true).into(),
        new: down.clone().into(),
    }]);
    let v = f.route(254, "10.9.0.0/16").unwrap();
    assert_eq!((v.n_legs, v.legs[0].ifindex), (1, 2));
    assert_eq!(f.st().ports[&3].flags, 0);

    // Back up; then the kernel flags the p2 leg dead.
    p.apply(&[Change::Update {
        old: down.into(),
        new: link(3, "p3", true).into(),
    }]);
    assert_eq!(f.route(254, "10.9.0.0/16").unwrap().n_legs, 2);
    let old = r.clone();
    r.nexthops[0].flags = RTNH_F_DEAD;
    p.apply(&[Change::Update {
        old: old.into(),
        new: r.clone().into(),
    }]);
    let v = f.route(254, "10.9.0.0/16").unwrap();
    assert_eq!((v.n_legs, v.legs[0].ifindex), (1, 3));

    // Every leg dead: the kernel decides.
    let old = r.clone();
    r.nexthops[1].flags = RTNH_F_DEAD;
    p.apply(&[Change::Update {
        old: old.into(),
        new: r.into(),
    }]);
    assert_eq!(f.route(254, "10.9.0.0/16").unwrap().action, ACT_PASS);
}

#[test]
fn routes_through_unowned_ports_pass_and_are_trapped() {
    let (mut p, f) = base("ports = [\"p1\", \"p2\"]");
    assert_eq!(f.st().attached, BTreeSet::from([1, 2]));
    assert!(!f.st().ports.contains_key(&3));
    let outs = add(
        &mut p,
        vec![
            route("0.0.0.0/0", &[("10.0.2.2", 2, 1)]).into(),
            route("10.9.0.0/16", &[("10.0.3.2", 3, 1)]).into(),
            route("10.8.0.0/16", &[("10.0.2.2", 2, 1), ("10.0.3.2", 3, 1)]).into(),
        ],
    );
    assert_eq!(
        outs,
        vec![Outcome::Offloaded, Outcome::Trapped, Outcome::Trapped]
    );
    assert_eq!(f.route(254, "0.0.0.0/0").unwrap().action, ACT_FORWARD);
    // Programmed as PASS entries: they shadow the default route, as in the kernel's FIB.
    assert_eq!(f.route(254, "10.9.0.0/16").unwrap().action, ACT_PASS);
    assert_eq!(f.route(254, "10.8.0.0/16").unwrap().action, ACT_PASS);
    assert!(
        p.capabilities().ports.all,
        "the plugin must receive every route"
    );
}

#[test]
fn route_types_tables_and_selectors() {
    let (mut p, f) = base("");
    let mut local = route("10.0.2.1/32", &[]);
    local.kind = RouteType::LOCAL;
    local.table = 255;
    local.nexthops = RVec::from(vec![NextHop {
        gateway: ROption::RNone,
        ..NextHop::via("0.0.0.0".parse().unwrap(), 2)
    }]);
    let mut bh = route("10.7.0.0/16", &[]);
    bh.kind = RouteType::BLACKHOLE;
    let mut unreach = route("10.6.0.0/16", &[]);
    unreach.kind = RouteType::UNREACHABLE;
    let mut other_table = route("10.5.0.0/16", &[("10.0.2.2", 2, 1)]);
    other_table.table = 100;
    let mut tos = route("10.4.0.0/16", &[("10.0.2.2", 2, 1)]);
    tos.tos = 0x10;
    let plain_at_tos_prefix = route("10.4.0.0/16", &[("10.0.2.2", 2, 1)]);
    let outs = add(
        &mut p,
        vec![
            local.into(),
            bh.into(),
            unreach.into(),
            other_table.into(),
            tos.into(),
            plain_at_tos_prefix.into(),
        ],
    );
    assert_eq!(
        outs,
        vec![
            Outcome::Trapped,
            Outcome::Offloaded,
            Outcome::Trapped,
            Outcome::unsupported("table 100 (only local, main and default are run here)"),
            Outcome::Trapped,
            Outcome::Offloaded
        ]
    );
    assert_eq!(f.route(255, "10.0.2.1/32").unwrap().action, ACT_PASS);
    assert_eq!(f.route(254, "10.7.0.0/16").unwrap().action, ACT_DROP);
    assert_eq!(f.route(254, "10.6.0.0/16").unwrap().action, ACT_PASS);
    assert!(f.route(100, "10.5.0.0/16").is_none());
    // A tos route at the prefix: the whole prefix goes to the kernel.
    assert_eq!(f.route(254, "10.4.0.0/16").unwrap().action, ACT_PASS);
}

#[test]
fn lowest_metric_wins_and_removal_falls_back() {
    let (mut p, f) = base("");
    let mut a = route("10.9.0.0/16", &[("10.0.2.2", 2, 1)]);
    a.metric = 100;
    let mut b = route("10.9.0.0/16", &[("10.0.3.2", 3, 1)]);
    b.metric = 50;
    add(&mut p, vec![a.into(), b.clone().into()]);
    assert_eq!(f.route(254, "10.9.0.0/16").unwrap().legs[0].ifindex, 3);
    p.apply(&[Change::Remove(b.into())]);
    assert_eq!(f.route(254, "10.9.0.0/16").unwrap().legs[0].ifindex, 2);
}

#[test]
fn nexthop_group_changes_reprogram_their_routes() {
    let (mut p, f) = base("");
    let nh = |id: u32, gw: &str, ifindex: u32| Nexthop {
        id,
        family: Family::INET,
        gateway: ROption::RSome(gw.parse().unwrap()),
        ifindex,
        dev: "".into(),
        blackhole: false,
        fdb: false,
        flags: 0,
        protocol: Protocol::STATIC,
        scope: Scope::LINK,
        group: RVec::new(),
        group_type: 0,
        encap: ROption::RNone,
    };
    let group = |members: &[(u32, u16)]| Nexthop {
        group: members
            .iter()
            .map(|(id, weight)| GroupMember {
                id: *id,
                weight: *weight,
            })
            .collect(),
        gateway: ROption::RNone,
        ifindex: 0,
        family: Family::UNSPEC,
        ..nh(12, "0.0.0.0", 0)
    };
    let mut r = route("10.9.0.0/16", &[]);
    r.nhid = ROption::RSome(12);
    let g1 = group(&[(10, 1), (11, 2)]);
    let outs = add(
        &mut p,
        vec![
            nh(10, "10.0.2.2", 2).into(),
            nh(11, "10.0.3.2", 3).into(),
            g1.clone().into(),
            r.into(),
        ],
    );
    assert!(outs.iter().all(|o| *o == Outcome::Offloaded), "{outs:?}");
    assert_eq!(
        slot_counts(&f.route(254, "10.9.0.0/16").unwrap()),
        vec![1, 2]
    );

    // The group alone changes: the route's entry follows.
    let g2 = group(&[(11, 1)]);
    p.apply(&[Change::Update {
        old: g1.into(),
        new: g2.into(),
    }]);
    let v = f.route(254, "10.9.0.0/16").unwrap();
    assert_eq!((v.n_legs, v.legs[0].ifindex), (1, 3));
}

#[test]
fn neighbours_follow_validity() {
    let (mut p, f) = base("");
    let k = NeighKey {
        ifindex: 2,
        family: 2,
        addr: [10, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    assert_eq!(f.st().neighbours[&k].mac, [2, 0xaa, 0, 0, 0, 2]);
    let mut n = neigh(2, "10.0.2.2", 9);
    p.apply(&[Change::Update {
        old: neigh(2, "10.0.2.2", 2).into(),
        new: n.clone().into(),
    }]);
    assert_eq!(f.st().neighbours[&k].mac, [2, 0xaa, 0, 0, 0, 9]);
    let old = n.clone();
    n.state = 0x20; // FAILED
    n.lladdr = LinkAddr::default();
    p.apply(&[Change::Update {
        old: old.into(),
        new: n.into(),
    }]);
    assert!(!f.st().neighbours.contains_key(&k));
}

#[test]
fn policy_rules_punt_their_family() {
    let (mut p, f) = base("");
    let rule = |family: Family, priority: u32, table: u32, src: Option<&str>| Rule {
        src: src.map(|s| s.parse().unwrap()).into(),
        ..Rule::lookup(family, priority, table)
    };
    let defaults = vec![
        rule(Family::INET, 0, 255, None).into(),
        rule(Family::INET, 32766, 254, None).into(),
        rule(Family::INET, 32767, 253, None).into(),
        rule(Family::INET6, 0, 255, None).into(),
        rule(Family::INET6, 32766, 254, None).into(),
    ];
    assert!(add(&mut p, defaults)
        .iter()
        .all(|o| *o == Outcome::Offloaded));
    assert_eq!(f.st().config.flags, 0);
    let extra = rule(Family::INET, 100, 100, Some("10.0.1.0/24"));
    assert_eq!(
        add(&mut p, vec![extra.clone().into()]),
        vec![Outcome::Trapped]
    );
    // Policy rules stop the flow path too (its route lookup after NAT would be the main table's).
    assert_eq!(f.st().config.flags, CFG_PUNT_V4 | CFG_NOFLOW_V4);
    p.apply(&[Change::Remove(extra.into())]);
    assert_eq!(f.st().config.flags, 0);
}

#[test]
fn a_prefix_that_does_not_fit_punts_its_family_until_gone() {
    let (mut p, f) = base("");
    f.st().capacity = Some(2);
    let outs = add(
        &mut p,
        vec![
            route("10.1.0.0/16", &[("10.0.2.2", 2, 1)]).into(),
            route("10.2.0.0/16", &[("10.0.2.2", 2, 1)]).into(),
            route("10.3.0.0/16", &[("10.0.2.2", 2, 1)]).into(),
        ],
    );
    assert!(matches!(outs[2], Outcome::Failed(_)), "{outs:?}");
    assert_eq!(f.st().config.flags, CFG_PUNT_V4 | CFG_NOFLOW_V4);
    p.apply(&[Change::Remove(
        route("10.3.0.0/16", &[("10.0.2.2", 2, 1)]).into(),
    )]);
    assert_eq!(f.st().config.flags, 0);
}

#[test]
fn end_sync_sweeps_what_the_replay_did_not_renew() {
    let (mut p, f) = base("");
    add(
        &mut p,
        vec![
            route("10.1.0.0/16", &[("10.0.2.2", 2, 1)]).into(),
            route("10.2.0.0/16", &[("10.0.3.2", 3, 1)]).into(),
        ],
    );
    p.begin_sync();
    add(
        &mut p,
        vec![
            link(1, "p1", true).into(),
            link(2, "p2", true).into(),
            neigh(2, "10.0.2.2", 2).into(),
            route("10.1.0.0/16", &[("10.0.2.2", 2, 1)]).into(),
        ],
    );
    p.end_sync();
    let st = f.st();
    assert!(st.routes.contains_key(&(254, "10.1.0.0/16".to_string())));
    assert!(!st.routes.contains_key(&(254, "10.2.0.0/16".to_string())));
    assert_eq!(st.attached, BTreeSet::from([1, 2]), "p3 swept");
    assert_eq!(st.neighbours.len(), 1);
    assert_eq!(st.counters.len(), 1);
}

#[test]
fn shutdown_detaches_everything() {
    let (mut p, f) = base("");
    p.shutdown();
    assert!(f.st().attached.is_empty());
    assert!(p.attached_ports().is_empty());
    assert_eq!(
        p.apply(&[Change::Add(
            route("10.1.0.0/16", &[("10.0.2.2", 2, 1)]).into()
        )])
        .len(),
        1
    );
}

#[test]
fn netfilter_chains_on_the_forwarding_path_punt_the_families_they_see() {
    use ekho_plugin_api::object::netfilter::{hook, verdict};
    let (mut p, f) = base("");
    let chain = |family: NfFamily, hook: u32, rules: u32, policy: u32| NfChain {
        family,
        table: "t".into(),
        name: format!("c{}{hook}", family.0).into(),
        chain_type: "filter".into(),
        hook,
        policy,
        rules,
        ..Default::default()
    };
    // An empty accept chain and an input chain change nothing.
    let idle = chain(NfFamily::INET, hook::FORWARD, 0, verdict::ACCEPT);
    let input = chain(NfFamily::INET, hook::INPUT, 5, verdict::DROP);
    assert_eq!(
        add(&mut p, vec![idle.clone().into(), input.into()]),
        vec![Outcome::Offloaded, Outcome::Offloaded]
    );
    assert_eq!(f.st().config.flags, 0);
    // A masquerade rule on ip postrouting: IPv4 to the kernel.
    let nat = chain(NfFamily::IPV4, hook::POSTROUTING, 1, verdict::ACCEPT);
    assert_eq!(
        add(&mut p, vec![nat.clone().into()]),
        vec![Outcome::Trapped]
    );
    assert_eq!(f.st().config.flags, CFG_PUNT_V4);
    // The idle inet chain gets a drop policy: both families.
    let drop = NfChain {
        policy: verdict::DROP,
        ..idle.clone()
    };
    let out = p.apply(&[Change::Update {
        old: idle.into(),
        new: drop.clone().into(),
    }]);
    assert_eq!(out, vec![Outcome::Trapped]);
    assert_eq!(f.st().config.flags, CFG_PUNT_V4 | CFG_PUNT_V6);
    // Both gone: forwarding again.
    p.apply(&[Change::Remove(drop.into()), Change::Remove(nat.into())]);
    assert_eq!(f.st().config.flags, 0);
    // A netdev ingress chain with a rule punts both families.
    let nd = NfChain {
        devices: vec!["p1".into()].into(),
        ..chain(NfFamily::NETDEV, hook::NETDEV_INGRESS, 1, verdict::ACCEPT)
    };
    assert_eq!(add(&mut p, vec![nd.into()]), vec![Outcome::Trapped]);
    assert_eq!(f.st().config.flags, CFG_PUNT_V4 | CFG_PUNT_V6);
}

#[test]
fn a_sync_punts_everything_until_it_ends() {
    let (mut p, f) = base("");
    p.begin_sync();
    assert_eq!(
        f.st().config.flags,
        CFG_PUNT_V4 | CFG_PUNT_V6 | CFG_NOFLOW_V4 | CFG_NOFLOW_V6
    );
    p.end_sync();
    assert_eq!(f.st().config.flags, 0);
}

// ---- flows -----------------------------------------------------------------------------------

/// A host that records the flows handed back.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<ObjectKey>>>);

impl ekho_plugin_api::HostServices for Recorder {
    fn request(
        &self,
        req: Request,
    ) -> abi_stable::std_types::RResult<(), abi_stable::std_types::RString> {
        match req {
            Request::ReleaseFlow { key } => {
                self.0.lock().unwrap().push(key);
                abi_stable::std_types::RResult::ROk(())
            }
            r => abi_stable::std_types::RResult::RErr(format!("{r:?}").into()),
        }
    }
    fn netns(&self) -> abi_stable::std_types::RString {
        "".into()
    }
    fn log(&self, _level: LogLevel, _message: abi_stable::std_types::RStr<'_>) {}
}

fn flow(sport: u16, nat_port: u16) -> Flow {
    let a = |s: &str| s.parse::<IpAddress>().unwrap();
    Flow::new(
        6,
        FlowTuple {
            src: a("10.0.1.2"),
            dst: a("10.0.2.2"),
            sport,
            dport: 5201,
        },
        FlowTuple {
            src: a("10.0.2.2"),
            dst: a("10.0.2.1"),
            sport: 5201,
            dport: nat_port,
        },
    )
}

#[test]
fn flows_are_declared_installed_updated_and_removed() {
    let (mut p, f) = base("");
    let caps = p.capabilities();
    assert!(caps.takes_kind(ObjectKind::Flow));
    assert!(caps.flows.nat);
    assert!(caps.takes_flow(&flow(1, 2)));
    assert!(!caps.takes_flow(&Flow {
        protocol: 1,
        ..flow(1, 2)
    }));
    let fl = flow(40000, 61000);
    assert_eq!(
        add(&mut p, vec![fl.clone().into()]),
        vec![Outcome::Offloaded]
    );
    assert_eq!(f.st().flows.len(), 2, "one entry per direction");
    assert_eq!(f.st().flow_stats.len(), 1);
    // Counters as the data path leaves them: an update of other fields keeps them.
    let id = *f.st().flow_stats.keys().next().unwrap();
    f.st().flow_stats.get_mut(&id).unwrap().packets = [5, 3];
    let upd = Flow {
        status: fl.status | 4,
        ..fl.clone()
    };
    let out = p.apply(&[Change::Update {
        old: fl.clone().into(),
        new: upd.clone().into(),
    }]);
    assert_eq!(out, vec![Outcome::Offloaded]);
    let st = p.object_stats(ObjectKind::Flow);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].key, Object::Flow(fl.clone()).key());
    assert_eq!(
        st[0].counters.iter().map(|c| c.packets).collect::<Vec<_>>(),
        vec![5, 3]
    );
    assert!(p.object_stats(ObjectKind::Route).is_empty());
    // A changed reply tuple (another NAT port) replaces the entries, counters from zero.
    let moved = flow(40000, 61001);
    p.apply(&[Change::Update {
        old: upd.into(),
        new: moved.clone().into(),
    }]);
    assert_eq!(f.st().flows.len(), 2);
    assert!(f.st().flows.keys().any(|k| u16::from_be(k.dport) == 61001));
    assert_eq!(p.object_stats(ObjectKind::Flow)[0].counters[0].packets, 0);
    p.apply(&[Change::Remove(moved.into())]);
    assert!(f.st().flows.is_empty() && f.st().flow_stats.is_empty());
}

#[test]
fn flows_it_cannot_run_fail_and_are_counted() {
    let (mut p, f) = base("");
    let icmp = Flow {
        protocol: 1,
        ..flow(1, 1)
    };
    let a = flow(40000, 61000);
    // Same tuples as `a` in a zone no port is in (no `zones` config): stays in the kernel.
    let other_zone = Flow {
        zone: 7,
        ..a.clone()
    };
    let outs = add(&mut p, vec![icmp.into(), a.into(), other_zone.into()]);
    assert!(
        matches!(&outs[0], Outcome::Failed(m) if m.contains("TCP and UDP")),
        "{outs:?}"
    );
    assert_eq!(outs[1], Outcome::Offloaded);
    assert!(
        matches!(&outs[2], Outcome::Failed(m) if m.contains("zone 7") && m.contains("zones")),
        "{outs:?}"
    );
    assert_eq!(f.st().flows.len(), 2);
    let refused = p
        .stats()
        .counters
        .iter()
        .find(|c| c.kind.as_str() == "flows" && c.name.as_str() == "refused")
        .map(|c| c.value);
    assert_eq!(refused, Some(2));
}

#[test]
fn a_flow_marked_in_the_data_path_is_released_once_and_swept_by_a_sync() {
    let fake = Fake::default();
    let rec = Recorder::default();
    let host = ekho_plugin_api::host::HostServices_TO::from_ptr(
        abi_stable::std_types::RArc::new(rec.clone()),
        abi_stable::sabi_trait::TD_Opaque,
    );
    let mut p = XdpRouter::with_backend("", host, Box::new(fake.clone())).unwrap();
    let (a, b) = (flow(40000, 61000), flow(40001, 61001));
    add(&mut p, vec![a.clone().into(), b.clone().into()]);
    let key_a = Object::Flow(a.clone()).key();
    // The data path saw a FIN on `a` (and the event thread is not running here).
    let id_a = {
        let st = fake.st();
        st.flows
            .iter()
            .find(|(k, _)| u16::from_be(k.sport) == 40000)
            .map(|(_, v)| v.id)
            .unwrap()
    };
    fake.st().flow_stats.get_mut(&id_a).unwrap().flags = FLOW_HANDBACK;
    p.object_stats(ObjectKind::Flow);
    p.object_stats(ObjectKind::Flow);
    assert_eq!(*rec.0.lock().unwrap(), vec![key_a.clone()], "released once");
    // The host removes it; a new entry of the same tuple is a new flow.
    p.apply(&[Change::Remove(a.clone().into())]);
    add(&mut p, vec![a.clone().into()]);
    p.object_stats(ObjectKind::Flow);
    assert_eq!(rec.0.lock().unwrap().len(), 1, "the new flow is not marked");
    // A resync that replays only `a` sweeps `b`.
    p.begin_sync();
    add(&mut p, vec![a.into()]);
    p.end_sync();
    assert_eq!(p.offloaded_flows(), 1);
    assert_eq!(fake.st().flows.len(), 2);
    assert_eq!(p.object_stats(ObjectKind::Flow)[0].key, key_a);
}

#[test]
fn ports_carry_their_zone_and_flows_of_two_zones_do_not_collide() {
    let (mut p, f) = base("zones = { p1 = 7, p2 = 7 }");
    assert_eq!(f.st().ports[&1].zone, 7);
    assert_eq!(f.st().ports[&3].zone, 0, "not listed: zone 0");
    let a = flow(40000, 61000);
    let b = Flow {
        zone: 7,
        ..a.clone()
    };
    assert_eq!(
        add(&mut p, vec![a.into(), b.into()]),
        vec![Outcome::Offloaded, Outcome::Offloaded]
    );
    let st = f.st();
    assert_eq!(st.flows.len(), 4, "two entries per flow, keyed by zone too");
    let mut zones: Vec<u16> = st.flows.keys().map(|k| k.zone).collect();
    zones.sort();
    assert_eq!(zones, vec![0, 0, 7, 7]);
    assert!(
        crate::Config::parse("zones = { p1 = 70000 }").is_err(),
        "a zone is 16 bits"
    );
}
