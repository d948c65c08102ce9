//! Sample action (`sample`): hands one packet in `rate` (truncated to `trunc_size` bytes) to
//! the psample group `psample_group`.

use netlink_packet_core::{
    parse_u32, DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable,
};
use netlink_packet_route::tc::{TcActionGeneric, Tcf};

use super::{need, put, TC_GEN_BUF_LEN};

/// Traffic control action `sample`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionSample {}
impl TcActionSample {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "sample";
}

const TCA_SAMPLE_TM: u16 = 1;
const TCA_SAMPLE_PARMS: u16 = 2;
const TCA_SAMPLE_RATE: u16 = 3;
const TCA_SAMPLE_TRUNC_SIZE: u16 = 4;
const TCA_SAMPLE_PSAMPLE_GROUP: u16 = 5;

/// Options of the `sample` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionSampleOption {
    /// Installation and usage times.
    Tm(Tcf),
    /// Parameters (`tc_sample`: the generic ones only).
    Parms(TcSample),
    /// One packet in this many is sampled.
    Rate(u32),
    /// The bytes of a sampled packet kept (absent: all).
    TruncSize(u32),
    /// The psample group the samples go to.
    PsampleGroup(u32),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionSampleOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Tm(t) => t.buffer_len(),
            Self::Parms(p) => p.buffer_len(),
            Self::Rate(_) | Self::TruncSize(_) | Self::PsampleGroup(_) => 4,
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Tm(t) => t.emit(b),
            Self::Parms(p) => p.emit(b),
            Self::Rate(v) | Self::TruncSize(v) | Self::PsampleGroup(v) => {
                put(b, 0, &v.to_ne_bytes())
            }
            Self::Other(a) => a.emit_value(b),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Tm(_) => TCA_SAMPLE_TM,
            Self::Parms(_) => TCA_SAMPLE_PARMS,
            Self::Rate(_) => TCA_SAMPLE_RATE,
            Self::TruncSize(_) => TCA_SAMPLE_TRUNC_SIZE,
            Self::PsampleGroup(_) => TCA_SAMPLE_PSAMPLE_GROUP,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionSampleOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_SAMPLE_TM => Self::Tm(Tcf::parse(p)?),
            TCA_SAMPLE_PARMS => Self::Parms(TcSample::parse(p)?),
            TCA_SAMPLE_RATE => Self::Rate(parse_u32(p)?),
            TCA_SAMPLE_TRUNC_SIZE => Self::TruncSize(parse_u32(p)?),
            TCA_SAMPLE_PSAMPLE_GROUP => Self::PsampleGroup(parse_u32(p)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `tc_sample`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcSample {
    /// Generic parameters.
    pub generic: TcActionGeneric,
}

impl TcSample {
    /// Parses `tc_sample`.
    pub fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        need(payload, TC_GEN_BUF_LEN)?;
        Ok(Self {
            generic: TcActionGeneric::parse(&payload[..TC_GEN_BUF_LEN])?,
        })
    }
}

impl Emitable for TcSample {
    fn buffer_len(&self) -> usize {
        TC_GEN_BUF_LEN
    }
    fn emit(&self, b: &mut [u8]) {
        self.generic.emit(&mut b[..TC_GEN_BUF_LEN]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::actions, ActionOptions};
    use super::*;
    use netlink_packet_route::tc::TcActionType;

    #[test]
    fn sample_as_the_kernel_dumped_it() {
        let v: Vec<Vec<TcActionSampleOption>> = actions("sample")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Sample(mut o) = o else {
                    panic!("{o:?}")
                };
                o.retain(|x| !matches!(x, TcActionSampleOption::Tm(_)));
                o
            })
            .collect();
        let parms = |index| {
            let mut generic = TcActionGeneric::default();
            generic.index = index;
            generic.action = TcActionType::Pipe;
            generic.refcnt = 1;
            TcActionSampleOption::Parms(TcSample { generic })
        };
        use TcActionSampleOption::*;
        assert_eq!(
            v,
            vec![
                // rate 100 group 5 trunc 128
                vec![parms(1), Rate(100), TruncSize(128), PsampleGroup(5)],
                // rate 10 group 1 pipe: no truncation, no attribute
                vec![parms(2), Rate(10), PsampleGroup(1)],
            ]
        );
    }
}
