//! Prometheus metrics: per-shard HDR histograms and counters, merged on scrape.
//!
//! Each shard records into its own [`ShardMetrics`] (`RefCell`/`Cell`, no atomics, no sharing);
//! recording a value is an HDR-histogram increment and an add. `GET /metrics` asks every shard
//! for a [`ShardMetricsSnapshot`] over the mesh and [`render`]s them: histograms and request
//! counters summed per model, gauges (queue depth, open connections) per shard. Histogram buckets
//! are read from the HDR histograms (2 significant digits, so a bucket edge is exact to 1 %);
//! counts and sums are exact.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::cache::CacheCounts;
use crate::model::ModelRegistry;

/// Significant digits kept by the histograms (1 % resolution).
const SIGFIG: u8 = 2;
/// Significant digits kept by the batch-size histogram: exact up to 2048 items.
const BATCH_SIGFIG: u8 = 3;
/// Longest duration a histogram holds exactly (10 minutes); longer values count at the top.
const MAX_NANOS: u64 = 600_000_000_000;
/// Largest batch size a histogram holds exactly.
const MAX_BATCH: u64 = 1 << 16;

/// Bucket upper bounds of the duration histograms, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket upper bounds of the batch-size histogram.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How a request ended, for `friday_requests_total{outcome=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 200.
    Success,
    /// Failed (bad input, model error).
    Failure,
    /// Refused at admission with 429.
    Rejected,
    /// Its deadline passed while queued.
    Timeout,
    /// Its client left before it was batched.
    Cancelled,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Success, "success"),
    (Outcome::Failure, "failure"),
    (Outcome::Rejected, "rejected"),
    (Outcome::Timeout, "timeout"),
    (Outcome::Cancelled, "cancelled"),
];

/// A histogram plus the exact sum of what it recorded.
struct Recorder {
    hist: RefCell<Histogram<u64>>,
    sum: Cell<u64>,
}

impl Recorder {
    fn new(max: u64, sigfig: u8) -> Self {
        Recorder {
            hist: RefCell::new(
                Histogram::new_with_bounds(1, max, sigfig)
                    .expect("static histogram bounds are valid"),
            ),
            sum: Cell::new(0),
        }
    }

    fn record(&self, value: u64) {
        self.hist.borrow_mut().saturating_record(value);
        self.sum.set(self.sum.get().wrapping_add(value));
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            hist: self.hist.borrow().clone(),
            sum: self.sum.get(),
        }
    }
}

/// One model's metrics on one shard.
pub struct ModelMetrics {
    request: Recorder,
    queue: Recorder,
    compute: Recorder,
    batch_size: Recorder,
    outcomes: [Cell<u64>; 5],
    first_token: Recorder,
    inter_token: Recorder,
    tokens: Cell<u64>,
}

impl ModelMetrics {
    fn new() -> Self {
        ModelMetrics {
            request: Recorder::new(MAX_NANOS, SIGFIG),
            queue: Recorder::new(MAX_NANOS, SIGFIG),
            compute: Recorder::new(MAX_NANOS, SIGFIG),
            batch_size: Recorder::new(MAX_BATCH, BATCH_SIGFIG),
            outcomes: Default::default(),
            first_token: Recorder::new(MAX_NANOS, SIGFIG),
            inter_token: Recorder::new(MAX_NANOS, SIGFIG),
            tokens: Cell::new(0),
        }
    }

    /// Records a generate request's time to its first token (read → generated), in nanoseconds.
    pub fn first_token_nanos(&self, ns: u64) {
        self.first_token.record(ns);
    }

    /// Records the time between two tokens of one sequence, in nanoseconds.
    pub fn inter_token_nanos(&self, ns: u64) {
        self.inter_token.record(ns);
    }

    /// Counts generated tokens.
    pub fn tokens(&self, n: u64) {
        self.tokens.set(self.tokens.get() + n);
    }

    /// Records a request's whole time (read → encoded), in nanoseconds.
    pub fn request_nanos(&self, ns: u64) {
        self.request.record(ns);
    }

    /// Records a request's time in the queue (enqueued → batched), in nanoseconds.
    pub fn queue_nanos(&self, ns: u64) {
        self.queue.record(ns);
    }

    /// Records one batch: the model's time in nanoseconds and the batch's size in items.
    pub fn batch(&self, compute_ns: u64, items: usize) {
        self.compute.record(compute_ns);
        self.batch_size.record(items as u64);
    }

    /// Counts how a request ended.
    pub fn outcome(&self, o: Outcome) {
        let c = &self.outcomes[o as usize];
        c.set(c.get() + 1);
    }

    fn snapshot(&self) -> ModelMetricsSnapshot {
        ModelMetricsSnapshot {
            request: self.request.snapshot(),
            queue: self.queue.snapshot(),
            compute: self.compute.snapshot(),
            batch_size: self.batch_size.snapshot(),
            outcomes: std::array::from_fn(|i| self.outcomes[i].get()),
            first_token: self.first_token.snapshot(),
            inter_token: self.inter_token.snapshot(),
            tokens: self.tokens.get(),
        }
    }
}

/// One shard's metrics, one entry per model slot the shard holds (indexed by slot id).
/// `!Sync`: only its shard touches it.
pub struct ShardMetrics {
    models: Vec<Option<ModelMetrics>>,
}

impl ShardMetrics {
    /// Empty metrics for every model in `registry`.
    pub fn new(registry: &ModelRegistry) -> Self {
        let mut m = ShardMetrics { models: Vec::new() };
        for e in registry.entries() {
            m.add(e.index);
        }
        m
    }

    /// Empty metrics for slot `index`, unless it has them.
    pub fn add(&mut self, index: usize) {
        if self.models.len() <= index {
            self.models.resize_with(index + 1, || None);
        }
        self.models[index].get_or_insert_with(ModelMetrics::new);
    }

    /// Forgets slot `index` (its model version is gone and answered its last request).
    pub fn remove(&mut self, index: usize) {
        if let Some(m) = self.models.get_mut(index) {
            *m = None;
        }
    }

    /// Slot `index`'s metrics, while the shard holds it.
    pub fn model(&self, index: usize) -> Option<&ModelMetrics> {
        self.models.get(index).and_then(Option::as_ref)
    }

    /// A copy of every model's metrics; the runtime adds the shard's gauges.
    pub fn snapshot(&self, shard: usize) -> ShardMetricsSnapshot {
        ShardMetricsSnapshot {
            shard,
            models: self
                .models
                .iter()
                .map(|m| m.as_ref().map(ModelMetrics::snapshot))
                .collect(),
            ..ShardMetricsSnapshot::default()
        }
    }
}

/// A histogram at one moment.
#[derive(Debug, Clone)]
pub struct HistogramSnapshot {
    hist: Histogram<u64>,
    sum: u64,
}

impl HistogramSnapshot {
    fn merge(&mut self, other: &HistogramSnapshot) {
        let _ = self.hist.add(&other.hist);
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }
}

/// One model's metrics on one shard at one moment. `Send`: it crosses cores in the mesh.
#[derive(Debug, Clone)]
pub struct ModelMetricsSnapshot {
    /// Whole request time, ns.
    pub request: HistogramSnapshot,
    /// Queue time, ns.
    pub queue: HistogramSnapshot,
    /// Model time per batch, ns.
    pub compute: HistogramSnapshot,
    /// Items per batch.
    pub batch_size: HistogramSnapshot,
    /// Requests by [`Outcome`].
    pub outcomes: [u64; 5],
    /// Time to first token, ns (generative models).
    pub first_token: HistogramSnapshot,
    /// Time between tokens, ns (generative models).
    pub inter_token: HistogramSnapshot,
    /// Tokens generated.
    pub tokens: u64,
}

impl ModelMetricsSnapshot {
    fn merge(&mut self, o: &ModelMetricsSnapshot) {
        self.request.merge(&o.request);
        self.queue.merge(&o.queue);
        self.compute.merge(&o.compute);
        self.batch_size.merge(&o.batch_size);
        self.first_token.merge(&o.first_token);
        self.inter_token.merge(&o.inter_token);
        self.tokens += o.tokens;
        for (a, b) in self.outcomes.iter_mut().zip(o.outcomes) {
            *a += b;
        }
    }

    /// Requests that ended with `o`.
    pub fn outcome(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize]
    }
}

/// One shard's metrics and gauges at one moment.
#[derive(Debug, Clone, Default)]
pub struct ShardMetricsSnapshot {
    /// Shard index.
    pub shard: usize,
    /// Per model slot (`None`: a slot the shard does not hold).
    pub models: Vec<Option<ModelMetricsSnapshot>>,
    /// Requests admitted and not yet answered, per model slot.
    pub queue_depth: Vec<u64>,
    /// Generate requests running (streaming or not), per model slot.
    pub active_sequences: Vec<u64>,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Buffers taken from the shard's pools.
    pub buffers_taken: u64,
    /// Of those, how many were reused rather than allocated.
    pub buffers_reused: u64,
    /// Sends that went zero-copy.
    pub zerocopy_sends: u64,
    /// The response cache's counts, per model slot.
    pub cache: Vec<CacheCounts>,
}

/// A per-shard series: name, Prometheus type, help, and how to read it from a snapshot.
type ShardSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetricsSnapshot) -> u64,
);

/// Renders every shard's snapshot in the Prometheus text format (version 0.0.4).
pub fn render(registry: &ModelRegistry, shards: &[ShardMetricsSnapshot]) -> String {
    // Only what is served now: a version that is gone says so by its series going.
    let slots = shards.iter().map(|s| s.models.len()).max().unwrap_or(0);
    let mut merged: Vec<Option<ModelMetricsSnapshot>> = vec![None; slots];
    for s in shards {
        for (i, m) in s.models.iter().enumerate() {
            let Some(m) = m else { continue };
            if registry.slot(i).is_none() {
                continue;
            }
            match &mut merged[i] {
                Some(acc) => acc.merge(m),
                slot => *slot = Some(m.clone()),
            }
        }
    }
    let mut out = String::with_capacity(16 << 10);
    let labels = |i: usize| {
        let e = registry.slot(i).expect("only served slots are rendered");
        format!(
            "model=\"{}\",version=\"{}\"",
            escape_label(e.name()),
            escape_label(&e.version)
        )
    };
    type Pick = fn(&ModelMetricsSnapshot) -> &HistogramSnapshot;
    let histograms: [(&str, &str, Pick, f64, &[f64]); 6] = [
        (
            "friday_request_duration_seconds",
            "Time from a request's bytes being read to its response being encoded.",
            |m| &m.request,
            1e-9,
            DURATION_BUCKETS,
        ),
        (
            "friday_queue_duration_seconds",
            "Time a request waited in its model's queue before its batch started.",
            |m| &m.queue,
            1e-9,
            DURATION_BUCKETS,
        ),
        (
            "friday_compute_duration_seconds",
            "Time the model took per batch.",
            |m| &m.compute,
            1e-9,
            DURATION_BUCKETS,
        ),
        (
            "friday_batch_size",
            "Items per batch the model ran.",
            |m| &m.batch_size,
            1.0,
            BATCH_BUCKETS,
        ),
        (
            "friday_time_to_first_token_seconds",
            "Time from a generate request's bytes being read to its first token (generative \
             models).",
            |m| &m.first_token,
            1e-9,
            DURATION_BUCKETS,
        ),
        (
            "friday_inter_token_seconds",
            "Time between two tokens of one generate request (generative models).",
            |m| &m.inter_token,
            1e-9,
            DURATION_BUCKETS,
        ),
    ];
    for (name, help, pick, scale, buckets) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, m) in merged.iter().enumerate() {
            let Some(m) = m else { continue };
            let h = pick(m);
            let l = labels(i);
            for &le in buckets {
                // Values are recorded in integer units of `scale` (ns, or items).
                let limit = (le / scale).round() as u64;
                let n = if limit == 0 {
                    0
                } else {
                    h.hist.count_between(0, limit)
                };
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {n}");
            }
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count());
            let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum as f64 * scale);
            let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count());
        }
    }
    let _ = writeln!(
        out,
        "# HELP friday_requests_total Inference requests by how they ended.\n# TYPE friday_requests_total counter"
    );
    for (i, m) in merged.iter().enumerate() {
        let Some(m) = m else { continue };
        for (o, name) in OUTCOMES {
            let _ = writeln!(
                out,
                "friday_requests_total{{{},outcome=\"{name}\"}} {}",
                labels(i),
                m.outcome(o)
            );
        }
    }
    let gauge = |out: &mut String,
                 name: &str,
                 kind: &str,
                 help: &str,
                 rows: &mut dyn Iterator<Item = (String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (l, v) in rows {
            let _ = writeln!(out, "{name}{{{l}}} {v}");
        }
    };
    gauge(
        &mut out,
        "friday_queue_depth",
        "gauge",
        "Requests admitted to a model on a shard and not yet answered.",
        &mut shards.iter().flat_map(|s| {
            s.queue_depth
                .iter()
                .enumerate()
                .filter(|&(i, _)| registry.slot(i).is_some())
                .map(move |(i, &d)| (format!("{},shard=\"{}\"", labels(i), s.shard), d))
        }),
    );
    // The response cache, per model that uses it, summed over the shards.
    let cached = |pick: fn(&CacheCounts) -> u64| {
        let labels = &labels;
        registry
            .entries()
            .iter()
            .filter(|e| e.serving.response_cache)
            .map(move |e| {
                let total = shards
                    .iter()
                    .filter_map(|s| s.cache.get(e.index))
                    .map(pick)
                    .sum::<u64>();
                (labels(e.index), total)
            })
    };
    for (name, kind, help, pick) in [
        (
            "friday_cache_hits_total",
            "counter",
            "Requests answered from the response cache (models with response_cache).",
            (|c: &CacheCounts| c.hits) as fn(&CacheCounts) -> u64,
        ),
        (
            "friday_cache_misses_total",
            "counter",
            "Cacheable requests the response cache did not hold; their answers are stored.",
            |c| c.misses,
        ),
        (
            "friday_cache_evictions_total",
            "counter",
            "Response cache entries dropped to stay within cache.size_bytes.",
            |c| c.evictions,
        ),
        (
            "friday_cache_bytes",
            "gauge",
            "Bytes the response cache holds for the model version, over every shard.",
            |c| c.bytes,
        ),
        (
            "friday_cache_entries",
            "gauge",
            "Answers the response cache holds for the model version, over every shard.",
            |c| c.entries,
        ),
    ] {
        gauge(&mut out, name, kind, help, &mut cached(pick));
    }
    gauge(
        &mut out,
        "friday_generate_tokens_total",
        "counter",
        "Tokens generated (generative models); its rate is tokens per second.",
        &mut merged
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.as_ref().map(|m| (labels(i), m.tokens))),
    );
    gauge(
        &mut out,
        "friday_generate_active_sequences",
        "gauge",
        "Generate requests running on a shard (streams and one-shot), generative models only.",
        &mut shards.iter().flat_map(|s| {
            s.active_sequences
                .iter()
                .enumerate()
                .filter(|&(i, _)| registry.slot(i).is_some())
                .map(move |(i, &d)| (format!("{},shard=\"{}\"", labels(i), s.shard), d))
        }),
    );
    gauge(
        &mut out,
        "friday_model_resident_bytes",
        "gauge",
        "Resident memory the process gained loading the model version (its weights, once for \
         every shard); 0 for the built-in models.",
        &mut registry
            .entries()
            .iter()
            .map(|e| (labels(e.index), e.resident_bytes)),
    );
    let per_shard: [ShardSeries; 5] = [
        (
            "friday_connections_open",
            "gauge",
            "Open connections.",
            |s| s.connections_open,
        ),
        (
            "friday_connections_accepted_total",
            "counter",
            "Connections accepted.",
            |s| s.connections_accepted,
        ),
        (
            "friday_buffers_taken_total",
            "counter",
            "Buffers (connection and tensor) taken from the shard's pools.",
            |s| s.buffers_taken,
        ),
        (
            "friday_buffers_reused_total",
            "counter",
            "Buffers reused from the pools rather than allocated.",
            |s| s.buffers_reused,
        ),
        (
            "friday_zerocopy_sends_total",
            "counter",
            "Sends of large outputs that went zero-copy (http.zerocopy_send_min_bytes).",
            |s| s.zerocopy_sends,
        ),
    ];
    for (name, kind, help, pick) in per_shard {
        gauge(
            &mut out,
            name,
            kind,
            help,
            &mut shards
                .iter()
                .map(|s| (format!("shard=\"{}\"", s.shard), pick(s))),
        );
    }
    out
}

/// Escapes a label value for the text format (backslash, double quote, newline).
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("plain"), "plain");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn large_batch_sizes_land_in_the_right_bucket() {
        let registry = ModelRegistry::builtin();
        let m = ShardMetrics::new(&registry);
        m.model(0).unwrap().batch(1, 513);
        let text = render(&registry, &[m.snapshot(0)]);
        let l = "model=\"identity\",version=\"1\"";
        assert!(
            text.contains(&format!("friday_batch_size_bucket{{{l},le=\"512\"}} 0")),
            "{text}"
        );
        assert!(text.contains(&format!("friday_batch_size_bucket{{{l},le=\"1024\"}} 1")));
    }

    #[test]
    fn renders_merged_histograms_and_counters() {
        let registry = ModelRegistry::builtin();
        let a = ShardMetrics::new(&registry);
        let b = ShardMetrics::new(&registry);
        a.model(0).unwrap().request_nanos(40_000);
        a.model(0).unwrap().request_nanos(2_000_000);
        b.model(0).unwrap().request_nanos(700_000);
        a.model(0).unwrap().batch(1_000, 3);
        a.model(0).unwrap().outcome(Outcome::Success);
        a.model(0).unwrap().outcome(Outcome::Success);
        b.model(0).unwrap().outcome(Outcome::Success);
        b.model(0).unwrap().outcome(Outcome::Rejected);
        let mut sa = a.snapshot(0);
        sa.queue_depth = vec![2, 0, 0];
        sa.connections_open = 5;
        let sb = b.snapshot(1);
        let text = render(&registry, &[sa, sb]);
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let l = "model=\"identity\",version=\"1\"";
        assert_eq!(
            line(&format!("friday_request_duration_seconds_count{{{l}}}")),
            "3"
        );
        assert_eq!(
            line(&format!(
                "friday_request_duration_seconds_bucket{{{l},le=\"0.00005\"}}"
            )),
            "1"
        );
        assert_eq!(
            line(&format!(
                "friday_request_duration_seconds_bucket{{{l},le=\"0.001\"}}"
            )),
            "2"
        );
        assert_eq!(
            line(&format!(
                "friday_request_duration_seconds_bucket{{{l},le=\"+Inf\"}}"
            )),
            "3"
        );
        let sum: f64 = line(&format!("friday_request_duration_seconds_sum{{{l}}}"))
            .parse()
            .unwrap();
        assert!((sum - 0.00274).abs() < 1e-9, "{sum}");
        assert_eq!(
            line(&format!("friday_batch_size_bucket{{{l},le=\"4\"}}")),
            "1"
        );
        assert_eq!(
            line(&format!("friday_requests_total{{{l},outcome=\"success\"}}")),
            "3"
        );
        assert_eq!(
            line(&format!(
                "friday_requests_total{{{l},outcome=\"rejected\"}}"
            )),
            "1"
        );
        assert_eq!(line(&format!("friday_queue_depth{{{l},shard=\"0\"}}")), "2");
        assert_eq!(line("friday_connections_open{shard=\"0\"}"), "5");
        assert!(text.contains("# TYPE friday_batch_size histogram"));
    }
}
