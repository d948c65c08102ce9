//! Policing action (`police`): a token bucket on bytes (`rate`, `burst`, optionally `peakrate`
//! and `mtu`) or on packets (`pkts_rate`, `pkts_burst`), with the actions taken for traffic over
//! the limit (`exceed`, `tc_police.action`) and within it (`conform`, `TCA_POLICE_RESULT`).
//!
//! Unlike the other actions, police's parameters (`tc_police`) do not start with `tc_gen`.

/// psched ticks (64 ns) at a rate (per second) as an amount (tc's `tc_calc_xmitsize`): a
/// police burst in bytes (at `rate` bytes per second) or packets (at `pkts_rate`).
pub fn ticks_at(rate: u64, ticks: u64) -> u64 {
    ((rate as u128 * ticks as u128 * 64) / 1_000_000_000) as u64
}

use netlink_packet_core::{
    parse_u32, parse_u64, DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable,
};
use netlink_packet_route::tc::{TcActionGeneric, TcActionType, Tcf};

use super::{i32_at, need, put, u16_at, u32_at};

/// Traffic control action `police`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionPolice {}
impl TcActionPolice {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "police";
}

const TCA_POLICE_TBF: u16 = 1;
const TCA_POLICE_RATE: u16 = 2;
const TCA_POLICE_PEAKRATE: u16 = 3;
const TCA_POLICE_AVRATE: u16 = 4;
const TCA_POLICE_RESULT: u16 = 5;
const TCA_POLICE_TM: u16 = 6;
const TCA_POLICE_RATE64: u16 = 8;
const TCA_POLICE_PEAKRATE64: u16 = 9;
const TCA_POLICE_PKTRATE64: u16 = 10;
const TCA_POLICE_PKTBURST64: u16 = 11;

/// Options of the `police` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionPoliceOption {
    /// Parameters (`tc_police`).
    Tbf(TcPolice),
    /// The rate table (`rtab`, 256 u32) of `rate`.
    Rate(Vec<u8>),
    /// The rate table of `peakrate`.
    PeakRate(Vec<u8>),
    /// `avrate`, bytes per second.
    AvRate(u32),
    /// The action for conforming traffic.
    Result(TcActionType),
    /// Installation and usage times.
    Tm(Tcf),
    /// `rate`, bytes per second, when it does not fit `tc_ratespec`'s u32.
    Rate64(u64),
    /// `peakrate`, bytes per second, when it does not fit u32.
    PeakRate64(u64),
    /// `pkts_rate`, packets per second.
    PktRate64(u64),
    /// `pkts_burst`, as the time sending it takes at `pkts_rate`, in psched ticks (64 ns).
    PktBurst64(u64),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionPoliceOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Tbf(p) => p.buffer_len(),
            Self::Rate(v) | Self::PeakRate(v) => v.len(),
            Self::AvRate(_) | Self::Result(_) => 4,
            Self::Tm(t) => t.buffer_len(),
            Self::Rate64(_) | Self::PeakRate64(_) | Self::PktRate64(_) | Self::PktBurst64(_) => 8,
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Tbf(p) => p.emit(b),
            Self::Rate(v) | Self::PeakRate(v) => put(b, 0, v),
            Self::AvRate(v) => put(b, 0, &v.to_ne_bytes()),
            Self::Result(a) => put(b, 0, &i32::from(*a).to_ne_bytes()),
            Self::Tm(t) => t.emit(b),
            Self::Rate64(v) | Self::PeakRate64(v) | Self::PktRate64(v) | Self::PktBurst64(v) => {
                put(b, 0, &v.to_ne_bytes())
            }
            Self::Other(a) => a.emit_value(b),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Tbf(_) => TCA_POLICE_TBF,
            Self::Rate(_) => TCA_POLICE_RATE,
            Self::PeakRate(_) => TCA_POLICE_PEAKRATE,
            Self::AvRate(_) => TCA_POLICE_AVRATE,
            Self::Result(_) => TCA_POLICE_RESULT,
            Self::Tm(_) => TCA_POLICE_TM,
            Self::Rate64(_) => TCA_POLICE_RATE64,
            Self::PeakRate64(_) => TCA_POLICE_PEAKRATE64,
            Self::PktRate64(_) => TCA_POLICE_PKTRATE64,
            Self::PktBurst64(_) => TCA_POLICE_PKTBURST64,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionPoliceOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_POLICE_TBF => Self::Tbf(TcPolice::parse(p)?),
            TCA_POLICE_RATE => Self::Rate(p.to_vec()),
            TCA_POLICE_PEAKRATE => Self::PeakRate(p.to_vec()),
            TCA_POLICE_AVRATE => Self::AvRate(parse_u32(p)?),
            TCA_POLICE_RESULT => Self::Result((parse_u32(p)? as i32).into()),
            TCA_POLICE_TM => Self::Tm(Tcf::parse(p)?),
            TCA_POLICE_RATE64 => Self::Rate64(parse_u64(p)?),
            TCA_POLICE_PEAKRATE64 => Self::PeakRate64(parse_u64(p)?),
            TCA_POLICE_PKTRATE64 => Self::PktRate64(parse_u64(p)?),
            TCA_POLICE_PKTBURST64 => Self::PktBurst64(parse_u64(p)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

const TC_RATESPEC_BUF_LEN: usize = 12;

/// `tc_ratespec`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcRateSpec {
    /// log2 of the rate table's cell size.
    pub cell_log: u8,
    /// Link layer (`TC_LINKLAYER_*`: 1 Ethernet, 2 ATM).
    pub linklayer: u8,
    /// Per-packet overhead, bytes.
    pub overhead: u16,
    /// Cell alignment.
    pub cell_align: i16,
    /// Minimum packet unit, bytes.
    pub mpu: u16,
    /// Rate, bytes per second (0 when unset).
    pub rate: u32,
}

impl TcRateSpec {
    fn parse(b: &[u8]) -> Self {
        Self {
            cell_log: b[0],
            linklayer: b[1],
            overhead: u16_at(b, 2),
            cell_align: u16_at(b, 4) as i16,
            mpu: u16_at(b, 6),
            rate: u32_at(b, 8),
        }
    }
    fn emit(&self, b: &mut [u8]) {
        b[0] = self.cell_log;
        b[1] = self.linklayer;
        put(b, 2, &self.overhead.to_ne_bytes());
        put(b, 4, &self.cell_align.to_ne_bytes());
        put(b, 6, &self.mpu.to_ne_bytes());
        put(b, 8, &self.rate.to_ne_bytes());
    }
}

const TC_POLICE_BUF_LEN: usize = 56;

/// `tc_police`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcPolice {
    /// Index.
    pub index: u32,
    /// The action for exceeding traffic.
    pub action: TcActionType,
    /// Limit, bytes (unused by the action).
    pub limit: u32,
    /// Burst, as the time sending it takes at `rate`, in psched ticks (64 ns each).
    pub burst: u32,
    /// Largest packet policed, bytes.
    pub mtu: u32,
    /// Rate.
    pub rate: TcRateSpec,
    /// Peak rate.
    pub peakrate: TcRateSpec,
    /// Reference count.
    pub refcnt: i32,
    /// Bindings to filters.
    pub bindcnt: i32,
    /// Unused.
    pub capab: u32,
}

impl TcPolice {
    /// Parses `tc_police`.
    pub fn parse(p: &[u8]) -> Result<Self, DecodeError> {
        need(p, TC_POLICE_BUF_LEN)?;
        Ok(Self {
            index: u32_at(p, 0),
            action: i32_at(p, 4).into(),
            limit: u32_at(p, 8),
            burst: u32_at(p, 12),
            mtu: u32_at(p, 16),
            rate: TcRateSpec::parse(&p[20..32]),
            peakrate: TcRateSpec::parse(&p[32..44]),
            refcnt: i32_at(p, 44),
            bindcnt: i32_at(p, 48),
            capab: u32_at(p, 52),
        })
    }

    /// Its fields in the generic layout (`tc_gen`).
    pub fn generic(&self) -> TcActionGeneric {
        let mut g = TcActionGeneric::default();
        g.index = self.index;
        g.capab = self.capab;
        g.action = self.action;
        g.refcnt = self.refcnt;
        g.bindcnt = self.bindcnt;
        g
    }
}

impl Emitable for TcPolice {
    fn buffer_len(&self) -> usize {
        TC_POLICE_BUF_LEN
    }
    fn emit(&self, b: &mut [u8]) {
        put(b, 0, &self.index.to_ne_bytes());
        put(b, 4, &i32::from(self.action).to_ne_bytes());
        put(b, 8, &self.limit.to_ne_bytes());
        put(b, 12, &self.burst.to_ne_bytes());
        put(b, 16, &self.mtu.to_ne_bytes());
        self.rate.emit(&mut b[20..20 + TC_RATESPEC_BUF_LEN]);
        self.peakrate.emit(&mut b[32..32 + TC_RATESPEC_BUF_LEN]);
        put(b, 44, &self.refcnt.to_ne_bytes());
        put(b, 48, &self.bindcnt.to_ne_bytes());
        put(b, 52, &self.capab.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::actions, ActionOptions};
    use super::*;

    fn of(
        o: &[TcActionPoliceOption],
    ) -> (TcPolice, Option<TcActionType>, Option<u64>, Option<u64>) {
        let tbf = o.iter().find_map(|x| match x {
            TcActionPoliceOption::Tbf(p) => Some(p.clone()),
            _ => None,
        });
        let res = o.iter().find_map(|x| match x {
            TcActionPoliceOption::Result(r) => Some(*r),
            _ => None,
        });
        let pr = o.iter().find_map(|x| match x {
            TcActionPoliceOption::PktRate64(r) => Some(*r),
            _ => None,
        });
        let pb = o.iter().find_map(|x| match x {
            TcActionPoliceOption::PktBurst64(r) => Some(*r),
            _ => None,
        });
        (tbf.expect("tbf"), res, pr, pb)
    }

    #[test]
    fn police_as_the_kernel_dumped_it() {
        let v: Vec<_> = actions("police")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Police(o) = o else {
                    panic!("{o:?}")
                };
                of(&o)
            })
            .collect();
        assert_eq!(
            v.len(),
            3,
            "the fourth command failed on 6.1 (see the vectors)"
        );
        // rate 1mbit burst 10k conform-exceed drop/pipe: 125000 B/s; 10 KiB at that rate is
        // 81.92 ms, 1280000 ticks of 64 ns; mtu defaults to 2 KiB - 8.
        let (p, res, ..) = &v[0];
        assert_eq!(
            (
                p.index,
                p.action,
                p.rate.rate,
                p.burst,
                p.mtu,
                p.peakrate.rate
            ),
            (1, TcActionType::Shot, 125_000, 1_280_000, 2040, 0)
        );
        assert_eq!(*res, Some(TcActionType::Pipe));
        // rate 10mbit burst 64k mtu 2000 peakrate 20mbit conform-exceed drop.
        let (p, ..) = &v[1];
        assert_eq!(
            (p.index, p.action, p.rate.rate, p.mtu, p.peakrate.rate),
            (2, TcActionType::Shot, 1_250_000, 2000, 2_500_000)
        );
        // pkts_rate 1000 pkts_burst 100 (conform-exceed defaults to reclassify): 100 packets
        // at 1000/s take 100 ms, 1562500 ticks.
        let (p, _, pr, pb) = &v[2];
        assert_eq!(
            (p.index, p.action, p.rate.rate),
            (3, TcActionType::Reclassify, 0)
        );
        assert_eq!((*pr, *pb), (Some(1000), Some(1_562_500)));
    }
}
