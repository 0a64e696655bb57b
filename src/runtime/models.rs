//! The model manager's thread: a control-plane thread, never a shard, that owns the
//! [`ModelManager`], answers the repository API, polls the repository in poll mode, and
//! publishes every change to the shards.
//!
//! Publishing sends the new generation ([`ServiceState`]) to every shard's control inbox and
//! waits until each has switched to it (a shard switches between two loop turns, so at a batch
//! boundary: a batch already running finishes on the version it started on). Only then is a
//! load or unload answered, so a client that is told "loaded" finds the model on every shard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel;
use tracing::{info, warn};

use super::mesh::{ControlPlane, ManagerMsg, ShardMsg};
use crate::error::{ApiError, StartupError};
use crate::model::ModelManager;
use crate::service::{RepositoryApi, RepositoryCall, ServiceState};

/// Capacity of the manager's inbox; a shard whose call does not fit answers 503.
pub(crate) const MANAGER_CHANNEL_CAPACITY: usize = 64;
/// How long publishing waits for a shard to take the new generation.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The manager's thread state.
pub(crate) struct Models {
    manager: ModelManager,
    api: RepositoryApi,
    control: ControlPlane,
    calls: channel::Receiver<ManagerMsg>,
    poll_every: Option<Duration>,
    generation: u64,
}

impl Models {
    /// The thread's state; `calls` is where the shards' repository calls arrive.
    pub(crate) fn new(
        manager: ModelManager,
        api: RepositoryApi,
        control: ControlPlane,
        calls: channel::Receiver<ManagerMsg>,
        poll_every: Option<Duration>,
    ) -> Self {
        Models {
            manager,
            api,
            control,
            calls,
            poll_every,
            generation: 0,
        }
    }

    /// Starts the thread. It ends when every shard has let go of its end of `calls`.
    pub(crate) fn spawn(self) -> Result<(), StartupError> {
        std::thread::Builder::new()
            .name("friday-models".to_string())
            .spawn(move || {
                // Loading and warming a model takes a CPU for a while: only time the shards do
                // not want, so that their requests never wait behind a load. (It shares that
                // time with the workers, which are SCHED_IDLE too.)
                super::worker::run_when_idle();
                self.run()
            })
            .map(|_| ())
            .map_err(|e| StartupError::new(format!("cannot start the model manager thread: {e}")))
    }

    fn run(mut self) {
        let mut next_poll = self.poll_every.map(|d| Instant::now() + d);
        loop {
            let msg = match next_poll {
                Some(at) => self
                    .calls
                    .recv_timeout(at.saturating_duration_since(Instant::now())),
                None => self
                    .calls
                    .recv()
                    .map_err(|_| channel::RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(ManagerMsg { from, ticket, call }) => {
                    // A bug or a model file that makes a library panic fails this call, not
                    // the manager.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.handle(call)
                    }))
                    .unwrap_or_else(|_| {
                        tracing::error!("a repository call panicked; this is a bug in friday");
                        Err(ApiError::internal(
                            "the repository call failed (see the server log); this is a bug in \
                             friday",
                        ))
                    });
                    if let Some(shard) = self.control.shards().get(from) {
                        let reply = ShardMsg::RepositoryReply { ticket, result };
                        if !shard.send_timeout(reply, PUBLISH_TIMEOUT) {
                            warn!(
                                shard = from,
                                "cannot answer a repository call: the shard is gone or stuck"
                            );
                        }
                    }
                }
                Err(channel::RecvTimeoutError::Timeout) => {
                    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.manager.poll()
                    }));
                    match polled {
                        Ok(true) => self.publish(),
                        Ok(false) => {}
                        Err(_) => tracing::error!(
                            "polling the repository panicked; this is a bug in friday"
                        ),
                    }
                    next_poll = self.poll_every.map(|d| Instant::now() + d);
                }
                Err(channel::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Acts on one repository call; the answer is a JSON body.
    fn handle(&mut self, call: RepositoryCall) -> Result<Vec<u8>, ApiError> {
        match call {
            RepositoryCall::Index { ready_only } => {
                Ok(serde_json::to_vec(&self.manager.index(ready_only))
                    .expect("the index serializes: plain strings"))
            }
            RepositoryCall::Load { name, config } => {
                self.manager.load(&name, config.as_ref())?;
                self.publish();
                Ok(b"{}".to_vec())
            }
            RepositoryCall::Unload { name } => {
                if self.manager.unload(&name)? {
                    info!(model = %name, "model unloaded");
                    self.publish();
                }
                Ok(b"{}".to_vec())
            }
        }
    }

    /// Sends what is served now to every shard and waits until each has switched to it.
    fn publish(&mut self) {
        self.generation += 1;
        let registry = Arc::new(self.manager.registry());
        let served = registry.entries().len();
        let state = Arc::new(ServiceState::new(registry, self.api.clone()));
        let shards = self.control.shards();
        let (ack_tx, ack_rx) = channel::bounded(shards.len());
        let mut sent = 0;
        for (id, shard) in shards.iter().enumerate() {
            let msg = ShardMsg::Publish {
                state: state.clone(),
                ack: ack_tx.clone(),
            };
            if shard.send_timeout(msg, PUBLISH_TIMEOUT) {
                sent += 1;
            } else {
                warn!(shard = id, "cannot publish to a shard: it is gone or stuck");
            }
        }
        drop(ack_tx);
        drop(state);
        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        let mut acked = 0;
        while acked < sent {
            match ack_rx.recv_deadline(deadline) {
                Ok(_) => acked += 1,
                Err(_) => break,
            }
        }
        if acked < sent {
            warn!(
                generation = self.generation,
                acked, sent, "not every shard took the new models in time"
            );
        }
        info!(
            generation = self.generation,
            versions = served,
            shards = acked,
            "models published"
        );
    }
}
