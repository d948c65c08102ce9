//! What deriving the plugin API's tc objects costs the mirror (API 1.3, `State::sync_tc`: the
//! whole tc state converted and diffed at each flush that follows a tc change), against
//! applying the same tc messages to the tc state alone, in one run.
//!
//! N flower filters (dst_ip and a gact drop each) are added one message per batch (the worst
//! case: a flush after every message, as when they arrive one by one), then once more all in
//! one batch (as a dump or a burst read in one go brings them).
//!
//! `cargo run --release -p ekho-mirror --example bench_tc_objects -- [N]` (default 2000).

use ekho_mirror::netlink::tc::{Filter, Message, Qdisc, Target, H_INGRESS, H_MIN_INGRESS};
use ekho_mirror::state::State;
use ekho_mirror::Event;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionType, TcFilterFlowerOption, TcOption,
};
use std::net::Ipv4Addr;
use std::time::Instant;

fn filter(i: u32) -> Filter {
    let mut gact = TcAction::default();
    gact.tab = 1;
    gact.attributes = vec![
        TcActionAttribute::Kind("gact".into()),
        TcActionAttribute::Index(i + 1),
        TcActionAttribute::Options(
            ekho_mirror::netlink::tc_act::ActionOptions::Gact(vec![
                ekho_mirror::netlink::tc_act::TcActionGactOption::Parms({
                    let mut p = ekho_mirror::netlink::tc_act::TcGact::default();
                    let mut g = TcActionGeneric::default();
                    g.index = i + 1;
                    g.action = TcActionType::Shot;
                    p.generic = g;
                    p
                }),
            ])
            .to_route(),
        ),
    ];
    Filter {
        target: Target::Dev(2),
        parent: H_MIN_INGRESS,
        chain: 0,
        prio: 1,
        protocol: 0x0800,
        handle: i + 1,
        kind: "flower".into(),
        options: vec![
            TcOption::Flower(TcFilterFlowerOption::EthType(0x0800)),
            TcOption::Flower(TcFilterFlowerOption::Ipv4Dst(Ipv4Addr::from(
                0x0a00_0000 + i,
            ))),
            TcOption::Flower(TcFilterFlowerOption::Actions(vec![gact])),
        ],
        attributes: vec![],
    }
}

fn run(n: u32, flush_each: bool, derive: bool) -> (f64, usize) {
    let mut s = State::default();
    s.tracking = true;
    let q = Qdisc {
        ifindex: 2,
        handle: 0xffff_0000,
        parent: H_INGRESS,
        kind: "clsact".into(),
        options: vec![],
        ingress_block: None,
        egress_block: None,
        attributes: vec![],
    };
    s.apply(Event::Tc(Message::NewQdisc(q)));
    s.flush();
    let filters: Vec<Filter> = (0..n).map(filter).collect();
    let t = Instant::now();
    let mut changes = 0;
    for f in filters {
        if derive {
            s.apply(Event::Tc(Message::NewFilter(f)));
            if flush_each {
                changes += s.flush().len();
            }
        } else {
            s.tc.apply(Message::NewFilter(f));
        }
    }
    if derive {
        changes += s.flush().len();
    }
    (t.elapsed().as_secs_f64(), changes)
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    parts(n);
    let (base, _) = run(n, false, false);
    let (batch, c1) = run(n, false, true);
    let (each, c2) = run(n, true, true);
    println!(
        "{n} flower filters: tc state alone {:.1} ms; with the API objects, one batch {:.1} ms \
         ({:.2}x, {c1} changes), a flush per message {:.1} ms ({:.1}x, {c2} changes, {:.1} us per \
         filter)",
        base * 1e3,
        batch * 1e3,
        batch / base,
        each * 1e3,
        each / base,
        each * 1e6 / n as f64
    );
}

fn parts(n: u32) {
    let mut tc = ekho_mirror::state::tc::Tc::default();
    for i in 0..n {
        tc.apply(Message::NewFilter(filter(i)));
    }
    let t = Instant::now();
    let a = tc.actions().len();
    let ta = t.elapsed();
    let t = Instant::now();
    let o = tc.objects().len();
    let to = t.elapsed();
    println!("parts: actions() {a} in {ta:?}, objects() {o} in {to:?}");
}
