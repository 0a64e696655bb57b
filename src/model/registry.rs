//! The registry: which models this server serves, under which versions, and how each is
//! served (batching policy, placement, timeouts).
//!
//! One registry is one generation of what is served: the model manager ([`super::manager`])
//! builds a new one on every change and publishes it to the shards, which share it read-only.
//! friday serves its built-in repository (`identity`, `simple`, `synthetic`, `tinylm`) and, with
//! `--model-repository`, the ONNX models of a Triton-layout repository on disk (see
//! [`super::repository`]), which take the place of a built-in of the same name; each is tuned by
//! its `[models.<name>]` section.

use std::sync::Arc;
use std::time::Duration;

use super::{Identity, Model, Simple, Synthetic, TinyLm};
use crate::batch::PolicyConfig;
use crate::config::{Config, DynamicBatching, ModelSettings, Placement, VersionPolicy};
use crate::error::ApiError;

/// The version every built-in model is served under.
pub const BUILTIN_VERSION: &str = "1";

/// How one model is served: its batching policy, where its batches run, its queue defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    /// The batch policy the shard's batcher applies.
    pub policy: PolicyConfig,
    /// Where batches run.
    pub placement: Placement,
    /// Queue timeout for requests without a `timeout` parameter.
    pub default_timeout: Option<Duration>,
    /// Queue level (0-based) for requests without a `priority` parameter.
    pub default_level: usize,
    /// The dynamic batching settings as configured (rendered in the model configuration).
    pub dynamic_batching: DynamicBatching,
    /// Which versions serve (rendered in the model configuration).
    pub version_policy: VersionPolicy,
    /// Repeated requests are answered from the shard's response cache (never for a generative
    /// model).
    pub response_cache: bool,
}

impl Serving {
    /// Serving settings for `model` from its `[models.<name>]` section.
    pub fn new(model: &dyn Model, settings: &ModelSettings, default_placement: Placement) -> Self {
        let b = settings.dynamic_batching.clone().unwrap_or_default();
        let max_batch = model.metadata().max_batch_size.max(1);
        let mut preferred: Vec<usize> = b
            .preferred_batch_size
            .iter()
            .copied()
            .filter(|&p| p >= 1 && p <= max_batch)
            .collect();
        preferred.sort_unstable();
        preferred.dedup();
        Serving {
            policy: PolicyConfig {
                max_batch_size: max_batch,
                max_queue_delay: Duration::from_micros(b.max_queue_delay_microseconds),
                preferred_batch_sizes: preferred,
                max_queue_size: b.max_queue_size.max(1),
                priority_levels: b.priority_levels.max(1) as usize,
            },
            placement: settings.placement.unwrap_or(default_placement),
            default_timeout: (b.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(b.default_timeout_microseconds)),
            default_level: b.default_priority_level.saturating_sub(1) as usize,
            dynamic_batching: b,
            version_policy: settings.version_policy.clone().unwrap_or_default(),
            response_cache: settings.response_cache.unwrap_or(false)
                && model.generative().is_none(),
        }
    }

    /// The queue level (0-based) for a request's `priority` parameter. As in Triton, 1 is the
    /// highest level, and 0, a value above `priority_levels`, or no parameter at all means the
    /// default level, so clients that always send a priority keep working.
    pub fn level(&self, priority: Option<u64>) -> usize {
        let levels = self.dynamic_batching.priority_levels as u64;
        match priority {
            Some(p) if p >= 1 && p <= levels => p as usize - 1,
            _ => self.default_level,
        }
    }
}

/// One served model version: a slot that shards create their batcher, statistics and metrics
/// for when it is published, and drop once it is gone and its last request is answered.
pub struct ModelEntry {
    /// Slot id: unique for the life of the process (a reload of the same version takes a new
    /// one), indexes per-shard batchers, statistics and metrics.
    pub index: usize,
    /// Version label, as in `/versions/{v}`.
    pub version: String,
    /// The model.
    pub model: Arc<dyn Model>,
    /// How it is served.
    pub serving: Serving,
    /// Resident memory the process gained while loading it (bytes; 0 for the built-ins).
    pub resident_bytes: u64,
}

impl std::fmt::Debug for ModelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEntry")
            .field("index", &self.index)
            .field("name", &self.name())
            .field("version", &self.version)
            .finish()
    }
}

impl ModelEntry {
    /// A served version of `model` in slot `index`.
    pub fn new(index: usize, version: &str, model: Arc<dyn Model>, serving: Serving) -> Self {
        ModelEntry {
            index,
            version: version.to_string(),
            model,
            serving,
            resident_bytes: 0,
        }
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.model.metadata().name
    }

    /// The version as a number (0 if it is not one), for "newest" comparisons.
    pub fn version_number(&self) -> u64 {
        self.version.parse().unwrap_or(0)
    }
}

/// Placement of the built-in models that take microseconds (identity, simple). Measured
/// (`benches/ring_handoff.rs`): an inline handoff round trip is 0.5 µs, a worker on the shard's
/// CPU 9 µs, a worker on another CPU 71 µs; for a sub-microsecond model the handoff is the cost.
pub const DEFAULT_PLACEMENT_LIGHT: Placement = Placement::Inline;
/// Placement of the built-in model whose batches take milliseconds (synthetic). Inline gave 9 %
/// more throughput on a core shared with its worker (15.9k vs 14.5k infer/s at concurrency 32),
/// but an inline batch holds the reactor: no 429, no deadline failure and no other model's
/// request is answered until it ends. On a worker they are answered at once, so latency-critical
/// serving takes the worker.
pub const DEFAULT_PLACEMENT_HEAVY: Placement = Placement::Worker;

/// What this server serves at one moment: one generation of the model manager's state, shared
/// read-only by every shard until the next one is published.
pub struct ModelRegistry {
    /// Sorted by name, then version number.
    entries: Vec<Arc<ModelEntry>>,
}

impl ModelRegistry {
    /// A registry of `entries` (slot ids must be unique).
    pub fn new(mut entries: Vec<Arc<ModelEntry>>) -> Self {
        entries.sort_by(|a, b| {
            (a.name(), a.version_number(), &a.version).cmp(&(
                b.name(),
                b.version_number(),
                &b.version,
            ))
        });
        debug_assert!(
            {
                let mut slots: Vec<usize> = entries.iter().map(|e| e.index).collect();
                slots.sort_unstable();
                slots.windows(2).all(|w| w[0] != w[1])
            },
            "slot ids are unique"
        );
        ModelRegistry { entries }
    }

    /// The built-in repository with default settings.
    pub fn builtin() -> Self {
        Self::new(
            builtin_models(&Config::default())
                .into_iter()
                .enumerate()
                .map(|(i, (model, settings, placement))| {
                    let serving = Serving::new(model.as_ref(), &settings, placement);
                    Arc::new(ModelEntry::new(i, BUILTIN_VERSION, model, serving))
                })
                .collect(),
        )
    }

    /// A registry of `models` at the built-in version, each served with default settings and
    /// `placement`.
    pub fn from_models(models: Vec<Arc<dyn Model>>, placement: Placement) -> Self {
        Self::new(
            models
                .into_iter()
                .enumerate()
                .map(|(index, model)| {
                    let serving =
                        Serving::new(model.as_ref(), &ModelSettings::default(), placement);
                    Arc::new(ModelEntry::new(index, BUILTIN_VERSION, model, serving))
                })
                .collect(),
        )
    }

    /// Every served model version, by name and version.
    pub fn entries(&self) -> &[Arc<ModelEntry>] {
        &self.entries
    }

    /// The entry in slot `slot`, if it is served.
    pub fn slot(&self, slot: usize) -> Option<&ModelEntry> {
        self.entries.iter().find(|e| e.index == slot).map(|e| &**e)
    }

    /// Whether a model of this name is served (at any version).
    pub fn serves(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.name() == name)
    }

    /// The versions of `name` served, oldest first.
    pub fn versions<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ModelEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.name() == name)
            .map(|e| &**e)
    }

    /// Position in [`ModelRegistry::entries`] of `name` at `version` (the newest when `None`).
    /// Unknown names and versions are 404s.
    pub fn position(&self, name: &str, version: Option<&str>) -> Result<usize, ApiError> {
        let mut found = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.name() == name)
            .peekable();
        if found.peek().is_none() {
            return Err(ApiError::not_found(format!("unknown model: '{name}'")));
        }
        match version {
            // Sorted by version: the last match is the newest.
            None | Some("") => Ok(found.last().expect("peeked a match above").0),
            Some(v) => found
                .find(|(_, e)| e.version == v)
                .map(|(i, _)| i)
                .ok_or_else(|| {
                    ApiError::not_found(format!("unknown version '{v}' of model '{name}'"))
                }),
        }
    }

    /// Finds `name` at `version` (the newest when `None`). Unknown names and versions are 404s.
    pub fn lookup(&self, name: &str, version: Option<&str>) -> Result<&ModelEntry, ApiError> {
        self.position(name, version).map(|i| &*self.entries[i])
    }
}

/// The built-in models, each with its settings and default placement.
pub(crate) fn builtin_models(config: &Config) -> Vec<(Arc<dyn Model>, ModelSettings, Placement)> {
    let identity = config.model("identity");
    let simple = config.model("simple");
    let synthetic = config.model("synthetic");
    let defaults = Synthetic::default();
    vec![
        (
            Arc::new(Identity::with_max_batch_size(
                identity
                    .max_batch_size
                    .unwrap_or(super::identity::IDENTITY_MAX_BATCH_SIZE),
            )),
            identity,
            DEFAULT_PLACEMENT_LIGHT,
        ),
        (
            Arc::new(Simple::with_max_batch_size(
                simple
                    .max_batch_size
                    .unwrap_or(super::simple::SIMPLE_MAX_BATCH_SIZE),
            )),
            simple,
            DEFAULT_PLACEMENT_LIGHT,
        ),
        (
            Arc::new(Synthetic::new(
                synthetic
                    .cost_per_batch_us
                    .unwrap_or(super::synthetic::DEFAULT_COST_PER_BATCH_US),
                synthetic
                    .cost_per_item_us
                    .unwrap_or(super::synthetic::DEFAULT_COST_PER_ITEM_US),
                synthetic
                    .max_batch_size
                    .unwrap_or(defaults.metadata().max_batch_size),
            )),
            synthetic,
            DEFAULT_PLACEMENT_HEAVY,
        ),
        (
            // Generated by the shard's decoder between I/O turns, never by a batcher.
            Arc::new(TinyLm::new()),
            config.model("tinylm"),
            Placement::Inline,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_names_and_versions() {
        let r = ModelRegistry::builtin();
        assert_eq!(r.lookup("identity", None).unwrap().name(), "identity");
        assert_eq!(r.lookup("synthetic", None).unwrap().index, 2);
        assert_eq!(r.lookup("simple", Some("1")).unwrap().index, 1);
        assert_eq!(r.lookup("nope", None).unwrap_err().status(), 404);
        let e = r.lookup("identity", Some("2")).unwrap_err();
        assert_eq!(e.status(), 404);
        assert!(e.message.contains("version '2'"));
    }
}

#[cfg(test)]
mod serving_tests {
    use super::*;

    #[test]
    fn settings_reach_the_policy() {
        let config = Config::from_toml(
            "[models.synthetic]\nmax_batch_size = 16\nplacement = \"inline\"\ncost_per_batch_us = 7\n\
             [models.synthetic.dynamic_batching]\nmax_queue_delay_microseconds = 250\n\
             preferred_batch_size = [8, 4]\nmax_queue_size = 9\ndefault_timeout_microseconds = 300\n\
             priority_levels = 3\ndefault_priority_level = 2\n",
        )
        .unwrap();
        config.validate().unwrap();
        let r = super::super::ModelManager::start(&config)
            .unwrap()
            .registry();
        let s = &r.lookup("synthetic", None).unwrap().serving;
        assert_eq!(s.policy.max_batch_size, 16);
        assert_eq!(s.policy.max_queue_delay, Duration::from_micros(250));
        assert_eq!(s.policy.preferred_batch_sizes, vec![4, 8]);
        assert_eq!(s.policy.max_queue_size, 9);
        assert_eq!(s.policy.priority_levels, 3);
        assert_eq!(s.placement, Placement::Inline);
        assert_eq!(s.default_timeout, Some(Duration::from_micros(300)));
        assert_eq!(s.level(None), 1);
        assert_eq!(s.level(Some(1)), 0);
        assert_eq!(s.level(Some(0)), 1);
        assert_eq!(
            s.level(Some(4)),
            1,
            "out of range means the default level, as in Triton"
        );
        let identity = &r.lookup("identity", None).unwrap().serving;
        assert_eq!(identity.policy.max_batch_size, 64);
        assert!(identity.policy.max_queue_delay.is_zero());
        assert_eq!(identity.level(Some(1)), 0);
    }
}
