//! Plugins built against API 1.0, on this host: checked against the frozen 1.0 types,
//! changes converted into them before each call (kinds added since never reach them), their
//! capabilities and requests converted back.

use super::{Binding, Bound};
use abi_stable::library::LibHeader;
use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use ekho_plugin_api::abi::v1_0;
use ekho_plugin_api::plugin::ObjectStats;
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::HostHandle;

pub fn load(
    header: &'static LibHeader,
) -> Result<v1_0::PluginModRef, abi_stable::library::LibraryError> {
    header.init_root_module::<v1_0::PluginModRef>()
}

pub fn create(module: v1_0::PluginModRef, config: &str, host: HostHandle) -> Result<Bound, String> {
    let create = module.create();
    match create(config.into(), v1_0::host(host)).into_result() {
        Ok(p) => Ok(Box::new(Converted {
            plugin: p,
            buf: Vec::new(),
            at: Vec::new(),
        })),
        Err(e) => Err(e.into()),
    }
}

struct Converted {
    plugin: v1_0::PluginBox,
    /// The batch in 1.0 types, reused across calls.
    buf: Vec<v1_0::Change>,
    /// For each converted change, its position in the host's batch.
    at: Vec<usize>,
}

impl Binding for Converted {
    fn capabilities(&self) -> RResult<Capabilities, RString> {
        // A 1.0 plugin can name only 1.0 kinds; it takes no flows.
        self.plugin.capabilities().map(v1_0::capabilities)
    }
    fn apply(&mut self, changes: RSlice<'_, Change>) -> RResult<RVec<Outcome>, RString> {
        self.buf.clear();
        self.at.clear();
        for (i, c) in changes.iter().enumerate() {
            if let Some(c) = v1_0::change(c) {
                self.buf.push(c);
                self.at.push(i);
            }
        }
        if self.at.len() == changes.len() {
            return self.plugin.apply(self.buf.as_slice().into());
        }
        // Kinds 1.0 does not have never pass the capability filter; should one get here, the
        // host answers it `unsupported` without calling the plugin.
        let got = match self.plugin.apply(self.buf.as_slice().into()) {
            RResult::ROk(v) => v,
            e => return e,
        };
        let mut out: RVec<Outcome> = (0..changes.len()).map(|_| Outcome::Unsupported).collect();
        for (o, &i) in got.into_iter().zip(&self.at) {
            out[i] = o;
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
    fn object_stats(&self, _kind: ObjectKind) -> RResult<RVec<ObjectStats>, RString> {
        RResult::ROk(RVec::new())
    }
    fn shutdown(&mut self) -> RResult<(), RString> {
        self.plugin.shutdown()
    }
}
