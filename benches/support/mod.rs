//! Shared by the benches: time an operation in batches and print its per-operation distribution,
//! and name the machine. Each bench uses part of it.
#![allow(dead_code)]

use std::time::Instant;

use hdrhistogram::Histogram;

/// Operations per timed sample (one clock read per sample, not per operation).
pub const OPS_PER_SAMPLE: u64 = 1000;

/// Prints the table header.
pub fn header(title: &str, samples: usize) {
    println!("{title}: ns per operation ({samples} samples of {OPS_PER_SAMPLE} ops)");
    println!(
        "  {:<62} {:>9} {:>9} {:>9}",
        "operation", "p50", "p99", "p99.9"
    );
}

/// Times `op` (given a varying counter) over `samples` batches, after a warm-up, and prints p50,
/// p99 and p99.9 of the nanoseconds per operation.
pub fn measure(name: &str, samples: usize, mut op: impl FnMut(u64)) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds");
    let mut i = 0u64;
    for s in 0..samples + samples / 10 {
        let t = Instant::now();
        for _ in 0..OPS_PER_SAMPLE {
            op(i);
            i = i.wrapping_add(1);
        }
        if s >= samples / 10 {
            h.saturating_record((t.elapsed().as_nanos() as u64 * 1000 / OPS_PER_SAMPLE).max(1));
        }
    }
    let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  {name:<62} {:>9.1} {:>9.1} {:>9.1}",
        q(0.5),
        q(0.99),
        q(0.999)
    );
}

/// The machine a bench ran on: CPU model, CPUs in the affinity mask, kernel.
pub fn machine() -> String {
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
