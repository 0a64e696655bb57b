//! The batching policy's cost per request: push into a `BatchQueue` and poll it until a batch
//! comes out, for batch sizes 1, 8 and 32 (delay 0, everything queued is taken), against a
//! baseline twin that does the same with a bare `VecDeque`. Run with
//! `cargo bench --bench batch_policy` (about 5 s).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use friday::batch::{BatchQueue, Batchable, PolicyConfig, Step};

#[path = "support/mod.rs"]
mod support;

const SAMPLES: usize = 3000;

/// A queued request; the payload is what a real submission would carry around.
struct Req(#[allow(dead_code)] u64);

impl Batchable for Req {
    fn items(&self) -> usize {
        1
    }
    fn fits_with(&self, _first: &Self) -> bool {
        true
    }
}

fn main() {
    support::header("batch policy, per request", SAMPLES);
    let now = Instant::now();
    for batch in [1usize, 8, 32] {
        let mut q = BatchQueue::new(PolicyConfig {
            max_batch_size: batch,
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: vec![],
            max_queue_size: 1024,
            priority_levels: 1,
        });
        let mut step = Step::default();
        support::measure(
            &format!("BatchQueue push + poll, batches of {batch}"),
            SAMPLES,
            |i| {
                let _ = q.push(Req(i), 0, Some(now + Duration::from_secs(60)), now);
                if q.len() >= batch {
                    q.poll(now, true, false, |_| false, &mut step);
                    black_box(step.batch.len());
                }
            },
        );
        let mut d: VecDeque<Req> = VecDeque::with_capacity(1024);
        let mut out: Vec<Req> = Vec::with_capacity(batch);
        support::measure(
            &format!("baseline twin: VecDeque push + drain, batches of {batch}"),
            SAMPLES,
            |i| {
                d.push_back(Req(i));
                if d.len() >= batch {
                    out.extend(d.drain(..batch));
                    black_box(out.len());
                    out.clear();
                }
            },
        );
    }
}
