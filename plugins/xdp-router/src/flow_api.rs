//! The adapter between the plugin API's flow kind (API 1.2: `Object::Flow`, `ObjectKey::Flow`,
//! `Plugin::object_stats`, `Request::ReleaseFlow`) and [`crate::flows`], which knows nothing of
//! the API. Everything the plugin does with flows that depends on the API's types is here.

use crate::flows::{FlowCounters, FlowError, FlowSpec, Tuple};
use ekho_plugin_api::prelude::*;

/// What of a host's flow the data path runs. `Err`: the flow is not taken (the outcome says
/// why).
pub fn spec_of(f: &Flow) -> Result<FlowSpec, FlowError> {
    let t = |t: &FlowTuple| Tuple {
        src: t.src.to_std(),
        dst: t.dst.to_std(),
        sport: t.sport,
        dport: t.dport,
    };
    let spec = FlowSpec {
        proto: f.protocol,
        zone: f.zone,
        orig: t(&f.original),
        reply: t(&f.reply),
    };
    spec.entries(0)?; // validated here, so the outcome names the reason
    Ok(spec)
}

/// The per-object stats of a flow: original direction, then reply.
pub fn object_stats(key: ObjectKey, c: &FlowCounters) -> ObjectStats {
    let dir = |i: usize| ObjectCounters {
        packets: c.packets[i],
        bytes: c.bytes[i],
        drops: 0,
        lastused: c.lastused[i],
    };
    ObjectStats::flow(key, dir(0), dir(1))
}

/// Hands flow `key` back to the kernel (it saw FIN or RST).
pub fn release(host: &HostHandle, key: &ObjectKey) -> Result<(), String> {
    host.request(Request::ReleaseFlow { key: key.clone() })
        .into_result()
        .map_err(|e| e.to_string())
}

/// The flow object of a change (`None`: not a flow), and whether it is removed.
pub fn flow_of(change: &Change) -> Option<(&Flow, bool)> {
    match change {
        Change::Add(Object::Flow(f))
        | Change::Update {
            new: Object::Flow(f),
            ..
        } => Some((f, false)),
        Change::Remove(Object::Flow(f)) => Some((f, true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_flow_to_spec() {
        let a = |s: &str| s.parse::<IpAddress>().unwrap();
        let f = Flow::new(
            6,
            FlowTuple {
                src: a("10.0.1.2"),
                dst: a("10.0.2.2"),
                sport: 40000,
                dport: 5201,
            },
            FlowTuple {
                src: a("10.0.2.2"),
                dst: a("10.0.2.1"),
                sport: 5201,
                dport: 61000,
            },
        );
        let s = spec_of(&f).unwrap();
        assert!(s.is_nat());
        assert_eq!(s.orig.sport, 40000);
        assert_eq!(s.reply.dst, "10.0.2.1".parse::<std::net::IpAddr>().unwrap());
        assert!(spec_of(&Flow { protocol: 1, ..f }).is_err());
    }
}
