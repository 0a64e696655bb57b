//! The request batcher of one model on one shard.
//!
//! Connection tasks [`Batcher::submit`] a decoded request: admission is checked at once (429 when
//! `max_queue_size` requests already wait), its tensors are copied into pooled buffers, and it
//! goes into a bounded rtrb ring. The batcher task drains the ring
//! into the [`BatchQueue`] policy and acts on its decisions: it fails requests whose deadline
//! passed (at that moment, even while a batch runs), drops requests whose client left, and
//! dispatches a batch whenever the model slot is free. The batch runs either inline, on this
//! thread in the `batch` task queue, or on the shard's worker thread ([`super::worker`]), while
//! the reactor keeps serving I/O. Each request's connection task awaits its [`Ticket`] and then
//! encodes its rows straight from the batch's outputs.
//!
//! Everything here is shard-local (`Rc`, `Cell`); only a worker job crosses to another thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::TaskQueueHandle;
use slab::Slab;
use smallvec::SmallVec;

use super::buffers::BufferPool;
use super::conn_table::ConnState;
use super::worker::{Job, JobDone, Worker};
use crate::batch::assemble::{self, BatchResult, Inputs};
use crate::batch::{BatchQueue, Batchable, Step};
use crate::config::Placement;
use crate::error::{ApiError, ErrorKind};
use crate::model::ModelEntry;
use crate::service::{InferJob, ShardService};
use crate::tensor::Tensor;

/// A queued request as the policy sees it.
pub(crate) struct Submission {
    ticket: usize,
    inputs: Inputs,
    items: usize,
    level: usize,
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
        result: Rc<BatchResult>,
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

enum State {
    Waiting(Option<Waker>),
    Done(Outcome),
}

struct Pending {
    conn: Rc<ConnState>,
    state: State,
    /// The ticket was dropped (its connection task ended): discard the outcome.
    abandoned: bool,
}

/// The batch running now.
struct InFlight {
    tickets: SmallVec<[usize; 32]>,
    items: usize,
    dispatched: Instant,
}

/// One model's batcher on one shard.
pub(crate) struct Batcher {
    index: usize,
    name: String,
    entry_timeout: Option<Duration>,
    max_queue_size: usize,
    service: Rc<ShardService>,
    pool: Rc<BufferPool>,
    submit: RefCell<rtrb::Producer<Submission>>,
    doorbell: LocalSender<()>,
    pending: RefCell<Slab<Pending>>,
    /// Admitted and not yet completed (waiting or running).
    outstanding: Cell<usize>,
    /// Admitted and not yet batched: what `max_queue_size` bounds.
    queued: Cell<usize>,
    /// Bumped whenever a waiting request may have lost its client (the shard's hang-up sweep, an
    /// abandoned ticket), so the batcher looks for gone clients only then.
    gone_epoch: Rc<Cell<u64>>,
}

/// Awaits a submitted request's [`Outcome`].
pub(crate) struct Ticket {
    batcher: Rc<Batcher>,
    key: usize,
    finished: bool,
}

impl Future for Ticket {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut pending = self.batcher.pending.borrow_mut();
        let entry = pending
            .get_mut(self.key)
            .expect("a ticket's entry lives until the ticket takes its outcome");
        match &mut entry.state {
            State::Waiting(waker) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            State::Done(_) => {
                let entry = pending.remove(self.key);
                drop(pending);
                self.finished = true;
                match entry.state {
                    State::Done(outcome) => Poll::Ready(outcome),
                    State::Waiting(_) => unreachable!("matched Done above"),
                }
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut pending = self.batcher.pending.borrow_mut();
        if let Some(entry) = pending.get_mut(self.key) {
            match entry.state {
                State::Done(_) => {
                    pending.remove(self.key);
                }
                State::Waiting(_) => {
                    entry.abandoned = true;
                    let epoch = &self.batcher.gone_epoch;
                    epoch.set(epoch.get().wrapping_add(1));
                }
            }
        }
    }
}

impl Batcher {
    /// Creates the batcher of `entry` on this shard and starts its task (and worker thread, for
    /// `worker` placement, pinned to `cpu`). `gone_epoch` is bumped by the shard's hang-up sweep.
    pub(crate) fn start(
        entry: &ModelEntry,
        service: Rc<ShardService>,
        pool: Rc<BufferPool>,
        gone_epoch: Rc<Cell<u64>>,
        cpu: usize,
        queue: TaskQueueHandle,
    ) -> Result<Rc<Batcher>, String> {
        let serving = &entry.serving;
        let capacity = serving.policy.max_queue_size;
        let (submit, ring) = rtrb::RingBuffer::new(capacity);
        let (doorbell, doorbell_rx) = local_channel::new_bounded(1);
        let worker = match serving.placement {
            Placement::Inline => None,
            Placement::Worker => Some(
                Worker::spawn(
                    entry.model.clone(),
                    cpu,
                    format!("friday-worker-{}", entry.name()),
                )
                .map_err(|e| format!("cannot start the worker of model '{}': {e}", entry.name()))?,
            ),
        };
        let batcher = Rc::new(Batcher {
            index: entry.index,
            name: entry.name().to_string(),
            entry_timeout: serving.default_timeout,
            max_queue_size: capacity,
            service,
            pool,
            submit: RefCell::new(submit),
            doorbell,
            pending: RefCell::new(Slab::with_capacity(capacity.min(1024))),
            outstanding: Cell::new(0),
            queued: Cell::new(0),
            gone_epoch,
        });
        let task = BatcherTask {
            batcher: batcher.clone(),
            model: entry.model.clone(),
            batched: entry.model.metadata().max_batch_size > 0,
            queue: BatchQueue::new(serving.policy.clone()),
            ring,
            doorbell: doorbell_rx,
            worker,
            in_flight: None,
            seen_gone_epoch: 0,
        };
        glommio::spawn_local_into(task.run(), queue)
            .map_err(|e| format!("cannot spawn the batcher of model '{}': {e}", entry.name()))?
            .detach();
        Ok(batcher)
    }

    /// Requests admitted to this model on this shard and not yet answered.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.get()
    }

    /// Admits `job` (taking its inputs) or refuses it with 429 at once.
    pub(crate) fn submit(
        self: &Rc<Self>,
        job: &mut InferJob<'_>,
        conn: &Rc<ConnState>,
    ) -> Result<Ticket, ApiError> {
        let mut submit = self.submit.borrow_mut();
        if self.queued.get() >= self.max_queue_size || submit.is_full() {
            return Err(ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "model '{}' has {} requests waiting on this shard (max_queue_size); retry later",
                    self.name,
                    self.queued.get()
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
                        let mut v = self.pool.take();
                        v.reserve(b.len());
                        v.extend_from_slice(b);
                        v
                    }
                }),
            })
            .collect();
        let key = self.pending.borrow_mut().insert(Pending {
            conn: conn.clone(),
            state: State::Waiting(None),
            abandoned: false,
        });
        let pushed = submit.push(Submission {
            ticket: key,
            inputs,
            items: job.request.batch_size,
            level: job.level,
            deadline,
        });
        if pushed.is_err() {
            unreachable!("the ring was checked not full above, and only this task pushes");
        }
        self.outstanding.set(self.outstanding.get() + 1);
        self.queued.set(self.queued.get() + 1);
        // A full doorbell already holds a wake-up.
        let _ = self.doorbell.try_send(());
        Ok(Ticket {
            batcher: self.clone(),
            key,
            finished: false,
        })
    }

    fn complete(&self, ticket: usize, outcome: Outcome) {
        self.outstanding.set(self.outstanding.get() - 1);
        let mut pending = self.pending.borrow_mut();
        let entry = &mut pending[ticket];
        if entry.abandoned {
            // Its connection task is gone (drain deadline, a dropped connection): count it here,
            // as nobody else will.
            pending.remove(ticket);
            drop(pending);
            self.service.record_cancelled(self.index);
            return;
        }
        if let State::Waiting(Some(waker)) =
            std::mem::replace(&mut entry.state, State::Done(outcome))
        {
            waker.wake();
        }
    }

    fn is_gone(&self, ticket: usize) -> bool {
        let pending = self.pending.borrow();
        let entry = &pending[ticket];
        entry.abandoned || entry.conn.is_gone()
    }

    /// Marks `n` requests as having left the queue (batched, expired, dropped or refused).
    fn dequeued(&self, n: usize) {
        self.queued.set(self.queued.get() - n);
    }

    /// Gives a finished batch's buffers back to the pool once no request reads it any more.
    pub(crate) fn recycle(&self, result: Rc<BatchResult>) {
        if let Ok(result) = Rc::try_unwrap(result) {
            for buf in result.into_buffers() {
                self.pool.give(buf);
            }
        }
    }
}

/// The batcher's task state.
struct BatcherTask {
    batcher: Rc<Batcher>,
    model: Arc<dyn crate::model::Model>,
    batched: bool,
    queue: BatchQueue<Submission>,
    ring: rtrb::Consumer<Submission>,
    doorbell: LocalReceiver<()>,
    worker: Option<Worker>,
    in_flight: Option<InFlight>,
    /// The gone epoch at the last look for gone clients.
    seen_gone_epoch: u64,
}

impl BatcherTask {
    async fn run(mut self) {
        let mut step = Step::default();
        loop {
            let now = Instant::now();
            while let Ok(sub) = self.ring.pop() {
                let (level, deadline) = (sub.level, sub.deadline);
                if let Err(sub) = self.queue.push(sub, level, deadline, now) {
                    // Admission bounds the queued requests by the same size, so this is a bug.
                    self.batcher.dequeued(1);
                    let e = ApiError::new(ErrorKind::Overloaded, "the queue is full; retry later");
                    self.batcher.complete(sub.ticket, Outcome::Failed(e));
                }
            }
            if let Some(done) = self.worker.as_mut().and_then(Worker::try_done) {
                self.finish(done);
            }
            let batcher = self.batcher.clone();
            let epoch = batcher.gone_epoch.get();
            let check_gone = epoch != self.seen_gone_epoch;
            self.seen_gone_epoch = epoch;
            self.queue.poll(
                now,
                self.in_flight.is_none(),
                check_gone,
                |s| batcher.is_gone(s.ticket),
                &mut step,
            );
            batcher.dequeued(step.batch.len() + step.expired.len() + step.dropped.len());
            for s in step.expired.drain(..) {
                let waited = now.saturating_duration_since(s.deadline.unwrap_or(now));
                self.batcher.complete(
                    s.ticket,
                    Outcome::Failed(ApiError::new(
                        ErrorKind::TimedOut,
                        format!(
                            "request timed out waiting in the queue of model '{}' (deadline passed {} µs ago)",
                            self.batcher.name,
                            waited.as_micros()
                        ),
                    )),
                );
            }
            for s in step.dropped.drain(..) {
                self.batcher.complete(s.ticket, Outcome::Dropped);
            }
            if !step.batch.is_empty() {
                self.dispatch(&mut step.batch, now);
                if self.worker.is_none() {
                    // An inline batch ran on this thread: let the I/O queue take what arrived
                    // meanwhile before forming the next batch.
                    futures_lite::future::yield_now().await;
                    continue;
                }
            }
            self.wait(step.wake_at).await;
        }
    }

    fn dispatch(&mut self, batch: &mut Vec<Submission>, dispatched: Instant) {
        let mut tickets = SmallVec::new();
        let mut sizes: SmallVec<[usize; 32]> = SmallVec::new();
        let mut parts = Vec::with_capacity(batch.len());
        for s in batch.drain(..) {
            tickets.push(s.ticket);
            sizes.push(s.items);
            parts.push(s.inputs);
        }
        let pool = self.batcher.pool.clone();
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
                self.finish(JobDone {
                    result,
                    infer_start,
                    infer_end,
                });
            }
        }
    }

    fn finish(&mut self, done: JobDone) {
        let InFlight {
            tickets,
            items,
            dispatched,
        } = self
            .in_flight
            .take()
            .expect("a finished batch was in flight");
        let b = &self.batcher;
        let infer = done.infer_end - done.infer_start;
        b.service
            .metrics()
            .model(b.index)
            .batch(infer.as_nanos() as u64, items);
        b.service.stats().record_execution(
            b.index,
            items,
            done.infer_start.saturating_duration_since(dispatched),
            infer,
        );
        match done.result {
            Ok(result) => {
                let result = Rc::new(result);
                for (index, &t) in tickets.iter().enumerate() {
                    b.complete(
                        t,
                        Outcome::Ran {
                            result: result.clone(),
                            index,
                            dispatched,
                            infer_start: done.infer_start,
                            infer_end: done.infer_end,
                        },
                    );
                }
                b.recycle(result);
            }
            Err(e) => {
                tracing::warn!(model = %b.name, error = %e, "a batch failed");
                for &t in &tickets {
                    b.complete(
                        t,
                        Outcome::Failed(ApiError::internal(format!(
                            "model '{}' failed: {e}",
                            b.name
                        ))),
                    );
                }
            }
        }
    }

    /// Sleeps until a request arrives, the policy's wake-up time comes, or the worker finishes.
    async fn wait(&mut self, wake_at: Option<Instant>) {
        let timer = async {
            match wake_at {
                Some(t) => glommio::timer::sleep(t.saturating_duration_since(Instant::now())).await,
                None => futures_lite::future::pending::<()>().await,
            }
        };
        let doorbell = &self.doorbell;
        let arrival = async {
            let _ = doorbell.recv().await;
        };
        let worker_alive = match (&mut self.worker, &self.in_flight) {
            (Some(worker), Some(_)) => {
                let other = async {
                    futures_lite::future::or(arrival, timer).await;
                    true
                };
                futures_lite::future::or(other, worker.doorbell()).await
            }
            _ => {
                futures_lite::future::or(arrival, timer).await;
                true
            }
        };
        if !worker_alive {
            // The worker's end of the doorbell closed: its thread is gone. Keep what it finished,
            // fail the batch it still held, and run this model's batches inline from now on.
            if let Some(done) = self.worker.as_mut().and_then(Worker::try_done) {
                self.finish(done);
            }
            tracing::error!(model = %self.batcher.name, "the model's worker stopped; running its batches inline");
            self.worker = None;
            if self.in_flight.is_some() {
                let now = Instant::now();
                self.finish(JobDone {
                    result: Err("its worker thread stopped".into()),
                    infer_start: now,
                    infer_end: now,
                });
            }
        }
    }
}
