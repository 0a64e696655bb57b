//! The model manager's state: what is loaded from the repository, and the operations that change
//! it (load, reload, unload, poll) and read it (the repository index).
//!
//! It runs on a control-plane thread (see `runtime::models`), never on a shard: loading a model
//! (reading, parsing, warming up) takes milliseconds to seconds. Each operation either succeeds
//! and yields a new [`ModelRegistry`] to publish, or fails and leaves what was serving in place.
//!
//! Every served version is a slot ([`ModelEntry::index`]), unique for the life of the process.
//! A reload keeps the slot of a version whose file and settings did not change (it goes on
//! serving, statistics and all, with no gap) and gives a changed or new version a new slot;
//! shards switch to the new slots at a batch boundary and drop an old one after its last request
//! is answered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::onnx::{self, OnnxModel};
use super::onnxruntime::{self, OrtModel};
use super::pbtxt::{self, ModelConfigFile, WarmupData, WarmupSample};
use super::registry::{builtin_models, BUILTIN_VERSION, DEFAULT_PLACEMENT_HEAVY};
use super::repository::{self, ModelFolder};
use super::{Model, ModelEntry, ModelRegistry, Serving};
use crate::config::OnnxBackend;
use crate::config::{Config, ModelControlMode, ModelSettings};
use crate::error::{ApiError, StartupError};
use crate::tensor::{DataType, Tensor};

/// What identifies a loaded version's inputs: its file (path, size, modification time) and the
/// settings it was loaded with. A reload keeps a version whose fingerprint did not change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    file: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    /// The `config.pbtxt` it was loaded with (size and modification time).
    config: Option<(u64, Option<SystemTime>)>,
    /// The load request's `config` parameter, if it came with one.
    request: Option<String>,
    settings: ModelSettings,
}

impl Fingerprint {
    fn of(file: &Path, folder: &ModelFolder, settings: &ModelSettings) -> Result<Self, String> {
        let meta =
            std::fs::metadata(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        Ok(Fingerprint {
            file: file.to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
            config: folder.config.as_deref().and_then(file_stamp),
            request: None,
            settings: settings.clone(),
        })
    }
}

/// A file's size and modification time.
fn file_stamp(f: &Path) -> Option<(u64, Option<SystemTime>)> {
    std::fs::metadata(f)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
}

/// What loading a model folder takes: its configuration file, the settings it is served with,
/// and the versions its policy serves (number, file, fingerprint).
struct Plan {
    file: ModelConfigFile,
    settings: ModelSettings,
    versions: Vec<(u64, PathBuf, Fingerprint)>,
}

/// One loaded version.
struct Version {
    entry: Arc<ModelEntry>,
    fingerprint: Fingerprint,
}

/// A repository model's load state.
enum State {
    /// Serving these versions (oldest first).
    Ready(Vec<Version>),
    /// Not serving: unloaded, or its load failed (the reason).
    Unavailable(String),
}

/// The files of a model folder as they were at one moment: each version folder's files' sizes
/// and modification times, and the config's.
type Stamp = Vec<(u64, Vec<(u64, Option<SystemTime>)>)>;

/// `folder`'s stamp now.
fn stamp(folder: &ModelFolder) -> Stamp {
    let dir_stamp = |d: &Path| -> Vec<(u64, Option<SystemTime>)> {
        let mut files: Vec<_> = std::fs::read_dir(d)
            .map(|r| {
                r.filter_map(Result::ok)
                    .filter_map(|e| file_stamp(&e.path()))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    };
    let mut s: Stamp = folder
        .versions
        .iter()
        .map(|&v| (v, dir_stamp(&folder.dir.join(v.to_string()))))
        .collect();
    if let Some(c) = &folder.config {
        s.push((u64::MAX, file_stamp(c).into_iter().collect()));
    }
    s
}

/// One row of the repository index (`POST /v2/repository/index`), as Triton writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version (absent for a model with no version loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is unavailable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What computes a ready version: `rten`, `onnxruntime` or `builtin` (friday's own; the
    /// model configuration's `parameters.runtime` says the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
}

/// A `load` request's configuration override: the `config` parameter, Triton's model
/// configuration as JSON. As in Triton it takes the place of the model's `config.pbtxt` for that
/// load; it is read (on the manager's thread) as `config.pbtxt` is, through Triton's schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigOverride {
    text: String,
}

impl ConfigOverride {
    /// The `config` parameter's text.
    pub fn new(text: String) -> Self {
        ConfigOverride { text }
    }
}

/// Largest warm-up tensor friday builds (a configuration asking for more is refused).
const MAX_WARMUP_TENSOR_BYTES: usize = 256 << 20;

/// The model manager's state (see the module docs). Owned by the control-plane thread.
pub struct ModelManager {
    config: Config,
    /// The repository, resolved.
    root: Option<PathBuf>,
    builtins: Vec<Arc<ModelEntry>>,
    models: BTreeMap<String, State>,
    /// Models whose last load failed, with their folder's stamp then: polling retries one only
    /// once something in its folder changed.
    failures: BTreeMap<String, Stamp>,
    next_slot: usize,
}

impl ModelManager {
    /// The manager at start: the built-in models and, from the repository, every model (modes
    /// `none` and `poll`) or those `model_control.load` names (`explicit`). A model that cannot
    /// load is logged with the reason and not served; the others are.
    pub fn start(config: &Config) -> Result<Self, StartupError> {
        let builtins: Vec<Arc<ModelEntry>> = builtin_models(config)
            .into_iter()
            .enumerate()
            .map(|(i, (model, settings, placement))| {
                let serving = Serving::new(model.as_ref(), &settings, placement);
                Arc::new(ModelEntry::new(i, BUILTIN_VERSION, model, serving))
            })
            .collect();
        for b in builtins.iter().filter(|b| b.serving.response_cache) {
            warn_if_no_cache(config, b.name());
        }
        let root = match &config.model_repository {
            Some(dir) => Some(repository::root(dir).map_err(StartupError::new)?),
            None => None,
        };
        let mut m = ModelManager {
            config: config.clone(),
            root,
            next_slot: builtins.len(),
            builtins,
            models: BTreeMap::new(),
            failures: BTreeMap::new(),
        };
        if m.root.is_some() {
            let explicit = config.model_control.mode == ModelControlMode::Explicit;
            let all = !explicit || config.model_control.load.iter().any(|n| n == "*");
            let names: Vec<String> = if all {
                m.scan_names()?
            } else {
                config.model_control.load.clone()
            };
            let mut failed = Vec::new();
            for name in &names {
                if let Err(e) = m.load(name, None) {
                    tracing::error!(model = %name, reason = %e.message, "model not loaded");
                    failed.push(format!("{name}: {}", e.message));
                }
            }
            for (name, why) in m.scan_failures() {
                tracing::error!(model = %name, reason = %why, "model not loaded");
                // exit_on_error counts the models this start was asked for, not a folder that
                // cannot be a model (lost+found) nor, in explicit mode, one nobody asked for.
                let asked = all || names.contains(&name);
                if asked && repository::valid_model_name(&name) {
                    failed.push(format!("{name}: {why}"));
                }
                if repository::valid_model_name(&name) {
                    m.models.insert(name, State::Unavailable(why));
                }
            }
            if config.model_control.exit_on_error && !failed.is_empty() {
                return Err(StartupError::new(format!(
                    "model_control.exit_on_error: {} model(s) failed to load, so friday does not \
                     start: {}",
                    failed.len(),
                    failed.join("; ")
                )));
            }
        }
        let served = m.registry();
        for name in config.models.keys() {
            if !served.serves(name) && !m.models.contains_key(name) {
                tracing::warn!(model = %name, "[models.{name}] names no model this server serves");
            }
        }
        Ok(m)
    }

    /// The control mode.
    pub fn mode(&self) -> ModelControlMode {
        self.config.model_control.mode
    }

    /// What is served now.
    pub fn registry(&self) -> ModelRegistry {
        let mut entries: Vec<Arc<ModelEntry>> = Vec::new();
        for state in self.models.values() {
            if let State::Ready(versions) = state {
                entries.extend(versions.iter().map(|v| v.entry.clone()));
            }
        }
        // A repository model takes the place of a built-in of the same name.
        let shadowed = |name: &str| matches!(self.models.get(name), Some(State::Ready(_)));
        entries.extend(
            self.builtins
                .iter()
                .filter(|b| !shadowed(b.name()))
                .cloned(),
        );
        ModelRegistry::new(entries)
    }

    /// The repository's model names (folders that scan as models or fail to).
    fn scan_names(&self) -> Result<Vec<String>, StartupError> {
        let Some(root) = &self.root else {
            return Ok(Vec::new());
        };
        let scan = repository::scan(root).map_err(StartupError::new)?;
        Ok(scan.found.into_iter().map(|f| f.name).collect())
    }

    /// Folders of the repository that cannot be models, with why.
    fn scan_failures(&self) -> Vec<(String, String)> {
        let Some(root) = &self.root else {
            return Vec::new();
        };
        repository::scan(root).map(|s| s.failed).unwrap_or_default()
    }

    /// The repository index: every model folder and built-in model, with its versions' state.
    /// `ready_only` lists only what serves.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut rows = Vec::new();
        let mut names: Vec<String> = self.models.keys().cloned().collect();
        if let Some(root) = &self.root {
            if let Ok(scan) = repository::scan(root) {
                names.extend(scan.found.into_iter().map(|f| f.name));
                names.extend(
                    scan.failed
                        .into_iter()
                        .map(|(n, _)| n)
                        .filter(|n| repository::valid_model_name(n)),
                );
            }
        }
        let served = self.registry();
        names.extend(served.entries().iter().map(|e| e.name().to_string()));
        names.sort();
        names.dedup();
        for name in names {
            let versions: Vec<&ModelEntry> = served.versions(&name).collect();
            if !versions.is_empty() {
                rows.extend(versions.iter().map(|e| IndexEntry {
                    name: name.clone(),
                    version: Some(e.version.clone()),
                    state: "READY",
                    reason: String::new(),
                    runtime: Some(e.model.runtime()),
                }));
                continue;
            }
            if ready_only {
                continue;
            }
            let reason = match self.models.get(&name) {
                Some(State::Unavailable(why)) => why.clone(),
                _ => "not loaded".to_string(),
            };
            rows.push(IndexEntry {
                name,
                version: None,
                state: "UNAVAILABLE",
                reason,
                runtime: None,
            });
        }
        rows
    }

    /// Loads (or reloads) repository model `name`: reads its folder, loads the versions its
    /// policy serves (keeping those that did not change), warms each new one up, and only then
    /// makes them the model's versions. On failure what was serving stays, and the reason is
    /// kept for the index.
    pub fn load(&mut self, name: &str, config: Option<&ConfigOverride>) -> Result<(), ApiError> {
        let Some(root) = self.root.clone() else {
            return Err(ApiError::invalid(
                "this server has no model repository (--model-repository)",
            ));
        };
        // Stamped before the load: a file still being written when it was read is retried.
        let before = repository::scan_model(&root, name).ok().map(|f| stamp(&f));
        match self.load_versions(&root, name, config) {
            Ok(versions) => {
                if versions.iter().any(|v| v.entry.serving.response_cache) {
                    warn_if_no_cache(&self.config, name);
                }
                self.models.insert(name.to_string(), State::Ready(versions));
                self.failures.remove(name);
                Ok(())
            }
            Err(why) => {
                let message = format!("failed to load '{name}': {why}");
                match self.models.get(name) {
                    Some(State::Ready(_)) => {
                        tracing::warn!(model = %name, reason = %why, "reload failed; the loaded versions keep serving");
                    }
                    // Only a model folder of the repository gets an index row: a name a client
                    // made up leaves nothing behind.
                    _ if before.is_some() => {
                        self.models
                            .insert(name.to_string(), State::Unavailable(why.clone()));
                    }
                    _ => {
                        self.models.remove(name);
                    }
                }
                if let Some(stamp) = before {
                    self.failures.insert(name.to_string(), stamp);
                }
                Err(if why.starts_with("no model folder") {
                    ApiError::not_found(message)
                } else {
                    ApiError::invalid(message)
                })
            }
        }
    }

    /// What loading `folder` takes now (with the request's `config` override, if any).
    fn plan(
        &self,
        root: &Path,
        folder: &ModelFolder,
        config: Option<&ConfigOverride>,
    ) -> Result<Plan, String> {
        let name = &folder.name;
        let file = match (config, &folder.config) {
            (Some(o), _) => pbtxt::parse_json(&o.text, name)
                .map_err(|e| format!("the config parameter: {e}"))?,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                pbtxt::parse(&text, name).map_err(|e| format!("{}: {e}", path.display()))?
            }
            (None, None) => ModelConfigFile::default(),
        };
        // config.pbtxt, then [models.<name>] in friday's config; a request's override, which
        // stands for the whole configuration, wins over both.
        let mut settings = file
            .settings
            .clone()
            .overridden_by(&self.config.model(name));
        if config.is_some() {
            settings = settings.overridden_by(&file.settings);
        }
        crate::config::validate_model(name, &settings, true).map_err(|e| e.to_string())?;
        let policy = settings.version_policy.clone().unwrap_or_default();
        let chosen = policy.choose(&folder.versions);
        if chosen.is_empty() {
            return Err(format!(
                "its version policy serves none of its versions ({:?})",
                folder.versions
            ));
        }
        let filename = file
            .default_model_filename
            .as_deref()
            .unwrap_or(repository::DEFAULT_MODEL_FILENAME);
        let versions = chosen
            .into_iter()
            .map(|v| {
                let path = folder.file(root, v, filename)?;
                let mut fingerprint = Fingerprint::of(&path, folder, &settings)?;
                fingerprint.request = config.map(|o| o.text.clone());
                Ok((v, path, fingerprint))
            })
            .collect::<Result<_, String>>()?;
        Ok(Plan {
            file,
            settings,
            versions,
        })
    }

    fn load_versions(
        &mut self,
        root: &Path,
        name: &str,
        config: Option<&ConfigOverride>,
    ) -> Result<Vec<Version>, String> {
        let folder = repository::scan_model(root, name)?;
        let plan = self.plan(root, &folder, config)?;
        let message = if config.is_some() {
            "load config field ignored: friday does not act on it"
        } else {
            "config.pbtxt field ignored: friday does not act on it"
        };
        for field in &plan.file.ignored {
            tracing::warn!(model = %name, field = %field, "{message}");
        }
        let previous: Vec<&Version> = match self.models.get(name) {
            Some(State::Ready(v)) => v.iter().collect(),
            _ => Vec::new(),
        };
        let mut kept = Vec::new();
        let mut fresh = Vec::new();
        for (version, file, fingerprint) in plan.versions {
            let label = version.to_string();
            if let Some(old) = previous
                .iter()
                .find(|v| v.entry.version == label && v.fingerprint == fingerprint)
            {
                kept.push(Version {
                    entry: old.entry.clone(),
                    fingerprint,
                });
                continue;
            }
            fresh.push((version, file, fingerprint));
        }
        let mut versions = kept;
        for (version, file, fingerprint) in fresh {
            let entry =
                self.load_version(root, &folder, (version, &file), &plan.settings, &plan.file)?;
            versions.push(Version { entry, fingerprint });
        }
        versions.sort_by_key(|v| v.entry.version_number());
        Ok(versions)
    }

    /// Sessions an ONNX Runtime model opens: one per shard.
    fn sessions(&self) -> usize {
        crate::topology::affinity_cpus()
            .ok()
            .and_then(|cpus| crate::topology::plan_shards(&self.config.shards, &cpus).ok())
            .map_or(1, |plan| plan.len())
    }

    fn load_version(
        &mut self,
        root: &Path,
        folder: &ModelFolder,
        (version, file): (u64, &Path),
        settings: &ModelSettings,
        config: &ModelConfigFile,
    ) -> Result<Arc<ModelEntry>, String> {
        let started = Instant::now();
        let before = resident_bytes();
        let library = self.config.onnxruntime.library.as_deref();
        let on_ort = || -> Result<Arc<dyn Model>, String> {
            Ok(Arc::new(OrtModel::load(
                file,
                &folder.name,
                settings.max_batch_size,
                (&config.inputs, &config.outputs),
                self.sessions(),
                library,
            )?))
        };
        let on_rten = || -> Result<Arc<dyn Model>, String> {
            Ok(Arc::new(OnnxModel::load(
                file,
                &folder.name,
                settings.max_batch_size,
                (&config.inputs, &config.outputs),
            )?))
        };
        let model = match settings.backend {
            Some(OnnxBackend::OnnxRuntime) => {
                on_ort().map_err(|e| match onnxruntime::runtime(library) {
                    // Asked for by name, the missing library is the error, with the way to rten.
                    Err(missing) => format!(
                    "it is set to run on ONNX Runtime (backend \"onnxruntime\"), but {missing}; \
                     or set backend = \"rten\" under [models.{}] to run it on rten",
                    folder.name
                ),
                    Ok(_) => e,
                })
            }
            Some(OnnxBackend::Rten) => on_rten(),
            // rten first; ONNX Runtime, when its library is there, for what rten cannot run.
            None => on_rten().or_else(|rten| {
                // Only a graph rten cannot build (an operator it lacks) goes to ONNX Runtime; a
                // model that does not fit its configuration fails on either.
                if !rten.contains(onnx::RTEN_CANNOT_LOAD) {
                    return Err(rten);
                }
                if let Err(missing) = onnxruntime::runtime(library) {
                    return Err(format!("{rten}; ONNX Runtime might run it: {missing}"));
                }
                on_ort()
                    .inspect(|_| {
                        tracing::info!(
                            model = %folder.name,
                            version,
                            reason = %rten,
                            "rten cannot run it; serving it on ONNX Runtime"
                        )
                    })
                    .map_err(|ort| format!("{rten}; ONNX Runtime cannot either: {ort}"))
            }),
        }
        .map_err(|e| format!("version {version}: {e}"))?;
        let serving = Serving::new(model.as_ref(), settings, DEFAULT_PLACEMENT_HEAVY);
        let loaded = started.elapsed();
        let samples = warmup_samples(model.as_ref(), &serving, &config.warmup, |f| {
            let path = folder.warmup_file(root, f)?;
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
        .map_err(|e| format!("version {version}: model_warmup: {e}"))?;
        for (name, inputs, count) in &samples {
            for _ in 0..*count {
                model
                    .warm_up(inputs)
                    .map_err(|e| format!("version {version}: warm-up '{name}': {e}"))?;
            }
        }
        release_free_memory();
        let resident = resident_bytes().saturating_sub(before);
        let mut entry = ModelEntry::new(self.next_slot, &version.to_string(), model, serving);
        entry.resident_bytes = resident;
        self.next_slot += 1;
        tracing::info!(
            model = %folder.name,
            version,
            file = %file.display(),
            load_ms = loaded.as_millis() as u64,
            ready_ms = started.elapsed().as_millis() as u64,
            resident_mib = resident >> 20,
            runtime = entry.model.runtime(),
            "model loaded"
        );
        Ok(Arc::new(entry))
    }

    /// Unloads repository model `name` (a model that is not loaded unloads as a no-op, as in
    /// Triton). Returns whether anything was serving.
    pub fn unload(&mut self, name: &str) -> Result<bool, ApiError> {
        if !repository::valid_model_name(name) {
            return Err(ApiError::invalid(format!(
                "'{name}' cannot name a model: use letters, digits, '_', '-' and '.' only"
            )));
        }
        if !self.models.contains_key(name) && self.builtins.iter().any(|b| b.name() == name) {
            return Err(ApiError::invalid(format!(
                "'{name}' is a built-in model: it is always served"
            )));
        }
        let was = matches!(self.models.get(name), Some(State::Ready(_)));
        let folder = self.root.as_ref().is_some_and(|r| r.join(name).is_dir());
        if was || folder {
            self.models
                .insert(name.to_string(), State::Unavailable("unloaded".to_string()));
        }
        Ok(was)
    }

    /// Poll mode: rescans the repository. New models load, models whose files or versions
    /// changed reload, models whose folder went unload. Returns whether what is served changed.
    pub fn poll(&mut self) -> bool {
        let Some(root) = self.root.clone() else {
            return false;
        };
        let Ok(scan) = repository::scan(&root) else {
            tracing::warn!(repository = %root.display(), "cannot scan the model repository");
            return false;
        };
        let before: Vec<usize> = self.registry().entries().iter().map(|e| e.index).collect();
        for folder in &scan.found {
            if !self.changed(&root, folder) {
                continue;
            }
            if let Err(e) = self.load(&folder.name, None) {
                tracing::error!(model = %folder.name, reason = %e.message, "model not loaded");
            }
        }
        // A folder that no longer holds a version (or cannot be read) is gone too.
        let present: Vec<&str> = scan.found.iter().map(|f| f.name.as_str()).collect();
        let gone: Vec<String> = self
            .models
            .iter()
            .filter(|(n, s)| matches!(s, State::Ready(_)) && !present.contains(&n.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            tracing::info!(model = %name, "model folder removed; unloading");
            let _ = self.unload(&name);
        }
        let after: Vec<usize> = self.registry().entries().iter().map(|e| e.index).collect();
        before != after
    }

    /// Whether model `folder` would load differently from what serves (or failed) now.
    fn changed(&self, root: &Path, folder: &ModelFolder) -> bool {
        // A failed model is retried only once something in its folder changed.
        if self.failures.get(&folder.name) == Some(&stamp(folder)) {
            return false;
        }
        match self.models.get(&folder.name) {
            Some(State::Ready(versions)) => match self.plan(root, folder, None) {
                Ok(plan) => {
                    versions.len() != plan.versions.len()
                        || versions.iter().zip(&plan.versions).any(|(v, (n, _, f))| {
                            v.entry.version != n.to_string() || *f != v.fingerprint
                        })
                }
                Err(_) => true,
            },
            _ => true,
        }
    }
}

/// The warm-up requests a model runs before it is ready: its `model_warmup` samples, or else
/// one per batch size its batcher will use (1, the preferred sizes, the maximum) on zeros (each
/// dynamic dimension 1). Either way the first requests find it warm, and a model that cannot run
/// fails its load instead of its requests. Each sample: its name, its inputs in the model's
/// order, and how many times it runs. `read` reads an `input_data_file`.
fn warmup_samples(
    model: &dyn Model,
    serving: &Serving,
    declared: &[WarmupSample],
    read: impl Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Vec<(String, Vec<Tensor<'static>>, usize)>, String> {
    let meta = model.metadata();
    let batched = meta.max_batch_size > 0;
    let tensor = |datatype: DataType, dims: &[i64], batch: usize, data: &WarmupData| {
        let mut shape: crate::tensor::Shape = smallvec::SmallVec::new();
        if batched {
            shape.push(batch.max(1));
        }
        shape.extend(dims.iter().map(|&d| if d < 0 { 1 } else { d as usize }));
        let element = match datatype {
            // One empty string per element: a 4-byte zero length.
            DataType::Bytes => 4,
            t => t.element_size().unwrap_or(1),
        };
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let Some((count, bytes)) = count
            .and_then(|c| Some((c, c.checked_mul(element)?)))
            .filter(|&(_, b)| b <= MAX_WARMUP_TENSOR_BYTES)
        else {
            return Err(format!(
                "a warm-up tensor of shape {shape:?} is over {} MiB",
                MAX_WARMUP_TENSOR_BYTES >> 20
            ));
        };
        let data = match data {
            WarmupData::Zero => vec![0u8; bytes],
            // Small random values (0..64 for integers, -1..1 for floats), so that a model
            // computing in narrower types than declared (rten's INT64) takes them too.
            WarmupData::Random => (0..count).flat_map(|_| random_element(datatype)).collect(),
            WarmupData::File(f) => {
                let data = read(f)?;
                if data.len() != bytes {
                    return Err(format!(
                        "{f} holds {} bytes; shape {shape:?} of {} takes {bytes}",
                        data.len(),
                        datatype.name()
                    ));
                }
                data
            }
        };
        Ok(Tensor {
            datatype,
            shape,
            data: std::borrow::Cow::Owned(data),
        })
    };
    if !declared.is_empty() {
        return declared
            .iter()
            .map(|sample| {
                let inputs = meta
                    .inputs
                    .iter()
                    .map(|spec| {
                        let input = sample
                            .inputs
                            .iter()
                            .find(|i| i.name == spec.name)
                            .ok_or_else(|| {
                                format!("sample '{}' has no input '{}'", sample.name, spec.name)
                            })?;
                        // Triton refuses a sample that does not fit the input; so does friday,
                        // rather than hand a backend bytes of another shape or type.
                        let fits = input.dims.len() == spec.dims.len()
                            && input
                                .dims
                                .iter()
                                .zip(&spec.dims)
                                .all(|(&d, &s)| d == s || (s < 0 && d >= 0));
                        if input.datatype != spec.datatype || !fits {
                            return Err(format!(
                                "sample '{}' gives input '{}' as {} {:?}; the model takes {} {:?}",
                                sample.name,
                                spec.name,
                                input.datatype.config_name(),
                                input.dims,
                                spec.datatype.config_name(),
                                spec.dims
                            ));
                        }
                        tensor(input.datatype, &input.dims, sample.batch_size, &input.data)
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok((sample.name.clone(), inputs, sample.count))
            })
            .collect();
    }
    let mut sizes = vec![1, serving.policy.max_batch_size];
    sizes.extend(&serving.policy.preferred_batch_sizes);
    if !batched {
        sizes = vec![1];
    }
    sizes.sort_unstable();
    sizes.dedup();
    sizes
        .into_iter()
        .map(|batch| {
            let inputs = meta
                .inputs
                .iter()
                .map(|spec| tensor(spec.datatype, &spec.dims, batch, &WarmupData::Zero))
                .collect::<Result<Vec<_>, String>>()?;
            Ok((format!("batch size {batch}"), inputs, 1))
        })
        .collect()
}

/// One small random element of `datatype`, little-endian (BYTES: an empty string).
fn random_element(datatype: DataType) -> Vec<u8> {
    let small = fastrand::u8(0..64);
    match datatype {
        DataType::Bool => vec![small & 1],
        DataType::Uint8 | DataType::Int8 => vec![small],
        DataType::Uint16 | DataType::Int16 => u16::from(small).to_le_bytes().to_vec(),
        DataType::Uint32 | DataType::Int32 => u32::from(small).to_le_bytes().to_vec(),
        DataType::Uint64 | DataType::Int64 => u64::from(small).to_le_bytes().to_vec(),
        DataType::Fp32 => (fastrand::f32() * 2.0 - 1.0).to_le_bytes().to_vec(),
        DataType::Fp64 => (fastrand::f64() * 2.0 - 1.0).to_le_bytes().to_vec(),
        DataType::Fp16 | DataType::Bf16 => vec![0, 0],
        DataType::Bytes => vec![0; 4],
    }
}

/// Hands the heap's free memory back to the system: loading a model parses and copies its
/// weights through transient buffers, which glibc's allocator would otherwise keep resident.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's heaps to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The process's resident memory, in bytes (0 where `/proc` cannot tell).
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// Says so when `model` asks for the response cache and the server has none.
fn warn_if_no_cache(config: &Config, model: &str) {
    if config.cache.size_bytes == 0 {
        tracing::warn!(
            model,
            "response_cache is on but the server has no cache: set --cache-size (cache.size_bytes)"
        );
    }
}
