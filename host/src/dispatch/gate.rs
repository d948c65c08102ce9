//! The replay gate: while a replay of the mirror runs for a plugin, the changes to what it has
//! not read yet are left to it (it reads the current state when it gets there); changes to what
//! it has handed out are increments, queued as usual.

use ekho_mirror::replay::replay_position;
use ekho_plugin_api::ObjectKey;

/// Where a plugin's replay stands. The queue owns it: set when a replay is asked for, moved by
/// the replay's reader under the mirror's lock, consulted for every change queued.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct ReplayGate {
    /// While a replay runs: the position of the last object it handed out (`None`: nothing yet).
    running: Option<Option<ObjectKey>>,
}

impl ReplayGate {
    /// A replay starts (or is about to): every change is left to it.
    pub(super) fn start(&mut self) {
        self.running = Some(None);
    }

    /// The replay handed out everything up to `last` (a replay position); `done`: it is complete,
    /// the gate opens.
    pub(super) fn passed(&mut self, last: Option<&ObjectKey>, done: bool) {
        self.running = if done { None } else { Some(last.cloned()) };
    }

    /// Whether a replay is running.
    pub(super) fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Whether a change of `key` is left to the running replay (to an object it has not read
    /// yet).
    #[inline]
    pub(super) fn leaves_to_replay(&self, key: &ObjectKey) -> bool {
        match &self.running {
            None => false,
            Some(cursor) => cursor
                .as_ref()
                .is_none_or(|cur| replay_position(key) > *cur),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::test_objects::{link, route};
    use ekho_plugin_api::Change;

    #[test]
    fn the_gate_follows_the_replay() {
        let a = Change::Add(route("10.1.0.0/24", 1, "10.9.0.1"));
        let b = Change::Remove(route("10.2.0.0/24", 1, "10.9.0.1"));
        let mut g = ReplayGate::default();
        assert!(!g.is_running());
        assert!(
            !g.leaves_to_replay(&a.key()),
            "no replay: nothing left to it"
        );
        g.start();
        assert!(g.is_running());
        assert!(
            g.leaves_to_replay(&a.key()) && g.leaves_to_replay(&Change::Add(link(1, "x")).key())
        );
        g.passed(Some(&replay_position(&a.key())), false);
        assert!(g.is_running());
        assert!(!g.leaves_to_replay(&a.key()), "handed out: an increment");
        assert!(
            g.leaves_to_replay(&b.key()),
            "after the cursor: left to the replay"
        );
        g.passed(Some(&replay_position(&b.key())), true);
        assert!(!g.is_running());
        assert!(!g.leaves_to_replay(&b.key()));
    }
}
