//! MPLS action (`mpls`): push, pop or modify an MPLS label stack entry, decrement its TTL, or
//! (from 5.14) push one before the Ethernet header (`mac_push`).

use netlink_packet_core::{
    parse_u16_be, parse_u32, parse_u8, DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable,
};
use netlink_packet_route::tc::{TcActionGeneric, Tcf};

use super::{i32_at, need, put, TC_GEN_BUF_LEN};

/// Traffic control action `mpls`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionMpls {}
impl TcActionMpls {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "mpls";
}

const TCA_MPLS_TM: u16 = 1;
const TCA_MPLS_PARMS: u16 = 2;
const TCA_MPLS_PROTO: u16 = 4;
const TCA_MPLS_LABEL: u16 = 5;
const TCA_MPLS_TC: u16 = 6;
const TCA_MPLS_TTL: u16 = 7;
const TCA_MPLS_BOS: u16 = 8;

/// Options of the `mpls` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionMplsOption {
    /// Installation and usage times.
    Tm(Tcf),
    /// Parameters (`tc_mpls`).
    Parms(TcMpls),
    /// The ethertype (host order) of the header pushed (0x8847 unicast, 0x8848 multicast) or,
    /// for `pop`, of the header after it.
    Proto(u16),
    /// The label (its lower 20 bits).
    Label(u32),
    /// The traffic class (its lower 3 bits).
    Tc(u8),
    /// The TTL (never 0).
    Ttl(u8),
    /// The bottom-of-stack bit (0 or 1).
    Bos(u8),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionMplsOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Tm(t) => t.buffer_len(),
            Self::Parms(p) => p.buffer_len(),
            Self::Proto(_) => 2,
            Self::Label(_) => 4,
            Self::Tc(_) | Self::Ttl(_) | Self::Bos(_) => 1,
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Tm(t) => t.emit(b),
            Self::Parms(p) => p.emit(b),
            Self::Proto(v) => put(b, 0, &v.to_be_bytes()),
            Self::Label(v) => put(b, 0, &v.to_ne_bytes()),
            Self::Tc(v) | Self::Ttl(v) | Self::Bos(v) => b[0] = *v,
            Self::Other(a) => a.emit_value(b),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Tm(_) => TCA_MPLS_TM,
            Self::Parms(_) => TCA_MPLS_PARMS,
            Self::Proto(_) => TCA_MPLS_PROTO,
            Self::Label(_) => TCA_MPLS_LABEL,
            Self::Tc(_) => TCA_MPLS_TC,
            Self::Ttl(_) => TCA_MPLS_TTL,
            Self::Bos(_) => TCA_MPLS_BOS,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionMplsOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_MPLS_TM => Self::Tm(Tcf::parse(p)?),
            TCA_MPLS_PARMS => Self::Parms(TcMpls::parse(p)?),
            TCA_MPLS_PROTO => Self::Proto(parse_u16_be(p)?),
            TCA_MPLS_LABEL => Self::Label(parse_u32(p)?),
            TCA_MPLS_TC => Self::Tc(parse_u8(p)?),
            TCA_MPLS_TTL => Self::Ttl(parse_u8(p)?),
            TCA_MPLS_BOS => Self::Bos(parse_u8(p)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// What the mpls action does (`TCA_MPLS_ACT_*`).
#[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
#[non_exhaustive]
pub enum TcMplsAction {
    /// `pop`.
    #[default]
    Pop,
    /// `push`.
    Push,
    /// `modify`.
    Modify,
    /// `dec_ttl`.
    DecTtl,
    /// `mac_push`.
    MacPush,
    /// Unknown at the time of writing.
    Other(i32),
}

impl TcMplsAction {
    /// Its name in tc (`pop`, `push`, `modify`, `dec_ttl`, `mac_push`).
    pub fn name(self) -> String {
        match self {
            Self::Pop => "pop".into(),
            Self::Push => "push".into(),
            Self::Modify => "modify".into(),
            Self::DecTtl => "dec_ttl".into(),
            Self::MacPush => "mac_push".into(),
            Self::Other(v) => v.to_string(),
        }
    }
}

impl From<i32> for TcMplsAction {
    fn from(v: i32) -> Self {
        match v {
            1 => Self::Pop,
            2 => Self::Push,
            3 => Self::Modify,
            4 => Self::DecTtl,
            5 => Self::MacPush,
            v => Self::Other(v),
        }
    }
}

impl From<TcMplsAction> for i32 {
    fn from(v: TcMplsAction) -> i32 {
        match v {
            TcMplsAction::Pop => 1,
            TcMplsAction::Push => 2,
            TcMplsAction::Modify => 3,
            TcMplsAction::DecTtl => 4,
            TcMplsAction::MacPush => 5,
            TcMplsAction::Other(v) => v,
        }
    }
}

const TC_MPLS_BUF_LEN: usize = TC_GEN_BUF_LEN + 4;

/// `tc_mpls`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcMpls {
    /// Generic parameters.
    pub generic: TcActionGeneric,
    /// What it does to the label stack.
    pub m_action: TcMplsAction,
}

impl TcMpls {
    /// Parses `tc_mpls`.
    pub fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        need(payload, TC_MPLS_BUF_LEN)?;
        Ok(Self {
            generic: TcActionGeneric::parse(&payload[..TC_GEN_BUF_LEN])?,
            m_action: i32_at(payload, TC_GEN_BUF_LEN).into(),
        })
    }
}

impl Emitable for TcMpls {
    fn buffer_len(&self) -> usize {
        TC_MPLS_BUF_LEN
    }
    fn emit(&self, b: &mut [u8]) {
        self.generic.emit(&mut b[..TC_GEN_BUF_LEN]);
        put(b, TC_GEN_BUF_LEN, &i32::from(self.m_action).to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::actions, ActionOptions};
    use super::*;
    use netlink_packet_route::tc::TcActionType;

    #[test]
    fn mpls_as_the_kernel_dumped_it() {
        let v: Vec<Vec<TcActionMplsOption>> = actions("mpls")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Mpls(mut o) = o else {
                    panic!("{o:?}")
                };
                o.retain(|x| !matches!(x, TcActionMplsOption::Tm(_)));
                o
            })
            .collect();
        let parms = |index, a| {
            let mut generic = TcActionGeneric::default();
            generic.index = index;
            generic.action = TcActionType::Pipe;
            generic.refcnt = 1;
            TcActionMplsOption::Parms(TcMpls {
                generic,
                m_action: a,
            })
        };
        use TcActionMplsOption::*;
        // The kernel dumps the protocol always (mpls_uc unless given), the label stack entry's
        // fields that are set (a push without a ttl has 255).
        assert_eq!(
            v,
            vec![
                // push label 17 tc 3 ttl 64
                vec![
                    parms(1, TcMplsAction::Push),
                    Label(17),
                    Tc(3),
                    Ttl(64),
                    Proto(0x8847)
                ],
                // pop protocol ip
                vec![parms(2, TcMplsAction::Pop), Proto(0x0800)],
                // mod label 5
                vec![parms(3, TcMplsAction::Modify), Label(5), Proto(0x8847)],
                // dec_ttl pipe
                vec![parms(4, TcMplsAction::DecTtl), Proto(0x8847)],
                // push protocol mpls_mc label 20 bos 1
                vec![
                    parms(5, TcMplsAction::Push),
                    Label(20),
                    Ttl(255),
                    Bos(1),
                    Proto(0x8848)
                ],
                // mac_push label 30
                vec![
                    parms(6, TcMplsAction::MacPush),
                    Label(30),
                    Ttl(255),
                    Proto(0x8847)
                ],
            ]
        );
    }

    #[test]
    fn an_unknown_mpls_attribute_and_operation_are_kept() {
        let o = vec![
            TcActionMplsOption::Parms(TcMpls {
                generic: TcActionGeneric::default(),
                m_action: TcMplsAction::Other(9),
            }),
            TcActionMplsOption::Other(DefaultNla::new(42, vec![1, 2, 3, 4])),
        ];
        let raw = super::super::raw(&o);
        assert_eq!(
            ActionOptions::parse(TcActionMpls::KIND, &raw),
            ActionOptions::Mpls(o)
        );
        // Too short a tc_mpls: raw, nothing lost.
        let short = vec![netlink_packet_route::tc::TcActionOption::Other(
            DefaultNla::new(TCA_MPLS_PARMS, vec![0; 20]),
        )];
        assert_eq!(
            ActionOptions::parse(TcActionMpls::KIND, &short),
            ActionOptions::Route(short)
        );
    }
}
