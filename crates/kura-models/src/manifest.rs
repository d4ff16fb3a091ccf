//! The manifest of default models, compiled into the binary so that a release
//! always knows the exact bytes (sha256) it was tested with.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::ModelError;

const MANIFEST_TOML: &str = include_str!("../../../models/manifest.toml");

/// One file of a model, as the manifest pins it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Path relative to the model directory (may contain `/`).
    pub path: String,
    pub sha256: String,
    #[serde(default)]
    pub size: Option<u64>,
    /// Wheel members that, concatenated in order, make up this file; empty when
    /// the file is stored whole under the model's `wheel_prefix`.
    #[serde(default)]
    pub wheel_parts: Vec<String>,
}

/// One model of the manifest and every place it can come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    /// "embedder" or "llm" (or, in the tests' manifests, what a reference file is).
    pub kind: String,
    pub architecture: String,
    pub licence: String,
    pub hf_repo: String,
    pub hf_revision: String,
    /// `package==version` requirements whose wheels carry the files.
    #[serde(default)]
    pub pip_packages: Vec<String>,
    #[serde(default)]
    pub wheel_prefix: Option<String>,
    #[serde(rename = "file")]
    pub files: Vec<FileSpec>,
}

impl ModelSpec {
    /// A short digest over the files' checksums: it changes exactly when the
    /// model's bytes change, which is what downstream caches key on.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        for file in &self.files {
            text.push_str(&file.path);
            text.push(':');
            text.push_str(&file.sha256);
            text.push('\n');
        }
        crate::digest::short_hex(text.as_bytes())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    model: Vec<ModelSpec>,
}

/// The models of the built-in manifest, parsed once.
pub fn manifest() -> Result<&'static [ModelSpec], ModelError> {
    static PARSED: OnceLock<Result<Vec<ModelSpec>, String>> = OnceLock::new();
    match PARSED.get_or_init(|| parse_manifest(MANIFEST_TOML)) {
        Ok(models) => Ok(models),
        Err(message) => Err(ModelError::Manifest(message.clone())),
    }
}

/// The models of a manifest other than the built-in one, checked as it is: files
/// that tests compare against (a reference tokenizer) come through the same cache,
/// sources and checksums as the models, without being offered to users.
pub fn parse(text: &str) -> Result<Vec<ModelSpec>, ModelError> {
    parse_manifest(text).map_err(ModelError::Manifest)
}

/// The model called `name` in the built-in manifest.
pub fn find(name: &str) -> Result<&'static ModelSpec, ModelError> {
    let models = manifest()?;
    models
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ModelError::UnknownModel {
            name: name.to_string(),
            known: known_names(models),
        })
}

pub(crate) fn known_names(models: &[ModelSpec]) -> String {
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    names.join(", ")
}

fn parse_manifest(text: &str) -> Result<Vec<ModelSpec>, String> {
    let parsed: ManifestFile = toml::from_str(text).map_err(|e| e.to_string())?;
    for model in &parsed.model {
        check_model(model)?;
    }
    Ok(parsed.model)
}

/// Rejects entries that would let a download escape the cache or never verify.
fn check_model(model: &ModelSpec) -> Result<(), String> {
    if model.files.is_empty() {
        return Err(format!("model `{}` lists no files", model.name));
    }
    for file in &model.files {
        let escapes =
            file.path.starts_with('/') || file.path.split('/').any(|c| c == ".." || c.is_empty());
        if escapes {
            return Err(format!(
                "model `{}`: bad file path `{}`",
                model.name, file.path
            ));
        }
        let is_hex = file.sha256.len() == 64 && file.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex {
            return Err(format!(
                "model `{}`: `{}` has no valid sha256",
                model.name, file.path
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_manifest_parses_and_names_are_unique() {
        let models = manifest().unwrap();
        assert!(models.iter().any(|m| m.name == "all-minilm-l6-v2"));
        let mut names: Vec<_> = models.iter().map(|m| &m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), models.len());
    }

    #[test]
    fn unknown_name_lists_known_names() {
        let err = find("no-such-model").unwrap_err().to_string();
        assert!(err.contains("no-such-model"), "{err}");
        assert!(err.contains("all-minilm-l6-v2"), "{err}");
    }

    #[test]
    fn fingerprint_changes_with_a_checksum() {
        let spec = find("all-minilm-l6-v2").unwrap().clone();
        let mut changed = spec.clone();
        changed.files[0].sha256 = "0".repeat(64);
        assert_ne!(spec.fingerprint(), changed.fingerprint());
        assert_eq!(
            spec.fingerprint(),
            find("all-minilm-l6-v2").unwrap().fingerprint()
        );
    }

    #[test]
    fn paths_escaping_the_model_dir_are_rejected() {
        let text = MANIFEST_TOML.replacen("path = \"config.json\"", "path = \"../config.json\"", 1);
        assert!(parse_manifest(&text)
            .unwrap_err()
            .contains("../config.json"));
    }
}
