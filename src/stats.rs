//! Per-shard inference statistics, with Triton's statistics-extension names and meanings.
//!
//! Each shard counts into its own [`ShardStats`] with plain `Cell`s: no atomics, no locks, no
//! sharing. A `GET …/stats` takes a [`StatsSnapshot`] on its own shard, asks every other shard for
//! theirs over the mesh, merges them, and renders Triton's JSON ([`render_stats`]), so the counts
//! perf_analyzer reads before and after each window are exact across shards.
//!
//! Phases of one request, as Triton defines them and as friday measures them:
//! - `compute_input`: from the request's bytes being read to its tensors decoded and checked;
//! - `queue`: from decoded to its batch being dispatched (the batcher's wait);
//! - `compute_infer`: the model's time on the batch the request ran in;
//! - `compute_output`: encoding the response;
//! - `success`: the whole request, read to encoded.
//!
//! `inference_count` counts items (batch rows) and `execution_count` counts model executions
//! (batches), so with batching the second is smaller; `batch_stats` has one entry per batch size
//! that ran, counting executions.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::model::{ModelEntry, ModelRegistry};

#[derive(Default)]
struct DurationCell {
    count: Cell<u64>,
    ns: Cell<u64>,
}

impl DurationCell {
    fn add(&self, d: Duration) {
        self.count.set(self.count.get() + 1);
        self.ns.set(self.ns.get() + d.as_nanos() as u64);
    }

    fn get(&self) -> DurationStat {
        DurationStat {
            count: self.count.get(),
            ns: self.ns.get(),
        }
    }
}

#[derive(Default)]
struct BatchCells {
    compute_input: DurationCell,
    compute_infer: DurationCell,
    compute_output: DurationCell,
}

#[derive(Default)]
struct ModelCells {
    success: DurationCell,
    fail: DurationCell,
    queue: DurationCell,
    compute_input: DurationCell,
    compute_infer: DurationCell,
    compute_output: DurationCell,
    cache_hit: DurationCell,
    cache_miss: DurationCell,
    inference_count: Cell<u64>,
    execution_count: Cell<u64>,
    last_inference_ms: Cell<u64>,
    /// Indexed by batch size; entry 0 is unused.
    batches: Box<[BatchCells]>,
}

/// When each phase of one request ended.
#[derive(Debug, Clone, Copy)]
pub struct RequestTimes {
    /// The request's bytes were read.
    pub received: Instant,
    /// Its tensors were decoded and checked (and it was queued).
    pub decoded: Instant,
    /// Its batch left the queue.
    pub dispatched: Instant,
    /// The model started on its batch.
    pub infer_start: Instant,
    /// The model finished its batch.
    pub infer_end: Instant,
    /// Encoding its response started.
    pub encode_start: Instant,
    /// Its response was encoded.
    pub encoded: Instant,
}

/// One shard's statistics, one entry per model slot the shard holds (indexed by slot id).
/// `!Sync`: only its shard touches it.
pub struct ShardStats {
    models: Vec<Option<ModelCells>>,
    /// Wall-clock time of `epoch`, so `last_inference` needs no extra clock read per request.
    epoch: Instant,
    epoch_unix_ms: u64,
}

impl ShardStats {
    /// Zeroed statistics for every model in `registry`.
    pub fn new(registry: &ModelRegistry) -> Self {
        let epoch_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut stats = ShardStats {
            models: Vec::new(),
            epoch: Instant::now(),
            epoch_unix_ms,
        };
        for e in registry.entries() {
            stats.add(e);
        }
        stats
    }

    /// Zeroed statistics for slot `e.index`, unless it has them.
    pub fn add(&mut self, e: &ModelEntry) {
        if self.models.len() <= e.index {
            self.models.resize_with(e.index + 1, || None);
        }
        self.models[e.index].get_or_insert_with(|| ModelCells {
            batches: (0..=e.model.metadata().max_batch_size.max(1))
                .map(|_| BatchCells::default())
                .collect(),
            ..ModelCells::default()
        });
    }

    /// Forgets slot `index` (its model version is gone and answered its last request).
    pub fn remove(&mut self, index: usize) {
        if let Some(m) = self.models.get_mut(index) {
            *m = None;
        }
    }

    fn cells(&self, index: usize) -> Option<&ModelCells> {
        self.models.get(index).and_then(Option::as_ref)
    }

    /// Records a successful request of `items` items to model `index`.
    pub fn record_success(&self, index: usize, items: usize, t: &RequestTimes) {
        let Some(m) = self.cells(index) else {
            return;
        };
        m.success.add(t.encoded - t.received);
        m.queue
            .add(t.dispatched.saturating_duration_since(t.decoded));
        m.compute_input.add(t.decoded - t.received);
        m.compute_infer.add(t.infer_end - t.infer_start);
        m.compute_output.add(t.encoded - t.encode_start);
        m.inference_count
            .set(m.inference_count.get() + items as u64);
        m.last_inference_ms
            .set(self.epoch_unix_ms + (t.infer_end - self.epoch).as_millis() as u64);
    }

    /// Records a request to model `index` answered from the response cache: read at
    /// `received`, looked up from `lookup` to answered at `done`. As in Triton, it counts in
    /// `success` and `queue` (with no wait) and in `cache_hit` (lookup and copy), not in the
    /// compute phases, `inference_count` or `execution_count`.
    pub fn record_cache_hit(
        &self,
        index: usize,
        received: Instant,
        lookup: Instant,
        done: Instant,
    ) {
        let Some(m) = self.cells(index) else {
            return;
        };
        m.success.add(done - received);
        m.queue.add(Duration::ZERO);
        m.cache_hit.add(done - lookup);
        m.last_inference_ms
            .set(self.epoch_unix_ms + (done - self.epoch).as_millis() as u64);
    }

    /// Records a response cache miss of a request to model `index` whose lookup took `lookup`.
    pub fn record_cache_miss(&self, index: usize, lookup: Duration) {
        if let Some(m) = self.cells(index) {
            m.cache_miss.add(lookup);
        }
    }

    /// Adds the time storing a missed request's answer took to `cache_miss` (Triton's
    /// `cache_miss` is lookup and insert), without counting another miss.
    pub fn record_cache_store(&self, index: usize, store: Duration) {
        if let Some(m) = self.cells(index) {
            m.cache_miss
                .ns
                .set(m.cache_miss.ns.get() + store.as_nanos() as u64);
        }
    }

    /// Records one execution of model `index` on a batch of `items`: joining its inputs took
    /// `input`, the model `infer`.
    pub fn record_execution(&self, index: usize, items: usize, input: Duration, infer: Duration) {
        let Some(m) = self.cells(index) else {
            return;
        };
        m.execution_count.set(m.execution_count.get() + 1);
        if let Some(b) = m.batches.get(items) {
            b.compute_input.add(input);
            b.compute_infer.add(infer);
            // Outputs are not copied per batch: each request encodes its rows from the batch.
            b.compute_output.add(Duration::ZERO);
        }
    }

    /// Records a failed request to model `index`.
    pub fn record_failure(&self, index: usize, received: Instant, failed: Instant) {
        if let Some(m) = self.cells(index) {
            m.fail.add(failed - received);
        }
    }

    /// A copy of the counters, to merge with other shards'.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            models: self
                .models
                .iter()
                .map(|m| {
                    let Some(m) = m else {
                        return ModelSnapshot::default();
                    };
                    ModelSnapshot {
                        last_inference: m.last_inference_ms.get(),
                        inference_count: m.inference_count.get(),
                        execution_count: m.execution_count.get(),
                        success: m.success.get(),
                        fail: m.fail.get(),
                        queue: m.queue.get(),
                        compute_input: m.compute_input.get(),
                        compute_infer: m.compute_infer.get(),
                        compute_output: m.compute_output.get(),
                        cache_hit: m.cache_hit.get(),
                        cache_miss: m.cache_miss.get(),
                        batches: m
                            .batches
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| b.compute_infer.count.get() > 0)
                            .map(|(size, b)| BatchSnapshot {
                                batch_size: size,
                                compute_input: b.compute_input.get(),
                                compute_infer: b.compute_infer.get(),
                                compute_output: b.compute_output.get(),
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

/// A count and a total duration in nanoseconds (Triton's `duration_stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DurationStat {
    /// How many.
    pub count: u64,
    /// Their total duration in nanoseconds.
    pub ns: u64,
}

impl DurationStat {
    fn merge(&mut self, other: DurationStat) {
        self.count += other.count;
        self.ns += other.ns;
    }
}

/// Per-batch-size timings (Triton's `batch_stats` entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchSnapshot {
    /// The batch size.
    pub batch_size: usize,
    /// Decoding time of batches of this size.
    pub compute_input: DurationStat,
    /// Model time of batches of this size.
    pub compute_infer: DurationStat,
    /// Encoding time of batches of this size.
    pub compute_output: DurationStat,
}

/// One model's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSnapshot {
    /// Milliseconds since the Unix epoch of the last inference (0 if none).
    pub last_inference: u64,
    /// Inferences, counting each batch item.
    pub inference_count: u64,
    /// Model executions.
    pub execution_count: u64,
    /// Successful requests, whole-request time.
    pub success: DurationStat,
    /// Failed requests.
    pub fail: DurationStat,
    /// Time between decoded and the model starting.
    pub queue: DurationStat,
    /// Decoding and checking.
    pub compute_input: DurationStat,
    /// The model.
    pub compute_infer: DurationStat,
    /// Encoding.
    pub compute_output: DurationStat,
    /// Answers from the response cache: lookup and copy.
    pub cache_hit: DurationStat,
    /// Response cache misses: lookup and storing the answer.
    pub cache_miss: DurationStat,
    /// Per batch size, only sizes that ran.
    pub batches: Vec<BatchSnapshot>,
}

/// Every model's counters, indexed like the registry. `Send`: it crosses cores in the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// One per registry entry.
    pub models: Vec<ModelSnapshot>,
}

impl StatsSnapshot {
    /// Adds `other`'s counts into `self`.
    pub fn merge(&mut self, other: &StatsSnapshot) {
        if self.models.len() < other.models.len() {
            self.models
                .resize(other.models.len(), ModelSnapshot::default());
        }
        for (m, o) in self.models.iter_mut().zip(&other.models) {
            m.last_inference = m.last_inference.max(o.last_inference);
            m.inference_count += o.inference_count;
            m.execution_count += o.execution_count;
            m.success.merge(o.success);
            m.fail.merge(o.fail);
            m.queue.merge(o.queue);
            m.compute_input.merge(o.compute_input);
            m.compute_infer.merge(o.compute_infer);
            m.compute_output.merge(o.compute_output);
            m.cache_hit.merge(o.cache_hit);
            m.cache_miss.merge(o.cache_miss);
            for ob in &o.batches {
                match m.batches.iter_mut().find(|b| b.batch_size == ob.batch_size) {
                    Some(b) => {
                        b.compute_input.merge(ob.compute_input);
                        b.compute_infer.merge(ob.compute_infer);
                        b.compute_output.merge(ob.compute_output);
                    }
                    None => m.batches.push(ob.clone()),
                }
            }
            m.batches.sort_by_key(|b| b.batch_size);
        }
    }
}

/// Renders Triton's statistics JSON for every model (`only: None`) or one registry entry.
pub fn render_stats(
    registry: &ModelRegistry,
    snapshot: &StatsSnapshot,
    only: Option<usize>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct InferenceStats {
        success: DurationStat,
        fail: DurationStat,
        queue: DurationStat,
        compute_input: DurationStat,
        compute_infer: DurationStat,
        compute_output: DurationStat,
        cache_hit: DurationStat,
        cache_miss: DurationStat,
    }
    #[derive(Serialize)]
    struct Empty {}
    #[derive(Serialize)]
    struct ModelStats<'a> {
        name: &'a str,
        version: &'a str,
        last_inference: u64,
        inference_count: u64,
        execution_count: u64,
        inference_stats: InferenceStats,
        response_stats: Empty,
        batch_stats: &'a [BatchSnapshot],
        memory_usage: [(); 0],
    }
    #[derive(Serialize)]
    struct Doc<'a> {
        model_stats: Vec<ModelStats<'a>>,
    }
    let empty = ModelSnapshot::default();
    let model_stats = registry
        .entries()
        .iter()
        .filter(|e| only.is_none_or(|i| i == e.index))
        .map(|e| {
            let m = snapshot.models.get(e.index).unwrap_or(&empty);
            ModelStats {
                name: e.name(),
                version: &e.version,
                last_inference: m.last_inference,
                inference_count: m.inference_count,
                execution_count: m.execution_count,
                inference_stats: InferenceStats {
                    success: m.success,
                    fail: m.fail,
                    queue: m.queue,
                    compute_input: m.compute_input,
                    compute_infer: m.compute_infer,
                    compute_output: m.compute_output,
                    cache_hit: m.cache_hit,
                    cache_miss: m.cache_miss,
                },
                response_stats: Empty {},
                batch_stats: &m.batches,
                memory_usage: [],
            }
        })
        .collect();
    serde_json::to_vec(&Doc { model_stats }).expect("plain structs serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(ms: [u64; 5]) -> RequestTimes {
        let t0 = Instant::now();
        let at = |i: usize| t0 + Duration::from_millis(ms[i]);
        RequestTimes {
            received: at(0),
            decoded: at(1),
            dispatched: at(2),
            infer_start: at(2),
            infer_end: at(3),
            encode_start: at(3),
            encoded: at(4),
        }
    }

    #[test]
    fn records_phases_and_merges_across_shards() {
        let registry = ModelRegistry::builtin();
        let a = ShardStats::new(&registry);
        let b = ShardStats::new(&registry);
        a.record_success(0, 2, &times([0, 1, 1, 4, 5]));
        a.record_execution(0, 2, Duration::ZERO, Duration::from_millis(3));
        b.record_success(0, 1, &times([0, 2, 3, 4, 6]));
        b.record_execution(0, 1, Duration::ZERO, Duration::from_millis(1));
        let now = Instant::now();
        b.record_failure(1, now, now + Duration::from_millis(1));

        let mut merged = a.snapshot();
        merged.merge(&b.snapshot());
        let m = &merged.models[0];
        assert_eq!(m.inference_count, 3);
        assert_eq!(m.execution_count, 2);
        assert_eq!(
            m.success,
            DurationStat {
                count: 2,
                ns: 11_000_000
            }
        );
        assert_eq!(
            m.compute_infer,
            DurationStat {
                count: 2,
                ns: 4_000_000
            }
        );
        assert_eq!(
            m.queue,
            DurationStat {
                count: 2,
                ns: 1_000_000
            }
        );
        assert_eq!(
            m.batches.iter().map(|b| b.batch_size).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(merged.models[1].fail.count, 1);
        assert!(m.last_inference > 0);

        let doc: serde_json::Value =
            serde_json::from_slice(&render_stats(&registry, &merged, None)).unwrap();
        let s = &doc["model_stats"][0];
        assert_eq!(s["name"], "identity");
        assert_eq!(s["version"], "1");
        assert_eq!(s["inference_count"], 3);
        assert_eq!(s["inference_stats"]["success"]["count"], 2);
        assert_eq!(s["inference_stats"]["cache_hit"]["count"], 0);
        assert_eq!(s["batch_stats"][1]["batch_size"], 2);
        assert_eq!(doc["model_stats"][1]["inference_stats"]["fail"]["count"], 1);

        let one: serde_json::Value =
            serde_json::from_slice(&render_stats(&registry, &merged, Some(1))).unwrap();
        assert_eq!(one["model_stats"].as_array().unwrap().len(), 1);
        assert_eq!(one["model_stats"][0]["name"], "simple");
    }
}
