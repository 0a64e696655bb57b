//! What recording metrics costs on the hot path, against a baseline twin (one `Cell` add).
//!
//! Per request friday records: the request and queue durations into HDR histograms, an outcome
//! counter, and Triton's statistics (seven `Cell` adds); per batch, the compute duration and the
//! batch size. Each case runs batches of 1000 operations with varying values; the distribution
//! is over batches, in nanoseconds per operation. Run with `cargo bench --bench metrics_record`.

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use friday::metrics::{Outcome, ShardMetrics};
use friday::model::ModelRegistry;
use friday::stats::{RequestTimes, ShardStats};
use hdrhistogram::Histogram;

const OPS_PER_SAMPLE: u64 = 1000;
const SAMPLES: usize = 5000;

fn measure(name: &str, mut op: impl FnMut(u64)) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("valid bounds");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for s in 0..SAMPLES + 500 {
        let t = Instant::now();
        for _ in 0..OPS_PER_SAMPLE {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Durations between 1 µs and ~17 ms, like real requests.
            op(1_000 + (x & 0xff_ffff));
        }
        if s >= 500 {
            h.saturating_record((t.elapsed().as_nanos() as u64 * 1000 / OPS_PER_SAMPLE).max(1));
        }
    }
    let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  {name:<58} {:>7.1} {:>7.1} {:>7.1}",
        q(0.5),
        q(0.99),
        q(0.999)
    );
}

fn main() {
    println!(
        "metrics recording cost, ns per operation ({} samples of {OPS_PER_SAMPLE} ops)",
        SAMPLES
    );
    println!(
        "  {:<58} {:>7} {:>7} {:>7}",
        "operation", "p50", "p99", "p99.9"
    );
    let registry = ModelRegistry::builtin();
    let cell = Cell::new(0u64);
    measure("baseline twin: one Cell<u64> add", |v| {
        cell.set(cell.get().wrapping_add(black_box(v)))
    });
    let metrics = ShardMetrics::new(&registry);
    let m = metrics.model(0);
    measure("HDR histogram record (request duration)", |v| {
        m.request_nanos(black_box(v))
    });
    measure(
        "per request: request + queue histograms + outcome counter",
        |v| {
            m.request_nanos(black_box(v));
            m.queue_nanos(black_box(v >> 3));
            m.outcome(Outcome::Success);
        },
    );
    measure("per batch: compute histogram + batch-size histogram", |v| {
        m.batch(black_box(v), black_box((v & 31) as usize + 1))
    });
    let stats = ShardStats::new(&registry);
    let t0 = Instant::now();
    measure("per request: Triton statistics (record_success)", |v| {
        let at = |ns: u64| t0 + Duration::from_nanos(ns);
        stats.record_success(
            0,
            1,
            &RequestTimes {
                received: at(0),
                decoded: at(v >> 4),
                dispatched: at(v >> 3),
                infer_start: at(v >> 3),
                infer_end: at(v >> 2),
                encode_start: at(v >> 2),
                encoded: at(v),
            },
        )
    });
    black_box(cell.get());
}
