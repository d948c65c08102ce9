//! API versioning: the plain C symbol every plugin exports and the rule the host applies.
//!
//! Every plugin built with [`declare_plugin!`](crate::declare_plugin) exports a NUL-terminated
//! string symbol named [`VERSION_SYMBOL`] holding the version of `ekho-plugin-api` it was compiled
//! against. The host reads it with `dlsym` *before* touching anything else in the library, so a
//! mismatch is reported in plain words instead of as an ABI layout error.
//!
//! # Compatibility rule (the contract of 1.x)
//! A host built against `ekho-plugin-api` `H = M.m.p` runs a plugin built against `P`:
//! - `P = M.m.q` (the host's own minor, any patch): **native**, changes cross as they are;
//! - `P = M.n.q` with `n < m` (an older minor): **converted**: the host checks the plugin
//!   against the frozen types of `M.n` ([`abi`](crate::abi)) and converts changes into them;
//!   kinds and fields added after `M.n` never reach the plugin;
//! - `P = M.n.q` with `n > m` (a newer minor): refused, naming both versions: the plugin may
//!   rely on kinds or fields this host does not have. Update the host or rebuild the plugin
//!   against an older minor;
//! - another major: refused (rebuild against `M.x`).
//!
//! Before 1.0 (`0.y`), the minor was the breaking number: a `0.y` plugin runs only on a `0.y`
//! host, natively.

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

/// How a host runs a plugin of a given API version (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Same minor: the plugin's types are the host's.
    Native,
    /// An older minor of the same major: through that minor's snapshot, converted.
    Converted {
        /// The plugin's `(major, minor)`.
        minor: (u64, u64),
    },
    /// A newer minor of the same major: refused.
    NewerMinor,
    /// Another major: refused.
    OtherMajor,
    /// Not `MAJOR.MINOR.PATCH`: refused.
    Unparsable,
}

impl Verdict {
    /// Whether the host runs the plugin.
    pub fn runs(self) -> bool {
        matches!(self, Verdict::Native | Verdict::Converted { .. })
    }
}

/// `(major, minor)` of a version string, `None` when it is not `MAJOR.MINOR.PATCH[-pre][+build]`.
pub fn major_minor(v: &str) -> Option<(u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let _patch: u64 = it.next()?.parse().ok()?;
    it.next().is_none().then_some((major, minor))
}

/// The rule: how a host built against API `host` runs a plugin built against API `plugin`.
pub fn verdict(host: &str, plugin: &str) -> Verdict {
    let (Some((hm, hn)), Some((pm, pn))) = (major_minor(host), major_minor(plugin)) else {
        return Verdict::Unparsable;
    };
    if hm != pm {
        return Verdict::OtherMajor;
    }
    if hn == pn {
        Verdict::Native
    } else if hm == 0 {
        // Before 1.0 every minor was a breaking release.
        Verdict::OtherMajor
    } else if pn < hn {
        Verdict::Converted { minor: (pm, pn) }
    } else {
        Verdict::NewerMinor
    }
}

/// The API versions a host built against `host` runs, in words: `1.0.x` for a 1.0 host,
/// `1.0 to 1.3.x` for a 1.3 host, `0.2.x` for a 0.2 host. `None` when `host` does not parse.
pub fn accepted_range(host: &str) -> Option<String> {
    let (major, minor) = major_minor(host)?;
    Some(if major == 0 || minor == 0 {
        format!("{major}.{minor}.x")
    } else {
        format!("{major}.0 to {major}.{minor}.x")
    })
}

/// Whether a plugin built against `plugin` is run by a host built against `host`.
pub fn is_compatible(host: &str, plugin: &str) -> bool {
    verdict(host, plugin).runs()
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
    fn the_rule() {
        assert_eq!(verdict("1.2.0", "1.2.7"), Verdict::Native);
        assert_eq!(verdict("1.2.7", "1.2.0"), Verdict::Native);
        assert_eq!(
            verdict("1.2.0", "1.0.3"),
            Verdict::Converted { minor: (1, 0) }
        );
        assert_eq!(verdict("1.2.0", "1.3.0"), Verdict::NewerMinor);
        assert_eq!(verdict("1.2.0", "2.0.0"), Verdict::OtherMajor);
        assert_eq!(verdict("1.2.0", "0.2.0"), Verdict::OtherMajor);
        assert_eq!(verdict("0.4.0", "0.4.9"), Verdict::Native);
        assert_eq!(verdict("0.4.0", "0.3.1"), Verdict::OtherMajor);
        assert_eq!(verdict("1.2.0", "garbage"), Verdict::Unparsable);
        assert_eq!(verdict("1.2.0", "1.2"), Verdict::Unparsable);
        assert_eq!(verdict("1.2.0", "1.2.0-rc.1"), Verdict::Native);
        assert!(is_compatible("1.2.0", "1.1.0"));
        assert!(!is_compatible("1.1.0", "1.2.0"));
    }

    #[test]
    fn ranges_in_words() {
        assert_eq!(accepted_range("1.0.0").as_deref(), Some("1.0.x"));
        assert_eq!(accepted_range("1.3.2").as_deref(), Some("1.0 to 1.3.x"));
        assert_eq!(accepted_range("0.2.0").as_deref(), Some("0.2.x"));
    }
}
