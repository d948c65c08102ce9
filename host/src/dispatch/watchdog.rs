//! The watchdog's clock: which call into a plugin is running, and since when. Every call of the
//! plugin goes through [`Watched`], which starts and stops the clock; the daemon's supervisor
//! reads it ([`CallClock::running`]) and marks a plugin whose call runs past its
//! `call_timeout_ms` `hung`.

use crate::binding::{Binding, Bound};
use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use ekho_plugin_api::plugin::ObjectStats;
use ekho_plugin_api::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A call in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// `apply`, `notify`, `begin_sync`, `end_sync`, `stats`, `object_stats`, `capabilities`,
    /// `shutdown`.
    pub name: &'static str,
    pub started: Instant,
    /// The same moment on the wall clock (for status).
    pub since: SystemTime,
}

impl Call {
    /// How long it has been running.
    pub fn running_for(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The call a plugin is in, if any.
#[derive(Default, Debug)]
pub struct CallClock(Mutex<Option<Call>>);

impl CallClock {
    /// The call running now.
    pub fn running(&self) -> Option<Call> {
        *self.0.lock().unwrap()
    }

    fn enter(&self, name: &'static str) -> Stop<'_> {
        *self.0.lock().unwrap() = Some(Call {
            name,
            started: Instant::now(),
            since: SystemTime::now(),
        });
        Stop(self)
    }
}

/// Stops the clock when the call returns (or unwinds).
struct Stop<'a>(&'a CallClock);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        *self.0 .0.lock().unwrap() = None;
    }
}

/// A plugin whose every call is timed.
pub struct Watched {
    inner: Bound,
    clock: Arc<CallClock>,
}

impl Watched {
    pub fn wrap(inner: Bound, clock: Arc<CallClock>) -> Bound {
        Box::new(Watched { inner, clock })
    }
}

impl Binding for Watched {
    fn capabilities(&self) -> RResult<Capabilities, RString> {
        let _c = self.clock.enter("capabilities");
        self.inner.capabilities()
    }
    fn apply(&mut self, changes: RSlice<'_, Change>) -> RResult<RVec<Outcome>, RString> {
        let _c = self.clock.enter("apply");
        self.inner.apply(changes)
    }
    fn notify(&mut self, events: RSlice<'_, NotifierEvent>) -> RResult<(), RString> {
        let _c = self.clock.enter("notify");
        self.inner.notify(events)
    }
    fn begin_sync(&mut self) -> RResult<(), RString> {
        let _c = self.clock.enter("begin_sync");
        self.inner.begin_sync()
    }
    fn end_sync(&mut self) -> RResult<(), RString> {
        let _c = self.clock.enter("end_sync");
        self.inner.end_sync()
    }
    fn stats(&self) -> RResult<Stats, RString> {
        let _c = self.clock.enter("stats");
        self.inner.stats()
    }
    fn object_stats(&self, kind: ObjectKind) -> RResult<RVec<ObjectStats>, RString> {
        let _c = self.clock.enter("object_stats");
        self.inner.object_stats(kind)
    }
    fn shutdown(&mut self) -> RResult<(), RString> {
        let _c = self.clock.enter("shutdown");
        self.inner.shutdown()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Slow;
    impl Binding for Slow {
        fn capabilities(&self) -> RResult<Capabilities, RString> {
            RResult::ROk(Capabilities::new())
        }
        fn apply(&mut self, _: RSlice<'_, Change>) -> RResult<RVec<Outcome>, RString> {
            std::thread::sleep(Duration::from_millis(200));
            RResult::ROk(RVec::new())
        }
        fn notify(&mut self, _: RSlice<'_, NotifierEvent>) -> RResult<(), RString> {
            RResult::ROk(())
        }
        fn begin_sync(&mut self) -> RResult<(), RString> {
            RResult::ROk(())
        }
        fn end_sync(&mut self) -> RResult<(), RString> {
            RResult::ROk(())
        }
        fn stats(&self) -> RResult<Stats, RString> {
            RResult::ROk(Stats::default())
        }
        fn object_stats(&self, _: ObjectKind) -> RResult<RVec<ObjectStats>, RString> {
            RResult::ROk(RVec::new())
        }
        fn shutdown(&mut self) -> RResult<(), RString> {
            RResult::ROk(())
        }
    }

    #[test]
    fn the_clock_runs_during_a_call_only() {
        let clock = Arc::new(CallClock::default());
        let mut p = Watched::wrap(Box::new(Slow), clock.clone());
        assert_eq!(clock.running(), None);
        let t = std::thread::spawn(move || {
            let _ = p.apply(RSlice::from_slice(&[]));
            p
        });
        std::thread::sleep(Duration::from_millis(80));
        let c = clock.running().expect("apply is running");
        assert_eq!(c.name, "apply");
        assert!(c.running_for() >= Duration::from_millis(50));
        let _p = t.join().unwrap();
        assert_eq!(clock.running(), None);
    }
}
