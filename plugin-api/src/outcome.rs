//! What a plugin says it did with each change (the words of the kernel's offload flags:
//! `RTM_F_OFFLOAD`, `RTM_F_TRAP`, `RTM_F_OFFLOAD_FAILED`).

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// The result of applying one change. Non-exhaustive: a minor release may add outcomes (a
/// plugin built against an older minor never sees them; the host reads them all).
///
/// "Unsupported" has two spellings: [`Outcome::Unsupported`] (no reason, as before 1.4) and,
/// from API 1.4, [`Outcome::UnsupportedBecause`] with the reason, which the host shows where
/// the outcome is shown (`ekho status`, `ekho dump filters`: `offload: unsupported (REASON)
/// [plugin]`). Both are the same outcome, named `unsupported` (JSON, metrics); build the second
/// with [`Outcome::unsupported`] and read either with [`Outcome::is_unsupported`] and
/// [`Outcome::reason`]:
///
/// ```
/// use ekho_plugin_api::Outcome;
///
/// let o = Outcome::unsupported("backward jump (goto to an earlier chain)");
/// assert!(o.is_unsupported());
/// assert_eq!(o.name(), "unsupported");
/// assert_eq!(o.reason(), Some("backward jump (goto to an earlier chain)"));
/// // The bare one stays: no reason.
/// assert!(Outcome::Unsupported.is_unsupported());
/// assert_eq!(Outcome::Unsupported.reason(), None);
/// assert_eq!(Outcome::failed("map full").reason(), Some("map full"));
/// ```
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Programmed into the data path (for a removal: removed from it).
    Offloaded,
    /// Not something this backend does; the kernel keeps handling it. Not an error. Without a
    /// reason: prefer [`Outcome::unsupported`] when the backend knows why.
    Unsupported,
    /// Accepted, but matching traffic is sent to the kernel (e.g. a route type handled in software).
    Trapped,
    /// The backend tried and failed; the reason is shown to the operator.
    Failed(RString),
    /// API 1.4: [`Outcome::Unsupported`] with the reason, in the operator's words (`vlan modify
    /// with priority 0`): shown beside the outcome, which is still `unsupported`. A host
    /// older than 1.4 never loads a plugin that can give it (a plugin built against 1.4 is
    /// refused there), and a plugin of an older minor gives the bare one.
    UnsupportedBecause(RString),
}

impl Outcome {
    /// A failure with a reason.
    pub fn failed(reason: impl Into<String>) -> Outcome {
        Outcome::Failed(RString::from(reason.into()))
    }
    /// Unsupported, with the reason (API 1.4): [`Outcome::UnsupportedBecause`].
    pub fn unsupported(reason: impl Into<String>) -> Outcome {
        Outcome::UnsupportedBecause(RString::from(reason.into()))
    }
    /// `offloaded`, `unsupported` (with or without a reason), `trapped` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Offloaded => "offloaded",
            Outcome::Unsupported | Outcome::UnsupportedBecause(_) => "unsupported",
            Outcome::Trapped => "trapped",
            Outcome::Failed(_) => "failed",
        }
    }
    /// [`Outcome::Unsupported`] or [`Outcome::UnsupportedBecause`].
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Outcome::Unsupported | Outcome::UnsupportedBecause(_))
    }
    /// The reason of a failure or of an unsupported with one; `None` otherwise.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Failed(r) | Outcome::UnsupportedBecause(r) => Some(r.as_str()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_unsupported_spellings_are_one_outcome() {
        let because = Outcome::unsupported("gact random");
        assert_eq!(because, Outcome::UnsupportedBecause("gact random".into()));
        for o in [&because, &Outcome::Unsupported] {
            assert!(o.is_unsupported(), "{o:?}");
            assert_eq!(o.name(), "unsupported");
        }
        assert_eq!(because.reason(), Some("gact random"));
        assert_eq!(Outcome::Unsupported.reason(), None);
        assert!(!Outcome::failed("x").is_unsupported());
        assert_eq!(Outcome::Offloaded.reason(), None);
    }
}
