//! Connection tracking action (`ct`): sends the packet through conntrack in a zone, optionally
//! committing the connection with a mark and labels, NAT (a range of addresses and ports) and a
//! helper, or clears the packet's conntrack state (`clear`).

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    parse_string, parse_u16, parse_u16_be, parse_u32, parse_u8, DecodeError, DefaultNla, Emitable,
    Nla, NlaBuffer, Parseable,
};
use netlink_packet_route::tc::{TcActionGeneric, Tcf};

use super::{array, need, put, TC_GEN_BUF_LEN};

/// Traffic control action `ct`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionCt {}
impl TcActionCt {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "ct";
}

const TCA_CT_PARMS: u16 = 1;
const TCA_CT_TM: u16 = 2;
const TCA_CT_ACTION: u16 = 3;
const TCA_CT_ZONE: u16 = 4;
const TCA_CT_MARK: u16 = 5;
const TCA_CT_MARK_MASK: u16 = 6;
const TCA_CT_LABELS: u16 = 7;
const TCA_CT_LABELS_MASK: u16 = 8;
const TCA_CT_NAT_IPV4_MIN: u16 = 9;
const TCA_CT_NAT_IPV4_MAX: u16 = 10;
const TCA_CT_NAT_IPV6_MIN: u16 = 11;
const TCA_CT_NAT_IPV6_MAX: u16 = 12;
const TCA_CT_NAT_PORT_MIN: u16 = 13;
const TCA_CT_NAT_PORT_MAX: u16 = 14;
const TCA_CT_HELPER_NAME: u16 = 16;
const TCA_CT_HELPER_FAMILY: u16 = 17;
const TCA_CT_HELPER_PROTO: u16 = 18;

/// Options of the `ct` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionCtOption {
    /// Parameters (`tc_ct`: the generic ones).
    Parms(TcCt),
    /// Installation and usage times.
    Tm(Tcf),
    /// What it does (`TCA_CT_ACT_*` flags).
    Action(TcCtFlags),
    /// Zone.
    Zone(u16),
    /// Mark set on commit.
    Mark(u32),
    /// The mark's mask.
    MarkMask(u32),
    /// Labels set on commit (128 bits).
    Labels([u8; 16]),
    /// The labels' mask.
    LabelsMask([u8; 16]),
    /// NAT range, IPv4, first address.
    NatIpv4Min(Ipv4Addr),
    /// NAT range, IPv4, last address.
    NatIpv4Max(Ipv4Addr),
    /// NAT range, IPv6, first address.
    NatIpv6Min(Ipv6Addr),
    /// NAT range, IPv6, last address.
    NatIpv6Max(Ipv6Addr),
    /// NAT range, first port (host order).
    NatPortMin(u16),
    /// NAT range, last port.
    NatPortMax(u16),
    /// Helper name.
    HelperName(String),
    /// Helper's address family.
    HelperFamily(u8),
    /// Helper's protocol.
    HelperProto(u8),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionCtOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Parms(p) => p.buffer_len(),
            Self::Tm(t) => t.buffer_len(),
            Self::Action(_) | Self::Zone(_) | Self::NatPortMin(_) | Self::NatPortMax(_) => 2,
            Self::Mark(_) | Self::MarkMask(_) | Self::NatIpv4Min(_) | Self::NatIpv4Max(_) => 4,
            Self::Labels(_) | Self::LabelsMask(_) | Self::NatIpv6Min(_) | Self::NatIpv6Max(_) => 16,
            Self::HelperName(s) => s.len() + 1,
            Self::HelperFamily(_) | Self::HelperProto(_) => 1,
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Parms(p) => p.emit(b),
            Self::Tm(t) => t.emit(b),
            Self::Action(f) => put(b, 0, &f.0.to_ne_bytes()),
            Self::Zone(v) => put(b, 0, &v.to_ne_bytes()),
            Self::NatPortMin(v) | Self::NatPortMax(v) => put(b, 0, &v.to_be_bytes()),
            Self::Mark(v) | Self::MarkMask(v) => put(b, 0, &v.to_ne_bytes()),
            Self::NatIpv4Min(a) | Self::NatIpv4Max(a) => put(b, 0, &a.octets()),
            Self::NatIpv6Min(a) | Self::NatIpv6Max(a) => put(b, 0, &a.octets()),
            Self::Labels(l) | Self::LabelsMask(l) => put(b, 0, l),
            Self::HelperName(s) => {
                put(b, 0, s.as_bytes());
                b[s.len()] = 0;
            }
            Self::HelperFamily(v) | Self::HelperProto(v) => b[0] = *v,
            Self::Other(a) => a.emit_value(b),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Parms(_) => TCA_CT_PARMS,
            Self::Tm(_) => TCA_CT_TM,
            Self::Action(_) => TCA_CT_ACTION,
            Self::Zone(_) => TCA_CT_ZONE,
            Self::Mark(_) => TCA_CT_MARK,
            Self::MarkMask(_) => TCA_CT_MARK_MASK,
            Self::Labels(_) => TCA_CT_LABELS,
            Self::LabelsMask(_) => TCA_CT_LABELS_MASK,
            Self::NatIpv4Min(_) => TCA_CT_NAT_IPV4_MIN,
            Self::NatIpv4Max(_) => TCA_CT_NAT_IPV4_MAX,
            Self::NatIpv6Min(_) => TCA_CT_NAT_IPV6_MIN,
            Self::NatIpv6Max(_) => TCA_CT_NAT_IPV6_MAX,
            Self::NatPortMin(_) => TCA_CT_NAT_PORT_MIN,
            Self::NatPortMax(_) => TCA_CT_NAT_PORT_MAX,
            Self::HelperName(_) => TCA_CT_HELPER_NAME,
            Self::HelperFamily(_) => TCA_CT_HELPER_FAMILY,
            Self::HelperProto(_) => TCA_CT_HELPER_PROTO,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionCtOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_CT_PARMS => Self::Parms(TcCt::parse(p)?),
            TCA_CT_TM => Self::Tm(Tcf::parse(p)?),
            TCA_CT_ACTION => Self::Action(TcCtFlags(parse_u16(p)?)),
            TCA_CT_ZONE => Self::Zone(parse_u16(p)?),
            TCA_CT_MARK => Self::Mark(parse_u32(p)?),
            TCA_CT_MARK_MASK => Self::MarkMask(parse_u32(p)?),
            TCA_CT_LABELS => Self::Labels(array(p)?),
            TCA_CT_LABELS_MASK => Self::LabelsMask(array(p)?),
            TCA_CT_NAT_IPV4_MIN => Self::NatIpv4Min(array::<4>(p)?.into()),
            TCA_CT_NAT_IPV4_MAX => Self::NatIpv4Max(array::<4>(p)?.into()),
            TCA_CT_NAT_IPV6_MIN => Self::NatIpv6Min(array::<16>(p)?.into()),
            TCA_CT_NAT_IPV6_MAX => Self::NatIpv6Max(array::<16>(p)?.into()),
            TCA_CT_NAT_PORT_MIN => Self::NatPortMin(parse_u16_be(p)?),
            TCA_CT_NAT_PORT_MAX => Self::NatPortMax(parse_u16_be(p)?),
            TCA_CT_HELPER_NAME => Self::HelperName(parse_string(p)?),
            TCA_CT_HELPER_FAMILY => Self::HelperFamily(parse_u8(p)?),
            TCA_CT_HELPER_PROTO => Self::HelperProto(parse_u8(p)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// What ct does (`TCA_CT_ACT_*`).
#[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
pub struct TcCtFlags(pub u16);

impl TcCtFlags {
    /// `commit`.
    pub const COMMIT: u16 = 1 << 0;
    /// `force` (commit anew a connection of the other direction).
    pub const FORCE: u16 = 1 << 1;
    /// `clear`.
    pub const CLEAR: u16 = 1 << 2;
    /// `nat`.
    pub const NAT: u16 = 1 << 3;
    /// `nat src`.
    pub const NAT_SRC: u16 = 1 << 4;
    /// `nat dst`.
    pub const NAT_DST: u16 = 1 << 5;

    /// Whether `flag` is set.
    pub fn has(self, flag: u16) -> bool {
        self.0 & flag != 0
    }
}

/// `tc_ct`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcCt {
    /// Generic parameters.
    pub generic: TcActionGeneric,
}

impl TcCt {
    /// Parses `tc_ct`.
    pub fn parse(p: &[u8]) -> Result<Self, DecodeError> {
        need(p, TC_GEN_BUF_LEN)?;
        Ok(Self {
            generic: TcActionGeneric::parse(&p[..TC_GEN_BUF_LEN])?,
        })
    }
}

impl Emitable for TcCt {
    fn buffer_len(&self) -> usize {
        TC_GEN_BUF_LEN
    }
    fn emit(&self, b: &mut [u8]) {
        self.generic.emit(b)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::actions, ActionOptions};
    use super::*;

    #[test]
    fn ct_as_the_kernel_dumped_it() {
        let v: Vec<Vec<TcActionCtOption>> = actions("ct")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Ct(o) = o else {
                    panic!("{o:?}")
                };
                o.into_iter()
                    .filter(|x| !matches!(x, TcActionCtOption::Tm(_) | TcActionCtOption::Parms(_)))
                    .collect()
            })
            .collect();
        use TcActionCtOption::*;
        let f = TcCtFlags;
        // ct; ct commit zone 5 mark 0x1/0xff; ct commit nat src addr 10.0.0.1-10.0.0.2 port
        // 1000-2000; ct clear; ct zone 3.
        assert_eq!(v.len(), 5, "{v:?}");
        assert_eq!(v[0], vec![Action(f(0)), Zone(0)]);
        assert_eq!(
            v[1],
            vec![
                Action(f(TcCtFlags::COMMIT)),
                Mark(1),
                MarkMask(0xff),
                Zone(5)
            ]
        );
        assert_eq!(
            v[2],
            vec![
                Action(f(TcCtFlags::COMMIT | TcCtFlags::NAT | TcCtFlags::NAT_SRC)),
                Zone(0),
                NatIpv4Min(Ipv4Addr::new(10, 0, 0, 1)),
                NatIpv4Max(Ipv4Addr::new(10, 0, 0, 2)),
                NatPortMin(1000),
                NatPortMax(2000)
            ]
        );
        assert_eq!(v[3], vec![Action(f(TcCtFlags::CLEAR))]);
        assert_eq!(v[4], vec![Action(f(0)), Zone(3)]);
    }
}
