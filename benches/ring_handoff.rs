//! Ring handoff: what it costs to hand a batch from a shard to where it runs and get the result
//! back, hop by hop, for friday's two placements and a baseline twin.
//!
//! - inline: the request goes into the batching policy's queue on the shard's own thread, the
//!   policy hands it out as a batch in the same loop turn, and the model runs right there (what
//!   `runtime::batcher` does for an inline model).
//! - worker: `friday::runtime::worker::Worker` itself: rtrb ring + `unpark` to a pinned thread,
//!   rtrb ring + eventfd doorbell back to the shard, which sleeps on it as its engine does.
//! - baseline twin: two plain threads and two crossbeam channels (blocking send/recv).
//!
//! Hops, per round trip: `handoff` (submitted → the runner starts), `run` (the model: identity
//! on 16 floats), `return` (the runner finishes → the shard sees the result). One round trip at
//! a time, so each hop includes the wake-up of a sleeping side. Run with `cargo bench --bench
//! ring_handoff`; it takes about 20 s.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;
use std::sync::Arc;

use friday::batch::assemble::{self, Inputs};
use friday::batch::{BatchQueue, Batchable, PolicyConfig, Step};
use friday::model::{Identity, Model};
use friday::runtime::engine::Doorbell;
use friday::runtime::worker::{Job, Worker};
use friday::tensor::{DataType, Tensor};
use hdrhistogram::Histogram;

mod support;
use smallvec::smallvec;

const ROUND_TRIPS: usize = 40_000;
const WARMUP: usize = 2_000;

struct Hops {
    handoff: Histogram<u64>,
    run: Histogram<u64>,
    back: Histogram<u64>,
    round_trip: Histogram<u64>,
}

impl Hops {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds");
        Hops {
            handoff: h(),
            run: h(),
            back: h(),
            round_trip: h(),
        }
    }

    fn record(&mut self, i: usize, t0: Instant, t1: Instant, t2: Instant, t3: Instant) {
        if i < WARMUP {
            return;
        }
        let ns = |a: Instant, b: Instant| b.saturating_duration_since(a).as_nanos() as u64;
        self.handoff.saturating_record(ns(t0, t1));
        self.run.saturating_record(ns(t1, t2));
        self.back.saturating_record(ns(t2, t3));
        self.round_trip.saturating_record(ns(t0, t3));
    }

    fn report(&self, name: &str) {
        println!("\n{name}");
        println!(
            "  {:<11} {:>9} {:>9} {:>9} {:>9}",
            "hop (µs)", "p50", "p99", "p99.9", "max"
        );
        for (hop, h) in [
            ("handoff", &self.handoff),
            ("run", &self.run),
            ("return", &self.back),
            ("round trip", &self.round_trip),
        ] {
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "  {:<11} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                hop,
                us(0.5),
                us(0.99),
                us(0.999),
                h.max() as f64 / 1000.0
            );
        }
    }
}

fn inputs() -> Inputs {
    let data: Vec<u8> = (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect();
    smallvec![Tensor {
        datatype: DataType::Fp32,
        shape: smallvec![1, 16],
        data: Cow::Owned(data),
    }]
}

fn policy() -> BatchQueue<Item> {
    BatchQueue::new(PolicyConfig {
        max_batch_size: 32,
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: Vec::new(),
        max_queue_size: 64,
        priority_levels: 1,
    })
}

/// A queued request, as the shard's batcher holds one.
struct Item(Inputs);

impl Batchable for Item {
    fn items(&self) -> usize {
        1
    }
    fn fits_with(&self, _: &Self) -> bool {
        true
    }
}

/// What the shard's batcher does for an inline model: the policy queue on the shard's own
/// thread (no ring, no doorbell), polled in the same loop turn, the batch run right there.
fn inline(cpu: usize) -> Hops {
    friday::topology::pin_current_thread(cpu);
    let model = Identity::new();
    let mut queue = policy();
    let mut step = Step::default();
    let mut hops = Hops::new();
    for i in 0..ROUND_TRIPS {
        let t0 = Instant::now();
        if queue.push(Item(inputs()), 0, None, t0).is_err() {
            unreachable!("one in flight");
        }
        queue.poll(Instant::now(), true, false, |_| false, &mut step);
        let Item(batch) = step.batch.pop().expect("a free slot takes the request");
        let t1 = Instant::now();
        let r = assemble::run(&model, batch, &[1], true);
        let t2 = Instant::now();
        drop(r);
        hops.record(i, t0, t1, t2, Instant::now());
    }
    hops
}

/// Sleeps until `bell` rings, as the shard's engine does between turns.
fn wait_for(bell: &Doorbell) {
    let mut pfd = libc::pollfd {
        fd: bell.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; blocks until the eventfd is readable.
    unsafe { libc::poll(&mut pfd, 1, -1) };
    let mut n = 0u64;
    // SAFETY: reads the eventfd's 8-byte counter into a u64 we own (non-blocking).
    unsafe { libc::read(bell.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
}

fn worker(shard_cpu: usize, worker_cpu: usize) -> Hops {
    friday::topology::pin_current_thread(shard_cpu);
    let model: Arc<dyn Model> = Arc::new(Identity::new());
    let bell = Arc::new(Doorbell::new().expect("an eventfd"));
    let mut w = Worker::spawn(model, worker_cpu, "bench-worker".into(), bell.clone())
        .expect("spawn a worker");
    let mut hops = Hops::new();
    for i in 0..ROUND_TRIPS {
        let t0 = Instant::now();
        w.submit(Job {
            inputs: inputs(),
            sizes: smallvec![1],
        });
        let done = loop {
            if let Some(d) = w.try_done() {
                break d;
            }
            wait_for(&bell);
        };
        hops.record(i, t0, done.infer_start, done.infer_end, Instant::now());
    }
    drop(w);
    // The worker pinned itself at SCHED_IDLE; this thread (the "shard") is still normal.
    hops
}

fn crossbeam(shard_cpu: usize, worker_cpu: usize) -> Hops {
    let (to_worker, jobs) = crossbeam::channel::bounded::<Inputs>(1);
    let (results, from_worker) = crossbeam::channel::bounded::<(Instant, Instant)>(1);
    let runner = std::thread::spawn(move || {
        friday::topology::pin_current_thread(worker_cpu);
        let model = Identity::new();
        while let Ok(inputs) = jobs.recv() {
            let t1 = Instant::now();
            let r = assemble::run(&model, inputs, &[1], true);
            let t2 = Instant::now();
            drop(r);
            if results.send((t1, t2)).is_err() {
                return;
            }
        }
    });
    friday::topology::pin_current_thread(shard_cpu);
    let mut hops = Hops::new();
    for i in 0..ROUND_TRIPS {
        let t0 = Instant::now();
        to_worker.send(inputs()).expect("the runner lives");
        let (t1, t2) = from_worker.recv().expect("the runner answers");
        hops.record(i, t0, t1, t2, Instant::now());
    }
    drop(to_worker);
    runner.join().expect("the runner ends");
    hops
}

fn main() {
    let cpus = friday::topology::affinity_cpus().expect("read the affinity mask");
    let shard = cpus[0];
    let other = cpus.get(1).copied().unwrap_or(shard);
    println!(
        "ring handoff, {ROUND_TRIPS} round trips each ({WARMUP} warm-up): {}",
        support::machine()
    );
    println!("shard on CPU {shard}; \"other CPU\" is CPU {other}");
    let started = Instant::now();
    inline(shard).report("inline: policy queue on the shard's thread, run in the same turn");
    worker(shard, other).report("worker on another CPU: rtrb + unpark, eventfd doorbell back");
    worker(shard, shard).report("worker on the shard's CPU (friday's placement; SCHED_IDLE)");
    crossbeam(shard, other)
        .report("baseline twin: crossbeam channels, blocking threads on two CPUs");
    let took: Duration = started.elapsed();
    println!("\n(took {:.1} s)", took.as_secs_f64());
}
