//! skb editing action (`skbedit`): sets the packet's priority, queue mapping, mark (under a
//! mask) or packet type.

use netlink_packet_core::{
    parse_u16, parse_u32, parse_u64, DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable,
};
use netlink_packet_route::tc::{TcActionGeneric, Tcf};

use super::{need, put, TC_GEN_BUF_LEN};

/// Traffic control action `skbedit`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionSkbedit {}
impl TcActionSkbedit {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "skbedit";
}

const TCA_SKBEDIT_TM: u16 = 1;
const TCA_SKBEDIT_PARMS: u16 = 2;
const TCA_SKBEDIT_PRIORITY: u16 = 3;
const TCA_SKBEDIT_QUEUE_MAPPING: u16 = 4;
const TCA_SKBEDIT_MARK: u16 = 5;
const TCA_SKBEDIT_PTYPE: u16 = 7;
const TCA_SKBEDIT_MASK: u16 = 8;
const TCA_SKBEDIT_FLAGS: u16 = 9;
const TCA_SKBEDIT_QUEUE_MAPPING_MAX: u16 = 10;

/// Options of the `skbedit` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionSkbeditOption {
    /// Installation and usage times.
    Tm(Tcf),
    /// Parameters (`tc_skbedit`: the generic ones).
    Parms(TcSkbedit),
    /// `priority` (a class id, `maj:min`).
    Priority(u32),
    /// `queue_mapping`.
    QueueMapping(u16),
    /// `mark`.
    Mark(u32),
    /// `ptype` (`PACKET_*`: 0 host, 1 broadcast, 2 multicast, 3 otherhost).
    Ptype(TcSkbeditPtype),
    /// The mark's mask.
    Mask(u32),
    /// Flags (`SKBEDIT_F_*`: 1 `inheritdsfield`, 2 a queue mapping range by hash).
    Flags(u64),
    /// The top of a queue mapping range.
    QueueMappingMax(u16),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionSkbeditOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Tm(t) => t.buffer_len(),
            Self::Parms(p) => p.buffer_len(),
            Self::Priority(_) | Self::Mark(_) | Self::Mask(_) => 4,
            Self::QueueMapping(_) | Self::Ptype(_) | Self::QueueMappingMax(_) => 2,
            Self::Flags(_) => 8,
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Tm(t) => t.emit(b),
            Self::Parms(p) => p.emit(b),
            Self::Priority(v) | Self::Mark(v) | Self::Mask(v) => put(b, 0, &v.to_ne_bytes()),
            Self::QueueMapping(v) | Self::QueueMappingMax(v) => put(b, 0, &v.to_ne_bytes()),
            Self::Ptype(v) => put(b, 0, &u16::from(*v).to_ne_bytes()),
            Self::Flags(v) => put(b, 0, &v.to_ne_bytes()),
            Self::Other(a) => a.emit_value(b),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Tm(_) => TCA_SKBEDIT_TM,
            Self::Parms(_) => TCA_SKBEDIT_PARMS,
            Self::Priority(_) => TCA_SKBEDIT_PRIORITY,
            Self::QueueMapping(_) => TCA_SKBEDIT_QUEUE_MAPPING,
            Self::Mark(_) => TCA_SKBEDIT_MARK,
            Self::Ptype(_) => TCA_SKBEDIT_PTYPE,
            Self::Mask(_) => TCA_SKBEDIT_MASK,
            Self::Flags(_) => TCA_SKBEDIT_FLAGS,
            Self::QueueMappingMax(_) => TCA_SKBEDIT_QUEUE_MAPPING_MAX,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionSkbeditOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_SKBEDIT_TM => Self::Tm(Tcf::parse(p)?),
            TCA_SKBEDIT_PARMS => Self::Parms(TcSkbedit::parse(p)?),
            TCA_SKBEDIT_PRIORITY => Self::Priority(parse_u32(p)?),
            TCA_SKBEDIT_QUEUE_MAPPING => Self::QueueMapping(parse_u16(p)?),
            TCA_SKBEDIT_MARK => Self::Mark(parse_u32(p)?),
            TCA_SKBEDIT_PTYPE => Self::Ptype(parse_u16(p)?.into()),
            TCA_SKBEDIT_MASK => Self::Mask(parse_u32(p)?),
            TCA_SKBEDIT_FLAGS => Self::Flags(parse_u64(p)?),
            TCA_SKBEDIT_QUEUE_MAPPING_MAX => Self::QueueMappingMax(parse_u16(p)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// The packet type skbedit sets (`PACKET_*`).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum TcSkbeditPtype {
    /// `host`.
    Host,
    /// `broadcast`.
    Broadcast,
    /// `multicast`.
    Multicast,
    /// `otherhost`.
    Otherhost,
    /// Another value.
    Other(u16),
}

impl From<u16> for TcSkbeditPtype {
    fn from(v: u16) -> Self {
        match v {
            0 => Self::Host,
            1 => Self::Broadcast,
            2 => Self::Multicast,
            3 => Self::Otherhost,
            v => Self::Other(v),
        }
    }
}

impl From<TcSkbeditPtype> for u16 {
    fn from(v: TcSkbeditPtype) -> u16 {
        match v {
            TcSkbeditPtype::Host => 0,
            TcSkbeditPtype::Broadcast => 1,
            TcSkbeditPtype::Multicast => 2,
            TcSkbeditPtype::Otherhost => 3,
            TcSkbeditPtype::Other(v) => v,
        }
    }
}

/// `tc_skbedit`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcSkbedit {
    /// Generic parameters.
    pub generic: TcActionGeneric,
}

impl TcSkbedit {
    /// Parses `tc_skbedit`.
    pub fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        need(payload, TC_GEN_BUF_LEN)?;
        Ok(Self {
            generic: TcActionGeneric::parse(&payload[..TC_GEN_BUF_LEN])?,
        })
    }
}

impl Emitable for TcSkbedit {
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
    fn skbedit_as_the_kernel_dumped_it() {
        // mark 5 priority 1:2 queue_mapping 3; ptype host; mark 0x10/0xff pipe.
        let v: Vec<Vec<TcActionSkbeditOption>> = actions("skbedit")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Skbedit(o) = o else {
                    panic!("{o:?}")
                };
                o.into_iter()
                    .filter(|x| {
                        !matches!(
                            x,
                            TcActionSkbeditOption::Tm(_) | TcActionSkbeditOption::Parms(_)
                        )
                    })
                    .collect()
            })
            .collect();
        use TcActionSkbeditOption::*;
        assert_eq!(
            v,
            vec![
                vec![Priority(0x1_0002), QueueMapping(3), Mark(5)],
                vec![Ptype(TcSkbeditPtype::Host)],
                vec![Mark(0x10), Mask(0xff)],
            ]
        );
    }
}
