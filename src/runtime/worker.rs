//! The model worker: a thread pinned to its shard's CPU that runs batches off the reactor.
//! (Public so that `benches/ring_handoff.rs` measures this code, not a copy of it.)
//!
//! The shard hands it a [`Job`] through an rtrb ring and wakes it with `unpark`; it runs the
//! batch, pushes a [`JobDone`] through a second rtrb ring and rings the shard's doorbell (one
//! byte on a socketpair the shard's reactor watches). At most one job is in flight per model, so
//! both rings are tiny and can never be full when pushed to. The rings are wait-free; the only
//! cross-thread synchronisation beyond them is the park token and the doorbell byte.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_lite::AsyncReadExt;
use glommio::net::UnixStream;
use smallvec::SmallVec;

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
    pub result: Result<BatchResult, String>,
    /// When the model started.
    pub infer_start: Instant,
    /// When it finished.
    pub infer_end: Instant,
}

/// The shard's handle on one worker thread.
pub struct Worker {
    jobs: rtrb::Producer<Job>,
    done: rtrb::Consumer<JobDone>,
    thread: std::thread::Thread,
    doorbell: UnixStream,
    stop: Arc<AtomicBool>,
}

impl Worker {
    /// Starts a worker for `model`, pinned to `cpu`. Must be called on the shard's executor (the
    /// doorbell is registered with its reactor).
    pub fn spawn(model: Arc<dyn Model>, cpu: usize, name: String) -> io::Result<Worker> {
        let (shard_end, worker_end) = socketpair()?;
        // SAFETY: `shard_end` is a fresh, owned, connected Unix stream socket.
        let doorbell = unsafe { UnixStream::from_raw_fd(shard_end.into_raw_fd()) };
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
                    worker_end,
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
            thread: handle.thread().clone(),
            doorbell,
            stop,
        })
    }

    /// Hands the worker a batch and wakes it.
    pub fn submit(&mut self, job: Job) {
        if self.jobs.push(job).is_err() {
            unreachable!("one job in flight at most, and the ring holds {RING_CAPACITY}");
        }
        self.thread.unpark();
    }

    /// A finished batch, if there is one.
    pub fn try_done(&mut self) -> Option<JobDone> {
        self.done.pop().ok()
    }

    /// Waits until the worker rings the doorbell (it may already have). Returns false if the
    /// worker thread is gone (its end of the doorbell closed).
    pub async fn doorbell(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.doorbell.read(&mut buf).await, Ok(n) if n > 0)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Release: the worker's Acquire load sees the flag after its next wake-up.
        self.stop.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

fn run(
    model: &dyn Model,
    batched: bool,
    mut jobs: rtrb::Consumer<Job>,
    mut done: rtrb::Producer<JobDone>,
    doorbell: OwnedFd,
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
                // SAFETY: a one-byte send on a socket we own. A full socket buffer (EAGAIN)
                // means the shard has unread wake-ups already, which is as good.
                unsafe {
                    libc::send(
                        doorbell.as_raw_fd(),
                        [1u8].as_ptr().cast(),
                        1,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
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
    // The worker shares its CPU with the shard's reactor. As SCHED_IDLE it runs only while the
    // reactor sleeps, and the reactor preempts it the moment a socket or the doorbell wakes it,
    // so I/O (accepts, reads, 429s, deadline failures) never waits out a scheduler slice behind
    // a batch. SAFETY: sched_setscheduler(0) with a valid param applies to this thread only.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into `fds` on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
