//! The request batcher of one model on one shard: a synchronous driver of the batching policy.
//!
//! A connection [`Batcher::submit`]s a decoded request: admission is checked at once (429 when
//! `max_queue_size` requests already wait), its tensors are copied into pooled buffers, and it
//! goes straight into the [`BatchQueue`] policy (the queue is on the shard's thread, so it needs
//! no ring; the one lock-free ring is the worker handoff, which crosses threads). The shard loop
//! calls [`Batcher::poll`] when something changed or the policy's wake-up time came; it fails
//! requests whose deadline passed (at that moment, even while a batch runs), drops requests whose
//! client left, and dispatches a batch whenever the model slot is free, either inline (on this
//! thread, now) or to the shard's worker thread ([`super::worker`]). A finished request's
//! outcome waits under its ticket until its connection takes it ([`Batcher::take`]); the
//! connection's key goes on the shard's ready list.
//!
//! When an inline model's queue is empty and its slot free, a request needs no batcher at all:
//! [`Batcher::idle_inline`] tells the connection to run it on its borrowed inputs at once (the
//! idle fast path), which gives the same bytes as a batch of one.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use smallvec::SmallVec;

use super::buffers::BufferPool;
use super::engine::Doorbell;
use super::worker::{Job, JobDone, Worker};
use crate::batch::assemble::{self, BatchResult, Inputs};
use crate::batch::{BatchQueue, Batchable, Step};
use crate::config::Placement;
use crate::error::{ApiError, ErrorKind};
use crate::model::{Model, ModelEntry};
use crate::service::{InferJob, ShardService};
use crate::tensor::Tensor;

/// A queued request as the policy sees it.
pub(crate) struct Submission {
    ticket: usize,
    inputs: Inputs,
    items: usize,
    deadline: Option<Instant>,
}

impl Batchable for Submission {
    fn items(&self) -> usize {
        self.items
    }

    fn fits_with(&self, first: &Self) -> bool {
        self.inputs
            .iter()
            .zip(&first.inputs)
            .all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }
}

/// How a submitted request ended.
pub(crate) enum Outcome {
    /// It ran: its outputs are rows `index` of `result`.
    Ran {
        result: Rc<BatchResult<'static>>,
        index: usize,
        dispatched: Instant,
        infer_start: Instant,
        infer_end: Instant,
    },
    /// It failed (timed out in the queue, or the model failed).
    Failed(ApiError),
    /// Its client left before it was batched; nobody is waiting for an answer.
    Dropped,
}

/// A ticket's state: the connection waiting, and the outcome once there is one.
struct Pending {
    conn: usize,
    outcome: Option<Outcome>,
}

/// The batch running now.
struct InFlight {
    tickets: SmallVec<[usize; 32]>,
    items: usize,
    dispatched: Instant,
}

/// What [`Batcher::poll`] needs from the shard.
pub(crate) struct PollCtx<'a, G: Fn(usize) -> bool> {
    /// The shard's handler (statistics, metrics).
    pub service: &'a ShardService,
    /// The shard's tensor buffers.
    pub pool: &'a BufferPool,
    /// Whether a connection's client has gone.
    pub gone: G,
    /// Bumped whenever a client may have gone; the policy looks for gone clients only then.
    pub gone_epoch: u64,
    /// Connections whose outcome is ready are pushed here.
    pub ready: &'a mut Vec<usize>,
}

/// One model's batcher on one shard.
pub(crate) struct Batcher {
    index: usize,
    name: String,
    entry_timeout: Option<Duration>,
    max_queue_size: usize,
    model: Arc<dyn Model>,
    batched: bool,
    queue: BatchQueue<Submission>,
    tickets: Slab<Pending>,
    /// Admitted and not yet completed (waiting or running).
    outstanding: usize,
    worker: Option<Worker>,
    in_flight: Option<InFlight>,
    step: Step<Submission>,
    /// Something changed since the last poll (a request arrived, a batch finished).
    dirty: bool,
    /// When the policy wants to be polled again at the latest.
    wake_at: Option<Instant>,
    seen_gone_epoch: u64,
    /// Connections resting until this model has room, first come first served: nothing is read
    /// from them meanwhile, so their clients' next requests wait in the kernel and TCP pushes
    /// back, instead of each one costing the shard a 429 (see [`Batcher::hold`]).
    /// Each entry is a connection's slab key, its id (a key is reused once its connection
    /// closes; the id is not), and when it began to rest.
    line: VecDeque<(usize, u64, Instant)>,
    /// Queue slots freed (requests dispatched, expired or dropped) since the line last moved.
    freed: usize,
    /// How long the model's last batch ran.
    last_run: Duration,
}

/// A shard's batchers, one per model slot it holds, kept dense so that the loop's passes over
/// them cost what is loaded, not every slot there ever was.
#[derive(Default)]
pub(crate) struct Batchers {
    list: Vec<Batcher>,
    /// Position in `list` by slot (`usize::MAX`: none).
    pos: Vec<usize>,
}

impl Batchers {
    /// Adds `b` (its slot must have none).
    pub(crate) fn insert(&mut self, b: Batcher) {
        if self.pos.len() <= b.index {
            self.pos.resize(b.index + 1, usize::MAX);
        }
        debug_assert_eq!(self.pos[b.index], usize::MAX, "one batcher per slot");
        self.pos[b.index] = self.list.len();
        self.list.push(b);
    }

    /// Removes slot `slot`'s batcher.
    pub(crate) fn remove(&mut self, slot: usize) -> Option<Batcher> {
        let at = *self.pos.get(slot).filter(|&&p| p != usize::MAX)?;
        self.pos[slot] = usize::MAX;
        let b = self.list.swap_remove(at);
        if let Some(moved) = self.list.get(at) {
            self.pos[moved.index] = at;
        }
        Some(b)
    }

    /// Slot `slot`'s batcher.
    pub(crate) fn get(&self, slot: usize) -> Option<&Batcher> {
        self.pos.get(slot).and_then(|&p| self.list.get(p))
    }

    /// Slot `slot`'s batcher.
    pub(crate) fn get_mut(&mut self, slot: usize) -> Option<&mut Batcher> {
        self.pos.get(slot).and_then(|&p| self.list.get_mut(p))
    }

    /// Every batcher.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Batcher> {
        self.list.iter()
    }

    /// Every batcher.
    pub(crate) fn iter_mut(&mut self) -> std::slice::IterMut<'_, Batcher> {
        self.list.iter_mut()
    }
}

/// An inline model whose batches take longer than this (50 µs, a few times what a request
/// costs the shard otherwise) is batched even when idle: see [`Batcher::idle_inline`].
const FAST_PATH_MAX: Duration = Duration::from_micros(50);

/// The longest a connection rests in a model's line: then it is read again, and a request for a
/// model that is still full gets its 429 and goes to the back of the line.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(1);

impl Batcher {
    /// Creates the batcher of `entry` on this shard (and its worker thread, for `worker`
    /// placement, pinned to `cpu` and ringing `doorbell` after each batch).
    pub(crate) fn new(
        entry: &ModelEntry,
        cpu: usize,
        doorbell: &Arc<Doorbell>,
    ) -> Result<Batcher, String> {
        let serving = &entry.serving;
        let worker = match serving.placement {
            Placement::Inline => None,
            Placement::Worker => Some(
                Worker::spawn(
                    entry.model.clone(),
                    cpu,
                    format!("friday-worker-{}", entry.name()),
                    doorbell.clone(),
                )
                .map_err(|e| format!("cannot start the worker of model '{}': {e}", entry.name()))?,
            ),
        };
        let capacity = serving.policy.max_queue_size;
        Ok(Batcher {
            index: entry.index,
            name: entry.name().to_string(),
            entry_timeout: serving.default_timeout,
            max_queue_size: capacity,
            batched: entry.model.metadata().max_batch_size > 0,
            model: entry.model.clone(),
            queue: BatchQueue::new(serving.policy.clone()),
            tickets: Slab::with_capacity(capacity.min(1024)),
            outstanding: 0,
            worker,
            in_flight: None,
            step: Step::default(),
            dirty: false,
            wake_at: None,
            seen_gone_epoch: 0,
            line: VecDeque::new(),
            freed: 0,
            last_run: Duration::ZERO,
        })
    }

    /// The model.
    pub(crate) fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// Whether the model has a batch dimension.
    pub(crate) fn batched(&self) -> bool {
        self.batched
    }

    /// Requests admitted to this model on this shard and not yet answered.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Inline, nothing queued, nothing running, no queue delay to wait out for company, and
    /// cheap (its last batch took under [`FAST_PATH_MAX`]): the policy would dispatch a lone
    /// request at once, so it may run now on its own inputs. A costly model goes through the
    /// queue instead, so that the requests of one loop turn share a batch rather than run one
    /// by one, each holding the others (and every other client of the shard) for its whole run.
    pub(crate) fn idle_inline(&self) -> bool {
        self.worker.is_none()
            && self.in_flight.is_none()
            && self.queue.is_empty()
            && self.queue.config().max_queue_delay.is_zero()
            && self.last_run < FAST_PATH_MAX
    }

    /// Records how long a request run on the idle fast path took.
    pub(crate) fn ran_inline(&mut self, took: Duration) {
        self.last_run = took;
    }

    /// Whether its worker thread is computing a batch.
    pub(crate) fn worker_busy(&self) -> bool {
        self.worker.is_some() && self.in_flight.is_some()
    }

    /// Whether [`Batcher::poll`] has work now (as opposed to at [`Batcher::wake_at`]).
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// When the batcher must be polled at the latest, if it waits on a timer.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        self.wake_at
    }

    /// The worker may have finished (the shard's doorbell rang): look on the next poll.
    pub(crate) fn on_doorbell(&mut self) {
        if self.worker.is_some() && self.in_flight.is_some() {
            self.dirty = true;
        }
    }

    /// A client may have gone: look on the next poll.
    pub(crate) fn on_gone(&mut self) {
        if !self.queue.is_empty() {
            self.dirty = true;
        }
    }

    /// Admits `job` from connection `conn` (taking its inputs) and returns its ticket, or refuses
    /// it with 429 at once.
    pub(crate) fn submit(
        &mut self,
        job: &mut InferJob<'_>,
        conn: usize,
        pool: &BufferPool,
    ) -> Result<usize, ApiError> {
        if self.queue.len() >= self.max_queue_size {
            return Err(ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "model '{}' has {} requests waiting on this shard (max_queue_size); retry later",
                    self.name,
                    self.queue.len()
                ),
            ));
        }
        let deadline = job
            .request
            .timeout_us
            .map(Duration::from_micros)
            .or(self.entry_timeout)
            .and_then(|t| job.received.checked_add(t));
        let inputs: Inputs = std::mem::take(&mut job.request.inputs)
            .into_iter()
            .map(|t| Tensor {
                datatype: t.datatype,
                shape: t.shape,
                data: std::borrow::Cow::Owned(match t.data {
                    std::borrow::Cow::Owned(v) => v,
                    std::borrow::Cow::Borrowed(b) => {
                        let mut v = pool.take();
                        v.reserve(b.len());
                        v.extend_from_slice(b);
                        v
                    }
                }),
            })
            .collect();
        let ticket = self.tickets.insert(Pending {
            conn,
            outcome: None,
        });
        let submission = Submission {
            ticket,
            inputs,
            items: job.request.batch_size,
            deadline,
        };
        if self
            .queue
            .push(submission, job.level, deadline, Instant::now())
            .is_err()
        {
            unreachable!("admission checked the queue's length against the same bound");
        }
        self.outstanding += 1;
        self.dirty = true;
        Ok(ticket)
    }

    /// Whether a request for this model would find no room now: its queue is full, or
    /// connections rest in its line waiting for room (a newcomer goes behind them).
    pub(crate) fn saturated(&self) -> bool {
        self.queue.len() >= self.max_queue_size || !self.line.is_empty()
    }

    /// Puts connection `conn` at the back of the line: the shard reads nothing from it until
    /// [`Batcher::release`] lets it go. A connection whose request was refused for a full queue
    /// rests here after its 429, and one just answered rests here while others wait, so under
    /// overload the shard's work follows what the model completes, not what clients send (a
    /// closed loop of a thousand clients costs no more than one of a hundred), and clients take
    /// turns, first come first served.
    pub(crate) fn hold(&mut self, conn: usize, id: u64, now: Instant) {
        self.line.push_back((conn, id, now));
    }

    /// Connections to read again (key and id): one per queue slot freed since the last call,
    /// those that have rested [`MAX_HOLD`], and, if the model has nothing queued or running (the
    /// slots freed went to clients that left), as many as the queue holds. An entry whose
    /// connection has closed meanwhile (`resting` says no) is dropped without taking a slot.
    pub(crate) fn release(
        &mut self,
        now: Instant,
        out: &mut Vec<(usize, u64)>,
        resting: impl Fn(usize, u64) -> bool,
    ) {
        let mut n = std::mem::take(&mut self.freed);
        if self.line.is_empty() {
            return;
        }
        if self.queue.is_empty() && self.in_flight.is_none() {
            n = n.max(self.max_queue_size);
        }
        while let Some(&(conn, id, since)) = self.line.front() {
            if !resting(conn, id) {
                self.line.pop_front();
                continue;
            }
            if n == 0 && now.saturating_duration_since(since) < MAX_HOLD {
                break;
            }
            n = n.saturating_sub(1);
            out.push((conn, id));
            self.line.pop_front();
        }
    }

    /// Whether connections rest in the line.
    pub(crate) fn has_line(&self) -> bool {
        !self.line.is_empty()
    }

    /// How many connections rest in the line.
    pub(crate) fn line_len(&self) -> usize {
        self.line.len()
    }

    /// Requests that may wait on this shard (`max_queue_size`).
    pub(crate) fn max_queue_size(&self) -> usize {
        self.max_queue_size
    }

    /// The model slot.
    pub(crate) fn slot(&self) -> usize {
        self.index
    }

    /// Whether it holds nothing: no request queued, running or waiting to be taken, so that
    /// a gone version's batcher can be dropped.
    pub(crate) fn is_idle(&self) -> bool {
        self.tickets.is_empty() && self.in_flight.is_none() && self.queue.is_empty()
    }

    /// Lets every resting connection go (the shard drains).
    pub(crate) fn release_all(&mut self, out: &mut Vec<(usize, u64)>) {
        out.extend(self.line.drain(..).map(|(conn, id, _)| (conn, id)));
        self.freed = 0;
    }

    /// Takes a ticket's outcome once its connection was put on the ready list.
    pub(crate) fn take(&mut self, ticket: usize) -> Outcome {
        self.tickets
            .remove(ticket)
            .outcome
            .expect("a connection is resumed only once its outcome is set")
    }

    /// Gives a finished batch's buffers back to the pool once no request reads it any more.
    pub(crate) fn recycle(result: Rc<BatchResult<'static>>, pool: &BufferPool) {
        if let Ok(result) = Rc::try_unwrap(result) {
            for buf in result.into_buffers() {
                pool.give(buf);
            }
        }
    }

    fn complete(&mut self, ticket: usize, outcome: Outcome, ready: &mut Vec<usize>) {
        self.outstanding -= 1;
        let entry = &mut self.tickets[ticket];
        entry.outcome = Some(outcome);
        ready.push(entry.conn);
    }

    /// Runs the policy: takes a finished batch, fails expired requests, drops those whose client
    /// left, dispatches a batch if the slot is free. Completed connections go on `ctx.ready`.
    pub(crate) fn poll<G: Fn(usize) -> bool>(&mut self, now: Instant, ctx: &mut PollCtx<'_, G>) {
        self.dirty = false;
        if let Some(done) = self.worker.as_mut().and_then(Worker::try_done) {
            self.finish(done, ctx);
        }
        if self.in_flight.is_some() && self.worker.as_ref().is_some_and(|w| !w.is_alive()) {
            self.worker_died(ctx);
        }
        let check_gone = ctx.gone_epoch != self.seen_gone_epoch;
        self.seen_gone_epoch = ctx.gone_epoch;
        let mut step = std::mem::take(&mut self.step);
        let tickets = &self.tickets;
        let gone = &ctx.gone;
        self.queue.poll(
            now,
            self.in_flight.is_none(),
            check_gone,
            |s| gone(tickets[s.ticket].conn),
            &mut step,
        );
        if !self.line.is_empty() {
            // Slots freed while no one rests are nobody's: only count them for a line.
            self.freed += step.expired.len() + step.dropped.len() + step.batch.len();
        }
        for s in step.expired.drain(..) {
            let waited = now.saturating_duration_since(s.deadline.unwrap_or(now));
            let e = ApiError::new(
                ErrorKind::TimedOut,
                format!(
                    "request timed out waiting in the queue of model '{}' (deadline passed {} µs ago)",
                    self.name,
                    waited.as_micros()
                ),
            );
            let ticket = s.ticket;
            self.recycle_inputs(s.inputs, ctx.pool);
            self.complete(ticket, Outcome::Failed(e), ctx.ready);
        }
        for s in step.dropped.drain(..) {
            self.recycle_inputs(s.inputs, ctx.pool);
            self.complete(s.ticket, Outcome::Dropped, ctx.ready);
        }
        if !step.batch.is_empty() {
            self.dispatch(&mut step.batch, now, ctx);
            // An inline batch ran on this thread: form the next one on the next loop turn, after
            // the engine has taken what arrived meanwhile.
            if self.worker.is_none() && !self.queue.is_empty() {
                self.dirty = true;
            }
        }
        self.wake_at = step.wake_at;
        self.step = step;
    }

    fn recycle_inputs(&self, inputs: Inputs, pool: &BufferPool) {
        for t in inputs {
            if let std::borrow::Cow::Owned(v) = t.data {
                pool.give(v);
            }
        }
    }

    fn dispatch<G: Fn(usize) -> bool>(
        &mut self,
        batch: &mut Vec<Submission>,
        dispatched: Instant,
        ctx: &mut PollCtx<'_, G>,
    ) {
        let mut tickets = SmallVec::new();
        let mut sizes: SmallVec<[usize; 32]> = SmallVec::new();
        let mut parts = Vec::with_capacity(batch.len());
        for s in batch.drain(..) {
            tickets.push(s.ticket);
            sizes.push(s.items);
            parts.push(s.inputs);
        }
        let pool = ctx.pool;
        let inputs = assemble::concat(
            parts,
            |n| {
                let mut v = pool.take();
                v.reserve(n);
                v
            },
            |v| pool.give(v),
        );
        let items = sizes.iter().sum();
        self.in_flight = Some(InFlight {
            tickets,
            items,
            dispatched,
        });
        match &mut self.worker {
            Some(worker) => worker.submit(Job { inputs, sizes }),
            None => {
                let infer_start = Instant::now();
                let result = assemble::run(self.model.as_ref(), inputs, &sizes, self.batched);
                let infer_end = Instant::now();
                self.finish(
                    JobDone {
                        result,
                        infer_start,
                        infer_end,
                    },
                    ctx,
                );
            }
        }
    }

    fn finish<G: Fn(usize) -> bool>(&mut self, done: JobDone, ctx: &mut PollCtx<'_, G>) {
        let InFlight {
            tickets,
            items,
            dispatched,
        } = self
            .in_flight
            .take()
            .expect("a finished batch was in flight");
        let infer = done.infer_end - done.infer_start;
        self.last_run = infer;
        if let Some(m) = ctx.service.metrics().model(self.index) {
            m.batch(infer.as_nanos() as u64, items);
        }
        ctx.service.stats().record_execution(
            self.index,
            items,
            done.infer_start.saturating_duration_since(dispatched),
            infer,
        );
        // The slot is free: the next poll may dispatch what waits.
        self.dirty = true;
        match done.result {
            Ok(result) => {
                let result = Rc::new(result);
                for (index, &t) in tickets.iter().enumerate() {
                    let outcome = Outcome::Ran {
                        result: result.clone(),
                        index,
                        dispatched,
                        infer_start: done.infer_start,
                        infer_end: done.infer_end,
                    };
                    self.complete(t, outcome, ctx.ready);
                }
                Self::recycle(result, ctx.pool);
            }
            Err(e) => {
                tracing::warn!(model = %self.name, error = %e, "a batch failed");
                for &t in &tickets {
                    let e = ApiError::internal(format!("model '{}' failed: {e}", self.name));
                    self.complete(t, Outcome::Failed(e), ctx.ready);
                }
            }
        }
    }

    /// The worker thread is gone: keep what it finished, fail the batch it still held, and run
    /// this model's batches inline from now on.
    fn worker_died<G: Fn(usize) -> bool>(&mut self, ctx: &mut PollCtx<'_, G>) {
        if let Some(done) = self.worker.as_mut().and_then(Worker::try_done) {
            self.finish(done, ctx);
        }
        tracing::error!(model = %self.name, "the model's worker stopped; running its batches inline");
        self.worker = None;
        if self.in_flight.is_some() {
            let now = Instant::now();
            self.finish(
                JobDone {
                    result: Err("its worker thread stopped".into()),
                    infer_start: now,
                    infer_end: now,
                },
                ctx,
            );
        }
    }
}
