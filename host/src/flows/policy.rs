//! The offload policy: which conntrack entries become offload candidates (`[[flows.offload]]`
//! tables in the config; docs/flows.md). An entry is a candidate when it is `ASSURED`, TCP ones
//! also `ESTABLISHED` (plugins are never handed half-open flows), and it matches at least one
//! table. Without any table, one table of defaults applies: TCP and UDP, both families, any
//! zone, mark and port.
//!
//! Every value is checked as the file is read, so a bad one is reported with the file, line
//! and column of the value (the TOML reader's span).

use ekho_mirror::conntrack::message::status;
use ekho_mirror::conntrack::Entry;
use serde::Deserialize;

/// `ESTABLISHED` in `CTA_PROTOINFO_TCP_STATE`.
const TCP_ESTABLISHED: u8 = 3;

/// One `[[flows.offload]]` table: every key given must match (absent: any).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `"ipv4"`, `"ipv6"` (default both).
    pub families: Option<Vec<Family>>,
    /// Protocol names as conntrack prints them (`tcp`, `udp`, `sctp`, `udplite`, `dccp`, `gre`,
    /// `icmp`, `icmpv6`) or numbers (default `["tcp", "udp"]`).
    pub protocols: Option<Vec<Protocol>>,
    /// conntrack zones (`CTA_ZONE`).
    pub zones: Option<Vec<u16>>,
    /// The entry's mark: `"VALUE/MASK"` (`mark & MASK == VALUE`), `"VALUE"` or an integer.
    pub mark: Option<Mark>,
    /// Destination ports of the original direction (the service): integers or `"LO-HI"`.
    pub dports: Option<Vec<PortRange>>,
    /// Source ports of the original direction.
    pub sports: Option<Vec<PortRange>>,
}

/// An address family.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    fn number(self) -> u8 {
        match self {
            Family::Ipv4 => 2,
            Family::Ipv6 => 10,
        }
    }
}

/// An IP protocol, by conntrack's name or number.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "NameOrNumber")]
pub struct Protocol(pub u8);

/// A mark and mask.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "NameOrNumber")]
pub struct Mark {
    pub value: u32,
    pub mask: u32,
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "NameOrNumber")]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// A TOML value given as a string or an integer.
#[derive(Deserialize)]
#[serde(untagged)]
enum NameOrNumber {
    Number(i64),
    Name(String),
}

/// conntrack's protocol names (as `conntrack -L` prints them).
pub const PROTOCOLS: &[(&str, u8)] = &[
    ("icmp", 1),
    ("tcp", 6),
    ("udp", 17),
    ("dccp", 33),
    ("gre", 47),
    ("icmpv6", 58),
    ("sctp", 132),
    ("udplite", 136),
];

impl TryFrom<NameOrNumber> for Protocol {
    type Error = String;
    fn try_from(v: NameOrNumber) -> Result<Protocol, String> {
        let names = || {
            PROTOCOLS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match v {
            NameOrNumber::Number(n) => u8::try_from(n).map(Protocol).map_err(|_| {
                format!(
                    "protocol {n} is not an IP protocol number (0-255); or a name: {}",
                    names()
                )
            }),
            NameOrNumber::Name(s) => PROTOCOLS
                .iter()
                .find(|(n, _)| *n == s)
                .map(|(_, p)| Protocol(*p))
                .ok_or_else(|| {
                    format!("unknown protocol {s:?}; one of: {} (or a number)", names())
                }),
        }
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl TryFrom<NameOrNumber> for Mark {
    type Error = String;
    fn try_from(v: NameOrNumber) -> Result<Mark, String> {
        let bad = |s: &str| {
            format!("mark {s:?} is not VALUE or VALUE/MASK (32-bit, decimal or 0x hex), e.g. \"0x10/0xff\"")
        };
        match v {
            NameOrNumber::Number(n) => u32::try_from(n)
                .map(|value| Mark {
                    value,
                    mask: u32::MAX,
                })
                .map_err(|_| bad(&n.to_string())),
            NameOrNumber::Name(s) => {
                let (v, m) = match s.split_once('/') {
                    Some((v, m)) => (parse_u32(v), parse_u32(m)),
                    None => (parse_u32(&s), Some(u32::MAX)),
                };
                match (v, m) {
                    (Some(value), Some(mask)) if value & !mask == 0 => Ok(Mark { value, mask }),
                    (Some(_), Some(_)) => Err(format!(
                        "mark {s:?}: the value has bits outside the mask, so nothing would match"
                    )),
                    _ => Err(bad(&s)),
                }
            }
        }
    }
}

impl TryFrom<NameOrNumber> for PortRange {
    type Error = String;
    fn try_from(v: NameOrNumber) -> Result<PortRange, String> {
        let bad = |s: &str| format!("port {s:?} is not a port (1-65535) or a range \"LO-HI\"");
        let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
        match v {
            NameOrNumber::Number(n) => u16::try_from(n)
                .ok()
                .filter(|p| *p > 0)
                .map(|p| PortRange { lo: p, hi: p })
                .ok_or_else(|| bad(&n.to_string())),
            NameOrNumber::Name(s) => {
                let (lo, hi) = match s.split_once('-') {
                    Some((a, b)) => (port(a), port(b)),
                    None => (port(&s), port(&s)),
                };
                match (lo, hi) {
                    (Some(lo), Some(hi)) if lo <= hi => Ok(PortRange { lo, hi }),
                    (Some(_), Some(_)) => Err(format!(
                        "port range {s:?} is empty: write it LO-HI, LO <= HI"
                    )),
                    _ => Err(bad(&s)),
                }
            }
        }
    }
}

impl Rule {
    /// Whether the entry matches every key given.
    pub fn matches(&self, e: &Entry) -> bool {
        let f = &e.flow;
        let fam = self
            .families
            .as_ref()
            .is_none_or(|v| v.iter().any(|x| x.number() == f.family.0));
        let proto = match &self.protocols {
            Some(v) => v.iter().any(|p| p.0 == f.protocol),
            None => f.protocol == 6 || f.protocol == 17,
        };
        let zone = self.zones.as_ref().is_none_or(|v| v.contains(&f.zone));
        let mark = self.mark.is_none_or(|m| f.mark & m.mask == m.value);
        let ports = |v: &Option<Vec<PortRange>>, p: u16| {
            v.as_ref()
                .is_none_or(|v| v.iter().any(|r| (r.lo..=r.hi).contains(&p)))
        };
        fam && proto
            && zone
            && mark
            && ports(&self.dports, f.original.dport)
            && ports(&self.sports, f.original.sport)
    }
}

/// The whole policy: the `[[flows.offload]]` tables (none: the defaults).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy<'a> {
    pub rules: &'a [Rule],
}

impl Policy<'_> {
    /// Whether the entry is an offload candidate.
    pub fn candidate(&self, e: &Entry) -> bool {
        let st = e.flow.status;
        if st & status::ASSURED == 0 || st & status::DYING != 0 {
            return false;
        }
        if e.protocol() == 6 && e.tcp_state != Some(TCP_ESTABLISHED) {
            return false;
        }
        // A zone of one direction only (`zone-orig`/`zone-reply`: the other direction is
        // tracked in zone 0): the API's flow has one zone for both, so a plugin would look the
        // other direction up in the wrong zone. Such entries stay with the kernel.
        if e.tuple_zones[0] != e.tuple_zones[1] {
            return false;
        }
        if self.rules.is_empty() {
            return Rule::default().matches(e);
        }
        self.rules.iter().any(|r| r.matches(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ekho_mirror::conntrack::{Flow, FlowTuple};

    fn flow(proto: u8, dport: u16, state: Option<u8>, st: u32) -> Entry {
        let a = |s: &str| s.parse().unwrap();
        let t = FlowTuple {
            src: a("10.0.1.2"),
            dst: a("10.0.2.2"),
            sport: 40000,
            dport,
        };
        let r = FlowTuple {
            src: t.dst,
            dst: t.src,
            sport: dport,
            dport: 40000,
        };
        let mut flow = Flow::new(proto, t, r);
        flow.status = st;
        flow.id = 1;
        Entry {
            flow,
            timeout: 100,
            use_count: 1,
            tcp_state: state,
            tcp_flags: [0, 0],
            counters_orig: None,
            counters_reply: None,
            labels: None,
            tuple_zones: [0, 0],
        }
    }

    /// `e` with its flow changed by `f`.
    fn with(e: &Entry, f: impl FnOnce(&mut Flow)) -> Entry {
        let mut e = e.clone();
        f(&mut e.flow);
        e
    }

    const ASSURED: u32 = status::SEEN_REPLY | status::ASSURED | status::CONFIRMED;

    #[test]
    fn the_default_takes_assured_tcp_established_and_assured_udp() {
        let p = Policy { rules: &[] };
        assert!(p.candidate(&flow(6, 80, Some(3), ASSURED)));
        assert!(!p.candidate(&flow(6, 80, Some(2), ASSURED)), "SYN_RECV");
        assert!(!p.candidate(&flow(6, 80, Some(7), ASSURED)), "TIME_WAIT");
        assert!(
            !p.candidate(&flow(6, 80, Some(3), status::SEEN_REPLY)),
            "not assured"
        );
        assert!(p.candidate(&flow(17, 53, None, ASSURED)));
        assert!(!p.candidate(&flow(17, 53, None, 0)), "unreplied");
        assert!(!p.candidate(&flow(1, 0x800, None, ASSURED)), "icmp");
        assert!(!p.candidate(&flow(132, 9, None, ASSURED)), "sctp");
        assert!(
            !p.candidate(&flow(17, 53, None, ASSURED | status::DYING)),
            "dying"
        );
        let mut zoned = flow(17, 53, None, ASSURED);
        zoned.flow.zone = 5;
        assert!(p.candidate(&zoned), "a zone of both directions");
        zoned.tuple_zones = [5, 0];
        assert!(!p.candidate(&zoned), "zone-orig only");
        zoned.tuple_zones = [0, 5];
        assert!(!p.candidate(&zoned), "zone-reply only");
    }

    fn rules(toml_text: &str) -> Vec<Rule> {
        #[derive(Deserialize)]
        struct F {
            offload: Vec<Rule>,
        }
        toml::from_str::<F>(toml_text).unwrap().offload
    }

    #[test]
    fn filters_by_family_protocol_zone_mark_and_ports() {
        let r = rules(
            "[[offload]]\nfamilies = [\"ipv4\"]\nprotocols = [\"udp\", 132]\nzones = [0, 7]\nmark = \"0x10/0xf0\"\ndports = [53, \"5000-5100\"]\n",
        );
        let p = Policy { rules: &r };
        let f = with(&flow(17, 5050, None, ASSURED), |f| f.mark = 0x13);
        assert!(p.candidate(&f));
        assert!(!p.candidate(&with(&f, |f| f.mark = 0x23)), "mark");
        assert!(!p.candidate(&with(&f, |f| f.zone = 3)), "zone");
        assert!(
            !p.candidate(&with(&f, |f| f.family =
                ekho_mirror::conntrack::message::Family::INET6)),
            "family"
        );
        let mut g = with(&f, |f| f.original.dport = 5101);
        assert!(!p.candidate(&g), "port");
        g.flow.original.dport = 53;
        assert!(p.candidate(&g));
        g.flow.protocol = 132;
        assert!(p.candidate(&g), "sctp by number");
        g.flow.protocol = 6;
        g.tcp_state = Some(3);
        assert!(!p.candidate(&g), "tcp not listed");
        // Any table matching is enough; sports.
        let r = rules("[[offload]]\nprotocols = [\"tcp\"]\nsports = [40000]\n[[offload]]\nprotocols = [\"udp\"]\n");
        let p = Policy { rules: &r };
        assert!(p.candidate(&flow(6, 1, Some(3), ASSURED)));
        assert!(p.candidate(&flow(17, 1, None, ASSURED)));
        let mut h = flow(6, 1, Some(3), ASSURED);
        h.flow.original.sport = 1;
        assert!(!p.candidate(&h));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let err = |t: &str| {
            #[derive(Deserialize, Debug)]
            #[allow(dead_code)]
            struct F {
                offload: Vec<Rule>,
            }
            toml::from_str::<F>(t).unwrap_err().to_string()
        };
        let e = err("[[offload]]\nprotocols = [\"tpc\"]\n");
        assert!(
            e.contains("unknown protocol \"tpc\"") && e.contains("tcp, udp"),
            "{e}"
        );
        let e = err("[[offload]]\ndports = [\"90-80\"]\n");
        assert!(e.contains("empty"), "{e}");
        let e = err("[[offload]]\ndports = [70000]\n");
        assert!(e.contains("1-65535"), "{e}");
        let e = err("[[offload]]\nmark = \"0x11/0x10\"\n");
        assert!(e.contains("outside the mask"), "{e}");
        let e = err("[[offload]]\nmark = \"ten\"\n");
        assert!(e.contains("VALUE/MASK"), "{e}");
        let e = err("[[offload]]\nfamilies = [\"inet\"]\n");
        assert!(e.contains("ipv4") && e.contains("ipv6"), "{e}");
        let e = err("[[offload]]\nport = [1]\n");
        assert!(e.contains("unknown field `port`"), "{e}");
    }
}
