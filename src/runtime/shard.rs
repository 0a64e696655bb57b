//! The shard: one thread pinned to one CPU, running a synchronous event loop over its engine.
//!
//! A shard owns its engine (an io_uring ring or an epoll instance), its listener, its
//! connections (a slab of state machines), its [`Core`] (handler, statistics, metrics, drain
//! flag, one batcher per model, its end of the mesh, buffer pools) and its doorbell. One loop
//! turn:
//!
//! 1. compute how long it may sleep: until the next housekeeping tick, a batcher's wake-up time,
//!    a gather's deadline or the drain deadline, or not at all if a batcher has work now or the
//!    last activity was less than `shards.busy_poll_us` ago (busy polling: a sleeping CPU takes
//!    tens of microseconds to wake);
//! 2. submit what the last turn asked for and wait, in one engine call (one `io_uring_enter`);
//! 3. act on each event: accept, feed a receive or a send to its connection, or read the inboxes
//!    when the doorbell rang;
//! 4. poll the batchers that have something to do and resume the connections whose outcome is
//!    ready (a resumed connection may submit again, so this repeats a few times);
//! 5. run one step of each generative model's running batch (its decoder) and resume the
//!    connections that have tokens to stream or an answer to send;
//! 6. on a tick: refresh the `Date` header, time out connections, look for clients that hung up.
//!
//! No futures, no wakers, no timers per request: deadlines are checked by the batching policy
//! and the sweep, against the loop's clock.
//!
//! Drain: stop accepting (the listener closes), readiness turns 503, idle connections are shut
//! on their read side (a request already sent is still answered, with `Connection: close`),
//! busy ones finish their request and close, and the loop ends once every connection has ended
//! or the deadline passes.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel;
use slab::Slab;
use tracing::{debug, info, warn};

use super::batcher::{Batcher, Batchers, PollCtx};
use super::buffers::BufferPool;
use super::connection::{Connection, Phase, LINGER_TIME};
use super::engine::{Doorbell, Engine, EngineKind, Event};
use super::mesh::{Inbox, Mailbox, ManagerMsg, Mesh, ShardMsg, Snapshot};
use crate::config::{GenerateConfig, HttpConfig};
use crate::error::ApiError;
use crate::generate::Decoder;
use crate::http::{Limits, Responder, ResponseMode};
use crate::model::ModelEntry;
use crate::service::{Gather, ServiceState, ShardService};

/// Initial size of a connection's read buffer; it grows for larger requests.
const READ_BUFFER_BYTES: usize = 16 << 10;
/// Initial size of a connection's write and scratch buffers.
const WRITE_BUFFER_BYTES: usize = 4 << 10;
/// Initial size of a request's tensor buffers (they grow to fit).
const TENSOR_BUFFER_BYTES: usize = 256;
/// How often housekeeping runs (Date header, timeout sweep, hang-up detection).
const HOUSEKEEPING_TICK: Duration = Duration::from_millis(25);
/// Rounds of "poll the batchers, resume the ready connections" per loop turn; more work waits
/// for the next turn, after the engine has had its say.
const RESUME_ROUNDS: usize = 4;
/// Once polling the batchers (running inline batches, answering) has taken this long in one loop
/// turn, the rest waits for the next turn, after the engine's events: an inline model under load
/// delays a readiness probe or a new connection by about this much at most, plus one batch of
/// each inline model with work.
const TURN_COMPUTE_BUDGET: Duration = Duration::from_millis(1);
/// While draining, an idle connection is closed once it has been idle this long (200 ms): long
/// enough that a client in the middle of a conversation sends its next request first and gets
/// `Connection: close` with the answer, short enough to add little to a drain.
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(200);
/// After the drain deadline, how long the shard waits for its connections' operations to end
/// before it leaves their buffers to the exiting process.
const EXIT_GRACE: Duration = Duration::from_millis(100);

/// Everything a shard is started with; built on the main thread, moved to the shard's thread.
pub(crate) struct ShardSetup {
    /// Shard index.
    pub id: usize,
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// The engine to run.
    pub engine: EngineKind,
    /// Its listening socket (bound, listening, non-blocking).
    pub listener: socket2::Socket,
    /// The bound address, for the log.
    pub address: SocketAddr,
    /// What every shard shares.
    pub state: Arc<ServiceState>,
    /// `[http]` settings.
    pub http: HttpConfig,
    /// `[generate]` settings.
    pub generate: GenerateConfig,
    /// Its doorbell and inboxes.
    pub inbox: Inbox,
    /// How long to poll for more work after activity before sleeping.
    pub busy_poll_us: u64,
    /// Most bytes its connections may hold in buffers (`http.max_buffered_bytes_per_shard`).
    pub buffer_budget: u64,
    /// Its share of the response cache, in bytes.
    pub cache_bytes: u64,
    /// Every shard's mesh mailbox, by shard id.
    pub peers: Vec<Mailbox>,
    /// Where repository calls go to the model manager.
    pub manager: channel::Sender<ManagerMsg>,
    /// The restricted repository API's key header, if any.
    pub api_key_header: Option<&'static str>,
    /// Reports `Ok(id)` once serving, or why the shard could not start.
    pub started: channel::Sender<Result<usize, String>>,
}

/// The shard's buffer pools.
pub(crate) struct Pools {
    pub read: BufferPool,
    pub read_initial: usize,
    pub write: BufferPool,
    /// Shared (`Rc`) with the request being handled, which decodes tensors into it while the
    /// handler may also reach the batchers.
    pub tensor: Rc<BufferPool>,
}

/// Everything of a shard that its connections use: the handler, the batchers, the mesh, the
/// pools. (The connections and the engine live beside it, so a connection can borrow both.)
pub(crate) struct Core {
    pub id: usize,
    pub service: ShardService,
    /// One per model slot the shard holds.
    pub batchers: Batchers,
    /// One per generative model slot the shard holds, by slot.
    pub decoders: Vec<Option<Decoder>>,
    /// `[generate]` settings.
    pub generate: GenerateConfig,
    /// Slots gone from the served generation whose batchers still hold requests.
    retiring: Vec<usize>,
    cpu: usize,
    bell: Arc<Doorbell>,
    pub mesh: Mesh,
    pub pools: Pools,
    pub limits: Limits,
    /// Bumped whenever a client may have left a parked request.
    gone_epoch: u64,
    /// Connections whose parked request can be answered now.
    pub ready: Vec<usize>,
    /// Bytes the connections hold in their buffers now (each connection keeps its own share
    /// up to date), and the most they may hold.
    pub buffered: usize,
    pub buffer_budget: usize,
    /// Sends of at least this many bytes from a model's buffer go zero-copy (0: never).
    pub zerocopy_min: usize,
    /// Sends that went zero-copy.
    pub zerocopy_sends: u64,
    open: usize,
    accepted: u64,
}

impl Core {
    /// This shard's numbers for `what`.
    pub(crate) fn snapshot(&self, what: Gather) -> Snapshot {
        match what {
            Gather::Stats { .. } => Snapshot::Stats(self.service.stats_snapshot()),
            Gather::Metrics => {
                let mut m = self.service.metrics().snapshot(self.id);
                for b in self.batchers.iter() {
                    if m.queue_depth.len() <= b.slot() {
                        m.queue_depth.resize(b.slot() + 1, 0);
                    }
                    m.queue_depth[b.slot()] = b.outstanding() as u64;
                }
                m.active_sequences = self
                    .decoders
                    .iter()
                    .map(|d| d.as_ref().map_or(0, |d| d.active() as u64))
                    .collect();
                m.cache = self.service.cache_counts();
                m.connections_open = self.open as u64;
                m.zerocopy_sends = self.zerocopy_sends;
                m.connections_accepted = self.accepted;
                for pool in [&self.pools.read, &self.pools.write, &*self.pools.tensor] {
                    let (taken, reused) = pool.reuse();
                    m.buffers_taken += taken;
                    m.buffers_reused += reused;
                }
                Snapshot::Metrics(m)
            }
        }
    }

    /// Connections accepted so far (the next connection's id).
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted
    }

    /// A client may have left a parked request: the batchers look for gone clients.
    pub(crate) fn client_gone(&mut self) {
        self.gone_epoch = self.gone_epoch.wrapping_add(1);
        for b in self.batchers.iter_mut() {
            b.on_gone();
        }
    }

    /// Switches to a newly published generation of the models: a batcher for each new version
    /// (a model whose batcher cannot start is logged, and its requests answered 503), and the
    /// versions gone from it retire: no new request reaches them, connections resting in their
    /// lines are let go, and each is dropped once it has answered what it holds.
    pub(crate) fn publish(&mut self, state: Arc<ServiceState>) {
        let gone = self.service.publish(state);
        let state = self.service.state();
        for entry in state.registry().entries() {
            if self.batchers.get(entry.index).is_some() {
                continue;
            }
            put_decoder(
                &mut self.decoders,
                entry,
                self.generate.max_sequences_per_shard,
            );
            match Batcher::new(entry, self.cpu, &self.bell) {
                Ok(b) => self.batchers.insert(b),
                Err(e) => {
                    warn!(shard = self.id, error = %e, "a model version cannot be served on this shard")
                }
            }
        }
        for slot in gone {
            if !self.retiring.contains(&slot) {
                self.retiring.push(slot);
            }
        }
        // A slot served again (a built-in that a repository model shadowed for a while) is not
        // retiring any more.
        let registry = self.service.state().registry();
        self.retiring.retain(|&s| registry.slot(s).is_none());
        self.retire_idle();
    }

    /// Drops the retiring batchers that hold nothing any more, with their statistics and
    /// metrics.
    pub(crate) fn retire_idle(&mut self) {
        let (batchers, service) = (&mut self.batchers, &mut self.service);
        let decoders = &mut self.decoders;
        self.retiring.retain(|&slot| {
            let idle = batchers
                .get(slot)
                .is_none_or(|b| b.is_idle() && !b.has_line())
                && decoder(decoders, slot).is_none_or(|d| d.is_idle());
            if idle {
                drop(batchers.remove(slot));
                if let Some(d) = decoders.get_mut(slot) {
                    *d = None;
                }
                service.forget(slot);
            }
            !idle
        });
    }

    /// The decoder of generative model slot `slot`.
    pub(crate) fn decoder(&mut self, slot: usize) -> Option<&mut Decoder> {
        decoder(&mut self.decoders, slot)
    }

    /// Whether versions are retiring.
    fn has_retiring(&self) -> bool {
        !self.retiring.is_empty()
    }
}

/// A decoder for `entry` in `decoders`, if its model is generative and it has none.
fn put_decoder(decoders: &mut Vec<Option<Decoder>>, entry: &ModelEntry, max_sequences: usize) {
    if decoders.get(entry.index).is_some_and(Option::is_some) {
        return;
    }
    if let Some(d) = Decoder::new(entry.model.clone(), max_sequences) {
        if decoders.len() <= entry.index {
            decoders.resize_with(entry.index + 1, || None);
        }
        decoders[entry.index] = Some(d);
    }
}

fn decoder(decoders: &mut [Option<Decoder>], slot: usize) -> Option<&mut Decoder> {
    decoders.get_mut(slot).and_then(Option::as_mut)
}

/// One shard.
struct Shard {
    engine: Engine,
    listener: Option<OwnedFd>,
    conns: Slab<Connection>,
    core: Core,
    inbox: Inbox,
    max_connections: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
    min_body_rate: u64,
    min_send_rate: u64,
    drain_deadline: Option<Instant>,
    events: Vec<Event>,
    /// Connections (key, id) let out of the models' lines this turn (kept for its allocation).
    released: Vec<(usize, u64)>,
    /// `shards.busy_poll_us`.
    busy_poll: Duration,
    /// The loop polls instead of sleeping until then (the last activity plus `busy_poll`).
    spin_until: Instant,
}

/// Runs a shard on the current thread until it has drained. Blocks.
pub(crate) fn run(setup: ShardSetup) {
    let started = setup.started.clone();
    let (id, cpu) = (setup.id, setup.cpu);
    crate::topology::pin_current_thread(cpu);
    crate::model::onnxruntime::set_thread_session(cpu);
    let mut shard = match Shard::new(setup) {
        Ok(s) => s,
        Err(e) => {
            let _ = started.send(Err(format!("shard {id} (CPU {cpu}): {e}")));
            return;
        }
    };
    let _ = started.send(Ok(id));
    drop(started);
    shard.serve();
}

impl Shard {
    fn new(setup: ShardSetup) -> Result<Shard, String> {
        let ShardSetup {
            id,
            cpu,
            engine,
            listener,
            address,
            state,
            http,
            generate,
            inbox,
            peers,
            manager,
            api_key_header,
            busy_poll_us,
            buffer_budget,
            cache_bytes,
            started: _,
        } = setup;
        let listener: OwnedFd = listener.into();
        let engine = Engine::new(engine, listener.as_raw_fd(), inbox.bell.as_raw_fd())
            .map_err(|e| format!("cannot set up the {engine} engine: {e}"))?;
        if http.zerocopy_send_min_bytes > 0 {
            match engine.zero_copy() {
                Ok(how) => info!(
                    shard = id,
                    min_bytes = http.zerocopy_send_min_bytes,
                    "large outputs go zero-copy ({how})"
                ),
                Err(why) => warn!(
                    shard = id,
                    "http.zerocopy_send_min_bytes is set but zero-copy sends are unavailable \
                     ({why}); large outputs are sent by copy"
                ),
            }
        }
        let mut batchers = Batchers::default();
        let mut decoders = Vec::new();
        for entry in state.registry().entries() {
            batchers.insert(Batcher::new(entry, cpu, &inbox.bell)?);
            put_decoder(&mut decoders, entry, generate.max_sequences_per_shard);
        }
        let models: Vec<String> = state
            .registry()
            .entries()
            .iter()
            .map(|e| format!("{} ({})", e.name(), e.serving.placement))
            .collect();
        info!(shard = id, cpu, %address, models = %models.join(", "), "shard serving");
        let mesh = Mesh::new(id, peers, inbox.mesh.clone()).with_manager(manager);
        Ok(Shard {
            engine,
            listener: Some(listener),
            conns: Slab::with_capacity(http.max_connections_per_shard.min(1024)),
            core: Core {
                id,
                service: ShardService::new(state, cache_bytes),
                batchers,
                decoders,
                generate,
                retiring: Vec::new(),
                cpu,
                bell: inbox.bell.clone(),
                mesh,
                pools: Pools {
                    read: BufferPool::new(READ_BUFFER_BYTES),
                    read_initial: READ_BUFFER_BYTES,
                    write: BufferPool::new(WRITE_BUFFER_BYTES),
                    tensor: Rc::new(BufferPool::new(TENSOR_BUFFER_BYTES)),
                },
                limits: Limits {
                    max_header_bytes: http.max_header_bytes,
                    max_body_bytes: http.max_body_bytes,
                    api_key_header,
                },
                gone_epoch: 0,
                ready: Vec::new(),
                buffered: 0,
                buffer_budget: usize::try_from(buffer_budget).unwrap_or(usize::MAX),
                zerocopy_min: http.zerocopy_send_min_bytes,
                zerocopy_sends: 0,
                open: 0,
                accepted: 0,
            },
            inbox,
            max_connections: http.max_connections_per_shard,
            header_timeout: http.header_read_timeout(),
            idle_timeout: http.idle_timeout(),
            min_body_rate: http.min_body_bytes_per_second,
            min_send_rate: http.min_send_bytes_per_second,
            drain_deadline: None,
            events: Vec::with_capacity(256),
            released: Vec::new(),
            busy_poll: Duration::from_micros(busy_poll_us),
            spin_until: Instant::now(),
        })
    }

    fn serve(&mut self) {
        let mut next_tick = Instant::now() + HOUSEKEEPING_TICK;
        loop {
            let now = Instant::now();
            if self.drain_deadline.is_some() {
                if self.conns.is_empty() {
                    break;
                }
                if self.drain_deadline.is_some_and(|d| now >= d) {
                    warn!(
                        shard = self.core.id,
                        open_connections = self.conns.len(),
                        "drain deadline passed; closing the remaining connections"
                    );
                    self.abandon_connections();
                    break;
                }
            }
            let mut timeout = self.timeout(now, next_tick);
            if now < self.spin_until && !self.worker_running() {
                timeout = Duration::ZERO;
            }
            let mut events = std::mem::take(&mut self.events);
            if let Err(e) = self.engine.wait(Some(timeout), &mut events) {
                // The engine itself failed (not an operation): a shard that cannot do I/O is
                // a bug or a broken host; exit so a supervisor restarts the process.
                panic!("shard {}: the engine failed: {e}", self.core.id);
            }
            let active = !events.is_empty();
            for event in events.drain(..) {
                self.on_event(event);
            }
            self.events = events;
            self.run_batchers();
            self.run_decoders();
            self.release_lines();
            let now = Instant::now();
            if active {
                self.spin_until = now + self.busy_poll;
            }
            if now >= next_tick {
                self.housekeeping(now);
                next_tick = now + HOUSEKEEPING_TICK;
            }
        }
        let (taken, reused) = self.core.pools.read.reuse();
        info!(
            shard = self.core.id,
            connections = taken,
            buffers_reused = reused,
            "shard drained"
        );
    }

    /// Whether a worker on this shard's CPU computes a batch: it runs only while the shard sleeps
    /// (`SCHED_IDLE`), so the shard must not poll then.
    fn worker_running(&self) -> bool {
        self.core.batchers.iter().any(Batcher::worker_busy)
    }

    /// How long the next wait may sleep.
    fn timeout(&self, now: Instant, next_tick: Instant) -> Duration {
        if self.core.batchers.iter().any(Batcher::is_dirty)
            || !self.core.ready.is_empty()
            || self.core.decoders.iter().flatten().any(Decoder::runnable)
        {
            return Duration::ZERO;
        }
        let mut until = next_tick;
        for b in self.core.batchers.iter() {
            if let Some(t) = b.wake_at() {
                until = until.min(t);
            }
        }
        if let Some(t) = self.core.mesh.next_deadline() {
            until = until.min(t);
        }
        if let Some(t) = self.drain_deadline {
            until = until.min(t);
        }
        until.saturating_duration_since(now)
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Accepted(Ok(fd)) => self.accept(fd),
            Event::Accepted(Err(e)) => warn!(shard = self.core.id, error = %e, "accept failed"),
            Event::Received { conn, result } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.on_received(conn, result, &mut self.core, &mut self.engine);
                }
                self.reap(conn);
            }
            Event::Sent { conn, result } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.on_sent(conn, result, &mut self.core, &mut self.engine);
                }
                self.reap(conn);
            }
            Event::ZeroCopyDone { conn } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.on_zero_copy_done(conn, &mut self.core, &mut self.engine);
                }
                self.reap(conn);
            }
            Event::Doorbell => self.on_doorbell(),
        }
    }

    fn accept(&mut self, fd: OwnedFd) {
        // A connection accepted just before the listener closed (io_uring's multishot accept
        // takes connections as they arrive, so completions can follow the drain order) is one
        // the client already sends on: serve it like the others, whose answers close them.
        // Dropping it would reset a request, and in a blue-green handover lose it.
        if self.conns.len() >= self.max_connections {
            self.reject(fd);
            return;
        }
        let _ = socket2::SockRef::from(&fd).set_nodelay(true);
        let key = self.conns.vacant_key();
        if let Err(e) = self.engine.add(key, fd.as_raw_fd()) {
            warn!(shard = self.core.id, error = %e, "cannot watch a new connection");
            return;
        }
        let now = Instant::now();
        self.conns.insert(Connection::new(fd, &self.core, now));
        self.core.open = self.conns.len();
        self.core.accepted += 1;
        self.conns[key].start(key, &mut self.core, &mut self.engine);
        self.reap(key);
    }

    /// Answers a connection over the shard's limit with 503 and closes it.
    fn reject(&self, fd: OwnedFd) {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let date = self.core.service.date();
        Responder::new(&mut out, &mut scratch, &date, ResponseMode::CLOSE).error(
            &ApiError::unavailable(
                "this shard has reached http.max_connections_per_shard; retry later",
            ),
        );
        // SAFETY: a non-blocking send from a buffer we own; a fresh socket's send buffer holds
        // this small response, and if it does not, the client gets the close alone.
        unsafe {
            libc::send(
                fd.as_raw_fd(),
                out.as_ptr().cast(),
                out.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        debug!(shard = self.core.id, "rejected a connection over the limit");
    }

    /// Frees connection `key` if it has ended.
    fn reap(&mut self, key: usize) {
        if !self.conns.get(key).is_some_and(Connection::is_finished) {
            return;
        }
        let conn = self.conns.remove(key);
        self.engine.remove(key, conn.fd());
        // The socket closes here, after the engine let go of it.
        drop(conn.release(&mut self.core));
        self.core.open = self.conns.len();
    }

    fn on_doorbell(&mut self) {
        while let Ok(msg) = self.inbox.control.try_recv() {
            match msg {
                ShardMsg::Drain { deadline } => self.begin_drain(deadline),
                ShardMsg::Publish { state, ack } => {
                    self.core.publish(state);
                    let _ = ack.try_send(self.core.id);
                }
                ShardMsg::RepositoryReply { ticket, result } => {
                    let core = &mut self.core;
                    core.mesh.on_call_reply(ticket, result, &mut core.ready);
                }
                other => debug_assert!(false, "{other:?} travels the mesh, not the control inbox"),
            }
        }
        while let Some(msg) = self.core.mesh.try_recv() {
            match msg {
                ShardMsg::SnapshotRequest { from, ticket, what } => {
                    let snapshot = self.core.snapshot(what);
                    self.core.mesh.reply(from, ticket, snapshot);
                }
                ShardMsg::SnapshotReply { ticket, snapshot } => {
                    let core = &mut self.core;
                    core.mesh.on_reply(ticket, snapshot, &mut core.ready);
                }
                other => {
                    debug_assert!(false, "{other:?} travels the control inbox, never the mesh")
                }
            }
        }
        for b in self.core.batchers.iter_mut() {
            b.on_doorbell();
        }
    }

    /// Polls the batchers that have work and resumes the connections whose outcome is ready.
    fn run_batchers(&mut self) {
        let start = Instant::now();
        for _ in 0..RESUME_ROUNDS {
            let now = Instant::now();
            if now.saturating_duration_since(start) >= TURN_COMPUTE_BUDGET {
                // Inline batches took this turn's share: the engine's events come first.
                return;
            }
            let core = &mut self.core;
            core.mesh.expire(now, &mut core.ready);
            let conns = &self.conns;
            let mut ctx = PollCtx {
                service: &core.service,
                pool: &core.pools.tensor,
                gone: |c: usize| conns.get(c).is_none_or(Connection::is_gone),
                gone_epoch: core.gone_epoch,
                ready: &mut core.ready,
            };
            for b in core.batchers.iter_mut() {
                if b.is_dirty() || b.wake_at().is_some_and(|t| t <= now) {
                    b.poll(now, &mut ctx);
                }
            }
            if self.core.ready.is_empty() {
                return;
            }
            self.resume_ready();
        }
    }

    /// Resumes the connections whose outcome is ready.
    fn resume_ready(&mut self) {
        let mut ready = std::mem::take(&mut self.core.ready);
        for key in ready.drain(..) {
            if let Some(c) = self.conns.get_mut(key) {
                c.resume(key, &mut self.core, &mut self.engine);
            }
            self.reap(key);
        }
        // Keep the allocation; anything pushed meanwhile is for the next round.
        ready.append(&mut self.core.ready);
        self.core.ready = ready;
    }

    /// Runs one step of every generative model's running batch (each sequence with room gets
    /// one token; those whose client left or whose deadline passed end) and resumes the
    /// connections with something to send. One step per loop turn: the engine's events come
    /// between steps, so streaming never starves I/O.
    fn run_decoders(&mut self) {
        let now = Instant::now();
        let conns = &self.conns;
        let core = &mut self.core;
        let mut stepped = false;
        for (slot, d) in core.decoders.iter_mut().enumerate() {
            let Some(d) = d else { continue };
            if d.active() == 0 {
                continue;
            }
            let gone = |c: usize| conns.get(c).is_none_or(Connection::is_gone);
            d.step(
                now,
                gone,
                &mut core.ready,
                core.service.metrics().model(slot),
            );
            stepped = true;
        }
        if stepped && !self.core.ready.is_empty() {
            self.resume_ready();
        }
    }

    /// Reads again from the connections that the saturated models' lines let go.
    fn release_lines(&mut self) {
        if self.core.has_retiring() {
            self.core.retire_idle();
        }
        if self.drain_deadline.is_none() && !self.core.batchers.iter().any(Batcher::has_line) {
            return;
        }
        let now = Instant::now();
        let mut released = std::mem::take(&mut self.released);
        let conns = &self.conns;
        let resting = |key: usize, id: u64| conns.get(key).is_some_and(|c| c.is_resting(id));
        for b in self.core.batchers.iter_mut() {
            // A retiring version takes no new request: its resting connections read again and
            // find the versions served now.
            if self.drain_deadline.is_some() || self.core.retiring.contains(&b.slot()) {
                b.release_all(&mut released);
            } else {
                b.release(now, &mut released, resting);
            }
        }
        for (key, id) in released.drain(..) {
            if let Some(c) = self.conns.get_mut(key) {
                c.release_hold(key, id, &mut self.core, &mut self.engine);
            }
            self.reap(key);
        }
        self.released = released;
    }

    fn begin_drain(&mut self, deadline: Instant) {
        let deadline = self.drain_deadline.map_or(deadline, |d| d.min(deadline));
        let first = self.drain_deadline.is_none();
        self.drain_deadline = Some(deadline);
        if first {
            info!(
                shard = self.core.id,
                open_connections = self.conns.len(),
                "draining"
            );
            self.core.service.start_draining();
            self.engine.stop_accepting();
            // Shutting the listener down takes it out of the listening state at once, so the
            // port is free even while the kernel still holds the socket (an io_uring accept
            // keeps a reference until its cancellation is processed, which a process exiting
            // right after the drain leaves to the kernel's ring teardown); closing it refuses
            // new connections from here on.
            if let Some(listener) = self.listener.take() {
                let _ = socket2::SockRef::from(&listener).shutdown(std::net::Shutdown::Read);
            }
            self.sweep(Instant::now());
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.core.service.refresh_date(SystemTime::now());
        self.sweep(now);
        self.detect_gone();
    }

    /// Shuts down connections that overstayed their phase, and, while draining, idle ones. A
    /// shut socket ends its pending receive, and the connection closes itself.
    fn sweep(&mut self, now: Instant) {
        let draining = self.drain_deadline.is_some();
        let (min_rate, header_timeout) = (self.min_body_rate, self.header_timeout);
        let min_send_rate = self.min_send_rate;
        let mut timed_out = 0;
        for (_, c) in self.conns.iter_mut() {
            if c.is_shut() {
                continue;
            }
            let (phase, since) = c.phase();
            let age = now.saturating_duration_since(since);
            // A client that does not take its response is reset, not shut down: the kernel
            // would otherwise keep what the socket's send buffer holds until it is read.
            let reset = phase == Phase::Write;
            let how = match phase {
                // Drain closes idle connections by their read side, once they have been idle
                // for DRAIN_IDLE_GRACE: a client between two requests of a conversation gets its
                // next one answered (with `Connection: close`, which tells it to stop) instead
                // of finding the connection gone; a request already on its way when the read
                // side is shut is still read and answered. One that then stalls is timed out
                // below like any other.
                Phase::Idle if draining && !c.is_read_shut() && age >= DRAIN_IDLE_GRACE => {
                    Some(libc::SHUT_RD)
                }
                Phase::Idle if draining => None,
                // A new connection that has sent nothing is held to the header deadline from
                // accept, not the idle timeout.
                Phase::Idle if !c.has_served() && age > self.header_timeout => {
                    timed_out += 1;
                    Some(libc::SHUT_RDWR)
                }
                Phase::Idle | Phase::Body | Phase::Write if age > self.idle_timeout => {
                    timed_out += 1;
                    Some(libc::SHUT_RDWR)
                }
                // A body that keeps trickling, each byte just inside the idle timeout, is cut
                // once its average rate stays under the minimum past the header timeout.
                Phase::Body if too_slow(min_rate, header_timeout, c.body_progress(), now) => {
                    timed_out += 1;
                    Some(libc::SHUT_RDWR)
                }
                // Likewise a client that takes its response a trickle at a time, each bit just
                // inside the idle timeout: it would pin the response's memory for ever.
                Phase::Write if too_slow(min_send_rate, header_timeout, c.send_progress(), now) => {
                    timed_out += 1;
                    Some(libc::SHUT_RDWR)
                }
                Phase::Head if age > self.header_timeout => {
                    timed_out += 1;
                    Some(libc::SHUT_RDWR)
                }
                Phase::Linger if age > LINGER_TIME => Some(libc::SHUT_RDWR),
                _ => None,
            };
            match how {
                Some(libc::SHUT_RDWR) if reset => c.reset(),
                Some(how) => c.shut_down(how),
                None => {}
            }
        }
        if timed_out > 0 {
            debug!(
                shard = self.core.id,
                closed = timed_out,
                "closed timed-out connections"
            );
        }
    }

    /// Marks parked connections whose client hung up (closed, reset, or shut its sending side,
    /// which HTTP clients do only when they are done), in one `poll` call for all of them, so
    /// their queued requests are dropped before they are batched.
    fn detect_gone(&mut self) {
        let mut busy: Vec<(usize, libc::pollfd)> = self
            .conns
            .iter()
            // A socket whose read side we shut ourselves (drain) reports POLLRDHUP too: that is
            // not its client leaving.
            .filter(|(_, c)| c.phase().0 == Phase::Busy && !c.is_gone() && !c.is_read_shut())
            .map(|(k, c)| {
                (
                    k,
                    libc::pollfd {
                        fd: c.fd(),
                        events: libc::POLLRDHUP,
                        revents: 0,
                    },
                )
            })
            .collect();
        if busy.is_empty() {
            return;
        }
        let mut fds: Vec<libc::pollfd> = busy.iter().map(|(_, p)| *p).collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds; timeout 0 never blocks. Every fd
        // belongs to a live connection of this shard.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n <= 0 {
            return;
        }
        let mut marked = false;
        for ((key, _), p) in busy.iter_mut().zip(&fds) {
            if p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                self.conns[*key].set_gone();
                marked = true;
            }
        }
        if marked {
            self.core.client_gone();
        }
    }

    /// The drain deadline passed: shut every connection down and give their operations a moment
    /// to end. Buffers still under an operation are leaked to the exiting process rather than
    /// freed under the kernel.
    fn abandon_connections(&mut self) {
        for (_, c) in self.conns.iter_mut() {
            c.abandon();
        }
        let until = Instant::now() + EXIT_GRACE;
        while self.conns.iter().any(|(_, c)| c.has_io_in_flight()) && Instant::now() < until {
            let mut events = std::mem::take(&mut self.events);
            let left = until.saturating_duration_since(Instant::now());
            if self.engine.wait(Some(left), &mut events).is_err() {
                break;
            }
            for event in events.drain(..) {
                match event {
                    Event::Received { conn, .. }
                    | Event::Sent { conn, .. }
                    | Event::ZeroCopyDone { conn } => {
                        if let Some(c) = self.conns.get_mut(conn) {
                            c.forget_io(&event);
                        }
                    }
                    Event::Accepted(_) | Event::Doorbell => {}
                }
            }
            self.events = events;
        }
        if self.conns.iter().any(|(_, c)| c.has_io_in_flight()) {
            std::mem::forget(std::mem::take(&mut self.conns));
        }
    }
}

/// Whether a transfer (a request body, a response) that began at `start` and has moved `bytes`
/// since goes slower than `min_rate` bytes per second, once `grace` has passed (0 turns the
/// check off).
fn too_slow(min_rate: u64, grace: Duration, (start, bytes): (Instant, u64), now: Instant) -> bool {
    let elapsed = now.saturating_duration_since(start);
    min_rate > 0 && elapsed > grace && (bytes as f64) < min_rate as f64 * elapsed.as_secs_f64()
}
