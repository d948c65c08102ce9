//! Running a closure inside a network namespace, on a dedicated thread.
//!
//! XDP attachment (`bpf_link_create` with an ifindex, netlink `IFLA_XDP`) resolves the ifindex in
//! the network namespace of the *calling thread*. The plugin runs in the host's process, which may
//! mirror another namespace (`netns` in the plugin config), so every ifindex-based operation runs
//! on a short-lived thread that first `setns(CLONE_NEWNET)`s into it. The calling thread's own
//! namespace is never changed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Runs `f` in the network namespace at `ns` (e.g. `/run/netns/r`), or in the current one when
/// `ns` is `None`.
pub fn run_in<R: Send>(ns: Option<&Path>, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    let Some(ns) = ns else {
        return Ok(f());
    };
    let file = File::open(ns)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", ns.display())))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: plain syscall on a valid fd; affects only this (fresh) thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("setns {}: {e}", ns.display()),
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
    })
}
