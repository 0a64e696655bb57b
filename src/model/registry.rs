//! The registry: which models this server serves, under which versions.
//!
//! Built once at startup and shared read-only by every shard. For now friday serves its built-in
//! repository (`identity`, `simple`); reading a Triton-layout repository from disk is a later step.

use std::sync::Arc;

use super::{Identity, Model, Simple};
use crate::config::Config;
use crate::error::{ApiError, StartupError};

/// The version every built-in model is served under.
pub const BUILTIN_VERSION: &str = "1";

/// One served model version.
pub struct ModelEntry {
    /// Position in the registry; indexes per-shard statistics.
    pub index: usize,
    /// Version label, as in `/versions/{v}`.
    pub version: String,
    /// The model.
    pub model: Arc<dyn Model>,
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

/// The models this server serves.
pub struct ModelRegistry {
    entries: Vec<ModelEntry>,
}

impl ModelRegistry {
    /// The built-in repository: `identity` and `simple`, version 1.
    pub fn builtin() -> Self {
        Self::from_models(vec![Arc::new(Identity::new()), Arc::new(Simple::new())])
    }

    /// A registry of `models`, each at [`BUILTIN_VERSION`].
    pub fn from_models(models: Vec<Arc<dyn Model>>) -> Self {
        let entries = models
            .into_iter()
            .enumerate()
            .map(|(index, model)| ModelEntry {
                index,
                version: BUILTIN_VERSION.to_string(),
                model,
            })
            .collect();
        ModelRegistry { entries }
    }

    /// The registry the config asks for.
    pub fn from_config(config: &Config) -> Result<Self, StartupError> {
        match &config.model_repository {
            None => Ok(Self::builtin()),
            Some(dir) => Err(StartupError::new(format!(
                "--model-repository {}: this build serves only the built-in repository \
                 (identity, simple); reading models from disk is not implemented yet. \
                 Leave --model-repository unset",
                dir.display()
            ))),
        }
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
        assert_eq!(r.lookup("simple", Some("1")).unwrap().index, 1);
        assert_eq!(r.lookup("nope", None).unwrap_err().status(), 404);
        let e = r.lookup("identity", Some("2")).unwrap_err();
        assert_eq!(e.status(), 404);
        assert!(e.message.contains("version '2'"));
    }
}
