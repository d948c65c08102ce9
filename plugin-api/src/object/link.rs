//! Network devices (`RTM_NEWLINK`).

use super::net::LinkAddr;
use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// `IFF_UP`: administratively up.
pub const IFF_UP: u32 = 0x1;
/// `IFF_LOWER_UP`: carrier present.
pub const IFF_LOWER_UP: u32 = 0x10000;

/// A network device. Identity: `ifindex`.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct Link {
    pub ifindex: u32,
    pub ifname: RString,
    /// `IFF_*` flags as the kernel reports them.
    pub flags: u32,
    pub mtu: u32,
    /// RFC 2863 operational state (`IF_OPER_*`): 0 unknown .. 6 up.
    pub operstate: u8,
    /// `ARPHRD_*` device type.
    pub link_type: u16,
    pub address: LinkAddr,
    pub broadcast: LinkAddr,
    /// Bridge/bond master ifindex, 0 when none.
    pub master: u32,
    /// Master's name (filled by the host, empty when none).
    pub master_name: RString,
    /// `IFLA_LINK`: lower device or veth peer ifindex, 0 when none.
    pub link: u32,
    /// `IFLA_LINK_NETNSID` of `link`, -1 when in the same namespace.
    pub link_netnsid: i32,
    /// `IFLA_INFO_KIND`: `bridge`, `veth`, `vxlan`, ... (empty for plain devices).
    pub kind: RString,
    /// `IFLA_INFO_SLAVE_KIND`: `bridge` for bridge ports.
    pub slave_kind: RString,
    pub ifalias: RString,
    pub qdisc: RString,
    pub txqlen: u32,
    pub group: u32,
}

impl Link {
    /// Administratively up.
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }
    /// Carrier present.
    pub fn has_carrier(&self) -> bool {
        self.flags & IFF_LOWER_UP != 0
    }
    /// iproute2's operstate name (`UP`, `DOWN`, `UNKNOWN`, `LOWERLAYERDOWN`...).
    pub fn operstate_name(&self) -> &'static str {
        match self.operstate {
            1 => "NOTPRESENT",
            2 => "DOWN",
            3 => "LOWERLAYERDOWN",
            4 => "TESTING",
            5 => "DORMANT",
            6 => "UP",
            _ => "UNKNOWN",
        }
    }
    /// iproute2's flag names (`BROADCAST`, `MULTICAST`, `UP`, `LOWER_UP`, ...), in iproute2 order.
    pub fn flag_names(&self) -> Vec<&'static str> {
        const NAMES: &[(u32, &str)] = &[
            (0x8, "LOOPBACK"),
            (0x2, "BROADCAST"),
            (0x10, "POINTOPOINT"),
            (0x1000, "MULTICAST"),
            (0x80, "NOARP"),
            (0x200, "ALLMULTI"),
            (0x100, "PROMISC"),
            (0x400, "MASTER"),
            (0x800, "SLAVE"),
            (0x20, "DEBUG"),
            (0x20000, "DORMANT"),
            (0x4000, "AUTOMEDIA"),
            (0x8000, "DYNAMIC"),
            (0x40000, "ECHO"),
            (0x1, "UP"),
            (0x10000, "LOWER_UP"),
        ];
        let mut v: Vec<&str> = NAMES
            .iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|(_, n)| *n)
            .collect();
        // iproute2 prints NO-CARRIER for an up device without carrier.
        if self.is_up() && !self.has_carrier() {
            v.insert(0, "NO-CARRIER");
        }
        v
    }

    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("ifindex".into(), self.ifindex.into());
        m.insert("ifname".into(), self.ifname.as_str().into());
        m.insert("flags".into(), self.flag_names().into());
        m.insert("mtu".into(), self.mtu.into());
        if !self.qdisc.is_empty() {
            m.insert("qdisc".into(), self.qdisc.as_str().into());
        }
        if self.master != 0 {
            m.insert("master".into(), self.master_name.as_str().into());
        }
        m.insert("operstate".into(), self.operstate_name().into());
        m.insert(
            "group".into(),
            if self.group == 0 {
                "default".into()
            } else {
                self.group.to_string().into()
            },
        );
        m.insert("txqlen".into(), self.txqlen.into());
        m.insert("link_type".into(), link_type_name(self.link_type).into());
        if !self.address.is_empty() {
            m.insert("address".into(), self.address.to_string().into());
        }
        if !self.broadcast.is_empty() {
            m.insert("broadcast".into(), self.broadcast.to_string().into());
        }
        if self.link != 0 {
            m.insert("link_index".into(), self.link.into());
        }
        if self.link_netnsid >= 0 {
            m.insert("link_netnsid".into(), self.link_netnsid.into());
        }
        if !self.ifalias.is_empty() {
            m.insert("ifalias".into(), self.ifalias.as_str().into());
        }
        if !self.kind.is_empty() || !self.slave_kind.is_empty() {
            let mut li = serde_json::Map::new();
            if !self.kind.is_empty() {
                li.insert("info_kind".into(), self.kind.as_str().into());
            }
            if !self.slave_kind.is_empty() {
                li.insert("info_slave_kind".into(), self.slave_kind.as_str().into());
            }
            m.insert("linkinfo".into(), li.into());
        }
        m.into()
    }
}

/// iproute2's name of an `ARPHRD_*` type.
pub fn link_type_name(t: u16) -> String {
    match t {
        1 => "ether".into(),
        65534 => "none".into(),
        772 => "loopback".into(),
        768 => "ipip".into(),
        776 => "sit".into(),
        778 => "gre".into(),
        823 => "ip6gre".into(),
        n => format!("[{n}]"),
    }
}
