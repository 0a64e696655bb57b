//! A model repository on disk, in Triton's layout: `DIR/<model>/<version>/model.onnx`, with an
//! optional `DIR/<model>/config.pbtxt`.
//!
//! Only what the repository's own directory listing names is ever opened: a model is a folder
//! directly under `DIR`, a version a folder with a decimal name directly under it, and every path
//! is resolved (symlinks included) and must stay inside `DIR`. A request never names a path.

use std::path::{Path, PathBuf};

/// A model folder found in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFolder {
    /// The model's name (its folder's).
    pub name: String,
    /// Its version folders (numbers), oldest first; a version is loadable if it holds the model
    /// file.
    pub versions: Vec<u64>,
    /// The folder, resolved inside the repository.
    pub dir: PathBuf,
    /// The model's `config.pbtxt`, if it has one.
    pub config: Option<PathBuf>,
}

impl ModelFolder {
    /// Version `version`'s model file (`filename`, [`DEFAULT_MODEL_FILENAME`] unless the
    /// configuration names another), resolved inside the repository `root`.
    pub fn file(&self, root: &Path, version: u64, filename: &str) -> Result<PathBuf, String> {
        confined(root, &self.dir.join(version.to_string()).join(filename))
    }

    /// A file of the model folder's `warmup/` folder (Triton's `input_data_file`), resolved
    /// inside the repository `root`.
    pub fn warmup_file(&self, root: &Path, name: &str) -> Result<PathBuf, String> {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(format!("'{name}' is not a file name in the warmup folder"));
        }
        confined(root, &self.dir.join("warmup").join(name))
    }
}

/// What a scan of the repository found: model folders, and folders it could not use, with why.
#[derive(Debug, Default)]
pub struct Scan {
    /// The repository, resolved.
    pub root: PathBuf,
    /// Model folders with at least one version folder, by name.
    pub found: Vec<ModelFolder>,
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

/// The repository `dir`, resolved.
pub fn root(dir: &Path) -> Result<PathBuf, String> {
    dir.canonicalize()
        .map_err(|e| format!("cannot open the model repository {}: {e}", dir.display()))
}

/// Scans repository `dir` for models.
pub fn scan(dir: &Path) -> Result<Scan, String> {
    let root = root(dir)?;
    let mut entries: Vec<_> = std::fs::read_dir(&root)
        .map_err(|e| format!("cannot list the model repository {}: {e}", root.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    let mut scan = Scan {
        root: root.clone(),
        ..Scan::default()
    };
    for entry in entries {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') || !root.join(&name).is_dir() {
            continue;
        }
        match scan_model(&root, &name) {
            Ok(found) => scan.found.push(found),
            Err(why) => scan.failed.push((name, why)),
        }
    }
    Ok(scan)
}

/// The folder of model `name` in the repository `root` (resolved), with its versions. `name`
/// may come from a request: it must be a model name, never a path.
pub fn scan_model(root: &Path, name: &str) -> Result<ModelFolder, String> {
    if !valid_model_name(name) {
        return Err(format!(
            "'{name}' cannot name a model: use letters, digits, '_', '-' and '.' only"
        ));
    }
    let path = root.join(name);
    if !path.is_dir() {
        return Err(format!("no model folder '{name}' in the repository"));
    }
    let dir = confined(root, &path)?;
    let mut versions: Vec<u64> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u64>().ok()?;
            e.path().is_dir().then_some(v)
        })
        .collect();
    versions.sort_unstable();
    if versions.is_empty() {
        return Err(format!(
            "{} has no version folder (such as {}/1/{DEFAULT_MODEL_FILENAME})",
            dir.display(),
            dir.display()
        ));
    }
    let config = dir.join("config.pbtxt");
    let config = if config.exists() {
        Some(confined(root, &config)?)
    } else {
        None
    };
    Ok(ModelFolder {
        name: name.to_string(),
        versions,
        dir,
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
    fn finds_every_version_and_refuses_what_leads_out() {
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
        assert_eq!(s.found.len(), 2, "{s:?}");
        assert_eq!(s.found[1].name, "m");
        assert_eq!(s.found[1].versions, [1, 3, 20]);
        assert!(s.found[1]
            .file(&s.root, 20, DEFAULT_MODEL_FILENAME)
            .unwrap()
            .ends_with("m/20/model.onnx"));
        assert!(
            s.found[1].file(&s.root, 1, DEFAULT_MODEL_FILENAME).is_err(),
            "version 1 has no file"
        );
        // The version folder is there; its file leads out.
        assert_eq!(s.found[0].name, "escape");
        let why = s.found[0]
            .file(&s.root, 1, DEFAULT_MODEL_FILENAME)
            .unwrap_err();
        assert!(why.contains("outside the repository"), "{why}");
        let why = |n: &str| {
            s.failed
                .iter()
                .find(|(m, _)| m == n)
                .map(|(_, w)| w.clone())
        };
        assert!(why("empty").unwrap().contains("no version folder"));
        assert!(why("bad name").unwrap().contains("cannot name a model"));
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
