//! The shard: the one place per-core state is assembled, run and drained.
//!
//! A shard owns a pinned glommio executor, its listener, its connections (table, buffers), its
//! [`ShardService`] (statistics, metrics, drain flag), one batcher per model (with a worker
//! thread for models placed on one) and its end of the mesh. It runs its tasks in three queues:
//! the accept loop and the connections (latency-sensitive `io` queue), the batchers and inline
//! batches (`batch`), and housekeeping (`admin`: control messages, the `Date` header, the timeout
//! and hang-up sweeper, mesh receivers).
//!
//! Drain: stop accepting (the listener closes), readiness turns 503, idle connections are shut,
//! busy ones finish their request and close, and the shard returns once every connection has
//! ended or the deadline passes.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel;
use futures_lite::AsyncWriteExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::{Gate, Semaphore};
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{debug, info, warn};

use super::batcher::Batcher;
use super::buffers::BufferPool;
use super::conn_table::{ConnTable, Timeouts};
use super::mesh::{Mesh, ShardMsg, Snapshot, SnapshotSource};
use super::task_queues::TaskQueues;
use crate::config::HttpConfig;
use crate::error::ApiError;
use crate::http::{Limits, Responder, ResponseMode};
use crate::service::{Gather, ServiceState, ShardService};

/// io_uring registered-buffer memory per executor. friday does no file I/O through glommio's
/// DMA buffers, so the minimum keeps locked memory (RLIMIT_MEMLOCK) low.
const IO_MEMORY_BYTES: usize = 64 << 10;
/// Initial size of a connection's read buffer; it grows for larger requests.
const READ_BUFFER_BYTES: usize = 16 << 10;
/// Initial size of a connection's write and scratch buffers.
const WRITE_BUFFER_BYTES: usize = 4 << 10;
/// Initial size of a request's tensor buffers (they grow to fit).
const TENSOR_BUFFER_BYTES: usize = 256;
/// How often housekeeping runs (control messages, Date header, timeout sweep).
const HOUSEKEEPING_TICK: Duration = Duration::from_millis(25);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Everything a shard is started with; built on the main thread, moved to the shard's thread.
pub(crate) struct ShardSetup {
    /// Shard index.
    pub id: usize,
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// Its listening socket (bound, listening).
    pub listener: socket2::Socket,
    /// The bound address, for the log.
    pub address: SocketAddr,
    /// What every shard shares.
    pub state: Arc<ServiceState>,
    /// `[http]` settings.
    pub http: HttpConfig,
    /// Control messages from the signal thread.
    pub control: channel::Receiver<ShardMsg>,
    /// The mesh to join.
    pub mesh: MeshBuilder<ShardMsg, Full>,
    /// Reports `Ok(id)` once serving, or why the shard could not start.
    pub started: channel::Sender<Result<usize, String>>,
}

/// One shard's state, shared by its tasks (`Rc`: never leaves its thread).
pub(crate) struct Shard {
    pub(crate) id: usize,
    pub(crate) service: Rc<ShardService>,
    pub(crate) mesh: Rc<Mesh>,
    pub(crate) conns: Rc<ConnTable>,
    pub(crate) read_pool: BufferPool,
    pub(crate) read_pool_initial: usize,
    pub(crate) write_pool: BufferPool,
    pub(crate) tensor_pool: Rc<BufferPool>,
    /// One per registry model, in registry order.
    pub(crate) batchers: Vec<Rc<Batcher>>,
    /// Bumped when the hang-up sweep finds clients that left (the batchers then look).
    gone_epoch: Rc<Cell<u64>>,
    pub(crate) limits: Limits,
    pub(crate) queues: TaskQueues,
    /// Closed when the drain starts: the accept loop waits on it beside `accept`.
    drain_signal: Semaphore,
    deadline: Cell<Option<Instant>>,
}

impl SnapshotSource for Shard {
    fn snapshot(&self, what: Gather) -> Snapshot {
        match what {
            Gather::Stats { .. } => Snapshot::Stats(self.service.stats_snapshot()),
            Gather::Metrics => {
                let mut m = self.service.metrics().snapshot(self.id);
                m.queue_depth = self
                    .batchers
                    .iter()
                    .map(|b| b.outstanding() as u64)
                    .collect();
                m.connections_open = self.conns.len() as u64;
                m.connections_accepted = self.conns.accepted();
                for pool in [&self.read_pool, &self.write_pool, &*self.tensor_pool] {
                    let (taken, reused) = pool.reuse();
                    m.buffers_taken += taken;
                    m.buffers_reused += reused;
                }
                Snapshot::Metrics(m)
            }
        }
    }
}

impl Shard {
    fn begin_drain(&self, deadline: Instant) {
        let deadline = self.deadline.get().map_or(deadline, |d| d.min(deadline));
        self.deadline.set(Some(deadline));
        if !self.service.is_draining() {
            info!(
                shard = self.id,
                open_connections = self.conns.len(),
                "draining"
            );
            self.service.start_draining();
            self.drain_signal.close();
        }
    }
}

/// Runs a shard on the current thread until it has drained. Blocks.
pub(crate) fn run(setup: ShardSetup) {
    let started = setup.started.clone();
    let executor = LocalExecutorBuilder::new(Placement::Fixed(setup.cpu))
        .name(&format!("friday-shard-{}", setup.id))
        .io_memory(IO_MEMORY_BYTES)
        .make();
    match executor {
        Ok(ex) => ex.run(serve(setup)),
        Err(e) => {
            let _ = started.send(Err(format!(
                "shard {} cannot start its executor on CPU {}: {e}",
                setup.id, setup.cpu
            )));
        }
    }
}

async fn serve(setup: ShardSetup) {
    let ShardSetup {
        id,
        cpu,
        listener,
        address,
        state,
        http,
        control,
        mesh,
        started,
    } = setup;
    let queues = TaskQueues::create();
    let service = Rc::new(ShardService::new(state.clone()));
    let (mesh, receivers) = match Mesh::join(mesh).await {
        Ok(m) => m,
        Err(e) => {
            let _ = started.send(Err(format!("shard {id}: {e}")));
            return;
        }
    };
    let tensor_pool = Rc::new(BufferPool::new(TENSOR_BUFFER_BYTES));
    let gone_epoch = Rc::new(Cell::new(0u64));
    let mut batchers = Vec::new();
    for entry in state.registry().entries() {
        let started_batcher = Batcher::start(
            entry,
            service.clone(),
            tensor_pool.clone(),
            gone_epoch.clone(),
            cpu,
            queues.batch,
        );
        match started_batcher {
            Ok(b) => batchers.push(b),
            Err(e) => {
                let _ = started.send(Err(format!("shard {id}: {e}")));
                return;
            }
        }
    }
    // SAFETY: the socket is bound and listening, and ownership of its descriptor moves here.
    let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let shard = Rc::new(Shard {
        id,
        service,
        mesh,
        conns: ConnTable::new(http.max_connections_per_shard),
        read_pool: BufferPool::new(READ_BUFFER_BYTES),
        read_pool_initial: READ_BUFFER_BYTES,
        write_pool: BufferPool::new(WRITE_BUFFER_BYTES),
        tensor_pool,
        batchers,
        gone_epoch,
        limits: Limits {
            max_header_bytes: http.max_header_bytes,
            max_body_bytes: http.max_body_bytes,
        },
        queues,
        drain_signal: Semaphore::new(0),
        deadline: Cell::new(None),
    });
    if let Err(e) = shard.mesh.serve(receivers, shard.clone(), queues.admin) {
        let _ = started.send(Err(format!("shard {id}: {e}")));
        return;
    }
    let timeouts = Timeouts {
        header: http.header_read_timeout(),
        idle: http.idle_timeout(),
    };
    let spawned =
        glommio::spawn_local_into(housekeeping(shard.clone(), control, timeouts), queues.admin);
    match spawned {
        Ok(task) => task.detach(),
        Err(e) => {
            let _ = started.send(Err(format!("shard {id}: cannot spawn housekeeping: {e}")));
            return;
        }
    };
    let models: Vec<String> = state
        .registry()
        .entries()
        .iter()
        .map(|e| format!("{} ({})", e.name(), e.serving.placement))
        .collect();
    info!(shard = id, cpu, %address, models = %models.join(", "), "shard serving");
    let _ = started.send(Ok(id));

    let gate = Gate::new();
    match glommio::spawn_local_into(
        accept_loop(shard.clone(), listener, gate.clone()),
        queues.io,
    ) {
        Ok(task) => task.await,
        Err(e) => warn!(shard = id, error = %e, "cannot spawn the accept loop"),
    }

    let deadline = shard.deadline.get().unwrap_or_else(Instant::now);
    let left = deadline.saturating_duration_since(Instant::now());
    let closed = if shard.conns.len() == 0 {
        Ok(())
    } else {
        glommio::timer::timeout(left, async {
            let _ = gate.close().await;
            Ok(())
        })
        .await
    };
    if closed.is_err() {
        warn!(
            shard = id,
            open_connections = shard.conns.len(),
            "drain deadline passed; closing the remaining connections"
        );
    }
    let (taken, reused) = shard.read_pool.reuse();
    info!(
        shard = id,
        connections = taken,
        buffers_reused = reused,
        "shard drained"
    );
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, gate: Gate) {
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            // The semaphore never has permits: this returns only when the drain closes it.
            let _ = shard.drain_signal.acquire(1).await;
            None
        })
        .await;
        let Some(accepted) = next else { break };
        match accepted {
            Ok(stream) => {
                let Some(handle) = shard.conns.register(stream.as_raw_fd(), Instant::now()) else {
                    spawn_or_log(&shard, reject(shard.clone(), stream));
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let task = gate.spawn_into(
                    super::connection::serve(shard.clone(), stream, handle),
                    shard.queues.io,
                );
                match task {
                    Ok(task) => drop(task.detach()),
                    Err(e) => warn!(shard = shard.id, error = %e, "cannot spawn a connection task"),
                };
            }
            Err(e) => {
                warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    // Dropping the listener closes it: new connections to this shard are refused from here on.
    drop(listener);
}

fn spawn_or_log(shard: &Shard, fut: impl std::future::Future<Output = ()> + 'static) {
    match glommio::spawn_local_into(fut, shard.queues.io) {
        Ok(task) => drop(task.detach()),
        Err(e) => warn!(shard = shard.id, error = %e, "cannot spawn a task"),
    }
}

/// Answers a connection over the shard's limit with 503 and closes it.
async fn reject(shard: Rc<Shard>, mut stream: TcpStream) {
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    let date = shard.service.date();
    Responder::new(&mut out, &mut scratch, &date, ResponseMode::CLOSE).error(
        &ApiError::unavailable(
            "this shard has reached http.max_connections_per_shard; retry later",
        ),
    );
    let _ = stream.write_all(&out).await;
    debug!(shard = shard.id, "rejected a connection over the limit");
}

async fn housekeeping(shard: Rc<Shard>, control: channel::Receiver<ShardMsg>, timeouts: Timeouts) {
    loop {
        glommio::timer::sleep(HOUSEKEEPING_TICK).await;
        while let Ok(msg) = control.try_recv() {
            if let ShardMsg::Drain { deadline } = msg {
                shard.begin_drain(deadline);
            }
        }
        shard.service.refresh_date(SystemTime::now());
        let swept = shard
            .conns
            .sweep(Instant::now(), &timeouts, shard.service.is_draining());
        if shard.conns.detect_gone() {
            shard.gone_epoch.set(shard.gone_epoch.get().wrapping_add(1));
        }
        if swept.timed_out > 0 {
            debug!(
                shard = shard.id,
                closed = swept.timed_out,
                "closed timed-out connections"
            );
        }
    }
}
