//! VLAN action (`vlan`): pop, push or modify an 802.1Q/802.1ad tag (and, from 5.12, pop or
//! push an Ethernet header: `pop_eth`, `push_eth`).

use netlink_packet_core::{
    parse_mac, parse_u16, parse_u16_be, parse_u8, DecodeError, DefaultNla, Emitable, Nla,
    NlaBuffer, Parseable,
};
use netlink_packet_route::tc::{TcActionGeneric, Tcf};

use super::{i32_at, need, put, TC_GEN_BUF_LEN};

/// Traffic control action `vlan`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionVlan {}
impl TcActionVlan {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "vlan";
}

const TCA_VLAN_TM: u16 = 1;
const TCA_VLAN_PARMS: u16 = 2;
const TCA_VLAN_PUSH_VLAN_ID: u16 = 3;
const TCA_VLAN_PUSH_VLAN_PROTOCOL: u16 = 4;
const TCA_VLAN_PUSH_VLAN_PRIORITY: u16 = 6;
const TCA_VLAN_PUSH_ETH_DST: u16 = 7;
const TCA_VLAN_PUSH_ETH_SRC: u16 = 8;

/// Options of the `vlan` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionVlanOption {
    /// Installation and usage times.
    Tm(Tcf),
    /// Parameters (`tc_vlan`).
    Parms(TcVlan),
    /// The VLAN id pushed or set.
    PushVlanId(u16),
    /// The tag's protocol (ethertype, host order: 0x8100 802.1Q, 0x88a8 802.1ad).
    PushVlanProtocol(u16),
    /// The priority (PCP) pushed or set.
    PushVlanPriority(u8),
    /// `push_eth`'s destination address.
    PushEthDst([u8; 6]),
    /// `push_eth`'s source address.
    PushEthSrc([u8; 6]),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionVlanOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Tm(t) => t.buffer_len(),
            Self::Parms(p) => p.buffer_len(),
            Self::PushVlanId(_) | Self::PushVlanProtocol(_) => 2,
            Self::PushVlanPriority(_) => 1,
            Self::PushEthDst(_) | Self::PushEthSrc(_) => 6,
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Tm(t) => t.emit(b),
            Self::Parms(p) => p.emit(b),
            Self::PushVlanId(v) => put(b, 0, &v.to_ne_bytes()),
            Self::PushVlanProtocol(v) => put(b, 0, &v.to_be_bytes()),
            Self::PushVlanPriority(v) => b[0] = *v,
            Self::PushEthDst(m) | Self::PushEthSrc(m) => put(b, 0, m),
            Self::Other(a) => a.emit_value(b),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Tm(_) => TCA_VLAN_TM,
            Self::Parms(_) => TCA_VLAN_PARMS,
            Self::PushVlanId(_) => TCA_VLAN_PUSH_VLAN_ID,
            Self::PushVlanProtocol(_) => TCA_VLAN_PUSH_VLAN_PROTOCOL,
            Self::PushVlanPriority(_) => TCA_VLAN_PUSH_VLAN_PRIORITY,
            Self::PushEthDst(_) => TCA_VLAN_PUSH_ETH_DST,
            Self::PushEthSrc(_) => TCA_VLAN_PUSH_ETH_SRC,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionVlanOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_VLAN_TM => Self::Tm(Tcf::parse(p)?),
            TCA_VLAN_PARMS => Self::Parms(TcVlan::parse(p)?),
            TCA_VLAN_PUSH_VLAN_ID => Self::PushVlanId(parse_u16(p)?),
            TCA_VLAN_PUSH_VLAN_PROTOCOL => Self::PushVlanProtocol(parse_u16_be(p)?),
            TCA_VLAN_PUSH_VLAN_PRIORITY => Self::PushVlanPriority(parse_u8(p)?),
            TCA_VLAN_PUSH_ETH_DST => Self::PushEthDst(parse_mac(p)?),
            TCA_VLAN_PUSH_ETH_SRC => Self::PushEthSrc(parse_mac(p)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// What the vlan action does (`TCA_VLAN_ACT_*`).
#[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
#[non_exhaustive]
pub enum TcVlanAction {
    /// `pop`.
    #[default]
    Pop,
    /// `push`.
    Push,
    /// `modify`.
    Modify,
    /// `pop_eth`.
    PopEth,
    /// `push_eth`.
    PushEth,
    /// Unknown at the time of writing.
    Other(i32),
}

impl From<i32> for TcVlanAction {
    fn from(v: i32) -> Self {
        match v {
            1 => Self::Pop,
            2 => Self::Push,
            3 => Self::Modify,
            4 => Self::PopEth,
            5 => Self::PushEth,
            v => Self::Other(v),
        }
    }
}

impl From<TcVlanAction> for i32 {
    fn from(v: TcVlanAction) -> i32 {
        match v {
            TcVlanAction::Pop => 1,
            TcVlanAction::Push => 2,
            TcVlanAction::Modify => 3,
            TcVlanAction::PopEth => 4,
            TcVlanAction::PushEth => 5,
            TcVlanAction::Other(v) => v,
        }
    }
}

const TC_VLAN_BUF_LEN: usize = TC_GEN_BUF_LEN + 4;

/// `tc_vlan`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcVlan {
    /// Generic parameters.
    pub generic: TcActionGeneric,
    /// What it does to the tag.
    pub v_action: TcVlanAction,
}

impl TcVlan {
    /// Parses `tc_vlan`.
    pub fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        need(payload, TC_VLAN_BUF_LEN)?;
        Ok(Self {
            generic: TcActionGeneric::parse(&payload[..TC_GEN_BUF_LEN])?,
            v_action: i32_at(payload, TC_GEN_BUF_LEN).into(),
        })
    }
}

impl Emitable for TcVlan {
    fn buffer_len(&self) -> usize {
        TC_VLAN_BUF_LEN
    }
    fn emit(&self, b: &mut [u8]) {
        self.generic.emit(&mut b[..TC_GEN_BUF_LEN]);
        put(b, TC_GEN_BUF_LEN, &i32::from(self.v_action).to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::actions, ActionOptions};
    use super::*;

    #[test]
    fn vlan_as_the_kernel_dumped_it() {
        // push id 100 protocol 802.1Q priority 3; pop; modify id 200 protocol 802.1ad pipe.
        let v: Vec<Vec<TcActionVlanOption>> = actions("vlan")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Vlan(mut o) = o else {
                    panic!("{o:?}")
                };
                o.retain(|x| !matches!(x, TcActionVlanOption::Tm(_)));
                o
            })
            .collect();
        let parms = |index, a| {
            let mut generic = TcActionGeneric::default();
            generic.index = index;
            generic.action = netlink_packet_route::tc::TcActionType::Pipe;
            generic.refcnt = 1;
            TcActionVlanOption::Parms(TcVlan {
                generic,
                v_action: a,
            })
        };
        use TcActionVlanOption::*;
        assert_eq!(
            v,
            vec![
                vec![
                    parms(1, TcVlanAction::Push),
                    PushVlanId(100),
                    PushVlanProtocol(0x8100),
                    PushVlanPriority(3)
                ],
                vec![parms(2, TcVlanAction::Pop)],
                vec![
                    parms(3, TcVlanAction::Modify),
                    PushVlanId(200),
                    PushVlanProtocol(0x88a8)
                ],
            ]
        );
    }
}
