//! The I/O engine: glommio executors pinned one per CPU, and everything that touches them.
//!
//! | module | what it owns |
//! |---|---|
//! | `shard` | assembling, running and draining one shard |
//! | `connection` | one connection's read → answer → write loop |
//! | `batcher` | one model's request ring, batching policy driver and inline execution |
//! | [`worker`] | the worker thread that runs a model's batches off the reactor |
//! | `conn_table` | the shard's open connections: limit, timeouts, drain |
//! | `buffers` | the shard's buffer pools |
//! | `listener` | the `SO_REUSEPORT` sockets, bound before any executor starts |
//! | [`mesh`] | every message that crosses cores |
//! | `signals` | the control thread that turns SIGTERM/SIGINT into a drain |
//! | `task_queues` | the shard's named task queues |
//!
//! Nothing outside this module names a glommio type (the worker's async doorbell aside).

mod batcher;
mod buffers;
mod conn_table;
mod connection;
mod listener;
pub mod mesh;
mod shard;
mod signals;
mod task_queues;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel;
use glommio::channels::channel_mesh::MeshBuilder;
use tracing::info;

use crate::config::Config;
use crate::error::StartupError;
use crate::model::ModelRegistry;
use crate::service::ServiceState;
use crate::topology;
use mesh::{ControlPlane, MESH_CHANNEL_CAPACITY};
use shard::ShardSetup;

/// The least locked memory glommio needs per process (its own check), in bytes.
const MIN_MEMLOCK_BYTES: u64 = 512 << 10;
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
    check_memlock()?;
    let registry = Arc::new(ModelRegistry::from_config(config)?);
    let state = Arc::new(ServiceState::new(registry));
    let (listeners, address) = listener::bind_listeners(&config.http, cpus.len())?;
    let (control, receivers) = ControlPlane::new(cpus.len());
    signals::spawn(control, Duration::from_millis(config.drain.timeout_ms))?;

    let mesh = MeshBuilder::full(cpus.len(), MESH_CHANNEL_CAPACITY);
    let (started_tx, started_rx) = channel::bounded(cpus.len());
    let mut threads = Vec::with_capacity(cpus.len());
    for (id, ((cpu, listener), control)) in cpus.iter().zip(listeners).zip(receivers).enumerate() {
        let setup = ShardSetup {
            id,
            cpu: *cpu,
            listener,
            address,
            state: state.clone(),
            http: config.http.clone(),
            control,
            mesh: mesh.clone(),
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
        "friday listening"
    );
    for t in threads {
        let _ = t.join();
    }
    info!("friday stopped");
    Ok(())
}

fn check_memlock() -> Result<(), StartupError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Ok(());
    }
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < MIN_MEMLOCK_BYTES {
        return Err(StartupError::new(format!(
            "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB; friday's io_uring rings need at \
             least {} KiB: raise it with `ulimit -l {}` or systemd's LimitMEMLOCK=",
            limit.rlim_cur / 1024,
            MIN_MEMLOCK_BYTES / 1024,
            MIN_MEMLOCK_BYTES / 1024
        )));
    }
    Ok(())
}
