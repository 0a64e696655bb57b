//! The model worker: a thread pinned to its shard's CPU that runs batches off the reactor.
//! (Public so that `benches/ring_handoff.rs` measures this code, not a copy of it.)
//!
//! The shard hands it a [`Job`] through an rtrb ring and wakes it with `unpark`; it runs the
//! batch, pushes a [`JobDone`] through a second rtrb ring and rings the shard's doorbell (the
//! eventfd the shard's engine watches). At most one job is in flight per model, so both rings are
//! tiny and can never be full when pushed to. The rings are wait-free; the only cross-thread
//! synchronisation beyond them is the park token and the doorbell.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use smallvec::SmallVec;

use super::engine::Doorbell;

use crate::batch::assemble::{self, BatchResult, Inputs};
use crate::model::Model;

/// Jobs (and completions) that fit in each ring; one is ever in flight.
const RING_CAPACITY: usize = 2;
/// Exit status when a worker thread panics (EX_SOFTWARE, as for a shard).
const WORKER_PANIC_EXIT_STATUS: i32 = 70;

/// A batch for the worker to run.
pub struct Job {
    /// The joined inputs.
    pub inputs: Inputs,
    /// Each request's batch size, in order.
    pub sizes: SmallVec<[usize; 32]>,
}

/// A batch the worker ran.
pub struct JobDone {
    /// The outputs, or why the model failed.
    pub result: Result<BatchResult<'static>, String>,
    /// When the model started.
    pub infer_start: Instant,
    /// When it finished.
    pub infer_end: Instant,
}

/// The shard's handle on one worker thread.
pub struct Worker {
    jobs: rtrb::Producer<Job>,
    done: rtrb::Consumer<JobDone>,
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    /// Starts a worker for `model`, pinned to `cpu`, that rings `doorbell` after each batch.
    pub fn spawn(
        model: Arc<dyn Model>,
        cpu: usize,
        name: String,
        doorbell: Arc<Doorbell>,
    ) -> io::Result<Worker> {
        let (jobs_tx, jobs_rx) = rtrb::RingBuffer::new(RING_CAPACITY);
        let (done_tx, done_rx) = rtrb::RingBuffer::new(RING_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let batched = model.metadata().max_batch_size > 0;
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            pin_to(cpu);
            let body = std::panic::AssertUnwindSafe(|| {
                run(
                    model.as_ref(),
                    batched,
                    jobs_rx,
                    done_tx,
                    &doorbell,
                    &thread_stop,
                )
            });
            // Model panics are caught per batch; anything else is a bug in friday. A server
            // missing a worker would go on half-alive, so exit and let a supervisor restart it.
            if std::panic::catch_unwind(body).is_err() {
                tracing::error!("a model worker panicked; exiting");
                std::process::exit(WORKER_PANIC_EXIT_STATUS);
            }
        })?;
        Ok(Worker {
            jobs: jobs_tx,
            done: done_rx,
            thread: handle,
            stop,
        })
    }

    /// Hands the worker a batch and wakes it.
    pub fn submit(&mut self, job: Job) {
        if self.jobs.push(job).is_err() {
            unreachable!("one job in flight at most, and the ring holds {RING_CAPACITY}");
        }
        self.thread.thread().unpark();
    }

    /// A finished batch, if there is one.
    pub fn try_done(&mut self) -> Option<JobDone> {
        self.done.pop().ok()
    }

    /// Whether the worker thread still runs.
    pub fn is_alive(&self) -> bool {
        !self.thread.is_finished()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Release: the worker's Acquire load sees the flag after its next wake-up.
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
    }
}

fn run(
    model: &dyn Model,
    batched: bool,
    mut jobs: rtrb::Consumer<Job>,
    mut done: rtrb::Producer<JobDone>,
    doorbell: &Doorbell,
    stop: &AtomicBool,
) {
    loop {
        match jobs.pop() {
            Ok(job) => {
                let infer_start = Instant::now();
                let result = assemble::run(model, job.inputs, &job.sizes, batched);
                let infer_end = Instant::now();
                if done
                    .push(JobDone {
                        result,
                        infer_start,
                        infer_end,
                    })
                    .is_err()
                {
                    unreachable!("one job in flight at most");
                }
                doorbell.ring();
            }
            Err(_) => {
                // Acquire: pairs with the Release store in Worker::drop.
                if stop.load(Ordering::Acquire) {
                    return;
                }
                // The park token makes an unpark that raced ahead of this park return at once.
                std::thread::park();
            }
        }
    }
}

fn pin_to(cpu: usize) {
    crate::topology::pin_current_thread(cpu);
    // The shard's own ONNX Runtime session: the worker computes only while its shard waits.
    crate::model::onnxruntime::set_thread_session(cpu);
    // The worker shares its CPU with the shard's reactor. As SCHED_IDLE it runs only while the
    // reactor sleeps, and the reactor preempts it the moment a socket or the doorbell wakes it,
    // so I/O (accepts, reads, 429s, deadline failures) never waits out a scheduler slice behind
    // a batch.
    run_when_idle();
}

/// Moves the calling thread to `SCHED_IDLE`: it runs only on CPU time no normal thread wants.
pub(crate) fn run_when_idle() {
    // SAFETY: sched_setscheduler(0) with a valid param applies to this thread only.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}
