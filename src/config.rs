//! The one configuration tree.
//!
//! Pipeline: TOML file (optional) → serde into [`Config`] (unknown keys are errors: a typo in a
//! tuning knob must fail loudly) → CLI overrides ([`crate::cli`]) → [`Config::validate`], which
//! names the key and the fix. Every default is a named constant with its unit in the name. The
//! validated config is passed by reference; nothing deeper reads the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Address the HTTP listener binds: all IPv4 addresses, like Triton.
pub const DEFAULT_HTTP_ADDRESS: &str = "0.0.0.0";
/// Port of the HTTP listener (Triton's HTTP port).
pub const DEFAULT_HTTP_PORT: u16 = 8000;
/// How long a shard polls for more work after activity before it sleeps (50 µs): at low load this
/// halves a request's round trip on a VM (measured with `friday bench --concurrency 1`), for at
/// most 50 µs of CPU per burst of activity.
pub const DEFAULT_BUSY_POLL_US: u64 = 50;
/// Upper bound on `shards.busy_poll_us` (10 ms).
pub const MAX_BUSY_POLL_US: u64 = 10_000;
/// Largest request body accepted (64 MiB); larger bodies get 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
/// Largest request head (request line plus headers) accepted (16 KiB); larger heads get 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 << 10;
/// Most open connections one shard keeps; beyond it new connections get 503 and are closed.
pub const DEFAULT_MAX_CONNECTIONS_PER_SHARD: usize = 4096;
/// Time a client has from the first byte of a request head to its last (10 s).
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Time a connection may sit idle between requests, or stall mid-body, before it is closed (60 s).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Slowest average rate a request body may arrive at (500 B/s, Apache mod_reqtimeout's MinRate):
/// a body trickled a byte at a time, each just inside the idle timeout, cannot hold a connection
/// slot for ever.
pub const DEFAULT_MIN_BODY_BYTES_PER_SECOND: u64 = 500;
/// Slowest average rate a response may be taken at (64 KiB/s) once it has had
/// `header_read_timeout_ms` to get going: a client reading a large output a trickle at a time
/// cannot pin it for ever.
pub const DEFAULT_MIN_SEND_BYTES_PER_SECOND: u64 = 64 << 10;
/// The share of the machine's memory that the shards' connection buffers may hold together, by
/// default (an eighth: the rest is for models, their batches and the system), divided evenly
/// among the shards.
pub const DEFAULT_BUFFER_MEMORY_SHARE: u64 = 8;
/// The smallest per-shard buffer budget that default ever gives (64 MiB).
pub const MIN_DEFAULT_BUFFER_BUDGET: u64 = 64 << 20;
/// Listen backlog of each shard's socket.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;
/// How long a drain (SIGTERM) waits for in-flight requests before the process exits anyway (30 s,
/// Triton's `--exit-timeout-secs`).
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// SIGINT drains like SIGTERM but waits at most this long (5 s): an operator at a terminal.
pub const SIGINT_DRAIN_TIMEOUT_MS: u64 = 5_000;
/// Requests one model may have waiting on one shard (`dynamic_batching.max_queue_size`); beyond
/// it requests get 429 at once. Triton's 0 ("unbounded") is not allowed: every queue is bounded.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 1024;
/// Upper bound on `max_queue_size`.
pub const MAX_MAX_QUEUE_SIZE: usize = 1 << 16;
/// Upper bound on `max_batch_size`.
pub const MAX_MAX_BATCH_SIZE: usize = 4096;
/// Upper bound on `priority_levels` (each level is a queue the batcher walks).
pub const MAX_PRIORITY_LEVELS: u32 = 64;
/// The models `[models.<name>]` may configure.
pub const BUILTIN_MODELS: &[&str] = &["identity", "simple", "synthetic", "tinylm"];

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Which I/O engine the shards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
pub enum EngineChoice {
    /// io_uring when this host allows it (a probe ring is set up at start), epoll otherwise.
    #[default]
    #[serde(rename = "auto")]
    #[value(name = "auto")]
    Auto,
    /// io_uring, or refuse to start (saying why) where it is unavailable.
    #[serde(rename = "io_uring")]
    #[value(name = "io_uring")]
    IoUring,
    /// epoll (mio), everywhere.
    #[serde(rename = "epoll")]
    #[value(name = "epoll")]
    Epoll,
}

impl fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineChoice::Auto => "auto",
            EngineChoice::IoUring => "io_uring",
            EngineChoice::Epoll => "epoll",
        })
    }
}

/// friday's whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The I/O engine: `auto` (io_uring where available, else epoll), `io_uring` or `epoll`.
    pub engine: EngineChoice,
    /// The HTTP/1.1 front end.
    pub http: HttpConfig,
    /// Which CPUs run shards.
    pub shards: ShardsConfig,
    /// A model repository directory; unset serves the built-in models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_repository: Option<PathBuf>,
    /// Logging.
    pub log: LogConfig,
    /// Graceful drain on SIGTERM / SIGINT.
    pub drain: DrainConfig,
    /// How the model repository is managed at run time (Triton's `--model-control-mode`).
    pub model_control: ModelControlConfig,
    /// Generative models: `generate` and `generate_stream`.
    pub generate: GenerateConfig,
    /// The ONNX Runtime backend.
    pub onnxruntime: OnnxRuntimeConfig,
    /// The response cache.
    pub cache: CacheConfig,
    /// Per-model serving settings (`[models.<name>]`), with Triton's names.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelSettings>,
}

/// Where a model's batches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// On the shard's own thread, in its own task queue: no handoff, but a batch holds the
    /// reactor while it runs. For models that take well under a millisecond.
    Inline,
    /// On a worker thread of the shard (pinned to the shard's CPU), reached through a ring and a
    /// doorbell: the reactor keeps serving I/O while a batch computes.
    Worker,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::Inline => "inline",
            Placement::Worker => "worker",
        })
    }
}

/// `[models.<name>]`: how one model is served. Unset values keep the model's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Largest batch (items); 0 means the model takes no batch dimension, 1 turns batching off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<usize>,
    /// `inline` or `worker`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Triton's dynamic batcher settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatching>,
    /// Which versions of a repository model serve (Triton's `version_policy`; default: the
    /// newest one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_policy: Option<VersionPolicy>,
    /// Repository models: which ONNX backend runs the model (`rten` or `onnxruntime`; default
    /// rten).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<OnnxBackend>,
    /// Answer repeated requests from the response cache (Triton's `response_cache { enable:
    /// true }`); needs `cache.size_bytes` above 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_cache: Option<bool>,
    /// `synthetic` only: microseconds of CPU each batch costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_batch_us: Option<u64>,
    /// `synthetic` only: microseconds of CPU each item in a batch adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_item_us: Option<u64>,
}

impl ModelSettings {
    /// These settings with every value `over` sets taken from `over`.
    pub fn overridden_by(mut self, over: &ModelSettings) -> ModelSettings {
        if over.max_batch_size.is_some() {
            self.max_batch_size = over.max_batch_size;
        }
        if over.placement.is_some() {
            self.placement = over.placement;
        }
        if over.dynamic_batching.is_some() {
            self.dynamic_batching = over.dynamic_batching.clone();
        }
        if over.version_policy.is_some() {
            self.version_policy = over.version_policy.clone();
        }
        if over.backend.is_some() {
            self.backend = over.backend;
        }
        if over.response_cache.is_some() {
            self.response_cache = over.response_cache;
        }
        if over.cost_per_batch_us.is_some() {
            self.cost_per_batch_us = over.cost_per_batch_us;
        }
        if over.cost_per_item_us.is_some() {
            self.cost_per_item_us = over.cost_per_item_us;
        }
        self
    }
}

/// Which ONNX backend runs a repository model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnnxBackend {
    /// rten, in pure Rust.
    Rten,
    /// ONNX Runtime, loaded from its library at run time.
    OnnxRuntime,
}

/// Triton's `version_policy`, by the same names: `{ latest = { num_versions = 2 } }`,
/// `{ all = {} }` or `{ specific = { versions = [1, 3] } }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The newest `num_versions` versions.
    Latest {
        /// How many.
        num_versions: u32,
    },
    /// Every version.
    All {},
    /// These versions.
    Specific {
        /// The version numbers.
        versions: Vec<u64>,
    },
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest { num_versions: 1 }
    }
}

impl VersionPolicy {
    /// The versions of `available` (any order) this policy serves, oldest first.
    pub fn choose(&self, available: &[u64]) -> Vec<u64> {
        let mut v = available.to_vec();
        v.sort_unstable();
        v.dedup();
        match self {
            VersionPolicy::Latest { num_versions } => {
                let keep = (*num_versions as usize).max(1);
                v.split_off(v.len().saturating_sub(keep))
            }
            VersionPolicy::All {} => v,
            VersionPolicy::Specific { versions } => {
                v.retain(|x| versions.contains(x));
                v
            }
        }
    }
}

/// `[models.<name>.dynamic_batching]`, Triton's `dynamic_batching { … }` by the same names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamicBatching {
    /// How long a batch may wait for more requests (0: dispatch as soon as the model is free).
    pub max_queue_delay_microseconds: u64,
    /// Batch sizes worth dispatching before the delay runs out.
    pub preferred_batch_size: Vec<usize>,
    /// Requests that may wait per shard; beyond it, 429.
    pub max_queue_size: usize,
    /// Queue timeout for requests without a `timeout` parameter (0: none).
    pub default_timeout_microseconds: u64,
    /// Priority levels (0: none). Requests pick one with the `priority` parameter (1 is highest).
    pub priority_levels: u32,
    /// Level for requests without a `priority` parameter (1..=priority_levels).
    pub default_priority_level: u32,
}

impl Default for DynamicBatching {
    fn default() -> Self {
        DynamicBatching {
            max_queue_delay_microseconds: 0,
            preferred_batch_size: Vec::new(),
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            default_timeout_microseconds: 0,
            priority_levels: 0,
            default_priority_level: 0,
        }
    }
}

/// `[http]`: the HTTP/1.1 front end.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// IP address to bind.
    pub address: String,
    /// TCP port to bind; 0 picks a free port (logged at startup).
    pub port: u16,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Most open connections per shard.
    pub max_connections_per_shard: usize,
    /// Milliseconds allowed to receive a request head.
    pub header_read_timeout_ms: u64,
    /// Milliseconds a connection may idle (or stall mid-body) before it is closed.
    pub idle_timeout_ms: u64,
    /// Slowest average rate a request body may arrive at, in bytes per second, once it has had
    /// `header_read_timeout_ms` to get going; 0 turns the check off.
    pub min_body_bytes_per_second: u64,
    /// Slowest average rate a client may take a response at, in bytes per second, once it has
    /// had `header_read_timeout_ms`; 0 turns the check off.
    pub min_send_bytes_per_second: u64,
    /// Most bytes one shard's connections may hold in request and response buffers together;
    /// past it, requests that need more buffer get 503 at once. Default: an eighth of the
    /// machine's memory, divided among the shards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_buffered_bytes_per_shard: Option<u64>,
    /// Listen backlog per shard.
    pub listen_backlog: u32,
    /// Share the port with other friday processes (`SO_REUSEPORT`) instead of refusing a port
    /// something already listens on: for a blue-green handover on one host, where the new
    /// process binds beside the old one, becomes ready, and the old one drains. Off by default,
    /// so a second server started by mistake fails instead of silently taking half the traffic.
    pub reuse_port: bool,
    /// Large binary outputs leave from the buffer the model wrote; a send of at least this many
    /// bytes goes zero-copy (io_uring `SEND_ZC`, or `MSG_ZEROCOPY` on the epoll engine). 0, the
    /// default, never: measured over loopback (`benches/send_paths.rs`) zero copy is slower at
    /// every size, since the receiver copies anyway; over a NIC, measure before turning it on.
    pub zerocopy_send_min_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            address: DEFAULT_HTTP_ADDRESS.to_string(),
            port: DEFAULT_HTTP_PORT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections_per_shard: DEFAULT_MAX_CONNECTIONS_PER_SHARD,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            min_body_bytes_per_second: DEFAULT_MIN_BODY_BYTES_PER_SECOND,
            min_send_bytes_per_second: DEFAULT_MIN_SEND_BYTES_PER_SECOND,
            max_buffered_bytes_per_shard: None,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            reuse_port: false,
            zerocopy_send_min_bytes: 0,
        }
    }
}

impl HttpConfig {
    /// [`HttpConfig::header_read_timeout_ms`] as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// [`HttpConfig::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// Each shard's buffer budget: `max_buffered_bytes_per_shard`, or by default an eighth of
    /// `memory` (the machine's, in bytes) divided among `shards`, at least 64 MiB.
    pub fn buffer_budget(&self, memory: u64, shards: usize) -> u64 {
        self.max_buffered_bytes_per_shard.unwrap_or_else(|| {
            (memory / DEFAULT_BUFFER_MEMORY_SHARE / shards.max(1) as u64)
                .max(MIN_DEFAULT_BUFFER_BUDGET)
        })
    }
}

/// `[shards]`: one shard per CPU. Set at most one of `count` and `cpus`; neither means one shard
/// per CPU in the process's affinity mask.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardsConfig {
    /// Number of shards, on the first CPUs of the affinity mask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Explicit CPU list, e.g. `"0,2-3"`: one shard per CPU listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// After any activity, how long a shard keeps polling its engine for more work before it
    /// sleeps in the kernel, in microseconds. Waking a sleeping CPU costs tens of microseconds on
    /// a VM; polling costs the CPU the shard owns anyway. 0 turns it off.
    pub busy_poll_us: u64,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        ShardsConfig {
            count: None,
            cpus: None,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
        }
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `friday=debug` (`RUST_LOG` overrides it).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// How models are loaded and unloaded at run time, as Triton's `--model-control-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelControlMode {
    /// Every repository model is loaded at start; the repository API may only read the index.
    #[default]
    None,
    /// As `none`, and the repository is rescanned every `poll_secs`: new models and versions
    /// load, changed ones reload, removed ones unload.
    Poll,
    /// Only `load` models are loaded at start; the repository API loads and unloads.
    Explicit,
}

impl fmt::Display for ModelControlMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelControlMode::None => "none",
            ModelControlMode::Poll => "poll",
            ModelControlMode::Explicit => "explicit",
        })
    }
}

/// `[cache]`: the response cache (Triton's `--cache-config local,size=N`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bytes the cache may hold across the server, split evenly among the shards; 0 (the
    /// default) caches nothing, whatever the models ask for.
    pub size_bytes: u64,
}

impl CacheConfig {
    /// Each shard's share of `size_bytes` among `shards` shards.
    pub fn per_shard(&self, shards: usize) -> u64 {
        self.size_bytes / shards.max(1) as u64
    }
}

/// `[model_control]`: Triton's `--model-control-mode`, `--load-model` and
/// `--repository-poll-secs`, and `--http-restricted-api` for the repository API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelControlConfig {
    /// `none`, `poll` or `explicit`.
    pub mode: ModelControlMode,
    /// In explicit mode, the models loaded at start (`*`: every model in the repository).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub load: Vec<String>,
    /// In poll mode, seconds between two scans of the repository.
    pub poll_secs: u64,
    /// When set, the repository API (index, load, unload) answers only requests that carry
    /// this header with this value, as Triton's `--http-restricted-api
    /// model-repository:HEADER=VALUE`; others get 403. Written `HEADER=VALUE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restricted_api: Option<String>,
    /// A model that fails to load at start stops the start (exit 1, before the port is bound),
    /// as Triton's `--exit-on-error`. Off by default (Triton's is on): the server starts and the
    /// repository index gives the failure's reason. Turn it on where a half-working server would take
    /// traffic from a working one: a blue-green handover on a shared port.
    pub exit_on_error: bool,
}

impl Default for ModelControlConfig {
    fn default() -> Self {
        ModelControlConfig {
            mode: ModelControlMode::None,
            load: Vec::new(),
            poll_secs: DEFAULT_REPOSITORY_POLL_SECS,
            restricted_api: None,
            exit_on_error: false,
        }
    }
}

impl ModelControlConfig {
    /// The restricted API's header name (lowercase) and value.
    pub fn restriction(&self) -> Option<(String, String)> {
        let r = self.restricted_api.as_deref()?;
        let (h, v) = r.split_once('=')?;
        Some((h.trim().to_ascii_lowercase(), v.trim().to_string()))
    }
}

/// Default `model_control.poll_secs`, Triton's `--repository-poll-secs` default.
pub const DEFAULT_REPOSITORY_POLL_SECS: u64 = 15;
/// Most `model_control.poll_secs`: a day.
pub const MAX_REPOSITORY_POLL_SECS: u64 = 86_400;

/// `[drain]`: graceful shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Milliseconds to wait for in-flight requests after SIGTERM before exiting anyway.
    pub timeout_ms: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
        }
    }
}

/// Default `generate.max_sequences_per_shard`.
pub const DEFAULT_MAX_SEQUENCES_PER_SHARD: usize = 64;
/// Upper bound on `generate.max_sequences_per_shard`.
pub const MAX_MAX_SEQUENCES_PER_SHARD: usize = 4096;
/// Default `generate.stream_buffer_bytes`.
pub const DEFAULT_STREAM_BUFFER_BYTES: usize = 64 << 10;

/// `[generate]`: how generative models run and stream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateConfig {
    /// Most generate requests one generative model runs at once on one shard (its running
    /// batch); more are refused with 429. Each costs a step's share of compute and its state.
    pub max_sequences_per_shard: usize,
    /// Most output a stream keeps waiting for its client, in bytes: past it, its sequence sits
    /// steps out until the client has taken some (a slow reader slows only its own stream and
    /// pins no more than this).
    pub stream_buffer_bytes: usize,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_sequences_per_shard: DEFAULT_MAX_SEQUENCES_PER_SHARD,
            stream_buffer_bytes: DEFAULT_STREAM_BUFFER_BYTES,
        }
    }
}

/// `[onnxruntime]`: the ONNX Runtime backend, for the models rten cannot run or that ask for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxRuntimeConfig {
    /// ONNX Runtime's shared library (`libonnxruntime.so.*`, loaded at run time; the
    /// onnxruntime wheel ships one in `onnxruntime/capi/`). Unset: `ORT_DYLIB_PATH`; without
    /// either, models run on rten only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<PathBuf>,
}

/// A config value that cannot work, with the key that holds it and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending key, as written in the TOML file (`http.port`).
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        problem: problem.into(),
    }
}

impl Config {
    /// Reads and parses a TOML file. Unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses TOML text. Unknown keys are errors.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every value; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let http = &self.http;
        if http.address.parse::<IpAddr>().is_err() {
            return Err(invalid(
                "http.address",
                format!(
                    "`{}` is not an IP address: use e.g. 0.0.0.0 (all IPv4), :: (all IPv6) or 127.0.0.1",
                    http.address
                ),
            ));
        }
        if http.max_body_bytes == 0 {
            return Err(invalid(
                "http.max_body_bytes",
                "must be at least 1: set it to the largest request body to accept (default 64 MiB)",
            ));
        }
        if http.max_body_bytes > (u32::MAX as usize) {
            return Err(invalid(
                "http.max_body_bytes",
                format!(
                    "{} is above the 4 GiB ceiling: lower it",
                    http.max_body_bytes
                ),
            ));
        }
        if http.max_header_bytes < 1024 || http.max_header_bytes > (1 << 20) {
            return Err(invalid(
                "http.max_header_bytes",
                format!(
                    "{} is outside 1 KiB..=1 MiB: the default is {DEFAULT_MAX_HEADER_BYTES}",
                    http.max_header_bytes
                ),
            ));
        }
        if http.max_connections_per_shard == 0 {
            return Err(invalid(
                "http.max_connections_per_shard",
                "must be at least 1",
            ));
        }
        if http.header_read_timeout_ms == 0 {
            return Err(invalid(
                "http.header_read_timeout_ms",
                "must be at least 1 ms",
            ));
        }
        if http.idle_timeout_ms == 0 {
            return Err(invalid("http.idle_timeout_ms", "must be at least 1 ms"));
        }
        if http
            .max_buffered_bytes_per_shard
            .is_some_and(|b| b < (1 << 20))
        {
            return Err(invalid(
                "http.max_buffered_bytes_per_shard",
                "must be at least 1 MiB (1048576): every connection needs some buffer",
            ));
        }
        if http.listen_backlog == 0 {
            return Err(invalid("http.listen_backlog", "must be at least 1"));
        }
        match (&self.shards.count, &self.shards.cpus) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "shards",
                    "set either shards.count or shards.cpus, not both",
                ))
            }
            (Some(0), None) => return Err(invalid("shards.count", "must be at least 1")),
            (None, Some(list)) => {
                crate::topology::parse_cpu_list(list)
                    .map_err(|e| invalid("shards.cpus", format!("{e}: write e.g. \"0,2-3\"")))?;
            }
            _ => {}
        }
        if self.shards.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(invalid(
                "shards.busy_poll_us",
                format!("must be at most {MAX_BUSY_POLL_US} µs; 0 turns polling off"),
            ));
        }
        if let Some(repo) = &self.model_repository {
            if !repo.is_dir() {
                return Err(invalid(
                    "model_repository",
                    format!(
                        "{} is not a directory: point it at a model repository or leave it unset \
                         to serve the built-in models",
                        repo.display()
                    ),
                ));
            }
        }
        if !(1..=MAX_REPOSITORY_POLL_SECS).contains(&self.model_control.poll_secs) {
            return Err(invalid(
                "model_control.poll_secs",
                format!("must be 1 to {MAX_REPOSITORY_POLL_SECS} seconds (a day)"),
            ));
        }
        if self.model_control.mode != ModelControlMode::None && self.model_repository.is_none() {
            return Err(invalid(
                "model_control.mode",
                format!(
                    "`{}` manages a model repository: set model_repository (--model-repository)",
                    self.model_control.mode
                ),
            ));
        }
        if !self.model_control.load.is_empty()
            && self.model_control.mode != ModelControlMode::Explicit
        {
            return Err(invalid(
                "model_control.load",
                "names models to load at start in explicit mode only (in none and poll modes \
                 every repository model loads)",
            ));
        }
        if let Some(r) = &self.model_control.restricted_api {
            let ok = r
                .split_once('=')
                .is_some_and(|(h, v)| is_header_name(h.trim()) && !v.trim().is_empty());
            if !ok {
                return Err(invalid(
                    "model_control.restricted_api",
                    format!("`{r}` is not HEADER=VALUE (e.g. admin-key=secret)"),
                ));
            }
        }
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty: use e.g. info"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            invalid(
                "log.level",
                format!(
                    "`{}` is not a tracing filter ({e}): use e.g. info or friday=debug",
                    self.log.level
                ),
            )
        })?;
        if self.drain.timeout_ms == 0 {
            return Err(invalid("drain.timeout_ms", "must be at least 1 ms"));
        }
        if !(1..=MAX_MAX_SEQUENCES_PER_SHARD).contains(&self.generate.max_sequences_per_shard) {
            return Err(invalid(
                "generate.max_sequences_per_shard",
                format!("must be 1 to {MAX_MAX_SEQUENCES_PER_SHARD}"),
            ));
        }
        if !(1024..=(64 << 20)).contains(&self.generate.stream_buffer_bytes) {
            return Err(invalid(
                "generate.stream_buffer_bytes",
                "must be 1 KiB to 64 MiB (1024..=67108864)",
            ));
        }
        for (name, m) in &self.models {
            validate_model(name, m, self.model_repository.is_some())?;
        }
        Ok(())
    }

    /// The settings of model `name` (defaults when it has no section).
    pub fn model(&self, name: &str) -> ModelSettings {
        self.models.get(name).cloned().unwrap_or_default()
    }

    /// The config as TOML, as `--check-config` prints it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self)
            .expect("the config tree serializes: it holds only plain values")
    }
}

/// Whether `h` can be an HTTP header name (an RFC 9110 token).
fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks `[models.<name>]`. Without a model repository only the built-in models exist; with
/// one, a section may name a repository model (the registry warns about one that names nothing
/// it serves, since the repository is read after the config).
pub(crate) fn validate_model(
    name: &str,
    m: &ModelSettings,
    repository: bool,
) -> Result<(), ConfigError> {
    // Keys name the section; the problem names the model, so the message points at the line.
    if !repository && !BUILTIN_MODELS.contains(&name) {
        return Err(invalid(
            "models",
            format!(
                "no model named `{name}`: the models are {} (and, with --model-repository, the \
                 repository's)",
                BUILTIN_MODELS.join(", ")
            ),
        ));
    }
    if name != "synthetic" && (m.cost_per_batch_us.is_some() || m.cost_per_item_us.is_some()) {
        return Err(invalid(
            "models.*.cost_per_batch_us",
            format!("`{name}`: cost_per_batch_us and cost_per_item_us apply only to synthetic"),
        ));
    }
    if name == "tinylm" && m.response_cache == Some(true) {
        return Err(invalid(
            "models.*.response_cache",
            "`tinylm` streams what it generates: a generative model's answers are never cached",
        ));
    }
    let max_batch = m.max_batch_size.unwrap_or(1);
    if max_batch > MAX_MAX_BATCH_SIZE {
        return Err(invalid(
            "models.*.max_batch_size",
            format!("`{name}`: {max_batch} is above {MAX_MAX_BATCH_SIZE}"),
        ));
    }
    if let Some(b) = &m.dynamic_batching {
        if b.max_queue_size == 0 || b.max_queue_size > MAX_MAX_QUEUE_SIZE {
            return Err(invalid(
                "models.*.dynamic_batching.max_queue_size",
                format!(
                    "`{name}`: {} is outside 1..={MAX_MAX_QUEUE_SIZE}; every queue is bounded",
                    b.max_queue_size
                ),
            ));
        }
        if let Some(max) = m.max_batch_size {
            if let Some(p) = b
                .preferred_batch_size
                .iter()
                .find(|&&p| p == 0 || p > max.max(1))
            {
                return Err(invalid(
                    "models.*.dynamic_batching.preferred_batch_size",
                    format!("`{name}`: {p} is outside 1..=max_batch_size ({max})"),
                ));
            }
        }
        if b.priority_levels > MAX_PRIORITY_LEVELS {
            return Err(invalid(
                "models.*.dynamic_batching.priority_levels",
                format!(
                    "`{name}`: {} is above {MAX_PRIORITY_LEVELS}",
                    b.priority_levels
                ),
            ));
        }
        if b.priority_levels > 0 && !(1..=b.priority_levels).contains(&b.default_priority_level) {
            return Err(invalid(
                "models.*.dynamic_batching.default_priority_level",
                format!(
                    "`{name}`: {} is outside 1..={} (priority_levels)",
                    b.default_priority_level, b.priority_levels
                ),
            ));
        }
        if b.priority_levels == 0 && b.default_priority_level != 0 {
            return Err(invalid(
                "models.*.dynamic_batching.default_priority_level",
                format!("`{name}`: set priority_levels first"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn parses_a_full_file() {
        let c = Config::from_toml(
            r#"
            [http]
            address = "127.0.0.1"
            port = 9000
            max_body_bytes = 1024
            [shards]
            cpus = "0-1"
            [log]
            format = "json"
            [drain]
            timeout_ms = 100
            "#,
        )
        .unwrap();
        assert_eq!(c.http.port, 9000);
        assert_eq!(c.http.max_body_bytes, 1024);
        assert_eq!(c.http.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
        assert_eq!(c.shards.cpus.as_deref(), Some("0-1"));
        assert_eq!(c.log.format, LogFormat::Json);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::from_toml("[http]\nprot = 1\n").unwrap_err();
        assert!(e.contains("prot"), "{e}");
        let e = Config::from_toml("htp = 1\n").unwrap_err();
        assert!(e.contains("htp"), "{e}");
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = Config::default();
        c.http.address = "localhost:80".into();
        assert_eq!(c.validate().unwrap_err().key, "http.address");

        let mut c = Config::default();
        c.shards.count = Some(2);
        c.shards.cpus = Some("0".into());
        assert_eq!(c.validate().unwrap_err().key, "shards");

        let mut c = Config::default();
        c.shards.cpus = Some("0-".into());
        assert_eq!(c.validate().unwrap_err().key, "shards.cpus");

        let mut c = Config::default();
        c.http.max_body_bytes = 0;
        assert_eq!(c.validate().unwrap_err().key, "http.max_body_bytes");

        let c = Config {
            model_repository: Some("/definitely/not/here".into()),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "model_repository");

        let mut c = Config::default();
        c.log.level = "info,[".into();
        assert_eq!(c.validate().unwrap_err().key, "log.level");
    }

    #[test]
    fn model_sections_use_tritons_names() {
        let c = Config::from_toml(
            r#"
            [models.synthetic]
            max_batch_size = 32
            placement = "worker"
            cost_per_batch_us = 500
            cost_per_item_us = 20
            [models.synthetic.dynamic_batching]
            max_queue_delay_microseconds = 1000
            preferred_batch_size = [16, 32]
            max_queue_size = 64
            default_timeout_microseconds = 5000
            priority_levels = 2
            default_priority_level = 2
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let m = c.model("synthetic");
        assert_eq!(m.placement, Some(Placement::Worker));
        let b = m.dynamic_batching.unwrap();
        assert_eq!(b.preferred_batch_size, vec![16, 32]);
        assert_eq!(c.model("identity"), ModelSettings::default());
        assert!(Config::from_toml("[models.identity]\nmax_batch = 3\n").is_err());
    }

    #[test]
    fn model_settings_are_checked() {
        let bad = [
            ("[models.nope]\nmax_batch_size = 1\n", "models"),
            ("[models.identity]\ncost_per_batch_us = 1\n", "models.*.cost_per_batch_us"),
            (
                "[models.synthetic]\nmax_batch_size = 4\n[models.synthetic.dynamic_batching]\npreferred_batch_size = [8]\n",
                "models.*.dynamic_batching.preferred_batch_size",
            ),
            (
                "[models.simple.dynamic_batching]\nmax_queue_size = 0\n",
                "models.*.dynamic_batching.max_queue_size",
            ),
            (
                "[models.simple.dynamic_batching]\npriority_levels = 4000000000\n",
                "models.*.dynamic_batching.priority_levels",
            ),
            (
                "[models.simple.dynamic_batching]\npriority_levels = 2\ndefault_priority_level = 3\n",
                "models.*.dynamic_batching.default_priority_level",
            ),
        ];
        for (toml, key) in bad {
            let c = Config::from_toml(toml).unwrap();
            assert_eq!(c.validate().unwrap_err().key, key, "{toml}");
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::default();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }
}
