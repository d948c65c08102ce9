//! Connmark action (`connmark`): restores a packet's mark from its conntrack entry's, looked up
//! in a zone.

use netlink_packet_core::{DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable};
use netlink_packet_route::tc::{TcActionGeneric, Tcf};

use super::{need, put, u16_at, TC_GEN_BUF_LEN};

/// Traffic control action `connmark`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionConnmark {}
impl TcActionConnmark {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "connmark";
}

// connmark numbers its attributes its own way: parameters first.
const TCA_CONNMARK_PARMS: u16 = 1;
const TCA_CONNMARK_TM: u16 = 2;

/// Options of the `connmark` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionConnmarkOption {
    /// Parameters (`tc_connmark`).
    Parms(TcConnmark),
    /// Installation and usage times.
    Tm(Tcf),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionConnmarkOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Parms(p) => p.buffer_len(),
            Self::Tm(t) => t.buffer_len(),
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Parms(p) => p.emit(b),
            Self::Tm(t) => t.emit(b),
            Self::Other(a) => a.emit_value(b),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Parms(_) => TCA_CONNMARK_PARMS,
            Self::Tm(_) => TCA_CONNMARK_TM,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionConnmarkOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_CONNMARK_PARMS => Self::Parms(TcConnmark::parse(p)?),
            TCA_CONNMARK_TM => Self::Tm(Tcf::parse(p)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `tc_connmark`: `tc_gen`, the zone, two bytes of padding.
const TC_CONNMARK_BUF_LEN: usize = TC_GEN_BUF_LEN + 4;

/// `tc_connmark`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcConnmark {
    /// Generic parameters.
    pub generic: TcActionGeneric,
    /// The conntrack zone.
    pub zone: u16,
}

impl TcConnmark {
    /// Parses `tc_connmark`.
    pub fn parse(p: &[u8]) -> Result<Self, DecodeError> {
        need(p, TC_CONNMARK_BUF_LEN)?;
        Ok(Self {
            generic: TcActionGeneric::parse(&p[..TC_GEN_BUF_LEN])?,
            zone: u16_at(p, TC_GEN_BUF_LEN),
        })
    }
}

impl Emitable for TcConnmark {
    fn buffer_len(&self) -> usize {
        TC_CONNMARK_BUF_LEN
    }
    fn emit(&self, b: &mut [u8]) {
        self.generic.emit(&mut b[..TC_GEN_BUF_LEN]);
        put(b, TC_GEN_BUF_LEN, &self.zone.to_ne_bytes());
        b[TC_GEN_BUF_LEN + 2..TC_CONNMARK_BUF_LEN].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::actions, ActionOptions};
    use super::*;

    #[test]
    fn connmark_as_the_kernel_dumped_it() {
        // zone 5; pipe (zone 0).
        let v: Vec<(u32, u16)> = actions("connmark")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Connmark(o) = o else {
                    panic!("{o:?}")
                };
                o.iter()
                    .find_map(|x| match x {
                        TcActionConnmarkOption::Parms(p) => Some((p.generic.index, p.zone)),
                        _ => None,
                    })
                    .unwrap()
            })
            .collect();
        assert_eq!(v, vec![(1, 5), (2, 0)]);
    }
}
