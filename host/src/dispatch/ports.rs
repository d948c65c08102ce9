//! Which ports a plugin owns (its declared scope, or the config's `ports` globs), and from that
//! and its capabilities, which objects it takes.

use ekho_plugin_api::object::Link;
use ekho_plugin_api::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Which ports a plugin owns, and the link table needed to decide it.
#[derive(Clone)]
pub struct PortFilter {
    all: bool,
    names: Vec<glob::Pattern>,
    drivers: Vec<String>,
    /// ifindex -> (name, kind) of every link the mirror has. Shared: a worker takes the
    /// queue's filter for each batch (the tc checks), a clone that copies nothing; the queue's
    /// next link change copies the table once if that batch still holds it.
    links: Arc<HashMap<u32, (String, String)>>,
}

impl PortFilter {
    /// From the plugin's declared scope, or the config's `ports` globs when given.
    pub fn new(scope: &PortScope, override_globs: Option<&[String]>) -> PortFilter {
        match override_globs {
            Some(g) => PortFilter {
                all: false,
                names: g
                    .iter()
                    .filter_map(|s| glob::Pattern::new(s).ok())
                    .collect(),
                drivers: vec![],
                links: Arc::default(),
            },
            None => PortFilter {
                all: scope.all,
                names: scope
                    .names
                    .iter()
                    .filter_map(|s| glob::Pattern::new(s).ok())
                    .collect(),
                drivers: scope.drivers.iter().map(|s| s.to_string()).collect(),
                links: Arc::default(),
            },
        }
    }

    /// The same scope with no link known yet.
    pub(super) fn scope_only(&self) -> PortFilter {
        PortFilter {
            links: Arc::default(),
            ..self.clone()
        }
    }

    /// Whether every port is owned (the scope does not depend on the links).
    pub(super) fn owns_all(&self) -> bool {
        self.all
    }

    /// Notes a link (name and driver decide whether it is a port of the plugin).
    #[inline]
    pub(super) fn note_link(&mut self, l: &Link) {
        Arc::make_mut(&mut self.links)
            .insert(l.ifindex, (l.ifname.to_string(), l.kind.to_string()));
    }

    /// Notes a link not known yet (a known one may be newer than `l`).
    pub(super) fn note_new_link(&mut self, l: &Link) {
        if !self.links.contains_key(&l.ifindex) {
            self.note_link(l);
        }
    }

    /// Whether `other` shares this filter's link table (a clone that copied nothing).
    #[cfg(test)]
    pub(super) fn shares_links_with(&self, other: &PortFilter) -> bool {
        Arc::ptr_eq(&self.links, &other.links)
    }

    /// Whether the link `ifindex` is known.
    #[cfg(test)]
    pub(super) fn knows(&self, ifindex: u32) -> bool {
        self.links.contains_key(&ifindex)
    }

    /// Follows a change of the link table (`old` to `new`; `None`: absent).
    pub(super) fn observe(&mut self, old: Option<&Object>, new: Option<&Object>) {
        match (old, new) {
            (_, Some(Object::Link(l))) => {
                let v = (l.ifname.to_string(), l.kind.to_string());
                if self.links.get(&l.ifindex) != Some(&v) {
                    Arc::make_mut(&mut self.links).insert(l.ifindex, v);
                }
            }
            (Some(Object::Link(l)), None) if self.links.contains_key(&l.ifindex) => {
                Arc::make_mut(&mut self.links).remove(&l.ifindex);
            }
            _ => {}
        }
    }

    /// For a link: whether that link is owned now (`None` for other kinds).
    pub(super) fn link_owned(&self, o: &Object) -> Option<bool> {
        match o {
            Object::Link(l) => Some(self.links.contains_key(&l.ifindex) && self.owns(l.ifindex)),
            _ => None,
        }
    }

    /// The name of the link `ifindex`, when known.
    pub fn name(&self, ifindex: u32) -> Option<String> {
        self.links.get(&ifindex).map(|(n, _)| n.clone())
    }

    /// Whether the port `ifindex` is owned.
    #[inline]
    pub fn owns(&self, ifindex: u32) -> bool {
        if self.all {
            return true;
        }
        match self.links.get(&ifindex) {
            Some((name, kind)) => {
                self.names.iter().any(|p| p.matches(name)) || self.drivers.iter().any(|d| d == kind)
            }
            None => false,
        }
    }

    /// Links pass when owned; other objects when tied to no port or to at least one owned port.
    #[inline]
    fn passes(&self, o: &Object) -> bool {
        if self.all {
            return true;
        }
        if let Object::Link(l) = o {
            return self.owns(l.ifindex);
        }
        let ifs = o.ifindexes();
        ifs.is_empty() || ifs.iter().any(|&i| self.owns(i))
    }
}

/// Whether a plugin with `caps` and port filter `ports` takes `o`.
#[inline]
pub(super) fn takes(caps: &Capabilities, ports: &PortFilter, o: &Object) -> bool {
    let port_free = caps.features.routes_all_ports
        && matches!(
            o.kind(),
            ObjectKind::Route | ObjectKind::Nexthop | ObjectKind::Rule
        );
    caps.takes_kind(o.kind()) && caps.takes_family(o.family()) && (port_free || ports.passes(o))
}
