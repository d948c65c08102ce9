//! Addresses, prefixes and the small numeric vocabularies of rtnetlink, with iproute2's names.

use abi_stable::std_types::RVec;
use abi_stable::StableAbi;
use std::fmt;

/// An address family (`AF_*`), as the kernel numbers it.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Family(pub u8);

impl Family {
    pub const UNSPEC: Family = Family(0);
    pub const INET: Family = Family(2);
    pub const BRIDGE: Family = Family(7);
    pub const INET6: Family = Family(10);
    pub const MPLS: Family = Family(28);

    /// iproute2's name: `inet`, `inet6`, `bridge`, ...
    pub fn name(self) -> String {
        match self.0 {
            0 => "unspec".into(),
            2 => "inet".into(),
            7 => "bridge".into(),
            10 => "inet6".into(),
            28 => "mpls".into(),
            n => format!("family{n}"),
        }
    }
}

/// An IPv4 or IPv6 address.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum IpAddress {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl IpAddress {
    /// The address family of this address.
    pub fn family(&self) -> Family {
        match self {
            IpAddress::V4(_) => Family::INET,
            IpAddress::V6(_) => Family::INET6,
        }
    }
    /// Converts to the standard library type.
    pub fn to_std(&self) -> std::net::IpAddr {
        (*self).into()
    }
    /// Maximum prefix length for this family (32 or 128).
    pub fn max_len(&self) -> u8 {
        match self {
            IpAddress::V4(_) => 32,
            IpAddress::V6(_) => 128,
        }
    }
    /// The address with every bit past `len` cleared.
    pub fn masked(&self, len: u8) -> IpAddress {
        fn mask(bytes: &mut [u8], len: u8) {
            for (i, b) in bytes.iter_mut().enumerate() {
                let bit = (i * 8) as u32;
                let len = len as u32;
                if bit >= len {
                    *b = 0;
                } else if bit + 8 > len {
                    *b &= 0xffu8 << (8 - (len - bit));
                }
            }
        }
        let mut a = *self;
        match &mut a {
            IpAddress::V4(b) => mask(b, len),
            IpAddress::V6(b) => mask(b, len),
        }
        a
    }
}

impl From<std::net::IpAddr> for IpAddress {
    fn from(a: std::net::IpAddr) -> Self {
        match a {
            std::net::IpAddr::V4(v) => IpAddress::V4(v.octets()),
            std::net::IpAddr::V6(v) => IpAddress::V6(v.octets()),
        }
    }
}
impl From<std::net::Ipv4Addr> for IpAddress {
    fn from(a: std::net::Ipv4Addr) -> Self {
        IpAddress::V4(a.octets())
    }
}
impl From<std::net::Ipv6Addr> for IpAddress {
    fn from(a: std::net::Ipv6Addr) -> Self {
        IpAddress::V6(a.octets())
    }
}
impl From<IpAddress> for std::net::IpAddr {
    fn from(a: IpAddress) -> Self {
        match a {
            IpAddress::V4(b) => std::net::IpAddr::from(b),
            IpAddress::V6(b) => std::net::IpAddr::from(b),
        }
    }
}

impl fmt::Display for IpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_std(), f)
    }
}

impl std::str::FromStr for IpAddress {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<std::net::IpAddr>().map(Into::into)
    }
}

/// An address with a prefix length (`10.0.0.0/24`, `2001:db8::/64`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct IpPrefix {
    pub addr: IpAddress,
    pub len: u8,
}

impl IpPrefix {
    /// A prefix; the address is kept as given (the kernel stores route keys masked already).
    pub fn new(addr: IpAddress, len: u8) -> IpPrefix {
        IpPrefix { addr, len }
    }
    /// The all-zero prefix of a family (`0.0.0.0/0` or `::/0`).
    pub fn default_route(family: Family) -> IpPrefix {
        let addr = if family == Family::INET6 {
            IpAddress::V6([0; 16])
        } else {
            IpAddress::V4([0; 4])
        };
        IpPrefix { addr, len: 0 }
    }
    /// Whether `a` lies inside this prefix.
    pub fn contains(&self, a: &IpAddress) -> bool {
        a.family() == self.addr.family() && a.masked(self.len) == self.addr.masked(self.len)
    }
    /// iproute2's rendering of a route destination: `default` for /0, bare address for a host
    /// route, `addr/len` otherwise.
    pub fn to_route_string(&self) -> String {
        if self.len == 0 {
            "default".into()
        } else if self.len == self.addr.max_len() {
            self.addr.to_string()
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddress = a.parse().map_err(|e| format!("bad address {a:?}: {e}"))?;
        let len = match l {
            Some(l) => l
                .parse::<u8>()
                .map_err(|e| format!("bad prefix length {l:?}: {e}"))?,
            None => addr.max_len(),
        };
        if len > addr.max_len() {
            return Err(format!("prefix length {len} too long for {addr}"));
        }
        Ok(IpPrefix { addr, len })
    }
}

/// A link-layer address (usually 6 bytes; empty when the device has none).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct LinkAddr(pub RVec<u8>);

impl LinkAddr {
    pub fn new(bytes: &[u8]) -> LinkAddr {
        LinkAddr(bytes.into())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for LinkAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LinkAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(':')
            .map(|p| u8::from_str_radix(p, 16).map_err(|_| format!("bad link-layer address {s:?}")))
            .collect::<Result<Vec<u8>, _>>()
            .map(|v| LinkAddr(v.into()))
    }
}

/// Route scope (`RT_SCOPE_*`).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Scope(pub u8);

impl Scope {
    pub const UNIVERSE: Scope = Scope(0);
    pub const SITE: Scope = Scope(200);
    pub const LINK: Scope = Scope(253);
    pub const HOST: Scope = Scope(254);
    pub const NOWHERE: Scope = Scope(255);

    /// iproute2's name (`global`, `link`, `host`, ...), the number otherwise.
    pub fn name(self) -> String {
        match self.0 {
            0 => "global".into(),
            200 => "site".into(),
            253 => "link".into(),
            254 => "host".into(),
            255 => "nowhere".into(),
            n => n.to_string(),
        }
    }
}

/// Route protocol (`RTPROT_*`): who installed the route.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Protocol(pub u8);

impl Protocol {
    pub const UNSPEC: Protocol = Protocol(0);
    pub const REDIRECT: Protocol = Protocol(1);
    pub const KERNEL: Protocol = Protocol(2);
    pub const BOOT: Protocol = Protocol(3);
    pub const STATIC: Protocol = Protocol(4);

    /// iproute2's name (`kernel`, `boot`, `static`, `bgp`, ...), the number otherwise.
    pub fn name(self) -> String {
        let s = match self.0 {
            0 => "unspec",
            1 => "redirect",
            2 => "kernel",
            3 => "boot",
            4 => "static",
            8 => "gated",
            9 => "ra",
            10 => "mrt",
            11 => "zebra",
            12 => "bird",
            13 => "dnrouted",
            14 => "xorp",
            15 => "ntk",
            16 => "dhcp",
            17 => "mrouted",
            18 => "keepalived",
            42 => "babel",
            99 => "openr",
            186 => "bgp",
            187 => "isis",
            188 => "ospf",
            189 => "rip",
            192 => "eigrp",
            n => return n.to_string(),
        };
        s.into()
    }
}

/// Route type (`RTN_*`).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct RouteType(pub u8);

impl RouteType {
    pub const UNSPEC: RouteType = RouteType(0);
    pub const UNICAST: RouteType = RouteType(1);
    pub const LOCAL: RouteType = RouteType(2);
    pub const BROADCAST: RouteType = RouteType(3);
    pub const ANYCAST: RouteType = RouteType(4);
    pub const MULTICAST: RouteType = RouteType(5);
    pub const BLACKHOLE: RouteType = RouteType(6);
    pub const UNREACHABLE: RouteType = RouteType(7);
    pub const PROHIBIT: RouteType = RouteType(8);
    pub const THROW: RouteType = RouteType(9);
    pub const NAT: RouteType = RouteType(10);

    /// iproute2's name (`unicast`, `local`, `blackhole`, ...).
    pub fn name(self) -> String {
        let s = match self.0 {
            0 => "none",
            1 => "unicast",
            2 => "local",
            3 => "broadcast",
            4 => "anycast",
            5 => "multicast",
            6 => "blackhole",
            7 => "unreachable",
            8 => "prohibit",
            9 => "throw",
            10 => "nat",
            11 => "xresolve",
            n => return n.to_string(),
        };
        s.into()
    }
}

/// iproute2's name of a routing table (`main`, `local`, `default`, or the number).
pub fn table_name(table: u32) -> String {
    match table {
        253 => "default".into(),
        254 => "main".into(),
        255 => "local".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_parse_and_print() {
        let p: IpPrefix = "10.1.2.0/24".parse().unwrap();
        assert_eq!(p.to_string(), "10.1.2.0/24");
        assert_eq!(p.to_route_string(), "10.1.2.0/24");
        let h: IpPrefix = "2001:db8::1".parse().unwrap();
        assert_eq!(h.len, 128);
        assert_eq!(h.to_route_string(), "2001:db8::1");
        assert_eq!(
            IpPrefix::default_route(Family::INET).to_route_string(),
            "default"
        );
        assert!("10.0.0.0/33".parse::<IpPrefix>().is_err());
    }

    #[test]
    fn masking_and_contains() {
        let p: IpPrefix = "10.1.0.0/15".parse().unwrap();
        assert!(p.contains(&"10.0.255.1".parse().unwrap()));
        assert!(!p.contains(&"10.2.0.1".parse().unwrap()));
        assert_eq!(
            "10.1.2.3"
                .parse::<IpAddress>()
                .unwrap()
                .masked(20)
                .to_string(),
            "10.1.0.0"
        );
    }

    #[test]
    fn link_addr() {
        let m: LinkAddr = "02:00:0a:ff:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:ff:00:01");
        assert!("zz".parse::<LinkAddr>().is_err());
    }
}
