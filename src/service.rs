//! The request handler: one decoded HTTP request in, one encoded response out.
//!
//! [`ServiceState`] is what every shard shares read-only (the registry and the documents rendered
//! from it once at startup). [`ShardService`] is one shard's view: the shared state plus its own
//! statistics, drain flag and cached `Date` header. The handler knows nothing of sockets or
//! glommio; the one thing it cannot do alone, merging statistics from other shards, it hands back
//! to the runtime as [`Action::GatherStats`].

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::json;

use crate::error::{ApiError, ErrorKind};
use crate::http::{InferenceHeader, Method, Responder, JSON};
use crate::model::{ModelEntry, ModelRegistry};
use crate::protocol::{self, metadata, ModelAction, Route};
use crate::stats::{render_stats, RequestTimes, ShardStats, StatsSnapshot};

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

/// What every shard shares, read-only: the registry and its pre-rendered documents.
pub struct ServiceState {
    registry: Arc<ModelRegistry>,
    docs: Vec<ModelDocs>,
    server_metadata: Vec<u8>,
}

impl ServiceState {
    /// Renders every document once.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        let docs = registry
            .entries()
            .iter()
            .map(|e| {
                let meta = e.model.metadata();
                let versions: Vec<&str> = registry
                    .entries()
                    .iter()
                    .filter(|o| o.name() == e.name())
                    .map(|o| o.version.as_str())
                    .collect();
                ModelDocs {
                    metadata: metadata::model_metadata(meta, &versions),
                    config: metadata::model_config(meta),
                    ready: metadata::model_ready(&meta.name),
                }
            })
            .collect();
        ServiceState {
            server_metadata: metadata::server_metadata(crate::SERVER_NAME, crate::SERVER_VERSION),
            registry,
            docs,
        }
    }

    /// The registry.
    pub fn registry(&self) -> &ModelRegistry {
        &self.registry
    }
}

/// One decoded HTTP request, as the handler sees it.
#[derive(Debug, Clone, Copy)]
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
}

/// Which statistics a `…/stats` request wants: every model, or one registry entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsQuery {
    /// `None` for every model.
    pub only: Option<usize>,
}

/// What the runtime must do after [`ShardService::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The response is written.
    Done,
    /// Gather every shard's statistics, then call [`ShardService::answer_stats`].
    GatherStats(StatsQuery),
}

/// One shard's handler. `!Sync` on purpose: it belongs to one shard.
pub struct ShardService {
    state: Arc<ServiceState>,
    stats: ShardStats,
    draining: Cell<bool>,
    date: Cell<HttpDate>,
}

impl ShardService {
    /// A handler for one shard.
    pub fn new(state: Arc<ServiceState>) -> Self {
        ShardService {
            stats: ShardStats::new(&state.registry),
            state,
            draining: Cell::new(false),
            date: Cell::new(http_date(SystemTime::now())),
        }
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

    /// This shard's statistics.
    pub fn stats_snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Handles one request, writing its response into `resp` unless it needs other shards.
    pub fn handle(&self, req: &Request<'_>, resp: &mut Responder<'_>) -> Action {
        match self.dispatch(req, resp) {
            Ok(action) => action,
            Err(e) => {
                resp.error(&e);
                Action::Done
            }
        }
    }

    fn dispatch(&self, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<Action, ApiError> {
        let route = protocol::route(if req.path.is_empty() { "/" } else { req.path });
        let wants_post = matches!(
            route,
            Route::Model {
                action: ModelAction::Infer,
                ..
            }
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
            Route::HealthLive => resp.json(200, &json!({ "live": true })),
            Route::HealthReady => {
                let ready = !self.is_draining();
                resp.json(if ready { 200 } else { 503 }, &json!({ "ready": ready }));
            }
            Route::ServerMetadata => resp.bytes(200, JSON, &self.state.server_metadata),
            Route::AllStats => return Ok(Action::GatherStats(StatsQuery { only: None })),
            Route::Model {
                name,
                version,
                action,
            } => {
                let entry = self.state.registry.lookup(name, version)?;
                let docs = &self.state.docs[entry.index];
                match action {
                    ModelAction::Metadata => resp.bytes(200, JSON, &docs.metadata),
                    ModelAction::Ready => resp.bytes(200, JSON, &docs.ready),
                    ModelAction::Config => resp.bytes(200, JSON, &docs.config),
                    ModelAction::Stats => {
                        return Ok(Action::GatherStats(StatsQuery {
                            only: Some(entry.index),
                        }))
                    }
                    ModelAction::Infer => self.infer(entry, req, resp),
                }
            }
            Route::NotFound => unreachable!("answered 404 above"),
        }
        Ok(Action::Done)
    }

    fn infer(&self, entry: &ModelEntry, req: &Request<'_>, resp: &mut Responder<'_>) {
        match self.run_infer(entry, req, resp) {
            Ok(()) => {}
            Err(e) => {
                self.stats
                    .record_failure(entry.index, req.received, Instant::now());
                resp.error(&e);
            }
        }
    }

    fn run_infer(
        &self,
        entry: &ModelEntry,
        req: &Request<'_>,
        resp: &mut Responder<'_>,
    ) -> Result<(), ApiError> {
        let meta = entry.model.metadata();
        let decoded = protocol::decode_infer_request(meta, req.body, req.inference_header)?;
        let infer_start = Instant::now();
        // A model must not panic, but a panic must not take the shard down with it either.
        let outputs = catch_unwind(AssertUnwindSafe(|| entry.model.infer(&decoded.inputs)))
            .map_err(|_| ApiError::internal(format!("model '{}' panicked", meta.name)))?
            .map_err(|e| ApiError::internal(format!("model '{}' failed: {e}", meta.name)))?;
        let infer_end = Instant::now();
        let tails = protocol::encode_infer_response(
            meta,
            &entry.version,
            &decoded,
            &outputs,
            resp.scratch(),
        )?;
        let encoded = Instant::now();
        resp.send_scratch(200, &tails);
        self.stats.record_success(
            entry.index,
            decoded.batch_size,
            &RequestTimes {
                received: req.received,
                decoded: infer_start,
                infer_start,
                infer_end,
                encoded,
            },
        );
        Ok(())
    }

    /// Answers a statistics request with `merged` (every shard's snapshot, merged).
    pub fn answer_stats(
        &self,
        query: StatsQuery,
        merged: &StatsSnapshot,
        resp: &mut Responder<'_>,
    ) {
        let doc = render_stats(&self.state.registry, merged, query.only);
        resp.bytes(200, JSON, &doc);
    }
}
