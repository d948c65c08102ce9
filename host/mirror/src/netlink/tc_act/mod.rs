//! The tc actions netlink-packet-route 0.34 leaves raw (`TcActionOption::Other`), typed in the
//! crate's own style so that they could go upstream: a module per action with its `KIND`, its
//! option enum (an [`Nla`], [`Parseable`] from an [`NlaBuffer`], an `Other` variant for
//! attributes unknown here), its parameter structures ([`Emitable`], `parse` from the kernel's
//! bytes) and tests from messages the kernel (6.1) produced (`tests/vm/tc-capture.py`).
//!
//! Typed: [`gact`], [`vlan`], [`police`], [`skbedit`], [`pedit`], [`csum`], [`ct`], [`mpls`],
//! [`sample`], [`skbmod`], [`connmark`]. The mirror's
//! [`ActionOptions`] carries an action's options typed by its kind, and keeps the crate's own
//! list (typed: mirred, nat, tunnel_key; raw: every other kind) for anything else, so nothing is
//! lost; a typed kind whose options do not parse stays raw too.

pub mod connmark;
pub mod csum;
pub mod ct;
pub mod gact;
pub mod mpls;
pub mod pedit;
pub mod police;
pub mod sample;
pub mod skbedit;
pub mod skbmod;
pub mod vlan;

pub use connmark::{TcActionConnmark, TcActionConnmarkOption, TcConnmark};
pub use csum::{TcActionCsum, TcActionCsumOption, TcCsum, TcCsumUpdateFlags};
pub use ct::{TcActionCt, TcActionCtOption, TcCt, TcCtFlags};
pub use gact::{TcActionGact, TcActionGactOption, TcGact, TcGactProb, TcGactProbType};
pub use mpls::{TcActionMpls, TcActionMplsOption, TcMpls, TcMplsAction};
pub use pedit::{
    TcActionPedit, TcActionPeditOption, TcPeditHeaderType, TcPeditKey, TcPeditKeyEx,
    TcPeditKeyExCmd, TcPeditKeyExOption, TcPeditSel,
};
pub use police::{TcActionPolice, TcActionPoliceOption, TcPolice, TcRateSpec};
pub use sample::{TcActionSample, TcActionSampleOption, TcSample};
pub use skbedit::{TcActionSkbedit, TcActionSkbeditOption, TcSkbedit, TcSkbeditPtype};
pub use skbmod::{TcActionSkbmod, TcActionSkbmodOption, TcSkbmod, TcSkbmodFlags};
pub use vlan::{TcActionVlan, TcActionVlanOption, TcVlan, TcVlanAction};

use netlink_packet_core::{DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable};
use netlink_packet_route::tc::{TcActionGeneric, TcActionOption};

/// The size of `tc_gen` (index, capab, action, refcnt, bindcnt), which most actions' parameters
/// start with.
pub const TC_GEN_BUF_LEN: usize = 20;

/// An error unless `payload` holds at least `len` bytes.
pub(crate) fn need(payload: &[u8], len: usize) -> Result<(), DecodeError> {
    if payload.len() < len {
        Err(DecodeError::buffer_too_small(payload.len(), len))
    } else {
        Ok(())
    }
}

pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}

pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().unwrap())
}

pub(crate) fn i32_at(b: &[u8], o: usize) -> i32 {
    i32::from_ne_bytes(b[o..o + 4].try_into().unwrap())
}

pub(crate) fn put(b: &mut [u8], o: usize, v: &[u8]) {
    b[o..o + v.len()].copy_from_slice(v);
}

/// A fixed-size value (`N` bytes exactly).
pub(crate) fn array<const N: usize>(payload: &[u8]) -> Result<[u8; N], DecodeError> {
    payload
        .try_into()
        .map_err(|_| DecodeError::invalid_number(N, payload.len()))
}

/// An action's options, typed by its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActionOptions {
    /// `gact`.
    Gact(Vec<TcActionGactOption>),
    /// `vlan`.
    Vlan(Vec<TcActionVlanOption>),
    /// `police`.
    Police(Vec<TcActionPoliceOption>),
    /// `skbedit`.
    Skbedit(Vec<TcActionSkbeditOption>),
    /// `pedit`.
    Pedit(Vec<TcActionPeditOption>),
    /// `csum`.
    Csum(Vec<TcActionCsumOption>),
    /// `ct`.
    Ct(Vec<TcActionCtOption>),
    /// `mpls`.
    Mpls(Vec<TcActionMplsOption>),
    /// `sample`.
    Sample(Vec<TcActionSampleOption>),
    /// `skbmod`.
    Skbmod(Vec<TcActionSkbmodOption>),
    /// `connmark`.
    Connmark(Vec<TcActionConnmarkOption>),
    /// As netlink-packet-route parsed them: typed there (mirred, nat, tunnel_key) or raw
    /// attributes (`TcActionOption::Other`) of a kind typed nowhere yet.
    Route(Vec<TcActionOption>),
}

impl Default for ActionOptions {
    fn default() -> Self {
        ActionOptions::Route(Vec::new())
    }
}

/// Parses raw attributes as `T`s.
fn reparse<T>(opts: &[TcActionOption]) -> Result<Vec<T>, DecodeError>
where
    T: for<'a> Parseable<NlaBuffer<&'a [u8]>>,
{
    opts.iter()
        .map(|o| {
            let TcActionOption::Other(n) = o else {
                return Err(DecodeError::from("an option typed by netlink-packet-route"));
            };
            let mut b = vec![0; n.buffer_len()];
            n.emit(&mut b);
            T::parse(&NlaBuffer::new_checked(&b[..])?)
        })
        .collect()
}

/// Emits `T`s as raw attributes (netlink-packet-route's form of an untyped kind).
fn raw<T: Nla>(v: &[T]) -> Vec<TcActionOption> {
    v.iter()
        .map(|o| {
            let mut b = vec![0; o.value_len()];
            o.emit_value(&mut b);
            let mut kind = o.kind();
            if o.is_nested() {
                kind |= netlink_packet_core::NLA_F_NESTED;
            }
            TcActionOption::Other(DefaultNla::new(kind, b))
        })
        .collect()
}

macro_rules! each {
    ($self:expr, $v:ident => $e:expr, $route:ident => $r:expr) => {
        match $self {
            ActionOptions::Gact($v) => $e,
            ActionOptions::Vlan($v) => $e,
            ActionOptions::Police($v) => $e,
            ActionOptions::Skbedit($v) => $e,
            ActionOptions::Pedit($v) => $e,
            ActionOptions::Csum($v) => $e,
            ActionOptions::Ct($v) => $e,
            ActionOptions::Mpls($v) => $e,
            ActionOptions::Sample($v) => $e,
            ActionOptions::Skbmod($v) => $e,
            ActionOptions::Connmark($v) => $e,
            ActionOptions::Route($route) => $r,
        }
    };
}

impl ActionOptions {
    /// Types the options of an action of `kind` as netlink-packet-route parsed them; options
    /// that do not parse (or a kind not typed here) stay as they are.
    pub fn parse(kind: &str, opts: &[TcActionOption]) -> Self {
        let typed = match kind {
            TcActionGact::KIND => reparse(opts).map(ActionOptions::Gact),
            TcActionVlan::KIND => reparse(opts).map(ActionOptions::Vlan),
            TcActionPolice::KIND => reparse(opts).map(ActionOptions::Police),
            TcActionSkbedit::KIND => reparse(opts).map(ActionOptions::Skbedit),
            TcActionPedit::KIND => reparse(opts).map(ActionOptions::Pedit),
            TcActionCsum::KIND => reparse(opts).map(ActionOptions::Csum),
            TcActionCt::KIND => reparse(opts).map(ActionOptions::Ct),
            TcActionMpls::KIND => reparse(opts).map(ActionOptions::Mpls),
            TcActionSample::KIND => reparse(opts).map(ActionOptions::Sample),
            TcActionSkbmod::KIND => reparse(opts).map(ActionOptions::Skbmod),
            TcActionConnmark::KIND => reparse(opts).map(ActionOptions::Connmark),
            _ => Err(DecodeError::from("not typed here")),
        };
        typed.unwrap_or_else(|_| ActionOptions::Route(opts.to_vec()))
    }

    /// netlink-packet-route's form: raw attributes of the kinds typed here.
    pub fn to_route(&self) -> Vec<TcActionOption> {
        each!(self, v => raw(v), r => r.clone())
    }

    /// Whether this kind is typed (here or by netlink-packet-route, mirred, nat and
    /// tunnel_key), as opposed to held as raw attributes.
    pub fn is_typed(&self) -> bool {
        match self {
            ActionOptions::Route(r) => !r.iter().any(|o| matches!(o, TcActionOption::Other(_))),
            _ => true,
        }
    }

    /// The generic parameters (`tc_gen`: index, control action, reference counts), police's
    /// included (its own layout, converted).
    pub fn generic(&self) -> Option<TcActionGeneric> {
        use netlink_packet_route::tc::{
            TcActionMirrorOption as M, TcActionNatOption as N, TcActionTunnelKeyOption as T,
        };
        match self {
            ActionOptions::Gact(v) => v.iter().find_map(|o| match o {
                TcActionGactOption::Parms(p) => Some(p.generic),
                _ => None,
            }),
            ActionOptions::Vlan(v) => v.iter().find_map(|o| match o {
                TcActionVlanOption::Parms(p) => Some(p.generic),
                _ => None,
            }),
            ActionOptions::Police(v) => v.iter().find_map(|o| match o {
                TcActionPoliceOption::Tbf(p) => Some(p.generic()),
                _ => None,
            }),
            ActionOptions::Skbedit(v) => v.iter().find_map(|o| match o {
                TcActionSkbeditOption::Parms(p) => Some(p.generic),
                _ => None,
            }),
            ActionOptions::Pedit(v) => v.iter().find_map(|o| match o {
                TcActionPeditOption::Parms(p) | TcActionPeditOption::ParmsEx(p) => Some(p.generic),
                _ => None,
            }),
            ActionOptions::Csum(v) => v.iter().find_map(|o| match o {
                TcActionCsumOption::Parms(p) => Some(p.generic),
                _ => None,
            }),
            ActionOptions::Ct(v) => v.iter().find_map(|o| match o {
                TcActionCtOption::Parms(p) => Some(p.generic),
                _ => None,
            }),
            ActionOptions::Mpls(v) => v.iter().find_map(|o| match o {
                TcActionMplsOption::Parms(p) => Some(p.generic),
                _ => None,
            }),
            ActionOptions::Sample(v) => v.iter().find_map(|o| match o {
                TcActionSampleOption::Parms(p) => Some(p.generic),
                _ => None,
            }),
            ActionOptions::Skbmod(v) => v.iter().find_map(|o| match o {
                TcActionSkbmodOption::Parms(p) => Some(p.generic),
                _ => None,
            }),
            ActionOptions::Connmark(v) => v.iter().find_map(|o| match o {
                TcActionConnmarkOption::Parms(p) => Some(p.generic),
                _ => None,
            }),
            ActionOptions::Route(v) => v.iter().find_map(|o| match o {
                TcActionOption::Mirror(M::Parms(p)) => Some(p.generic),
                TcActionOption::Nat(N::Parms(p)) => Some(p.generic),
                TcActionOption::TunnelKey(T::Parms(p)) => Some(p.generic),
                _ => None,
            }),
        }
    }

    /// Removes what changes without a message (timestamps) and the reference counts (computed
    /// by the mirror), and returns those counts (refcnt, bindcnt) if the options carried them.
    /// An untyped kind is left as it is.
    pub fn clean(&mut self) -> Option<(i32, i32)> {
        use netlink_packet_route::tc::{
            TcActionMirrorOption as M, TcActionNatOption as N, TcActionTunnelKeyOption as T,
        };
        fn take(g: &mut TcActionGeneric, out: &mut Option<(i32, i32)>) {
            *out = Some((g.refcnt, g.bindcnt));
            g.refcnt = 0;
            g.bindcnt = 0;
        }
        let mut counts = None;
        match self {
            ActionOptions::Gact(v) => {
                v.retain(|o| !matches!(o, TcActionGactOption::Tm(_)));
                for o in v {
                    if let TcActionGactOption::Parms(p) = o {
                        take(&mut p.generic, &mut counts);
                    }
                }
            }
            ActionOptions::Vlan(v) => {
                v.retain(|o| !matches!(o, TcActionVlanOption::Tm(_)));
                for o in v {
                    if let TcActionVlanOption::Parms(p) = o {
                        take(&mut p.generic, &mut counts);
                    }
                }
            }
            ActionOptions::Police(v) => {
                v.retain(|o| !matches!(o, TcActionPoliceOption::Tm(_)));
                for o in v {
                    if let TcActionPoliceOption::Tbf(p) = o {
                        counts = Some((p.refcnt, p.bindcnt));
                        (p.refcnt, p.bindcnt) = (0, 0);
                    }
                }
            }
            ActionOptions::Skbedit(v) => {
                v.retain(|o| !matches!(o, TcActionSkbeditOption::Tm(_)));
                for o in v {
                    if let TcActionSkbeditOption::Parms(p) = o {
                        take(&mut p.generic, &mut counts);
                    }
                }
            }
            ActionOptions::Pedit(v) => {
                v.retain(|o| !matches!(o, TcActionPeditOption::Tm(_)));
                for o in v {
                    if let TcActionPeditOption::Parms(p) | TcActionPeditOption::ParmsEx(p) = o {
                        take(&mut p.generic, &mut counts);
                    }
                }
            }
            ActionOptions::Csum(v) => {
                v.retain(|o| !matches!(o, TcActionCsumOption::Tm(_)));
                for o in v {
                    if let TcActionCsumOption::Parms(p) = o {
                        take(&mut p.generic, &mut counts);
                    }
                }
            }
            ActionOptions::Ct(v) => {
                v.retain(|o| !matches!(o, TcActionCtOption::Tm(_)));
                for o in v {
                    if let TcActionCtOption::Parms(p) = o {
                        take(&mut p.generic, &mut counts);
                    }
                }
            }
            ActionOptions::Mpls(v) => {
                v.retain(|o| !matches!(o, TcActionMplsOption::Tm(_)));
                for o in v {
                    if let TcActionMplsOption::Parms(p) = o {
                        take(&mut p.generic, &mut counts);
                    }
                }
            }
            ActionOptions::Sample(v) => {
                v.retain(|o| !matches!(o, TcActionSampleOption::Tm(_)));
                for o in v {
                    if let TcActionSampleOption::Parms(p) = o {
                        take(&mut p.generic, &mut counts);
                    }
                }
            }
            ActionOptions::Skbmod(v) => {
                v.retain(|o| !matches!(o, TcActionSkbmodOption::Tm(_)));
                for o in v {
                    if let TcActionSkbmodOption::Parms(p) = o {
                        take(&mut p.generic, &mut counts);
                    }
                }
            }
            ActionOptions::Connmark(v) => {
                v.retain(|o| !matches!(o, TcActionConnmarkOption::Tm(_)));
                for o in v {
                    if let TcActionConnmarkOption::Parms(p) = o {
                        take(&mut p.generic, &mut counts);
                    }
                }
            }
            ActionOptions::Route(v) => {
                v.retain(|o| {
                    !matches!(
                        o,
                        TcActionOption::Mirror(M::Tm(_))
                            | TcActionOption::Nat(N::Tm(_))
                            | TcActionOption::TunnelKey(T::Tm(_))
                    )
                });
                for o in v {
                    match o {
                        TcActionOption::Mirror(M::Parms(p)) => take(&mut p.generic, &mut counts),
                        TcActionOption::Nat(N::Parms(p)) => take(&mut p.generic, &mut counts),
                        TcActionOption::TunnelKey(T::Parms(p)) => take(&mut p.generic, &mut counts),
                        _ => {}
                    }
                }
            }
        }
        counts
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Action dumps (`RTM_GETACTION` of one kind) the 6.1 kernel produced, captured in the VM
    //! by `tests/vm/tc-capture.py` (its output: `vectors-6.1.txt`, the commands beside each).
    use super::*;
    use netlink_packet_route::tc::{TcActionAttribute, TcActionMessageAttribute};

    pub(crate) const VECTORS: &str = include_str!("vectors-6.1.txt");

    /// The dump messages captured after the `tc actions add action KIND ...` commands.
    pub(crate) fn dumped(kind: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut current = None;
        for l in VECTORS.lines() {
            if let Some(c) = l.strip_prefix("# tc actions add action ") {
                let k = c.split_whitespace().next().unwrap_or("");
                let k = match k {
                    "drop" | "pass" | "pipe" | "reclassify" | "ok" => "gact",
                    k => k,
                };
                current = Some(k.to_string());
            } else if l.starts_with("# tc filter") {
                current = None;
            } else if let Some(h) = l.strip_prefix("hex ") {
                if current.as_deref() == Some(kind) {
                    out.push(crate::netlink::tests::hex(h));
                }
            }
        }
        out
    }

    /// Every action of the captured dumps of `kind`, its options typed, in the dump's order.
    pub(crate) fn actions(kind: &str) -> Vec<(Vec<TcActionAttribute>, ActionOptions)> {
        use netlink_packet_core::NetlinkMessage;
        use netlink_packet_core::NetlinkPayload::InnerMessage;
        use netlink_packet_route::RouteNetlinkMessage as R;
        let mut out = Vec::new();
        for m in dumped(kind) {
            let msg = NetlinkMessage::<R>::deserialize(&m).unwrap();
            let (InnerMessage(R::GetTrafficAction(msg)) | InnerMessage(R::NewTrafficAction(msg))) =
                msg.payload
            else {
                panic!("not an action message: {msg:?}")
            };
            for a in msg.attributes {
                let TcActionMessageAttribute::Actions(v) = a else {
                    continue;
                };
                for act in v {
                    let opts = act
                        .attributes
                        .iter()
                        .find_map(|x| match x {
                            TcActionAttribute::Options(o) => Some(o.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    let typed = ActionOptions::parse(kind, &opts);
                    assert!(typed.is_typed(), "{kind}: {typed:?}");
                    // Emitting the typed options gives back the kernel's bytes.
                    assert_eq!(typed.to_route(), opts, "{kind}: {typed:?}");
                    out.push((act.attributes, typed));
                }
            }
        }
        assert!(!out.is_empty(), "no captured {kind} action");
        out
    }

    #[test]
    fn an_untyped_kind_stays_raw_and_a_typed_one_emits_its_bytes() {
        let opts = vec![TcActionOption::Other(DefaultNla::new(2, vec![1, 2, 3]))];
        let o = ActionOptions::parse("simple", &opts);
        assert_eq!(o, ActionOptions::Route(opts.clone()));
        assert!(!o.is_typed());
        // A gact whose parameters are too short stays raw, nothing lost.
        assert_eq!(
            ActionOptions::parse("gact", &opts),
            ActionOptions::Route(opts)
        );
    }
}
