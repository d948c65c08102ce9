//! API versioning: the plain C symbol every plugin exports and the semver rule the host applies.
//!
//! Every plugin built with [`declare_plugin!`](crate::declare_plugin) exports a NUL-terminated
//! string symbol named [`VERSION_SYMBOL`] holding the version of `ekho-plugin-api` it was compiled
//! against. The host reads it with `dlsym` *before* touching anything else in the library, so a
//! mismatch is reported in plain words instead of as an ABI layout error.
//!
//! # Compatibility rule
//! A host built against `ekho-plugin-api` version `H` accepts a plugin built against version `P`
//! when `P` matches the caret requirement of `H`'s compatible range:
//! - for `H = 0.y.z`: `^0.y` (same minor; in 0.x the minor is the breaking number),
//! - for `H = x.y.z` with `x >= 1`: `^x` (same major).
//!
//! The object model is carried by `abi_stable` prefix types, so a plugin built against an older or
//! newer patch of the same range still loads; abi_stable's own layout check runs afterwards and
//! catches anything this rule would miss.

/// Name of the exported symbol (without the trailing NUL).
pub const VERSION_SYMBOL: &str = "EKHO_PLUGIN_API_VERSION";

/// Name of the exported `u8` symbol saying whether the plugin unwinds on panic (1) or aborts (0).
pub const PANIC_SYMBOL: &str = "EKHO_PLUGIN_PANIC_UNWIND";

/// The version of this crate, i.e. the API version a plugin is being built against.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A fixed-size, NUL-terminated copy of [`API_VERSION`], suitable for a `#[no_mangle]` static.
#[repr(C)]
pub struct VersionTag(pub [u8; 32]);

impl VersionTag {
    /// The tag for the version of `ekho-plugin-api` being compiled.
    pub const CURRENT: VersionTag = VersionTag::new(API_VERSION);

    /// Builds a tag from a version string (truncated to 31 bytes).
    pub const fn new(v: &str) -> VersionTag {
        let bytes = v.as_bytes();
        let mut out = [0u8; 32];
        let mut i = 0;
        while i < bytes.len() && i < 31 {
            out[i] = bytes[i];
            i += 1;
        }
        VersionTag(out)
    }

    /// The version as text.
    pub fn as_str(&self) -> &str {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        std::str::from_utf8(&self.0[..end]).unwrap_or("")
    }
}

/// The caret requirement (as text, e.g. `^0.1`) that plugins must satisfy for a host built
/// against API version `host`. Returns `None` when `host` is not `MAJOR.MINOR.PATCH`.
pub fn accepted_range(host: &str) -> Option<String> {
    let mut it = host.split(['.', '-', '+']);
    let major: u64 = it.next()?.parse().ok()?;
    let minor: u64 = it.next()?.parse().ok()?;
    if major == 0 {
        Some(format!("^0.{minor}"))
    } else {
        Some(format!("^{major}"))
    }
}

/// Whether a plugin built against `plugin` is accepted by a host built against `host`
/// (see the module docs for the rule).
pub fn is_compatible(host: &str, plugin: &str) -> bool {
    let parse = |s: &str| -> Option<(u64, u64)> {
        let mut it = s.split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parse(host), parse(plugin)) {
        (Some((hm, hn)), Some((pm, pn))) => {
            if hm == 0 {
                pm == 0 && hn == pn
            } else {
                hm == pm
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_roundtrip() {
        assert_eq!(VersionTag::new("0.1.0").as_str(), "0.1.0");
        assert_eq!(VersionTag::CURRENT.as_str(), API_VERSION);
    }

    #[test]
    fn caret_rule() {
        assert_eq!(accepted_range("0.4.2").as_deref(), Some("^0.4"));
        assert_eq!(accepted_range("1.3.0").as_deref(), Some("^1"));
        assert!(is_compatible("0.4.0", "0.4.9"));
        assert!(is_compatible("0.4.9", "0.4.0"));
        assert!(!is_compatible("0.4.0", "0.3.1"));
        assert!(!is_compatible("0.4.0", "1.4.0"));
        assert!(is_compatible("1.2.0", "1.9.1"));
        assert!(!is_compatible("1.2.0", "2.0.0"));
        assert!(!is_compatible("1.2.0", "garbage"));
    }
}
