//! The systemd service protocol (`Type=notify`, `WatchdogSec=`), through the sd-notify crate:
//! READY=1 once the mirror's initial dump is done (and after each reload), RELOADING=1 and
//! STOPPING=1 around those, WATCHDOG=1 from the daemon's supervisor loop at half the
//! watchdog's interval. Outside systemd (no `NOTIFY_SOCKET`) all of it does nothing.

use sd_notify::NotifyState;
use std::time::{Duration, Instant};

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// The daemon is synced and serving.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// A reload began (followed by [`ready`]).
pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

/// Shutting down.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// systemd's watchdog, when the service has `WatchdogSec=`.
pub struct Watchdog {
    every: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    /// From `WATCHDOG_USEC` (and `WATCHDOG_PID`, when set, naming this process).
    pub fn from_env() -> Watchdog {
        let every = sd_notify::watchdog_enabled()
            .map(|d| d / 2)
            .filter(|d| !d.is_zero());
        if let Some(e) = every {
            tracing::info!("systemd watchdog: fed every {e:?}");
        }
        Watchdog { every, last: None }
    }

    /// Sends WATCHDOG=1 when half the interval has passed since the last one.
    pub fn feed(&mut self) {
        let Some(every) = self.every else { return };
        if self.last.is_none_or(|t| t.elapsed() >= every) {
            notify(&[NotifyState::Watchdog]);
            self.last = Some(Instant::now());
        }
    }
}
