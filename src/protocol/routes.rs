//! The KServe v2 paths friday serves, parsed into a [`Route`].

/// What a model-scoped path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelAction {
    /// `GET /v2/models/{m}[/versions/{v}]`
    Metadata,
    /// `GET …/ready`
    Ready,
    /// `GET …/config` (Triton's model configuration extension)
    Config,
    /// `GET …/stats` (Triton's statistics extension)
    Stats,
    /// `POST …/infer`
    Infer,
    /// `POST …/generate` (`stream: false`) or `…/generate_stream` (Triton's generate extension)
    Generate {
        /// Server-sent events, one per token.
        stream: bool,
    },
}

/// A parsed request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'p> {
    /// `GET /v2/health/live`
    HealthLive,
    /// `GET /v2/health/ready`
    HealthReady,
    /// `GET /v2`
    ServerMetadata,
    /// `GET /v2/models/stats`: statistics for every model.
    AllStats,
    /// `GET /metrics`: Prometheus metrics.
    Metrics,
    /// `POST /v2/repository/index`: the model repository's index.
    RepositoryIndex,
    /// `POST /v2/repository/models/{m}/load` or `/unload`.
    Repository {
        /// Model name.
        name: &'p str,
        /// Load (true) or unload.
        load: bool,
    },
    /// A model-scoped path.
    Model {
        /// Model name.
        name: &'p str,
        /// Version, when the path names one.
        version: Option<&'p str>,
        /// What is asked.
        action: ModelAction,
    },
    /// Anything else.
    NotFound,
}

/// Parses a request path (without query string).
pub fn route(path: &str) -> Route<'_> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if path == "/metrics" {
        return Route::Metrics;
    }
    let mut parts = path.split('/');
    if parts.next() != Some("") || parts.next() != Some("v2") {
        return Route::NotFound;
    }
    let rest: smallvec::SmallVec<[&str; 6]> = parts.collect();
    match rest.as_slice() {
        [] => Route::ServerMetadata,
        ["health", "live"] => Route::HealthLive,
        ["health", "ready"] => Route::HealthReady,
        ["models", "stats"] => Route::AllStats,
        ["repository", "index"] => Route::RepositoryIndex,
        ["repository", "models", name, "load"] if !name.is_empty() => {
            Route::Repository { name, load: true }
        }
        ["repository", "models", name, "unload"] if !name.is_empty() => {
            Route::Repository { name, load: false }
        }
        ["models", name, tail @ ..] if !name.is_empty() => {
            let (version, tail) = match tail {
                ["versions", v, tail @ ..] if !v.is_empty() => (Some(*v), tail),
                _ => (None, tail),
            };
            let action = match tail {
                [] => ModelAction::Metadata,
                ["ready"] => ModelAction::Ready,
                ["config"] => ModelAction::Config,
                ["stats"] => ModelAction::Stats,
                ["infer"] => ModelAction::Infer,
                ["generate"] => ModelAction::Generate { stream: false },
                ["generate_stream"] => ModelAction::Generate { stream: true },
                _ => return Route::NotFound,
            };
            Route::Model {
                name,
                version,
                action,
            }
        }
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, version: Option<&str>, action: ModelAction) -> Route<'static> {
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        let version = version.map(|v| &*Box::leak(v.to_string().into_boxed_str()));
        Route::Model {
            name,
            version,
            action,
        }
    }

    #[test]
    fn routes_every_endpoint() {
        assert_eq!(route("/v2"), Route::ServerMetadata);
        assert_eq!(route("/v2/"), Route::ServerMetadata);
        assert_eq!(route("/v2/health/live"), Route::HealthLive);
        assert_eq!(route("/v2/health/ready"), Route::HealthReady);
        assert_eq!(route("/v2/models/stats"), Route::AllStats);
        assert_eq!(route("/metrics"), Route::Metrics);
        assert_eq!(route("/v2/repository/index"), Route::RepositoryIndex);
        assert_eq!(
            route("/v2/repository/models/m/load"),
            Route::Repository {
                name: "m",
                load: true
            }
        );
        assert_eq!(
            route("/v2/repository/models/m/unload"),
            Route::Repository {
                name: "m",
                load: false
            }
        );
        assert_eq!(
            route("/v2/models/m"),
            model("m", None, ModelAction::Metadata)
        );
        assert_eq!(
            route("/v2/models/m/versions/3"),
            model("m", Some("3"), ModelAction::Metadata)
        );
        assert_eq!(
            route("/v2/models/m/ready"),
            model("m", None, ModelAction::Ready)
        );
        assert_eq!(
            route("/v2/models/m/config"),
            model("m", None, ModelAction::Config)
        );
        assert_eq!(
            route("/v2/models/m/stats"),
            model("m", None, ModelAction::Stats)
        );
        assert_eq!(
            route("/v2/models/m/versions/1/infer"),
            model("m", Some("1"), ModelAction::Infer)
        );
        assert_eq!(
            route("/v2/models/m/generate"),
            model("m", None, ModelAction::Generate { stream: false })
        );
        assert_eq!(
            route("/v2/models/m/versions/2/generate_stream"),
            model("m", Some("2"), ModelAction::Generate { stream: true })
        );
    }

    #[test]
    fn rejects_everything_else() {
        for p in [
            "",
            "/",
            "/v1",
            "/v2x",
            "/v2/health",
            "/v2/models",
            "/v2/models/",
            "/v2/models//infer",
            "/v2/models/m/versions//infer",
            "/v2/models/m/infer/extra",
            "/v2/models/m/predict",
            "/v2/repository",
            "/v2/repository/models/m",
            "/v2/repository/models//load",
            "/v2/repository/models/m/reload",
        ] {
            assert_eq!(route(p), Route::NotFound, "{p}");
        }
    }
}
