//! Signals: SIGTERM and SIGINT start a drain on every shard. A SIGINT during a drain (a second
//! Ctrl-C) exits at once; a repeated SIGTERM changes nothing, because process managers and
//! `timeout(1)` can deliver one SIGTERM twice (to the process and to its process group), and that
//! must not cut the drain short.
//!
//! Handled on a dedicated control thread (signal-hook's self-pipe), never on a shard, so a shard
//! busy with a model cannot delay the drain order reaching the others.

use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

use super::mesh::ControlPlane;
use crate::config::SIGINT_DRAIN_TIMEOUT_MS;
use crate::error::StartupError;

/// Exit status when a SIGINT cuts the drain short (128 + SIGINT, as shells report it).
const FORCED_EXIT_STATUS: i32 = 130;

/// Installs the handlers and starts the control thread.
pub(crate) fn spawn(control: ControlPlane, drain_timeout: Duration) -> Result<(), StartupError> {
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| StartupError::new(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("friday-signals".into())
        .spawn(move || {
            let mut draining = false;
            for signal in signals.forever() {
                if draining {
                    if signal == SIGINT {
                        warn!("SIGINT during the drain: exiting without waiting for in-flight requests");
                        std::process::exit(FORCED_EXIT_STATUS);
                    }
                    info!("SIGTERM during the drain: already draining");
                    continue;
                }
                draining = true;
                let (name, timeout) = if signal == SIGINT {
                    let fast = Duration::from_millis(SIGINT_DRAIN_TIMEOUT_MS);
                    ("SIGINT", drain_timeout.min(fast))
                } else {
                    ("SIGTERM", drain_timeout)
                };
                info!(signal = name, timeout_ms = timeout.as_millis() as u64, "drain requested");
                // Tell systemd (Type=notify) the stop has begun; nothing without NOTIFY_SOCKET.
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                control.drain(Instant::now() + timeout);
            }
        })
        .map_err(|e| StartupError::new(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}
