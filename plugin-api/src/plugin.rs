//! The plugin interface: the Rust trait a vendor implements, the stable-ABI root module the host
//! loads, and the adapter between them that stops panics at the boundary.

use crate::capability::Capabilities;
use crate::change::Change;
use crate::event::NotifierEvent;
use crate::host::HostHandle;
use crate::object::{ObjectKey, ObjectKind};
use crate::outcome::Outcome;
use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Name and version of a plugin.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct PluginInfo {
    pub name: RString,
    pub version: RString,
    pub description: RString,
}

/// One named counter in [`Stats`], e.g. kind `route`, name `offloaded`; or kind `port:eth0`,
/// name `forwarded`.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct Counter {
    pub kind: RString,
    pub name: RString,
    pub value: u64,
}

/// A plugin's statistics: counters (shown by `ekho status`) and free text.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug, Default)]
pub struct Stats {
    pub counters: RVec<Counter>,
    pub text: RString,
}

impl Stats {
    /// Adds a counter.
    pub fn counter(mut self, kind: &str, name: &str, value: u64) -> Self {
        self.counters.push(Counter {
            kind: kind.into(),
            name: name.into(),
            value,
        });
        self
    }
}

/// Now on `CLOCK_MONOTONIC`, in nanoseconds: the clock of [`ObjectCounters::lastused`] (and of
/// `bpf_ktime_get_ns()`), for a dataplane that stamps its counters in software or ages what a
/// BPF program stamped. A plain function, not part of the ABI.
///
/// ```
/// let (a, b) = (ekho_plugin_api::monotonic_ns(), ekho_plugin_api::monotonic_ns());
/// assert!(a > 0 && b >= a);
/// ```
pub fn monotonic_ns() -> u64 {
    // clock_gettime fails only for an unknown clock or a bad pointer: neither can happen here.
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// What a dataplane counted for one object in one direction (API 1.2).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ObjectCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Packets the dataplane dropped (a tc filter's drops, a flow's packets it could not
    /// forward).
    pub drops: u64,
    /// When the last packet was seen: `CLOCK_MONOTONIC` nanoseconds (the clock of
    /// `bpf_ktime_get_ns()`, read by [`monotonic_ns`]); 0 when none was.
    pub lastused: u64,
}

/// The counters of one object a plugin holds (API 1.2), answered to
/// [`Plugin::object_stats`]: `counters` has one entry per direction of its kind: a flow two
/// (original, then reply), every other kind one.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct ObjectStats {
    /// The object's key, as [`Object::key`](crate::Object::key) gave it.
    pub key: ObjectKey,
    pub counters: RVec<ObjectCounters>,
}

impl ObjectStats {
    /// The stats of a flow: original direction, then reply.
    pub fn flow(key: ObjectKey, original: ObjectCounters, reply: ObjectCounters) -> ObjectStats {
        ObjectStats {
            key,
            counters: vec![original, reply].into(),
        }
    }
    /// The stats of a tc filter (API 1.3; `key`: its [`ObjectKey::TcFilter`]): one entry,
    /// what the dataplane matched (packets, bytes), dropped, and when it last matched.
    pub fn tc_filter(key: ObjectKey, counters: ObjectCounters) -> ObjectStats {
        ObjectStats {
            key,
            counters: vec![counters].into(),
        }
    }
    /// The latest `lastused` of any direction.
    pub fn lastused(&self) -> u64 {
        self.counters.iter().map(|c| c.lastused).max().unwrap_or(0)
    }
}

/// What a plugin gets when it is created.
pub struct CreateContext {
    /// The plugin's `[plugins.config]` table from the host config, as TOML text (empty when none).
    /// Parse it with the `toml` crate into your own config struct.
    pub config: String,
    /// Services of the host (requests, logging).
    pub host: HostHandle,
}

impl CreateContext {
    /// The network namespace the host mirrors (`None`: the host's own); see
    /// [`HostServices::netns`](crate::HostServices::netns).
    pub fn netns(&self) -> Option<std::path::PathBuf> {
        let p = self.host.netns();
        (!p.is_empty()).then(|| std::path::PathBuf::from(p.as_str()))
    }
}

/// The trait a vendor implements. Call order: [`Plugin::create`], then [`Plugin::begin_sync`],
/// [`Plugin::apply`] with the whole current state as additions, [`Plugin::end_sync`], then
/// `apply` with increments for as long as the host runs, [`Plugin::shutdown`] at the end.
/// Calls come from one thread dedicated to the plugin, never concurrently.
///
/// A panic in any method is caught at the boundary and reported to the host, which marks the
/// plugin failed and stops calling it; the host and the other plugins carry on.
pub trait Plugin: Send + 'static {
    /// Builds the plugin from its configuration. `Err` is shown to the operator.
    fn create(ctx: CreateContext) -> Result<Self, String>
    where
        Self: Sized;

    /// What the plugin takes (asked once, after creation).
    fn capabilities(&self) -> Capabilities;

    /// Applies a batch of changes in order; returns one outcome per change, in the same order.
    ///
    /// The batch is in [`order::batch_key`](crate::order::batch_key) order, the one definition
    /// of what depends on what: first removals of objects nothing refers to (routes before
    /// the nexthops they use), then additions and updates with what an object depends on first
    /// (a link before its addresses, neighbours and routes; nexthops before the groups and
    /// routes that use them), then removals of links, bridge VLANs and nexthops.
    fn apply(&mut self, changes: &[Change]) -> Vec<Outcome>;

    /// Kernel notifier events on the `ebpf` stream (only the kinds declared in capabilities).
    fn notify(&mut self, _events: &[NotifierEvent]) {}

    /// A full replay of the host's state begins. A plugin that keeps hardware state across host
    /// restarts marks everything it holds here ... The host may call it again before
    /// `end_sync`: the replay then starts over (it does when a plugin could not keep up with
    /// the initial dump streamed to it), so mark everything again, including what this sync
    /// has added so far. An addition of an object the plugin holds renews it.
    fn begin_sync(&mut self) {}

    /// ... and removes here what the replay did not renew (mark and sweep): nothing stale stays,
    /// nothing live is flushed.
    fn end_sync(&mut self) {}

    /// Counters for `ekho status`.
    fn stats(&self) -> Stats {
        Stats::default()
    }

    /// Per-object counters of the objects of `kind` the plugin holds (API 1.2). The host asks
    /// for flows about once a second: while a flow's `lastused` advances, it keeps the
    /// conntrack entry alive (the kernel sees none of its packets), and `ekho dump flows
    /// --stats` shows the counters beside the kernel's. Objects not listed have no counters.
    fn object_stats(&self, _kind: ObjectKind) -> Vec<ObjectStats> {
        Vec::new()
    }

    /// The host is stopping or unloading the plugin: release what you hold.
    fn shutdown(&mut self) {}
}

/// The plugin object as the host sees it through the ABI. Every method returns `Err` with the
/// panic message if the plugin panicked.
#[sabi_trait]
pub trait FfiPlugin: Send {
    fn capabilities(&self) -> RResult<Capabilities, RString>;
    fn apply(&mut self, changes: RSlice<'_, Change>) -> RResult<RVec<Outcome>, RString>;
    fn notify(&mut self, events: RSlice<'_, NotifierEvent>) -> RResult<(), RString>;
    fn begin_sync(&mut self) -> RResult<(), RString>;
    fn end_sync(&mut self) -> RResult<(), RString>;
    fn stats(&self) -> RResult<Stats, RString>;
    /// API 1.2.
    fn object_stats(&self, kind: ObjectKind) -> RResult<RVec<ObjectStats>, RString>;
    #[sabi(last_prefix_field)]
    fn shutdown(&mut self) -> RResult<(), RString>;
}

/// A boxed plugin behind the ABI.
pub type PluginBox = FfiPlugin_TO<'static, RBox<()>>;

/// The root module every plugin library exports (built by [`declare_plugin!`](crate::declare_plugin)).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// Name and version, without creating the plugin.
    pub info: extern "C" fn() -> PluginInfo,
    /// Creates the plugin from its config (TOML text).
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(config: RStr<'_>, host: HostHandle) -> RResult<PluginBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "ekho_plugin";
    const NAME: &'static str = "ekho_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> RString {
    let msg = if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    };
    format!("plugin panicked: {msg}").into()
}

fn guard<R>(f: impl FnOnce() -> R) -> RResult<R, RString> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => RResult::ROk(r),
        Err(p) => RResult::RErr(panic_message(p)),
    }
}

/// Adapts a [`Plugin`] to [`FfiPlugin`]. Used by [`declare_plugin!`](crate::declare_plugin).
#[doc(hidden)]
pub struct Adapter<P: Plugin>(pub P);

impl<P: Plugin> FfiPlugin for Adapter<P> {
    fn capabilities(&self) -> RResult<Capabilities, RString> {
        guard(|| self.0.capabilities())
    }
    fn apply(&mut self, changes: RSlice<'_, Change>) -> RResult<RVec<Outcome>, RString> {
        let n = changes.len();
        match guard(|| self.0.apply(changes.as_slice())) {
            RResult::ROk(v) if v.len() == n => RResult::ROk(v.into()),
            RResult::ROk(v) => RResult::RErr(
                format!("plugin returned {} outcomes for {} changes", v.len(), n).into(),
            ),
            RResult::RErr(e) => RResult::RErr(e),
        }
    }
    fn notify(&mut self, events: RSlice<'_, NotifierEvent>) -> RResult<(), RString> {
        guard(|| self.0.notify(events.as_slice()))
    }
    fn begin_sync(&mut self) -> RResult<(), RString> {
        guard(|| self.0.begin_sync())
    }
    fn end_sync(&mut self) -> RResult<(), RString> {
        guard(|| self.0.end_sync())
    }
    fn stats(&self) -> RResult<Stats, RString> {
        guard(|| self.0.stats())
    }
    fn object_stats(&self, kind: ObjectKind) -> RResult<RVec<ObjectStats>, RString> {
        guard(|| self.0.object_stats(kind).into())
    }
    fn shutdown(&mut self) -> RResult<(), RString> {
        guard(|| self.0.shutdown())
    }
}

#[doc(hidden)]
pub extern "C" fn create_plugin<P: Plugin>(
    config: RStr<'_>,
    host: HostHandle,
) -> RResult<PluginBox, RString> {
    let config = config.as_str().to_string();
    match catch_unwind(AssertUnwindSafe(move || {
        P::create(CreateContext { config, host })
    })) {
        Ok(Ok(p)) => RResult::ROk(FfiPlugin_TO::from_value(
            Adapter(p),
            abi_stable::sabi_trait::TD_Opaque,
        )),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(p) => RResult::RErr(panic_message(p)),
    }
}

/// Builds the root module for plugin type `P`. Used by [`declare_plugin!`](crate::declare_plugin).
#[doc(hidden)]
pub fn root_module<P: Plugin>(info: extern "C" fn() -> PluginInfo) -> PluginModRef {
    PluginMod {
        info,
        create: create_plugin::<P>,
    }
    .leak_into_prefix()
}

/// Wraps a plugin already created in-process (tests, embedding) in the ABI box.
pub fn boxed<P: Plugin>(p: P) -> PluginBox {
    FfiPlugin_TO::from_value(Adapter(p), abi_stable::sabi_trait::TD_Opaque)
}

/// Declares a type implementing [`Plugin`] as this library's ekho plugin: exports the
/// API-version symbol, the stable-ABI root module and the plugin's name in the file's
/// `.ekho.plugin_name` section (the host finds a plugin by that name without loading any file).
/// Name and version default to the crate's `CARGO_PKG_NAME` / `CARGO_PKG_VERSION`; a name given
/// must be a constant `&str` expression.
///
/// ```ignore
/// ekho_plugin_api::declare_plugin!(MyPlugin);
/// ekho_plugin_api::declare_plugin!(MyPlugin, name = "acme-asic", description = "Acme ASIC");
/// ```
#[macro_export]
macro_rules! declare_plugin {
    ($ty:ty) => {
        $crate::declare_plugin!(
            $ty,
            name = env!("CARGO_PKG_NAME"),
            description = env!("CARGO_PKG_DESCRIPTION")
        );
    };
    ($ty:ty, name = $name:expr) => {
        $crate::declare_plugin!(
            $ty,
            name = $name,
            description = env!("CARGO_PKG_DESCRIPTION")
        );
    };
    ($ty:ty, name = $name:expr, description = $desc:expr) => {
        /// The `ekho-plugin-api` version this plugin was built against (read by the host with
        /// `dlsym` before anything else).
        #[unsafe(no_mangle)]
        pub static EKHO_PLUGIN_API_VERSION: $crate::version::VersionTag =
            $crate::version::VersionTag::CURRENT;

        /// 1 when this plugin was built with `panic = "unwind"` (panics are caught at the
        /// boundary), 0 with `panic = "abort"` (a panic would abort the host; it refuses it).
        #[unsafe(no_mangle)]
        pub static EKHO_PLUGIN_PANIC_UNWIND: u8 = if cfg!(panic = "unwind") { 1 } else { 0 };

        /// The plugin's name, NUL-terminated, in the `.ekho.plugin_name` section: the host reads
        /// it from the file (without loading it) to find a plugin by name whatever the file is
        /// called. Exported so the linker keeps it.
        #[unsafe(no_mangle)]
        #[unsafe(link_section = ".ekho.plugin_name")]
        pub static EKHO_PLUGIN_NAME: [u8; $crate::plugin::name_section_len($name)] =
            $crate::plugin::name_section($name);

        extern "C" fn __ekho_plugin_info() -> $crate::plugin::PluginInfo {
            $crate::plugin::PluginInfo {
                name: $name.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: $desc.into(),
            }
        }

        fn __ekho_plugin_root_module() -> $crate::plugin::PluginModRef {
            $crate::plugin::root_module::<$ty>(__ekho_plugin_info)
        }

        // What `#[abi_stable::export_root_module]` generates, spelled with `$crate` paths so a
        // plugin needs no direct dependency on abi_stable. The symbol name is abi_stable's
        // `ROOT_MODULE_LOADER_NAME` (checked by a test in ekho-plugin-api).
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            extern "C" fn __ekho_erased_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__ekho_plugin_root_module)
            }
            // SAFETY: the constructor returns the module type named here, as abi_stable's own
            // attribute arranges it.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::plugin::PluginModRef>(
                    __ekho_erased_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// The size of the `.ekho.plugin_name` section [`declare_plugin!`] writes for `name`: its bytes
/// and a NUL.
#[doc(hidden)]
pub const fn name_section_len(name: &str) -> usize {
    name.len() + 1
}

/// The `.ekho.plugin_name` section's contents for `name` (`N` = [`name_section_len`]): its
/// bytes, then NULs.
#[doc(hidden)]
pub const fn name_section<const N: usize>(name: &str) -> [u8; N] {
    let b = name.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < b.len() && i + 1 < N {
        out[i] = b[i];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn name_section_is_the_name_and_a_nul() {
        const N: usize = super::name_section_len("hello-vendor");
        let s: [u8; N] = super::name_section("hello-vendor");
        assert_eq!(&s, b"hello-vendor\0");
    }

    #[test]
    fn declare_plugin_exports_abi_stables_loader_symbol() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
