//! A model repository on disk, in Triton's layout: `DIR/<model>/<version>/model.onnx`, with an
//! optional `DIR/<model>/config.pbtxt`.
//!
//! Only what the repository's own directory listing names is ever opened: a model is a folder
//! directly under `DIR`, a version a folder with a decimal name directly under it, and every path
//! is resolved (symlinks included) and must stay inside `DIR`. A request never names a path.

use std::path::{Path, PathBuf};

/// A model version found in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVersion {
    /// The model's name (its folder's).
    pub name: String,
    /// The version (its folder's number).
    pub version: u64,
    /// The model file, resolved inside the repository.
    pub file: PathBuf,
    /// The model's `config.pbtxt`, if it has one.
    pub config: Option<PathBuf>,
}

/// What a scan of the repository found: versions to load, and folders it could not use, with why.
#[derive(Debug, Default)]
pub struct Scan {
    /// The versions to serve: each model's newest, as Triton's default version policy
    /// (`latest { num_versions: 1 }`) serves.
    pub found: Vec<FoundVersion>,
    /// Models (by folder name) that cannot be served, and why.
    pub failed: Vec<(String, String)>,
}

/// The file a version folder holds (Triton's `default_model_filename` for ONNX).
pub const DEFAULT_MODEL_FILENAME: &str = "model.onnx";

/// Whether `name` may name a model: what Triton's clients put in a URL path segment, and never a
/// path of its own (no separators, no `..`, no hidden folders).
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Resolves `path` and checks it lies inside `root` (already resolved).
fn confined(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let resolved = path
        .canonicalize()
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if resolved.starts_with(root) {
        Ok(resolved)
    } else {
        Err(format!(
            "{} leads outside the repository (to {}); friday reads nothing outside it",
            path.display(),
            resolved.display()
        ))
    }
}

/// Scans repository `dir` for models.
pub fn scan(dir: &Path) -> Result<Scan, String> {
    let root = dir
        .canonicalize()
        .map_err(|e| format!("cannot open the model repository {}: {e}", dir.display()))?;
    let mut entries: Vec<_> = std::fs::read_dir(&root)
        .map_err(|e| format!("cannot list the model repository {}: {e}", root.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    let mut scan = Scan::default();
    for entry in entries {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = root.join(&name);
        if !path.is_dir() {
            continue;
        }
        if !valid_model_name(&name) {
            scan.failed.push((
                name.clone(),
                format!("'{name}' cannot name a model: use letters, digits, '_', '-' and '.' only"),
            ));
            continue;
        }
        match scan_model(&root, &path, &name) {
            Ok(found) => scan.found.push(found),
            Err(why) => scan.failed.push((name, why)),
        }
    }
    Ok(scan)
}

/// The newest version of the model in folder `path`.
fn scan_model(root: &Path, path: &Path, name: &str) -> Result<FoundVersion, String> {
    let dir = confined(root, path)?;
    let versions = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u64>().ok()?;
            e.path().is_dir().then_some(v)
        })
        .max();
    let Some(version) = versions else {
        return Err(format!(
            "{} has no version folder (such as {}/1/{DEFAULT_MODEL_FILENAME})",
            dir.display(),
            dir.display()
        ));
    };
    let file = confined(
        root,
        &dir.join(version.to_string()).join(DEFAULT_MODEL_FILENAME),
    )?;
    let config = dir.join("config.pbtxt");
    let config = if config.exists() {
        Some(confined(root, &config)?)
    } else {
        None
    };
    Ok(FoundVersion {
        name: name.to_string(),
        version,
        file,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("friday-repo-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finds_the_newest_version_and_refuses_what_leads_out() {
        let d = repo("scan");
        for v in ["1", "3", "20"] {
            std::fs::create_dir_all(d.join("m").join(v)).unwrap();
        }
        std::fs::write(d.join("m/3/model.onnx"), b"x").unwrap();
        std::fs::write(d.join("m/20/model.onnx"), b"x").unwrap();
        std::fs::create_dir_all(d.join("empty")).unwrap();
        std::fs::create_dir_all(d.join("bad name")).unwrap();
        std::fs::create_dir_all(d.join(".hidden/1")).unwrap();
        // A version whose file is a link out of the repository.
        let outside = repo("outside");
        std::fs::write(outside.join("model.onnx"), b"x").unwrap();
        std::fs::create_dir_all(d.join("escape/1")).unwrap();
        std::os::unix::fs::symlink(outside.join("model.onnx"), d.join("escape/1/model.onnx"))
            .unwrap();
        let s = scan(&d).unwrap();
        assert_eq!(s.found.len(), 1, "{s:?}");
        assert_eq!(s.found[0].name, "m");
        assert_eq!(s.found[0].version, 20);
        assert!(s.found[0].file.ends_with("m/20/model.onnx"));
        let why = |n: &str| {
            s.failed
                .iter()
                .find(|(m, _)| m == n)
                .map(|(_, w)| w.clone())
        };
        assert!(why("empty").unwrap().contains("no version folder"));
        assert!(why("bad name").unwrap().contains("cannot name a model"));
        assert!(why("escape").unwrap().contains("outside the repository"));
        assert!(why(".hidden").is_none());
    }

    #[test]
    fn model_names_cannot_be_paths() {
        for bad in ["", "..", ".x", "a/b", "a\\b", "a b", "ü"] {
            assert!(!valid_model_name(bad), "{bad:?}");
        }
        for good in ["resnet50", "bert-base.v2", "a_b"] {
            assert!(valid_model_name(good));
        }
    }
}
