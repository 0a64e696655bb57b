//! Ring handoff: what it costs to hand a batch from a shard to where it runs and get the result
//! back, hop by hop, for friday's two placements and a baseline twin.
//!
//! - inline: the shard pushes into an rtrb ring and rings a local doorbell; a task in the
//!   `batch` queue pops, runs the model and completes back (what `runtime::batcher` does).
//! - worker: `friday::runtime::worker::Worker` itself: rtrb ring + `unpark` to a pinned thread,
//!   rtrb ring + socketpair doorbell back to the shard's reactor.
//! - baseline twin: two plain threads and two crossbeam channels (blocking send/recv).
//!
//! Hops, per round trip: `handoff` (submitted → the runner starts), `run` (the model: identity
//! on 16 floats), `return` (the runner finishes → the shard sees the result). One round trip at
//! a time, so each hop includes the wake-up of a sleeping side. Run with `cargo bench --bench
//! ring_handoff`; it takes about 20 s.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use friday::batch::assemble::{self, Inputs};
use friday::model::{Identity, Model};
use friday::runtime::worker::{Job, Worker};
use friday::tensor::{DataType, Tensor};
use glommio::channels::local_channel;
use glommio::{LocalExecutorBuilder, Placement, Shares};
use hdrhistogram::Histogram;
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

fn inline(cpu: usize) -> Hops {
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .io_memory(64 << 10)
        .spawn(|| async move {
            let model = Identity::new();
            let batch_queue = glommio::executor().create_task_queue(
                Shares::Static(1000),
                glommio::Latency::NotImportant,
                "batch",
            );
            let (mut tx, mut rx) = rtrb::RingBuffer::<(Instant, Inputs)>::new(64);
            let (bell, bell_rx) = local_channel::new_bounded::<()>(1);
            let (done_tx, done_rx) = local_channel::new_bounded::<(Instant, Instant)>(1);
            glommio::spawn_local_into(
                async move {
                    while bell_rx.recv().await.is_some() {
                        while let Ok((_, inputs)) = rx.pop() {
                            let t1 = Instant::now();
                            let r = assemble::run(&model, inputs, &[1], true);
                            let t2 = Instant::now();
                            drop(r);
                            if done_tx.send((t1, t2)).await.is_err() {
                                return;
                            }
                        }
                    }
                },
                batch_queue,
            )
            .expect("spawn the batch task")
            .detach();
            let mut hops = Hops::new();
            for i in 0..ROUND_TRIPS {
                let t0 = Instant::now();
                if tx.push((t0, inputs())).is_err() {
                    unreachable!("one in flight");
                }
                let _ = bell.try_send(());
                let (t1, t2) = done_rx.recv().await.expect("the batch task answers");
                hops.record(i, t0, t1, t2, Instant::now());
            }
            hops
        })
        .expect("start an executor")
        .join()
        .expect("the executor ran")
}

fn worker(shard_cpu: usize, worker_cpu: usize) -> Hops {
    LocalExecutorBuilder::new(Placement::Fixed(shard_cpu))
        .io_memory(64 << 10)
        .spawn(move || async move {
            let model: std::sync::Arc<dyn Model> = std::sync::Arc::new(Identity::new());
            let mut w =
                Worker::spawn(model, worker_cpu, "bench-worker".into()).expect("spawn a worker");
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
                    w.doorbell().await;
                };
                hops.record(i, t0, done.infer_start, done.infer_end, Instant::now());
            }
            hops
        })
        .expect("start an executor")
        .join()
        .expect("the executor ran")
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

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {} CPUs, Linux {}",
        friday::topology::affinity_cpus().map_or(0, |c| c.len()),
        kernel.trim()
    )
}

fn main() {
    let cpus = friday::topology::affinity_cpus().expect("read the affinity mask");
    let shard = cpus[0];
    let other = cpus.get(1).copied().unwrap_or(shard);
    println!(
        "ring handoff, {ROUND_TRIPS} round trips each ({WARMUP} warm-up): {}",
        machine()
    );
    println!("shard on CPU {shard}; \"other CPU\" is CPU {other}");
    let started = Instant::now();
    inline(shard).report("inline: rtrb + local doorbell, batch task queue (same thread)");
    worker(shard, other).report("worker on another CPU: rtrb + unpark, socketpair doorbell back");
    worker(shard, shard).report("worker on the shard's CPU (friday's placement; SCHED_IDLE)");
    crossbeam(shard, other)
        .report("baseline twin: crossbeam channels, blocking threads on two CPUs");
    let took: Duration = started.elapsed();
    println!("\n(took {:.1} s)", took.as_secs_f64());
}
