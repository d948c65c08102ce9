//! `null`: an ekho plugin that accepts every object kind and notifier, counts what it gets, and
//! does nothing else. The baseline for benchmarks of the host.

use ekho_plugin_api::prelude::*;

struct Null {
    changes: [u64; ObjectKind::ALL.len()],
    events: u64,
    syncs: u64,
}

impl Plugin for Null {
    fn create(_ctx: CreateContext) -> Result<Self, String> {
        Ok(Null {
            changes: [0; ObjectKind::ALL.len()],
            events: 0,
            syncs: 0,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::everything()
    }

    fn apply(&mut self, changes: &[Change]) -> Vec<Outcome> {
        for c in changes {
            self.changes[c.kind().index()] += 1;
        }
        vec![Outcome::Offloaded; changes.len()]
    }

    fn notify(&mut self, events: &[NotifierEvent]) {
        self.events += events.len() as u64;
    }

    fn end_sync(&mut self) {
        self.syncs += 1;
    }

    fn stats(&self) -> Stats {
        let mut s = Stats::default()
            .counter("all", "events", self.events)
            .counter("all", "syncs", self.syncs);
        for &k in ObjectKind::ALL {
            if self.changes[k.index()] > 0 {
                s = s.counter(k.plural(), "changes", self.changes[k.index()]);
            }
        }
        s
    }
}

ekho_plugin_api::declare_plugin!(Null, name = "null");
