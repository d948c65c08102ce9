//! Plugins of the host's own minor: the calls cross as they are.

use super::{Binding, Bound};
use abi_stable::library::LibHeader;
use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use ekho_plugin_api::plugin::{ObjectStats, PluginBox, PluginModRef};
use ekho_plugin_api::prelude::*;
use ekho_plugin_api::HostHandle;

pub fn load(header: &'static LibHeader) -> Result<PluginModRef, abi_stable::library::LibraryError> {
    header.init_root_module::<PluginModRef>()
}

pub fn create(module: PluginModRef, config: &str, host: HostHandle) -> Result<Bound, String> {
    let create = module.create();
    match create(config.into(), host).into_result() {
        Ok(p) => Ok(Box::new(Native(p))),
        Err(e) => Err(e.into()),
    }
}

struct Native(PluginBox);

impl Binding for Native {
    fn capabilities(&self) -> RResult<Capabilities, RString> {
        self.0.capabilities()
    }
    fn apply(&mut self, changes: RSlice<'_, Change>) -> RResult<RVec<Outcome>, RString> {
        self.0.apply(changes)
    }
    fn notify(&mut self, events: RSlice<'_, NotifierEvent>) -> RResult<(), RString> {
        self.0.notify(events)
    }
    fn begin_sync(&mut self) -> RResult<(), RString> {
        self.0.begin_sync()
    }
    fn end_sync(&mut self) -> RResult<(), RString> {
        self.0.end_sync()
    }
    fn stats(&self) -> RResult<Stats, RString> {
        self.0.stats()
    }
    fn object_stats(&self, kind: ObjectKind) -> RResult<RVec<ObjectStats>, RString> {
        self.0.object_stats(kind)
    }
    fn shutdown(&mut self) -> RResult<(), RString> {
        self.0.shutdown()
    }
}
