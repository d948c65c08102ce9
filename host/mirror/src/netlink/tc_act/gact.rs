//! Generic action (`gact`): a control action (`drop`, `pass`, `pipe`, ...), optionally replaced
//! by another with a probability (`random determ|netrand ACTION VAL`).

use netlink_packet_core::{DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable};
use netlink_packet_route::tc::{TcActionGeneric, TcActionType, Tcf};

use super::{i32_at, need, put, u16_at, TC_GEN_BUF_LEN};

/// Traffic control action `gact`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionGact {}
impl TcActionGact {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "gact";
}

const TCA_GACT_TM: u16 = 1;
const TCA_GACT_PARMS: u16 = 2;
const TCA_GACT_PROB: u16 = 3;

/// Options of the `gact` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionGactOption {
    /// Installation and usage times.
    Tm(Tcf),
    /// Parameters (`tc_gact`: the generic ones, whose `action` is gact's).
    Parms(TcGact),
    /// The probabilistic replacement (`tc_gact_p`).
    Prob(TcGactProb),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionGactOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Tm(t) => t.buffer_len(),
            Self::Parms(p) => p.buffer_len(),
            Self::Prob(p) => p.buffer_len(),
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Tm(t) => t.emit(buffer),
            Self::Parms(p) => p.emit(buffer),
            Self::Prob(p) => p.emit(buffer),
            Self::Other(a) => a.emit_value(buffer),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Tm(_) => TCA_GACT_TM,
            Self::Parms(_) => TCA_GACT_PARMS,
            Self::Prob(_) => TCA_GACT_PROB,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionGactOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            TCA_GACT_TM => Self::Tm(Tcf::parse(payload)?),
            TCA_GACT_PARMS => Self::Parms(TcGact::parse(payload)?),
            TCA_GACT_PROB => Self::Prob(TcGactProb::parse(payload)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `tc_gact`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcGact {
    /// Generic parameters; `action` is the action gact takes.
    pub generic: TcActionGeneric,
}

impl TcGact {
    /// Parses `tc_gact`.
    pub fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        need(payload, TC_GEN_BUF_LEN)?;
        Ok(Self {
            generic: TcActionGeneric::parse(&payload[..TC_GEN_BUF_LEN])?,
        })
    }
}

impl Emitable for TcGact {
    fn buffer_len(&self) -> usize {
        TC_GEN_BUF_LEN
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.generic.emit(buffer)
    }
}

const TC_GACT_P_BUF_LEN: usize = 8;

/// How gact draws its replacement (`PGACT_*`).
#[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
#[non_exhaustive]
pub enum TcGactProbType {
    /// `none`.
    #[default]
    None,
    /// `netrand`: at random, 1 in `pval`.
    Netrand,
    /// `determ`: every `pval`th packet.
    Determ,
    /// Unknown at the time of writing.
    Other(u16),
}

impl From<u16> for TcGactProbType {
    fn from(v: u16) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Netrand,
            2 => Self::Determ,
            v => Self::Other(v),
        }
    }
}

impl From<TcGactProbType> for u16 {
    fn from(v: TcGactProbType) -> u16 {
        match v {
            TcGactProbType::None => 0,
            TcGactProbType::Netrand => 1,
            TcGactProbType::Determ => 2,
            TcGactProbType::Other(v) => v,
        }
    }
}

/// `tc_gact_p`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcGactProb {
    /// How.
    pub ptype: TcGactProbType,
    /// The value (`netrand`: 1 in pval; `determ`: every pval).
    pub pval: u16,
    /// The replacing action.
    pub paction: TcActionType,
}

impl TcGactProb {
    /// Parses `tc_gact_p`.
    pub fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        need(payload, TC_GACT_P_BUF_LEN)?;
        Ok(Self {
            ptype: u16_at(payload, 0).into(),
            pval: u16_at(payload, 2),
            paction: i32_at(payload, 4).into(),
        })
    }
}

impl Emitable for TcGactProb {
    fn buffer_len(&self) -> usize {
        TC_GACT_P_BUF_LEN
    }
    fn emit(&self, b: &mut [u8]) {
        put(b, 0, &u16::from(self.ptype).to_ne_bytes());
        put(b, 2, &self.pval.to_ne_bytes());
        put(b, 4, &i32::from(self.paction).to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::actions, ActionOptions};
    use super::*;

    #[test]
    fn gact_as_the_kernel_dumped_it() {
        // drop; pass random determ drop 10; pipe; reclassify random netrand ok 25.
        let v: Vec<(TcActionType, Option<TcGactProb>)> = actions("gact")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Gact(o) = o else {
                    panic!("{o:?}")
                };
                let g = o.iter().find_map(|x| match x {
                    TcActionGactOption::Parms(p) => Some(p.generic.action),
                    _ => None,
                });
                let p = o.iter().find_map(|x| match x {
                    TcActionGactOption::Prob(p) => Some(p.clone()),
                    _ => None,
                });
                assert!(o.iter().any(|x| matches!(x, TcActionGactOption::Tm(_))));
                (g.unwrap(), p)
            })
            .collect();
        let prob = |ptype, pval, paction| {
            Some(TcGactProb {
                ptype,
                pval,
                paction,
            })
        };
        assert_eq!(
            v,
            vec![
                // No replacement: no TCA_GACT_PROB (tc prints `random type none pass val 0`).
                (TcActionType::Shot, None),
                (
                    TcActionType::Ok,
                    prob(TcGactProbType::Determ, 10, TcActionType::Shot)
                ),
                (TcActionType::Pipe, None),
                (
                    TcActionType::Reclassify,
                    prob(TcGactProbType::Netrand, 25, TcActionType::Ok)
                ),
            ]
        );
    }
}
