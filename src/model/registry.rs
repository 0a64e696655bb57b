//! The registry: which models this server serves, under which versions, and how each is
//! served (batching policy, placement, timeouts).
//!
//! Built once at startup and shared read-only by every shard. friday serves its built-in
//! repository (`identity`, `simple`, `synthetic`) and, with `--model-repository`, the ONNX
//! models of a Triton-layout repository on disk (see [`super::repository`]), which take the
//! place of a built-in of the same name; each is tuned by its `[models.<name>]` section.

use std::sync::Arc;
use std::time::Duration;

use super::onnx::OnnxModel;
use super::repository;
use super::{Identity, Model, Simple, Synthetic};
use crate::batch::PolicyConfig;
use crate::config::{Config, DynamicBatching, ModelSettings, Placement};
use crate::error::{ApiError, StartupError};

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

/// One served model version.
pub struct ModelEntry {
    /// Position in the registry; indexes per-shard statistics and batchers.
    pub index: usize,
    /// Version label, as in `/versions/{v}`.
    pub version: String,
    /// The model.
    pub model: Arc<dyn Model>,
    /// How it is served.
    pub serving: Serving,
}

impl std::fmt::Debug for ModelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEntry")
            .field("name", &self.name())
            .field("version", &self.version)
            .finish()
    }
}

impl ModelEntry {
    /// The model's name.
    pub fn name(&self) -> &str {
        &self.model.metadata().name
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

/// The models this server serves.
pub struct ModelRegistry {
    entries: Vec<ModelEntry>,
}

impl ModelRegistry {
    /// The built-in repository with default settings.
    pub fn builtin() -> Self {
        Self::from_config(&Config::default()).expect("the default config builds the built-ins")
    }

    /// A registry of `models` at the built-in version, each served with default settings and
    /// `placement`.
    pub fn from_models(models: Vec<Arc<dyn Model>>, placement: Placement) -> Self {
        let entries = models
            .into_iter()
            .enumerate()
            .map(|(index, model)| ModelEntry {
                index,
                version: BUILTIN_VERSION.to_string(),
                serving: Serving::new(model.as_ref(), &ModelSettings::default(), placement),
                model,
            })
            .collect();
        ModelRegistry { entries }
    }

    /// The registry the config asks for: the built-in models and those of the model
    /// repository, tuned by `[models.<name>]`. A repository model that cannot be loaded is
    /// logged with the reason and not served; the others are.
    pub fn from_config(config: &Config) -> Result<Self, StartupError> {
        let mut models = Self::builtin_models(config);
        if let Some(dir) = &config.model_repository {
            let scan = repository::scan(dir).map_err(StartupError::new)?;
            for (name, why) in &scan.failed {
                tracing::error!(model = %name, reason = %why, "model not loaded");
            }
            for found in scan.found {
                let settings = config.model(&found.name);
                if let Some(cfg) = &found.config {
                    tracing::warn!(
                        model = %found.name,
                        config = %cfg.display(),
                        "config.pbtxt is not read yet: the configuration is completed from the \
                         ONNX graph and [models.<name>] in friday's config"
                    );
                }
                let started = std::time::Instant::now();
                match OnnxModel::load(&found.file, &found.name, settings.max_batch_size) {
                    Ok(model) => {
                        tracing::info!(
                            model = %found.name,
                            version = found.version,
                            file = %found.file.display(),
                            load_ms = started.elapsed().as_millis() as u64,
                            "model loaded"
                        );
                        models.retain(|(m, _, _, _)| m.metadata().name != found.name);
                        models.push((
                            Arc::new(model),
                            settings,
                            DEFAULT_PLACEMENT_HEAVY,
                            found.version.to_string(),
                        ));
                    }
                    Err(why) => {
                        tracing::error!(model = %found.name, reason = %why, "model not loaded");
                    }
                }
            }
        }
        for name in config.models.keys() {
            if !models.iter().any(|(m, ..)| &m.metadata().name == name) {
                tracing::warn!(model = %name, "[models.{name}] names no model this server serves");
            }
        }
        let entries = models
            .into_iter()
            .enumerate()
            .map(
                |(index, (model, settings, placement, version))| ModelEntry {
                    index,
                    version,
                    serving: Serving::new(model.as_ref(), &settings, placement),
                    model,
                },
            )
            .collect();
        Ok(ModelRegistry { entries })
    }

    /// The built-in models, each with its settings, placement and version.
    fn builtin_models(config: &Config) -> Vec<(Arc<dyn Model>, ModelSettings, Placement, String)> {
        let identity = config.model("identity");
        let simple = config.model("simple");
        let synthetic = config.model("synthetic");
        let defaults = Synthetic::default();
        let models: Vec<(Arc<dyn Model>, ModelSettings, Placement)> = vec![
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
        ];
        models
            .into_iter()
            .map(|(m, s, p)| (m, s, p, BUILTIN_VERSION.to_string()))
            .collect()
    }

    /// Every served model version, in registry order.
    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// Finds `name` at `version` (the newest when `None`). Unknown names and versions are 404s.
    pub fn lookup(&self, name: &str, version: Option<&str>) -> Result<&ModelEntry, ApiError> {
        let mut found = self.entries.iter().filter(|e| e.name() == name).peekable();
        if found.peek().is_none() {
            return Err(ApiError::not_found(format!("unknown model: '{name}'")));
        }
        match version {
            None | Some("") => Ok(found
                .max_by_key(|e| e.version.parse::<u64>().unwrap_or(0))
                .expect("peeked a match above")),
            Some(v) => found.find(|e| e.version == v).ok_or_else(|| {
                ApiError::not_found(format!("unknown version '{v}' of model '{name}'"))
            }),
        }
    }
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
        let r = ModelRegistry::from_config(&config).unwrap();
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
