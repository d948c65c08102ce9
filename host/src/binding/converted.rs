//! The binding of an older minor's plugins, written once: `converted!` makes the module of
//! one minor (its `load`, `create` and the `Binding` that converts each batch into the minor's
//! frozen types, kinds it does not have answered `unsupported` without a call, and the
//! plugin's outcomes back with `v1_N::outcome`).

/// `converted!(v1_N)`: the binding of minor 1.N's plugins, whose capabilities convert with
/// `v1_N::capabilities` and who have no per-object counters (1.0, 1.1).
/// `converted!(v1_N, capabilities: FN, object_stats: |plugin, kind| EXPR)`: a minor that has
/// them (`EXPR` calls the plugin's own and converts its result).
macro_rules! converted {
    ($snap:ident) => {
        converted!(
            $snap,
            capabilities: $snap::capabilities,
            object_stats: |_plugin, _kind| RResult::ROk(RVec::new())
        );
    };
    ($snap:ident, capabilities: $caps:expr, object_stats: |$p:pat_param, $k:pat_param| $stats:expr) => {
        use super::{Binding, Bound};
        use abi_stable::library::LibHeader;
        use abi_stable::std_types::{RResult, RSlice, RString, RVec};
        use ekho_plugin_api::abi::$snap;
        use ekho_plugin_api::plugin::ObjectStats;
        use ekho_plugin_api::prelude::*;
        use ekho_plugin_api::HostHandle;

        pub fn load(
            header: &'static LibHeader,
        ) -> Result<$snap::PluginModRef, abi_stable::library::LibraryError> {
            header.init_root_module::<$snap::PluginModRef>()
        }

        pub fn create(module: $snap::PluginModRef, config: &str, host: HostHandle) -> Result<Bound, String> {
            let create = module.create();
            match create(config.into(), $snap::host(host)).into_result() {
                Ok(p) => Ok(Box::new(Converted {
                    plugin: p,
                    buf: Vec::new(),
                    at: Vec::new(),
                })),
                Err(e) => Err(e.into()),
            }
        }

        struct Converted {
            plugin: $snap::PluginBox,
            /// The batch in the minor's types, reused across calls.
            buf: Vec<$snap::Change>,
            /// For each converted change, its position in the host's batch.
            at: Vec<usize>,
        }

        impl Binding for Converted {
            fn capabilities(&self) -> RResult<Capabilities, RString> {
                // An older minor's plugin can name only its minor's kinds.
                self.plugin.capabilities().map($caps)
            }
            fn apply(&mut self, changes: RSlice<'_, Change>) -> RResult<RVec<Outcome>, RString> {
                self.buf.clear();
                self.at.clear();
                for (i, c) in changes.iter().enumerate() {
                    if let Some(c) = $snap::change(c) {
                        self.buf.push(c);
                        self.at.push(i);
                    }
                }
                let got = match self.plugin.apply(self.buf.as_slice().into()) {
                    RResult::ROk(v) => v,
                    RResult::RErr(e) => return RResult::RErr(e),
                };
                // The minor's outcomes in the host's (1.0 to 1.3 have no reasoned unsupported).
                if self.at.len() == changes.len() {
                    return RResult::ROk(got.into_iter().map($snap::outcome).collect());
                }
                // Kinds the minor does not have never pass the capability filter; should one get
                // here, the host answers it `unsupported` without calling the plugin.
                let mut out: RVec<Outcome> = (0..changes.len()).map(|_| Outcome::Unsupported).collect();
                for (o, &i) in got.into_iter().zip(&self.at) {
                    out[i] = $snap::outcome(o);
                }
                RResult::ROk(out)
            }
            fn notify(&mut self, events: RSlice<'_, NotifierEvent>) -> RResult<(), RString> {
                self.plugin.notify(events)
            }
            fn begin_sync(&mut self) -> RResult<(), RString> {
                self.plugin.begin_sync()
            }
            fn end_sync(&mut self) -> RResult<(), RString> {
                self.plugin.end_sync()
            }
            fn stats(&self) -> RResult<Stats, RString> {
                self.plugin.stats()
            }
            fn object_stats(&self, kind: ObjectKind) -> RResult<RVec<ObjectStats>, RString> {
                let ($p, $k) = (&self.plugin, kind);
                $stats
            }
            fn shutdown(&mut self) -> RResult<(), RString> {
                self.plugin.shutdown()
            }
        }
    };
}
