//! Checksum action (`csum`): recomputes the checksums of the headers its flags name.

use netlink_packet_core::{DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable};
use netlink_packet_route::tc::{TcActionGeneric, Tcf};

use super::{need, put, u32_at, TC_GEN_BUF_LEN};

/// Traffic control action `csum`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionCsum {}
impl TcActionCsum {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "csum";
}

// csum numbers its attributes its own way: parameters first.
const TCA_CSUM_PARMS: u16 = 1;
const TCA_CSUM_TM: u16 = 2;

/// Options of the `csum` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionCsumOption {
    /// Parameters (`tc_csum`).
    Parms(TcCsum),
    /// Installation and usage times.
    Tm(Tcf),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionCsumOption {
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
            Self::Parms(_) => TCA_CSUM_PARMS,
            Self::Tm(_) => TCA_CSUM_TM,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionCsumOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_CSUM_PARMS => Self::Parms(TcCsum::parse(p)?),
            TCA_CSUM_TM => Self::Tm(Tcf::parse(p)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// The headers csum updates (`TCA_CSUM_UPDATE_FLAG_*`), in tc's order and wording.
#[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
pub struct TcCsumUpdateFlags(pub u32);

impl TcCsumUpdateFlags {
    /// Each flag and its name in `tc` (`iph`, `icmp`, `igmp`, `tcp`, `udp`, `udplite`, `sctp`).
    pub const NAMES: [(u32, &'static str); 7] = [
        (1, "iph"),
        (2, "icmp"),
        (4, "igmp"),
        (8, "tcp"),
        (16, "udp"),
        (32, "udplite"),
        (64, "sctp"),
    ];

    /// The names of the flags set.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(f, _)| self.0 & f != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

const TC_CSUM_BUF_LEN: usize = TC_GEN_BUF_LEN + 4;

/// `tc_csum`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcCsum {
    /// Generic parameters.
    pub generic: TcActionGeneric,
    /// The headers updated.
    pub update_flags: TcCsumUpdateFlags,
}

impl TcCsum {
    /// Parses `tc_csum`.
    pub fn parse(p: &[u8]) -> Result<Self, DecodeError> {
        need(p, TC_CSUM_BUF_LEN)?;
        Ok(Self {
            generic: TcActionGeneric::parse(&p[..TC_GEN_BUF_LEN])?,
            update_flags: TcCsumUpdateFlags(u32_at(p, TC_GEN_BUF_LEN)),
        })
    }
}

impl Emitable for TcCsum {
    fn buffer_len(&self) -> usize {
        TC_CSUM_BUF_LEN
    }
    fn emit(&self, b: &mut [u8]) {
        self.generic.emit(&mut b[..TC_GEN_BUF_LEN]);
        put(b, TC_GEN_BUF_LEN, &self.update_flags.0.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::actions, ActionOptions};
    use super::*;
    use netlink_packet_route::tc::TcActionType;

    #[test]
    fn csum_as_the_kernel_dumped_it() {
        // iph and tcp; udp pipe.
        let v: Vec<(Vec<&str>, TcActionType)> = actions("csum")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Csum(o) = o else {
                    panic!("{o:?}")
                };
                o.iter()
                    .find_map(|x| match x {
                        TcActionCsumOption::Parms(p) => {
                            Some((p.update_flags.names(), p.generic.action))
                        }
                        _ => None,
                    })
                    .unwrap()
            })
            .collect();
        assert_eq!(
            v,
            vec![
                (vec!["iph", "tcp"], TcActionType::Ok),
                (vec!["udp"], TcActionType::Pipe)
            ]
        );
    }
}
