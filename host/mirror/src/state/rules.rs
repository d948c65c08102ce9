//! Rule events, and the `[detached]` state of rules naming a device that goes or comes (never
//! announced).

use super::State;
use ekho_plugin_api::abi_stable::std_types::RString;
use ekho_plugin_api::object::rule::{FIB_RULE_IIF_DETACHED, FIB_RULE_OIF_DETACHED};
use ekho_plugin_api::object::*;

impl State {
    /// A rule appeared.
    pub(super) fn new_rule(&mut self, r: Rule) {
        self.put(r.into())
    }

    /// A rule is gone.
    pub(super) fn del_rule(&mut self, r: Rule) {
        self.del(&Object::Rule(r).key())
    }

    pub(super) fn rules_detach(&mut self, name: &RString, detached: bool) {
        let upd: Vec<Rule> = self
            .objs
            .values()
            .filter_map(|o| match o {
                Object::Rule(r) if r.iif == *name || r.oif == *name => Some(r.clone()),
                _ => None,
            })
            .collect();
        for mut r in upd {
            for (n, bit) in [
                (r.iif.clone(), FIB_RULE_IIF_DETACHED),
                (r.oif.clone(), FIB_RULE_OIF_DETACHED),
            ] {
                if n == *name {
                    if detached {
                        r.flags |= bit
                    } else {
                        r.flags &= !bit
                    }
                }
            }
            self.put(r.into());
        }
    }
}
