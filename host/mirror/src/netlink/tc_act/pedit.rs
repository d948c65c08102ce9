//! Packet editing action (`pedit`): 32-bit words set or added to (`val` under `mask`: the
//! kept bits) at offsets from a header (`ex`: eth, ipv4, ipv6, tcp, udp; else the network
//! header), as a selector and its keys (`tc_pedit_sel`, `tc_pedit_key`) and, with `ex`, a
//! header type and command per key (`TCA_PEDIT_KEYS_EX`, a list of `TCA_PEDIT_KEY_EX`: nested
//! attributes the kernel sends without `NLA_F_NESTED`, as emitted here).

use netlink_packet_core::{
    parse_u16, DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable,
};
use netlink_packet_route::tc::{TcActionGeneric, Tcf};

use super::{need, put, u32_at, TC_GEN_BUF_LEN};

/// Traffic control action `pedit`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub struct TcActionPedit {}
impl TcActionPedit {
    /// The `TcActionAttribute::Kind` of this action.
    pub const KIND: &'static str = "pedit";
}

const TCA_PEDIT_TM: u16 = 1;
const TCA_PEDIT_PARMS: u16 = 2;
const TCA_PEDIT_PARMS_EX: u16 = 4;
const TCA_PEDIT_KEYS_EX: u16 = 5;
const TCA_PEDIT_KEY_EX: u16 = 6;
const TCA_PEDIT_KEY_EX_HTYPE: u16 = 1;
const TCA_PEDIT_KEY_EX_CMD: u16 = 2;

/// Options of the `pedit` action.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcActionPeditOption {
    /// Installation and usage times.
    Tm(Tcf),
    /// The selector and its keys (without `ex`).
    Parms(TcPeditSel),
    /// The selector and its keys (with `ex`: the kernel dumps this one).
    ParmsEx(TcPeditSel),
    /// Each key's header type and command, in the keys' order.
    KeysEx(Vec<TcPeditKeyEx>),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcActionPeditOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Tm(t) => t.buffer_len(),
            Self::Parms(p) | Self::ParmsEx(p) => p.buffer_len(),
            Self::KeysEx(v) => v.as_slice().buffer_len(),
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Tm(t) => t.emit(b),
            Self::Parms(p) | Self::ParmsEx(p) => p.emit(b),
            Self::KeysEx(v) => v.as_slice().emit(b),
            Self::Other(a) => a.emit_value(b),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Tm(_) => TCA_PEDIT_TM,
            Self::Parms(_) => TCA_PEDIT_PARMS,
            Self::ParmsEx(_) => TCA_PEDIT_PARMS_EX,
            Self::KeysEx(_) => TCA_PEDIT_KEYS_EX,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcActionPeditOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_PEDIT_TM => Self::Tm(Tcf::parse(p)?),
            TCA_PEDIT_PARMS => Self::Parms(TcPeditSel::parse(p)?),
            TCA_PEDIT_PARMS_EX => Self::ParmsEx(TcPeditSel::parse(p)?),
            TCA_PEDIT_KEYS_EX => Self::KeysEx(
                NlasIterator::new(p)
                    .map(|n| TcPeditKeyEx::parse(&n?))
                    .collect::<Result<_, _>>()?,
            ),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// One key's header type and command (`TCA_PEDIT_KEY_EX`).
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcPeditKeyEx {
    /// Its attributes.
    pub attributes: Vec<TcPeditKeyExOption>,
}

impl TcPeditKeyEx {
    /// The header type, if given.
    pub fn htype(&self) -> Option<TcPeditHeaderType> {
        self.attributes.iter().find_map(|a| match a {
            TcPeditKeyExOption::Htype(h) => Some(*h),
            _ => None,
        })
    }

    /// The command, if given.
    pub fn cmd(&self) -> Option<TcPeditKeyExCmd> {
        self.attributes.iter().find_map(|a| match a {
            TcPeditKeyExOption::Cmd(c) => Some(*c),
            _ => None,
        })
    }
}

impl Nla for TcPeditKeyEx {
    fn value_len(&self) -> usize {
        self.attributes.as_slice().buffer_len()
    }
    fn emit_value(&self, b: &mut [u8]) {
        self.attributes.as_slice().emit(b)
    }
    fn kind(&self) -> u16 {
        TCA_PEDIT_KEY_EX
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcPeditKeyEx {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        if buf.kind() != TCA_PEDIT_KEY_EX {
            return Err(DecodeError::from(format!(
                "pedit: attribute {} in TCA_PEDIT_KEYS_EX, expected TCA_PEDIT_KEY_EX",
                buf.kind()
            )));
        }
        Ok(Self {
            attributes: NlasIterator::new(buf.value())
                .map(|n| TcPeditKeyExOption::parse(&n?))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// An attribute of `TCA_PEDIT_KEY_EX`.
#[derive(Debug, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TcPeditKeyExOption {
    /// Header type.
    Htype(TcPeditHeaderType),
    /// Command.
    Cmd(TcPeditKeyExCmd),
    /// Other attributes unknown at the time of writing.
    Other(DefaultNla),
}

impl Nla for TcPeditKeyExOption {
    fn value_len(&self) -> usize {
        match self {
            Self::Htype(_) | Self::Cmd(_) => 2,
            Self::Other(a) => a.value_len(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Htype(h) => put(b, 0, &u16::from(*h).to_ne_bytes()),
            Self::Cmd(c) => put(b, 0, &u16::from(*c).to_ne_bytes()),
            Self::Other(a) => a.emit_value(b),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Htype(_) => TCA_PEDIT_KEY_EX_HTYPE,
            Self::Cmd(_) => TCA_PEDIT_KEY_EX_CMD,
            Self::Other(a) => a.kind(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcPeditKeyExOption {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            TCA_PEDIT_KEY_EX_HTYPE => Self::Htype(parse_u16(p)?.into()),
            TCA_PEDIT_KEY_EX_CMD => Self::Cmd(parse_u16(p)?.into()),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// The header a key's offset counts from (`TCA_PEDIT_KEY_EX_HDR_TYPE_*`).
#[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
#[non_exhaustive]
pub enum TcPeditHeaderType {
    /// `network` (the default: the network header).
    #[default]
    Network,
    /// `eth`.
    Eth,
    /// `ipv4`.
    Ipv4,
    /// `ipv6`.
    Ipv6,
    /// `tcp`.
    Tcp,
    /// `udp`.
    Udp,
    /// Unknown at the time of writing.
    Other(u16),
}

impl From<u16> for TcPeditHeaderType {
    fn from(v: u16) -> Self {
        match v {
            0 => Self::Network,
            1 => Self::Eth,
            2 => Self::Ipv4,
            3 => Self::Ipv6,
            4 => Self::Tcp,
            5 => Self::Udp,
            v => Self::Other(v),
        }
    }
}

impl From<TcPeditHeaderType> for u16 {
    fn from(v: TcPeditHeaderType) -> u16 {
        match v {
            TcPeditHeaderType::Network => 0,
            TcPeditHeaderType::Eth => 1,
            TcPeditHeaderType::Ipv4 => 2,
            TcPeditHeaderType::Ipv6 => 3,
            TcPeditHeaderType::Tcp => 4,
            TcPeditHeaderType::Udp => 5,
            TcPeditHeaderType::Other(v) => v,
        }
    }
}

/// A key's command (`TCA_PEDIT_KEY_EX_CMD_*`).
#[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
#[non_exhaustive]
pub enum TcPeditKeyExCmd {
    /// `set`.
    #[default]
    Set,
    /// `add`.
    Add,
    /// Unknown at the time of writing.
    Other(u16),
}

impl From<u16> for TcPeditKeyExCmd {
    fn from(v: u16) -> Self {
        match v {
            0 => Self::Set,
            1 => Self::Add,
            v => Self::Other(v),
        }
    }
}

impl From<TcPeditKeyExCmd> for u16 {
    fn from(v: TcPeditKeyExCmd) -> u16 {
        match v {
            TcPeditKeyExCmd::Set => 0,
            TcPeditKeyExCmd::Add => 1,
            TcPeditKeyExCmd::Other(v) => v,
        }
    }
}

const TC_PEDIT_SEL_BUF_LEN: usize = 24;
const TC_PEDIT_KEY_BUF_LEN: usize = 24;

/// `tc_pedit_key`: the word at `off` (plus, with `offmask`, `(*(u8 *)(at) & offmask) >>
/// shift`) becomes `(word & mask) ^ val` (set) or `(word & mask) | ((word + val) & ~mask)`
/// (add).
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcPeditKey {
    /// The bits kept.
    pub mask: u32,
    /// The value (network order in the word, as the kernel keeps it).
    pub val: u32,
    /// Offset from the header.
    pub off: u32,
    /// Offset of the byte giving a variable offset.
    pub at: u32,
    /// That byte's mask.
    pub offmask: u32,
    /// That byte's shift.
    pub shift: u32,
}

/// `tc_pedit_sel`: the generic parameters, flags and the keys.
#[derive(Debug, PartialEq, Eq, Clone, Default)]
#[non_exhaustive]
pub struct TcPeditSel {
    /// Generic parameters.
    pub generic: TcActionGeneric,
    /// The number of keys as the kernel gives it.
    pub nkeys: u8,
    /// Flags.
    pub flags: u8,
    /// The keys.
    pub keys: Vec<TcPeditKey>,
}

impl TcPeditSel {
    /// Parses `tc_pedit_sel` and its keys.
    pub fn parse(p: &[u8]) -> Result<Self, DecodeError> {
        need(p, TC_PEDIT_SEL_BUF_LEN)?;
        let nkeys = p[20];
        let keys_len = usize::from(nkeys) * TC_PEDIT_KEY_BUF_LEN;
        need(p, TC_PEDIT_SEL_BUF_LEN + keys_len)?;
        let keys = p[TC_PEDIT_SEL_BUF_LEN..TC_PEDIT_SEL_BUF_LEN + keys_len]
            .chunks_exact(TC_PEDIT_KEY_BUF_LEN)
            .map(|k| TcPeditKey {
                mask: u32_at(k, 0),
                val: u32_at(k, 4),
                off: u32_at(k, 8),
                at: u32_at(k, 12),
                offmask: u32_at(k, 16),
                shift: u32_at(k, 20),
            })
            .collect();
        Ok(Self {
            generic: TcActionGeneric::parse(&p[..TC_GEN_BUF_LEN])?,
            nkeys,
            flags: p[21],
            keys,
        })
    }
}

impl Emitable for TcPeditSel {
    fn buffer_len(&self) -> usize {
        TC_PEDIT_SEL_BUF_LEN + self.keys.len() * TC_PEDIT_KEY_BUF_LEN
    }
    fn emit(&self, b: &mut [u8]) {
        b[..TC_PEDIT_SEL_BUF_LEN].fill(0);
        self.generic.emit(&mut b[..TC_GEN_BUF_LEN]);
        b[20] = self.nkeys;
        b[21] = self.flags;
        for (i, k) in self.keys.iter().enumerate() {
            let o = TC_PEDIT_SEL_BUF_LEN + i * TC_PEDIT_KEY_BUF_LEN;
            for (j, v) in [k.mask, k.val, k.off, k.at, k.offmask, k.shift]
                .iter()
                .enumerate()
            {
                put(b, o + 4 * j, &v.to_ne_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::actions, ActionOptions};
    use super::*;

    #[test]
    fn pedit_as_the_kernel_dumped_it() {
        let v: Vec<(TcPeditSel, Vec<TcPeditKeyEx>)> = actions("pedit")
            .into_iter()
            .map(|(_, o)| {
                let ActionOptions::Pedit(o) = o else {
                    panic!("{o:?}")
                };
                // Parms without `ex` (and then no keys_ex), else ParmsEx.
                let sel = o.iter().find_map(|x| match x {
                    TcActionPeditOption::ParmsEx(s) => Some(s.clone()),
                    TcActionPeditOption::Parms(s) => Some(s.clone()),
                    _ => None,
                });
                let ex = o.iter().find_map(|x| match x {
                    TcActionPeditOption::KeysEx(e) => Some(e.clone()),
                    _ => None,
                });
                let plain = o.iter().any(|x| matches!(x, TcActionPeditOption::Parms(_)));
                assert_eq!(plain, ex.is_none());
                (sel.expect("parms"), ex.unwrap_or_default())
            })
            .collect();
        let words = |s: &TcPeditSel| -> Vec<(u32, u32, u32)> {
            s.keys
                .iter()
                .map(|k| (u32::from_be(k.val), u32::from_be(k.mask), k.off))
                .collect()
        };
        let ex = |e: &[TcPeditKeyEx]| -> Vec<(TcPeditHeaderType, TcPeditKeyExCmd)> {
            e.iter()
                .map(|k| (k.htype().unwrap(), k.cmd().unwrap()))
                .collect()
        };
        use TcPeditHeaderType as H;
        use TcPeditKeyExCmd as C;
        // ex munge eth dst set 00:11:22:33:44:55: two words at eth+0 and eth+4.
        assert_eq!(
            words(&v[0].0),
            vec![(0x0011_2233, 0, 0), (0x4455_0000, 0xffff, 4)]
        );
        assert_eq!(ex(&v[0].1), vec![(H::Eth, C::Set), (H::Eth, C::Set)]);
        // ex munge ip ttl dec: add 0xff to the byte at ipv4+8.
        assert_eq!(ex(&v[1].1), vec![(H::Ipv4, C::Add)]);
        assert_eq!(words(&v[1].0), vec![(0xff00_0000, 0x00ff_ffff, 8)]);
        // Without ex (offsets from the network header): TCA_PEDIT_PARMS, no keys_ex.
        assert_eq!(words(&v[2].0), vec![(1, 0, 0), (0x0002_0000, 0xffff, 4)]);
        assert!(v[2].1.is_empty());
        // ex munge ip dst set 10.0.0.9 munge tcp dport set 80.
        assert_eq!(words(&v[3].0)[0], (0x0a00_0009, 0, 16));
        assert_eq!(ex(&v[3].1), vec![(H::Ipv4, C::Set), (H::Tcp, C::Set)]);
    }
}
