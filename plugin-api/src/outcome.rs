//! What a plugin says it did with each change (the words of the kernel's offload flags:
//! `RTM_F_OFFLOAD`, `RTM_F_TRAP`, `RTM_F_OFFLOAD_FAILED`).

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// The result of applying one change. Non-exhaustive: a minor release may add outcomes (a
/// plugin built against an older minor never sees them; the host reads them all).
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Programmed into the data path (for a removal: removed from it).
    Offloaded,
    /// Not something this backend does; the kernel keeps handling it. Not an error.
    Unsupported,
    /// Accepted, but matching traffic is sent to the kernel (e.g. a route type handled in software).
    Trapped,
    /// The backend tried and failed; the reason is shown to the operator.
    Failed(RString),
}

impl Outcome {
    /// A failure with a reason.
    pub fn failed(reason: impl Into<String>) -> Outcome {
        Outcome::Failed(RString::from(reason.into()))
    }
    /// `offloaded`, `unsupported`, `trapped` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Offloaded => "offloaded",
            Outcome::Unsupported => "unsupported",
            Outcome::Trapped => "trapped",
            Outcome::Failed(_) => "failed",
        }
    }
}
