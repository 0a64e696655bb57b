//! The request handler: one decoded HTTP request in, one encoded response out.
//!
//! [`ServiceState`] is what every shard shares read-only (the registry and the documents rendered
//! from it once at startup). [`ShardService`] is one shard's view: the shared state plus its own
//! statistics, metrics, response cache, drain flag and cached `Date` header. The handler knows
//! nothing of sockets or I/O engines. A repeated request to a model with `response_cache` is
//! answered from the cache here. What it cannot do alone it hands back to the runtime as an
//! [`Action`]: an infer request goes to the model's batcher ([`Action::Infer`], answered later by
//! [`ShardService::finish_infer`], which stores a missed answer), and statistics and metrics need
//! every shard's numbers ([`Action::Gather`]).

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use smallvec::SmallVec;

use crate::cache::{CacheCounts, Lookup, PendingKey, ResponseCache};
use crate::config::ModelControlMode;
use crate::error::{ApiError, ErrorKind};
use crate::generate::GenerateParams;
use crate::http::{InferenceHeader, Method, Responder, ENCODE_SLICE_BYTES, JSON};
use crate::metrics::{self, Outcome, ShardMetrics, ShardMetricsSnapshot};
use crate::model::manager::ConfigOverride;
use crate::model::{ModelEntry, ModelRegistry};
use crate::protocol::json_data::write_json_elements;
use crate::protocol::{self, metadata, InferRequest, ModelAction, Route};
use crate::stats::{render_stats, RequestTimes, ShardStats, StatsSnapshot};
use crate::tensor::Tensor;

/// `Content-Type` of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `Date` header value: always 29 bytes (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub type HttpDate = [u8; 29];

/// Formats `now` as an HTTP date.
pub fn http_date(now: SystemTime) -> HttpDate {
    let text = httpdate::fmt_http_date(now);
    let mut out = [b' '; 29];
    let n = text.len().min(29);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

struct ModelDocs {
    metadata: Vec<u8>,
    config: Vec<u8>,
    ready: Vec<u8>,
}

/// How the repository API (`/v2/repository/…`) may be used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryApi {
    /// Load and unload act only in `explicit` mode, as in Triton.
    pub mode: ModelControlMode,
    /// The header (lowercase) and value every repository call must carry, if restricted.
    pub restriction: Option<(String, String)>,
}

impl std::fmt::Debug for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceState")
            .field("versions", &self.registry.entries().len())
            .finish()
    }
}

/// What every shard shares, read-only: one generation of the registry and its pre-rendered
/// documents. The model manager publishes a new one on every change.
pub struct ServiceState {
    registry: Arc<ModelRegistry>,
    /// Aligned with the registry's entries.
    docs: Vec<ModelDocs>,
    server_metadata: Vec<u8>,
    api: RepositoryApi,
}

impl ServiceState {
    /// Renders every document once.
    pub fn new(registry: Arc<ModelRegistry>, api: RepositoryApi) -> Self {
        let docs = registry
            .entries()
            .iter()
            .map(|e| {
                let meta = e.model.metadata();
                let versions: Vec<&str> = registry
                    .versions(e.name())
                    .map(|o| o.version.as_str())
                    .collect();
                ModelDocs {
                    metadata: metadata::model_metadata(meta, &versions),
                    config: metadata::model_config(
                        meta,
                        &e.serving,
                        e.model.generative().is_some(),
                        e.model.runtime(),
                    ),
                    ready: metadata::model_ready(&meta.name),
                }
            })
            .collect();
        ServiceState {
            server_metadata: metadata::server_metadata(crate::SERVER_NAME, crate::SERVER_VERSION),
            registry,
            docs,
            api,
        }
    }

    /// The registry.
    pub fn registry(&self) -> &ModelRegistry {
        &self.registry
    }
}

/// A repository API call, for the model manager (which runs off the shards).
#[derive(Debug, Clone, PartialEq)]
pub enum RepositoryCall {
    /// `POST /v2/repository/index`
    Index {
        /// Only what serves (`{"ready": true}`).
        ready_only: bool,
    },
    /// `POST /v2/repository/models/{m}/load`
    Load {
        /// The model.
        name: String,
        /// The `config` parameter.
        config: Option<ConfigOverride>,
    },
    /// `POST /v2/repository/models/{m}/unload`
    Unload {
        /// The model.
        name: String,
    },
}

/// Puts `e` in its slot.
fn put_slot(slots: &mut Vec<Option<Arc<ModelEntry>>>, e: &Arc<ModelEntry>) {
    if slots.len() <= e.index {
        slots.resize_with(e.index + 1, || None);
    }
    slots[e.index] = Some(e.clone());
}

/// A repository call's JSON body (empty: `{}`).
fn parse_call_body(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not a JSON object: {e}")))
}

/// Where decoded tensors get their buffers: the shard's pool, so a JSON tensor reuses the buffer
/// an earlier request gave back.
pub trait TensorBuffers {
    /// An empty buffer with room for at least `capacity` bytes.
    fn take(&self, capacity: usize) -> Vec<u8>;
}

/// One decoded HTTP request, as the handler sees it.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The path, without query string.
    pub path: &'a str,
    /// The whole body.
    pub body: &'a [u8],
    /// The `Inference-Header-Content-Length` header.
    pub inference_header: InferenceHeader,
    /// When the request's last bytes were read.
    pub received: Instant,
    /// The value of the restricted API's key header, if sent.
    pub api_key: Option<&'a [u8]>,
    /// Where decoded tensors get their buffers.
    pub buffers: &'a dyn TensorBuffers,
}

/// What a request needs from every shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gather {
    /// Triton statistics of every model (`None`) or of one registry entry.
    Stats {
        /// `None` for every model.
        only: Option<usize>,
    },
    /// Prometheus metrics.
    Metrics,
}

/// A decoded infer request on its way to its model's batcher.
#[derive(Debug)]
pub struct InferJob<'r> {
    /// Registry index of the model.
    pub model: usize,
    /// The decoded request (the batcher takes its inputs).
    pub request: InferRequest<'r>,
    /// When its bytes were read.
    pub received: Instant,
    /// When it was decoded.
    pub decoded: Instant,
    /// Its queue level (0-based; 0 is served first).
    pub level: usize,
    /// Its response cache key, if it missed and its answer is to be stored.
    pub cache_key: PendingKey,
}

impl InferJob<'_> {
    /// The job without its inputs, owning its data: see [`InferRequest::detach`].
    pub fn detach(self) -> InferJob<'static> {
        InferJob {
            model: self.model,
            request: self.request.detach(),
            received: self.received,
            decoded: self.decoded,
            level: self.level,
            cache_key: self.cache_key,
        }
    }
}

/// A decoded generate request on its way to its model's decoder.
#[derive(Debug)]
pub struct GenerateJob {
    /// Registry index (slot) of the model.
    pub model: usize,
    /// What it asks for.
    pub params: GenerateParams,
    /// Server-sent events, one per token (`generate_stream`), or one answer at the end.
    pub stream: bool,
    /// When its bytes were read.
    pub received: Instant,
}

/// What the runtime must do after [`ShardService::handle`].
// Returned by value and consumed at once: boxing the large variant would allocate per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Action<'r> {
    /// The response is written.
    Done,
    /// Gather every shard's snapshots, then call [`ShardService::answer_stats`] or
    /// [`ShardService::answer_metrics`].
    Gather(Gather),
    /// Submit to the model's batcher, then call [`ShardService::finish_infer`].
    Infer(InferJob<'r>),
    /// Ask the model manager, then answer with what it says.
    Repository(RepositoryCall),
    /// Admit to the model's decoder, then stream or answer what it generates.
    Generate(GenerateJob),
}

/// A request's batch ran: its outputs and when things happened.
pub struct Ran<'o> {
    /// Its outputs, in the model's metadata order.
    pub outputs: &'o [Tensor<'o>],
    /// When its batch left the queue.
    pub dispatched: Instant,
    /// When the model started.
    pub infer_start: Instant,
    /// When the model finished.
    pub infer_end: Instant,
}

/// One shard's handler. `!Sync` on purpose: it belongs to one shard.
pub struct ShardService {
    state: Arc<ServiceState>,
    /// Every model version this shard holds, by slot: those served now and those gone that
    /// still answer their last requests.
    slots: Vec<Option<Arc<ModelEntry>>>,
    stats: ShardStats,
    metrics: ShardMetrics,
    cache: RefCell<ResponseCache>,
    draining: Cell<bool>,
    date: Cell<HttpDate>,
}

impl ShardService {
    /// A handler for one shard, with a response cache of `cache_bytes`.
    pub fn new(state: Arc<ServiceState>, cache_bytes: u64) -> Self {
        let mut slots = Vec::new();
        for e in state.registry.entries() {
            put_slot(&mut slots, e);
        }
        ShardService {
            stats: ShardStats::new(&state.registry),
            metrics: ShardMetrics::new(&state.registry),
            cache: RefCell::new(ResponseCache::new(cache_bytes)),
            slots,
            state,
            draining: Cell::new(false),
            date: Cell::new(http_date(SystemTime::now())),
        }
    }

    /// The shared state.
    pub fn state(&self) -> &ServiceState {
        &self.state
    }

    /// Switches to a newly published generation. Returns the slots that are gone from it; they
    /// keep their entry, statistics and metrics until [`ShardService::forget`], once their last
    /// request is answered.
    pub fn publish(&mut self, state: Arc<ServiceState>) -> Vec<usize> {
        for e in state.registry.entries() {
            if self.slot(e.index).is_none() {
                put_slot(&mut self.slots, e);
                self.stats.add(e);
                self.metrics.add(e.index);
            }
        }
        let gone = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| s.is_some() && state.registry.slot(*i).is_none())
            .map(|(i, _)| i)
            .collect::<Vec<_>>();
        // A gone version's answers are never found again (lookups use the slot being served):
        // free their bytes now rather than when its last request is answered.
        for &slot in &gone {
            self.cache.get_mut().invalidate(slot);
        }
        self.state = state;
        gone
    }

    /// Drops a gone slot's entry, statistics and metrics.
    pub fn forget(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
        self.stats.remove(slot);
        self.metrics.remove(slot);
        self.cache.get_mut().remove(slot);
    }

    /// The model version in `slot`, while this shard holds it.
    pub fn slot(&self, slot: usize) -> Option<&Arc<ModelEntry>> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// Turns readiness to 503; responses from now on close their connections.
    pub fn start_draining(&self) {
        self.draining.set(true);
    }

    /// Whether the shard is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Refreshes the cached `Date` header (the runtime calls this a few times a second).
    pub fn refresh_date(&self, now: SystemTime) {
        self.date.set(http_date(now));
    }

    /// The cached `Date` header value.
    pub fn date(&self) -> HttpDate {
        self.date.get()
    }

    /// This shard's Triton statistics.
    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }

    /// This shard's metrics.
    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    /// This shard's response cache counts, by slot.
    pub fn cache_counts(&self) -> Vec<CacheCounts> {
        let cache = self.cache.borrow();
        (0..self.slots.len()).map(|i| cache.counts(i)).collect()
    }

    /// This shard's statistics, to merge with other shards'.
    pub fn stats_snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Handles one request, writing its response into `resp` unless the runtime has more to do.
    pub fn handle<'r>(&self, req: &Request<'r>, resp: &mut Responder<'_>) -> Action<'r> {
        match self.dispatch(req, resp) {
            Ok(action) => action,
            Err(e) => {
                resp.error(&e);
                Action::Done
            }
        }
    }

    fn dispatch<'r>(
        &self,
        req: &Request<'r>,
        resp: &mut Responder<'_>,
    ) -> Result<Action<'r>, ApiError> {
        let route = protocol::route(if req.path.is_empty() { "/" } else { req.path });
        let wants_post = matches!(
            route,
            Route::Model {
                action: ModelAction::Infer | ModelAction::Generate { .. },
                ..
            } | Route::RepositoryIndex
                | Route::Repository { .. }
        );
        let method_ok = match req.method {
            Method::Get | Method::Head => !wants_post,
            Method::Post => wants_post,
            Method::Other => false,
        };
        if route == Route::NotFound {
            return Err(ApiError::not_found(format!(
                "no such endpoint: {}",
                req.path
            )));
        }
        if !method_ok {
            return Err(ApiError::new(
                ErrorKind::MethodNotAllowed,
                format!(
                    "{} takes {}",
                    req.path,
                    if wants_post { "POST" } else { "GET or HEAD" }
                ),
            ));
        }
        match route {
            // Constant bodies: a health probe allocates nothing.
            Route::HealthLive => resp.bytes(200, JSON, br#"{"live":true}"#),
            Route::HealthReady if self.is_draining() => {
                resp.bytes(503, JSON, br#"{"ready":false}"#)
            }
            Route::HealthReady => resp.bytes(200, JSON, br#"{"ready":true}"#),
            Route::ServerMetadata => resp.bytes(200, JSON, &self.state.server_metadata),
            Route::AllStats => return Ok(Action::Gather(Gather::Stats { only: None })),
            Route::RepositoryIndex => {
                self.check_repository_call(req, None)?;
                let ready_only = parse_call_body(req.body)?
                    .get("ready")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false);
                return Ok(Action::Repository(RepositoryCall::Index { ready_only }));
            }
            Route::Repository { name, load } => {
                self.check_repository_call(req, Some(name))?;
                let body = parse_call_body(req.body)?;
                let params = body.get("parameters").and_then(|p| p.as_object());
                let name = name.to_string();
                if !load {
                    return Ok(Action::Repository(RepositoryCall::Unload { name }));
                }
                let mut config = None;
                for (key, value) in params.into_iter().flatten() {
                    match (key.as_str(), value) {
                        ("config", serde_json::Value::String(text)) => {
                            config = Some(ConfigOverride::new(text.clone()));
                        }
                        ("config", _) => {
                            return Err(ApiError::invalid(
                                "the config parameter must be a string holding the JSON model \
                                 configuration",
                            ))
                        }
                        (k, _) if k.starts_with("file:") => {
                            return Err(ApiError::new(
                                ErrorKind::NotImplemented,
                                "loading model files sent in the request (file: parameters) is \
                                 not supported: put the model in the repository",
                            ))
                        }
                        _ => {}
                    }
                }
                return Ok(Action::Repository(RepositoryCall::Load { name, config }));
            }
            Route::Metrics => return Ok(Action::Gather(Gather::Metrics)),
            Route::Model {
                name,
                version,
                action,
            } => {
                let position = self.state.registry.position(name, version)?;
                let entry = &self.state.registry.entries()[position];
                let docs = &self.state.docs[position];
                match action {
                    ModelAction::Metadata => resp.bytes(200, JSON, &docs.metadata),
                    ModelAction::Ready => resp.bytes(200, JSON, &docs.ready),
                    ModelAction::Config => resp.bytes(200, JSON, &docs.config),
                    ModelAction::Stats => {
                        return Ok(Action::Gather(Gather::Stats {
                            only: Some(entry.index),
                        }))
                    }
                    ModelAction::Generate { stream } => {
                        let meta = entry.model.metadata();
                        let decoded = if entry.model.generative().is_none() {
                            Err(ApiError::invalid(format!(
                                "model '{}' does not generate text: use its infer endpoint \
                                 (generate and generate_stream serve decoupled models such as \
                                 tinylm)",
                                meta.name
                            )))
                        } else {
                            protocol::generate::decode_generate_request(meta, req.body)
                        };
                        return match decoded {
                            Ok(params) => Ok(Action::Generate(GenerateJob {
                                model: entry.index,
                                params,
                                stream,
                                received: req.received,
                            })),
                            Err(e) => {
                                self.record_failure(entry.index, req.received, &e);
                                Err(e)
                            }
                        };
                    }
                    ModelAction::Infer if entry.model.generative().is_some() => {
                        let e = ApiError::invalid(format!(
                            "model '{}' is decoupled (it generates text token by token): use \
                             /v2/models/{0}/generate or /v2/models/{0}/generate_stream",
                            entry.model.metadata().name
                        ));
                        self.record_failure(entry.index, req.received, &e);
                        return Err(e);
                    }
                    ModelAction::Infer => {
                        let decoded = protocol::decode_infer_request_into(
                            entry.model.metadata(),
                            req.body,
                            req.inference_header,
                            &mut |n| req.buffers.take(n),
                        )
                        .and_then(|request| {
                            // Per request, before batching: one bad request never fails a batch.
                            entry.model.check_request(&request.inputs).map_err(|e| {
                                ApiError::invalid(format!(
                                    "model '{}': {e}",
                                    entry.model.metadata().name
                                ))
                            })?;
                            Ok(request)
                        })
                        .map(|request| InferJob {
                            model: entry.index,
                            level: entry.serving.level(request.priority),
                            request,
                            received: req.received,
                            decoded: Instant::now(),
                            cache_key: PendingKey::default(),
                        });
                        return match decoded {
                            Ok(job) => Ok(self.answer_from_cache(entry, job, resp)),
                            Err(e) => {
                                self.record_failure(entry.index, req.received, &e);
                                Err(e)
                            }
                        };
                    }
                }
            }
            Route::NotFound => unreachable!("answered 404 above"),
        }
        Ok(Action::Done)
    }

    /// Answers `job` from the response cache when it holds the answer; otherwise hands it on to
    /// its batcher, carrying its key if its answer is to be stored. Requests with a `priority` or
    /// `timeout` are scheduled, so they always run.
    fn answer_from_cache<'r>(
        &self,
        entry: &ModelEntry,
        job: InferJob<'r>,
        resp: &mut Responder<'_>,
    ) -> Action<'r> {
        let request = &job.request;
        if !entry.serving.response_cache
            || request.priority.is_some()
            || request.timeout_us.is_some()
        {
            return Action::Infer(job);
        }
        let start = Instant::now();
        let mut cache = self.cache.borrow_mut();
        match cache.lookup(entry.index, request) {
            Lookup::Uncacheable => Action::Infer(job),
            Lookup::Hit(e) => {
                resp.send_spliced(
                    200,
                    e.before_id(),
                    request.id.as_deref(),
                    e.after_id(),
                    e.binary(),
                );
                let done = Instant::now();
                self.stats
                    .record_cache_hit(entry.index, job.received, start, done);
                if let Some(m) = self.metrics.model(entry.index) {
                    m.request_nanos((done - job.received).as_nanos() as u64);
                    m.outcome(Outcome::Success);
                }
                Action::Done
            }
            Lookup::Miss(key) => {
                self.stats.record_cache_miss(entry.index, start.elapsed());
                job.cache_key.set(key);
                Action::Infer(job)
            }
        }
    }

    /// Stores the answer `json` + `tails` to `job` if it carries a cache key and its model
    /// version still serves.
    fn store(&self, entry: &ModelEntry, job: &InferJob<'_>, json: &[u8], tails: &[&[u8]]) {
        let Some(key) = job.cache_key.take() else {
            return;
        };
        let start = Instant::now();
        let mut cache = self.cache.borrow_mut();
        if self.state.registry.slot(job.model).is_none() {
            cache.give_back(key);
            return;
        }
        let id = job.request.id.as_deref();
        cache.insert(
            job.model,
            key,
            entry.name(),
            &entry.version,
            id,
            json,
            tails,
        );
        self.stats.record_cache_store(job.model, start.elapsed());
    }

    /// Answers an infer request: encodes its outputs if its batch ran, or its error.
    pub fn finish_infer(
        &self,
        job: &InferJob<'_>,
        ran: Result<Ran<'_>, ApiError>,
        resp: &mut Responder<'_>,
    ) {
        let Some(entry) = self.slot(job.model) else {
            resp.error(&ApiError::internal(
                "the request's model version is gone from this shard; this is a bug in friday",
            ));
            return;
        };
        let ran = match ran {
            Ok(ran) => ran,
            Err(e) => {
                if let Some(key) = job.cache_key.take() {
                    self.cache.borrow_mut().give_back(key);
                }
                self.record_failure(job.model, job.received, &e);
                resp.error(&e);
                return;
            }
        };
        let encode_start = Instant::now();
        let encoded = protocol::encode_infer_response(
            entry.model.metadata(),
            &entry.version,
            &job.request,
            ran.outputs,
            resp.scratch(),
            ENCODE_SLICE_BYTES,
        );
        let encoded = match encoded {
            Ok(encoded) => encoded,
            Err(e) => {
                self.record_failure(job.model, job.received, &e);
                resp.error(&e);
                return;
            }
        };
        if encoded.left_out.is_empty() {
            self.store(entry, job, resp.scratch_bytes(), &encoded.tails);
            resp.send_scratch(200, &encoded.tails);
        } else {
            // Large JSON data: written a slice at a time by the connection, where it can.
            let data: SmallVec<[_; 1]> = encoded
                .left_out
                .iter()
                .map(|l| (l.at, l.datatype, l.data))
                .collect();
            resp.send_scratch_with(200, &data, write_json_elements);
        }
        let encoded = Instant::now();
        self.stats.record_success(
            job.model,
            job.request.batch_size,
            &RequestTimes {
                received: job.received,
                decoded: job.decoded,
                dispatched: ran.dispatched,
                infer_start: ran.infer_start,
                infer_end: ran.infer_end,
                encode_start,
                encoded,
            },
        );
        if let Some(m) = self.metrics.model(job.model) {
            m.request_nanos((encoded - job.received).as_nanos() as u64);
            m.queue_nanos(
                ran.dispatched
                    .saturating_duration_since(job.decoded)
                    .as_nanos() as u64,
            );
            m.outcome(Outcome::Success);
        }
    }

    /// Counts a request refused before it reached its model (429 at admission, say).
    pub fn record_refused(&self, model: usize, received: Instant, e: &ApiError) {
        self.record_failure(model, received, e);
    }

    /// Counts a request whose client left before its batch formed (nobody gets an answer).
    pub fn record_cancelled(&self, model: usize) {
        if let Some(m) = self.metrics.model(model) {
            m.outcome(Outcome::Cancelled);
        }
    }

    fn record_failure(&self, model: usize, received: Instant, e: &ApiError) {
        self.stats.record_failure(model, received, Instant::now());
        if let Some(m) = self.metrics.model(model) {
            m.outcome(match e.kind {
                ErrorKind::Overloaded => Outcome::Rejected,
                ErrorKind::TimedOut => Outcome::Timeout,
                _ => Outcome::Failure,
            });
        }
    }

    /// Refuses a repository call this server does not allow: without the restricted API's key
    /// (403), or a load or unload (`model`) outside explicit mode, as in Triton.
    fn check_repository_call(
        &self,
        req: &Request<'_>,
        model: Option<&str>,
    ) -> Result<(), ApiError> {
        let api = &self.state.api;
        if let Some((header, key)) = &api.restriction {
            if req.api_key != Some(key.as_bytes()) {
                return Err(ApiError::new(
                    ErrorKind::Forbidden,
                    format!(
                        "the model repository API is restricted: send the '{header}' header with \
                         the key this server was configured with"
                    ),
                ));
            }
        }
        if let Some(name) = model {
            if api.mode != ModelControlMode::Explicit {
                return Err(ApiError::invalid(format!(
                    "cannot load or unload '{name}': models are loaded and unloaded on request \
                     only in explicit mode (--model-control-mode explicit); this server runs in \
                     {} mode",
                    api.mode
                )));
            }
        }
        Ok(())
    }

    /// Answers a statistics request with `merged` (every shard's statistics, merged).
    pub fn answer_stats(
        &self,
        only: Option<usize>,
        merged: &StatsSnapshot,
        resp: &mut Responder<'_>,
    ) {
        let doc = render_stats(&self.state.registry, merged, only);
        resp.bytes(200, JSON, &doc);
    }

    /// Answers `GET /metrics` with every shard's metrics.
    pub fn answer_metrics(&self, shards: &[ShardMetricsSnapshot], resp: &mut Responder<'_>) {
        let text = metrics::render(&self.state.registry, shards);
        resp.bytes(200, PROMETHEUS_TEXT, text.as_bytes());
    }
}
