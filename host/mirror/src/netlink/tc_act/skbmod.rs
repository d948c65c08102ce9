//! Skbmod action (`skbmod`): sets a frame's destination or source MAC address or its
//! ethertype, swaps its addresses, or (from 5.18) sets ECN CE.

use netlink_packet_core::{
    parse_mac, parse_u16, DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable,
};
use netlink_packet_route::tc::{TcActionGeneric, Tcf};

use super::{need, put, TC_GEN_BUF_LEN};

/// Traffic control action `skbmod`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionSkbmod {}
impl TcActionSkbmod {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "skbmod";
}

const TCA_SKBMOD_TM: u16 = 1;
const TCA_SKBMOD_PARMS: u16 = 2;
const TCA_SKBMOD_DMAC: u16 = 3;
const TCA_SKBMOD_SMAC: u16 = 4;
const TCA_SKBMOD_ETYPE: u16 = 5;

/// Options of the `skbmod` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionSkbmodOption {
    /// Installation and usage times.
    Tm(Tcf),
    /// Parameters (`tc_skbmod`).
    Parms(TcSkbmod),
    /// The destination address set.
    Dmac([u8; 6]),
    /// The source address set.
    Smac([u8; 6]),
    /// The ethertype set (host order).
    Etype(u16),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionSkbmodOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Tm(t) => t.buffer_len(),
            Self::Parms(p) => p.buffer_len(),
            Self::Dmac(_) | Self::Smac(_) => 6,
            Self::Etype(_) => 2,
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Tm(t) => t.emit(b),
            Self::Parms(p) => p.emit(b),
            Self::Dmac(m) | Self::Smac(m) => put(b, 0, m),
            Self::Etype(v) => put(b, 0, &v.to_ne_bytes()),
            Self::Other(a) => a.emit_value(b),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Tm(_) => TCA_SKBMOD_TM,
            Self::Parms(_) => TCA_SKBMOD_PARMS,
            Self::Dmac(_) => TCA_SKBMOD_DMAC,
            Self::Smac(_) => TCA_SKBMOD_SMAC,
            Self::Etype(_) => TCA_SKBMOD_ETYPE,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionSkbmodOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_SKBMOD_TM => Self::Tm(Tcf::parse(p)?),
            TCA_SKBMOD_PARMS => Self::Parms(TcSkbmod::parse(p)?),
            TCA_SKBMOD_DMAC => Self::Dmac(parse_mac(p)?),
            TCA_SKBMOD_SMAC => Self::Smac(parse_mac(p)?),
            TCA_SKBMOD_ETYPE => Self::Etype(parse_u16(p)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// What skbmod changes (`SKBMOD_F_*`).
#[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
pub struct TcSkbmodFlags(pub u64);

impl TcSkbmodFlags {
    /// `SKBMOD_F_DMAC`.
    pub const DMAC: u64 = 1;
    /// `SKBMOD_F_SMAC`.
    pub const SMAC: u64 = 2;
    /// `SKBMOD_F_ETYPE`.
    pub const ETYPE: u64 = 4;
    /// `SKBMOD_F_SWAPMAC`.
    pub const SWAPMAC: u64 = 8;
    /// `SKBMOD_F_ECN`.
    pub const ECN: u64 = 16;

    /// Whether `f` is set.
    pub fn has(self, f: u64) -> bool {
        self.0 & f != 0
    }
}

/// `tc_skbmod`: `tc_gen`, four bytes of padding, the flags (`__u64`).
const TC_SKBMOD_BUF_LEN: usize = 32;
const TC_SKBMOD_FLAGS_OFF: usize = 24;

/// `tc_skbmod`.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcSkbmod {
    /// Generic parameters.
    pub generic: TcActionGeneric,
    /// What it changes.
    pub flags: TcSkbmodFlags,
}

impl TcSkbmod {
    /// Parses `tc_skbmod`.
    pub fn parse(p: &[u8]) -> Result<Self, DecodeError> {
        need(p, TC_SKBMOD_BUF_LEN)?;
        Ok(Self {
            generic: TcActionGeneric::parse(&p[..TC_GEN_BUF_LEN])?,
            flags: TcSkbmodFlags(u64::from_ne_bytes(
                p[TC_SKBMOD_FLAGS_OFF..TC_SKBMOD_BUF_LEN]
                    .try_into()
                    .unwrap(),
            )),
        })
    }
}

impl Emitable for TcSkbmod {
    fn buffer_len(&self) -> usize {
        TC_SKBMOD_BUF_LEN
    }
    fn emit(&self, b: &mut [u8]) {
        self.generic.emit(&mut b[..TC_GEN_BUF_LEN]);
        b[TC_GEN_BUF_LEN..TC_SKBMOD_FLAGS_OFF].fill(0);
        put(b, TC_SKBMOD_FLAGS_OFF, &self.flags.0.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::actions, ActionOptions};
    use super::*;

    #[test]
    fn skbmod_as_the_kernel_dumped_it() {
        let v: Vec<Vec<TcActionSkbmodOption>> = actions("skbmod")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Skbmod(mut o) = o else {
                    panic!("{o:?}")
                };
                o.retain(|x| !matches!(x, TcActionSkbmodOption::Tm(_)));
                o
            })
            .collect();
        let parms = |index, flags| {
            let mut generic = TcActionGeneric::default();
            generic.index = index;
            generic.action = netlink_packet_route::tc::TcActionType::Pipe;
            generic.refcnt = 1;
            TcActionSkbmodOption::Parms(TcSkbmod {
                generic,
                flags: TcSkbmodFlags(flags),
            })
        };
        use TcActionSkbmodOption::*;
        assert_eq!(
            v,
            vec![
                // set dmac 00:11:22:33:44:55 smac 00:aa:bb:cc:dd:ee
                vec![
                    parms(1, TcSkbmodFlags::DMAC | TcSkbmodFlags::SMAC),
                    Dmac([0, 0x11, 0x22, 0x33, 0x44, 0x55]),
                    Smac([0, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]),
                ],
                // swap mac
                vec![parms(2, TcSkbmodFlags::SWAPMAC)],
                // set etype 0x8100 pipe
                vec![parms(3, TcSkbmodFlags::ETYPE), Etype(0x8100)],
            ]
        );
    }
}
