//! What recording metrics costs on the hot path, against a baseline twin (one `Cell` add).
//!
//! Per request friday records: the request and queue durations into HDR histograms, an outcome
//! counter, and Triton's statistics (seven `Cell` adds); per batch, the compute duration and the
//! batch size. Each case runs batches of 1000 operations with varying values; the distribution
//! is over batches, in nanoseconds per operation. Run with `cargo bench --bench metrics_record`
//! (about 5 s).

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use friday::metrics::{Outcome, ShardMetrics};
use friday::model::ModelRegistry;
use friday::stats::{RequestTimes, ShardStats};

#[path = "support/mod.rs"]
mod support;

const SAMPLES: usize = 5000;

/// Durations between 1 µs and ~17 ms, like real requests, from a cheap generator.
fn duration_ns(i: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    1_000 + (x & 0xff_ffff)
}

fn main() {
    support::header("metrics recording cost", SAMPLES);
    let registry = ModelRegistry::builtin();
    let cell = Cell::new(0u64);
    support::measure("baseline twin: one Cell<u64> add", SAMPLES, |i| {
        cell.set(cell.get().wrapping_add(black_box(duration_ns(i))))
    });
    let metrics = ShardMetrics::new(&registry);
    let m = metrics.model(0).unwrap();
    support::measure("HDR histogram record (request duration)", SAMPLES, |i| {
        m.request_nanos(black_box(duration_ns(i)))
    });
    support::measure(
        "per request: request + queue histograms + outcome counter",
        SAMPLES,
        |i| {
            let v = duration_ns(i);
            m.request_nanos(black_box(v));
            m.queue_nanos(black_box(v >> 3));
            m.outcome(Outcome::Success);
        },
    );
    support::measure(
        "per batch: compute histogram + batch-size histogram",
        SAMPLES,
        |i| {
            let v = duration_ns(i);
            m.batch(black_box(v), black_box((v & 31) as usize + 1))
        },
    );
    let stats = ShardStats::new(&registry);
    let t0 = Instant::now();
    support::measure(
        "per request: Triton statistics (record_success)",
        SAMPLES,
        |i| {
            let v = duration_ns(i);
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
        },
    );
    black_box(cell.get());
}
