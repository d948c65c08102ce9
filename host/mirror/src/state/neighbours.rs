//! Neighbour events. Proxy entries change without any message: the source re-dumps them
//! (`want_proxy_dump`, set by link and address events).

use super::State;
use ekho_plugin_api::object::*;

impl State {
    /// A neighbour appeared or changed.
    pub(super) fn new_neighbour(&mut self, n: Neighbour) {
        self.put(n.into())
    }

    /// A neighbour is gone.
    pub(super) fn del_neighbour(&mut self, n: Neighbour) {
        self.del(&Object::Neighbour(n).key())
    }
}
