//! The identity of held objects: a 64-bit hash of their key.

use ekho_plugin_api::prelude::*;
use ekho_plugin_api::ObjectKey;

/// A 64-bit hash of an object key: the identity of held objects in the outcome table (foldhash's
/// quality variant with a fixed seed: stable within the process, well mixed, fast).
#[inline]
pub(super) fn key_hash(k: &ObjectKey) -> u64 {
    use std::hash::BuildHasher;
    let st = foldhash::quality::FixedState::with_seed(0x656b_686f);
    match k {
        // Routes are nearly all of a large table: their key is packed into six words and hashed
        // as one slice (the derived `Hash` writes a dozen small fields one by one, ~4x slower).
        ObjectKey::Route {
            family,
            table,
            dst,
            src,
            tos,
            metric,
            dev,
        } => {
            let addr = |a: &IpAddress| -> (u64, u64) {
                let mut b = [0u8; 16];
                match a {
                    IpAddress::V4(x) => b[..4].copy_from_slice(x),
                    IpAddress::V6(x) => b = *x,
                }
                (
                    u64::from_ne_bytes(b[..8].try_into().unwrap()),
                    u64::from_ne_bytes(b[8..].try_into().unwrap()),
                )
            };
            let (d0, d1) = addr(&dst.addr);
            let (s0, s1) = addr(&src.addr);
            let w0 = u64::from(family.0)
                | u64::from(*table) << 8
                | u64::from(*tos) << 40
                | u64::from(dst.len) << 48
                | u64::from(src.len) << 56;
            let w1 = u64::from(*metric) | u64::from(*dev) << 32;
            st.hash_one([w0, w1, d0, d1, s0, s1])
        }
        other => st.hash_one(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::test_objects::route;
    use ekho_plugin_api::object::Route;

    #[test]
    fn route_key_hash_tells_every_field_apart() {
        let base = match route("10.0.0.0/24", 3, "10.1.0.1") {
            Object::Route(r) => r,
            _ => unreachable!(),
        };
        let key = |r: &Route| Object::Route(r.clone()).key();
        let mut variants = vec![base.clone()];
        let mut v = base.clone();
        v.table = 100;
        variants.push(v);
        let mut v = base.clone();
        v.metric = 1;
        variants.push(v);
        let mut v = base.clone();
        v.tos = 4;
        variants.push(v);
        let mut v = base.clone();
        v.dst = "10.0.0.0/25".parse().unwrap();
        variants.push(v);
        let mut v = base.clone();
        v.dst = "10.0.1.0/24".parse().unwrap();
        variants.push(v);
        let mut v = base.clone();
        v.nexthops[0].gateway = ROption::RNone; // a device route: dev in the key
        variants.push(v);
        let mut v = base.clone();
        v.family = Family::INET6;
        v.dst = "a00::/24".parse().unwrap();
        variants.push(v);
        let hashes: std::collections::HashSet<u64> =
            variants.iter().map(|r| key_hash(&key(r))).collect();
        assert_eq!(hashes.len(), variants.len());
        assert_eq!(key_hash(&key(&base)), key_hash(&key(&base.clone())));
    }
}
