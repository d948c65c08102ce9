//! What a plugin can ask of the host: the request channel and logging.

use crate::object::{IpAddress, ObjectKey};
use abi_stable::sabi_trait;
use abi_stable::std_types::{RArc, RResult, RStr, RString};
use abi_stable::StableAbi;

/// A request from a plugin to the host. Non-exhaustive: a minor release may add requests.
#[repr(u8)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Request {
    /// Ask the kernel to resolve the neighbour `addr` on device `ifindex` (a next hop the plugin
    /// needs a MAC for). The result arrives later as an ordinary `neighbour` change.
    ResolveNeighbour { ifindex: u32, addr: IpAddress },
    /// API 1.2: hand a flow back to the kernel (`key`: an [`ObjectKey::Flow`] the plugin was
    /// given). Send it when the dataplane saw the flow end (a TCP FIN or RST, passed to the
    /// kernel) or can no longer forward it: it stops forwarding the flow itself at once, the
    /// host removes the flow from the plugin (a `remove` change follows) and does not offer the
    /// conntrack entry again; a new entry of the same tuple is offered as any other.
    ReleaseFlow { key: ObjectKey },
}

/// Log levels for [`HostServices::log`].
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Services the host offers a plugin (given at creation, cheap to clone, usable from any thread).
#[sabi_trait]
pub trait HostServices: Send + Sync + Clone {
    /// Queues a request; `Err` says why it was refused (e.g. unknown device).
    fn request(&self, req: Request) -> RResult<(), RString>;

    /// The network namespace the host mirrors, as a path (`/run/netns/NAME`), or empty for the
    /// host's own. A plugin that programs devices (attaches XDP, opens ifindexes) does it there.
    fn netns(&self) -> RString {
        RString::new()
    }

    /// Writes a line to the host's log, tagged with the plugin's name.
    #[sabi(last_prefix_field)]
    fn log(&self, level: LogLevel, message: RStr<'_>);
}

/// The host's services as the plugin holds them.
pub type HostHandle = HostServices_TO<'static, RArc<()>>;

/// A host handle that accepts nothing and logs to stderr: for unit tests of plugins and for
/// `ekho check-plugin`.
#[derive(Clone)]
pub struct DetachedHost;

impl HostServices for DetachedHost {
    fn request(&self, req: Request) -> RResult<(), RString> {
        RResult::RErr(format!("no host attached; dropped {req:?}").into())
    }
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        eprintln!("[{level:?}] {message}");
    }
}

impl DetachedHost {
    /// A [`HostHandle`] backed by [`DetachedHost`].
    pub fn handle() -> HostHandle {
        HostServices_TO::from_ptr(RArc::new(DetachedHost), abi_stable::sabi_trait::TD_Opaque)
    }
}
