//! The runtime: pinned shard threads, each a synchronous event loop over an I/O engine, and
//! everything that touches threads, sockets or the kernel.
//!
//! | module | what it owns |
//! |---|---|
//! | [`engine`] | the I/O engines (io_uring, epoll) behind one completion-style boundary, the doorbell |
//! | `shard` | one shard's event loop: accepting, dispatching events, batchers, housekeeping, drain |
//! | `connection` | one connection's state machine: bytes in → requests answered in order → bytes out |
//! | `batcher` | one model's batching policy driver: admission, deadlines, inline and worker dispatch |
//! | [`worker`] | the worker thread that runs a model's batches off the shard's thread |
//! | `buffers` | the shard's buffer pools |
//! | `listener` | the `SO_REUSEPORT` sockets, bound before any shard starts |
//! | [`mesh`] | every message that crosses cores, and the doorbells that announce them |
//! | `models` | the model manager's thread: repository calls, polling, publishing to the shards |
//! | `signals` | the control thread that turns SIGTERM/SIGINT into a drain |
//!
//! Nothing outside this module knows which engine runs.

mod batcher;
mod buffers;
mod connection;
pub mod engine;
mod listener;
pub mod mesh;
mod models;
mod shard;
mod signals;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel;
use sd_notify::NotifyState;
use tracing::{info, warn};

use crate::config::{Config, ModelControlMode};
use crate::error::StartupError;
use crate::model::ModelManager;
use crate::service::{RepositoryApi, ServiceState};
use crate::topology;
use shard::ShardSetup;

/// Exit status when a shard panics (EX_SOFTWARE).
const SHARD_PANIC_EXIT_STATUS: i32 = 70;
/// How long startup waits for every shard to report in.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts one shard per planned CPU and serves until a signal drains them. Returns once every
/// shard has drained (the process then exits 0).
pub fn serve(config: &Config) -> Result<(), StartupError> {
    let allowed = topology::affinity_cpus()
        .map_err(|e| StartupError::new(format!("cannot read the CPU affinity mask: {e}")))?;
    let cpus = topology::plan_shards(&config.shards, &allowed)?;
    let engine = engine::select(config.engine).map_err(StartupError::new)?;
    info!(engine = %engine.kind, reason = %engine.reason, "I/O engine");
    // Every model the server starts with is loaded and warmed up before any shard serves.
    let manager = ModelManager::start(config)?;
    let api = RepositoryApi {
        mode: config.model_control.mode,
        restriction: config.model_control.restriction(),
    };
    let api_key_header: Option<&'static str> = api
        .restriction
        .as_ref()
        .map(|(h, _)| &*Box::leak(h.clone().into_boxed_str()));
    let state = Arc::new(ServiceState::new(Arc::new(manager.registry()), api.clone()));
    let (listeners, address) = listener::bind_listeners(&config.http, cpus.len())?;
    let (control, inboxes, peers) = mesh::wire(cpus.len())
        .map_err(|e| StartupError::new(format!("cannot create the shards' doorbells: {e}")))?;
    signals::spawn(
        control.clone(),
        Duration::from_millis(config.drain.timeout_ms),
    )?;
    let (calls_tx, calls_rx) = channel::bounded(models::MANAGER_CHANNEL_CAPACITY);
    let poll_every = (config.model_control.mode == ModelControlMode::Poll)
        .then(|| Duration::from_secs(config.model_control.poll_secs));
    models::Models::new(manager, api, control, calls_rx, poll_every).spawn()?;

    let memory = topology::physical_memory();
    let buffer_budget = config.http.buffer_budget(memory, cpus.len());
    info!(
        per_shard_mib = buffer_budget >> 20,
        "connection buffer budget"
    );
    let (started_tx, started_rx) = channel::bounded(cpus.len());
    let mut threads = Vec::with_capacity(cpus.len());
    for (id, ((cpu, listener), inbox)) in cpus.iter().zip(listeners).zip(inboxes).enumerate() {
        let setup = ShardSetup {
            id,
            cpu: *cpu,
            engine: engine.kind,
            listener,
            address,
            state: state.clone(),
            http: config.http.clone(),
            generate: config.generate.clone(),
            inbox,
            peers: peers.clone(),
            manager: calls_tx.clone(),
            api_key_header,
            busy_poll_us: config.shards.busy_poll_us,
            buffer_budget,
            cache_bytes: config.cache.per_shard(cpus.len()),
            started: started_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("friday-shard-{id}"))
            .spawn(move || {
                // Requests are answered under catch_unwind, so this is a bug in the shard itself.
                // A server missing a shard would go on half-alive; exit so a supervisor restarts
                // it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard::run(setup)))
                    .is_err()
                {
                    tracing::error!(shard = id, "shard panicked; exiting");
                    std::process::exit(SHARD_PANIC_EXIT_STATUS);
                }
            })
            .map_err(|e| StartupError::new(format!("cannot start shard thread {id}: {e}")))?;
        threads.push(thread);
    }
    drop(started_tx);
    drop(calls_tx);
    for _ in 0..cpus.len() {
        match started_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(StartupError::new(e)),
            Err(_) => {
                return Err(StartupError::new(format!(
                    "not every shard started within {}s",
                    STARTUP_TIMEOUT.as_secs()
                )))
            }
        }
    }
    info!(
        %address,
        shards = cpus.len(),
        cpus = %topology::format_cpu_list(&cpus),
        engine = %engine.kind,
        "friday listening"
    );
    // Under systemd (Type=notify) this is when `systemctl start` returns: every model loaded
    // and warm, every shard accepting. A blue-green switch waits for it before the old side
    // drains. Without NOTIFY_SOCKET it does nothing.
    let status = format!("listening on {address}");
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        warn!(error = %e, "cannot tell the service manager friday is ready (NOTIFY_SOCKET)");
    }
    for t in threads {
        let _ = t.join();
    }
    info!("friday stopped");
    Ok(())
}
