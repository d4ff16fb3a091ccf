//! Reading a sentence-transformers model directory: the model's own files say how
//! it pools and whether it normalises, so the same code serves every BERT-family
//! encoder without per-model switches.

use std::path::{Path, PathBuf};

use candle_transformers::models::bert::Config as BertConfig;
use serde::Deserialize;

use crate::error::EmbedError;

/// How token vectors become one sentence vector. Several modes may be enabled at
/// once; sentence-transformers then concatenates them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolingMode {
    Cls,
    Max,
    Mean,
    MeanSqrtLen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentenceConfig {
    pub pooling: Vec<PoolingMode>,
    pub normalize: bool,
    /// The model's own truncation length, when it declares one.
    pub max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct SentenceBertFile {
    max_seq_length: Option<usize>,
}

pub(crate) fn read_sentence_config(dir: &Path) -> Result<SentenceConfig, EmbedError> {
    let modules: Vec<Module> = read_optional_json(&dir.join("modules.json"))?.unwrap_or_default();
    let pooling_dir = modules
        .iter()
        .find(|m| m.kind.ends_with(".Pooling"))
        .map_or_else(|| PathBuf::from("1_Pooling"), |m| PathBuf::from(&m.path));
    let pooling_path = dir.join(pooling_dir).join("config.json");
    let pooling = match read_optional_json::<PoolingFile>(&pooling_path)? {
        Some(file) => pooling_modes(&file, &pooling_path)?,
        // A plain encoder without sentence-transformers files: mean pooling is
        // what sentence-transformers itself falls back to.
        None => vec![PoolingMode::Mean],
    };
    let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
    let sbert_path = dir.join("sentence_bert_config.json");
    let sbert: Option<SentenceBertFile> = read_optional_json(&sbert_path)?;
    if let Some(length) = sbert.as_ref().and_then(|s| s.max_seq_length) {
        // [CLS] and [SEP] take two places: a shorter window embeds every text alike.
        if length < 3 {
            return Err(EmbedError::invalid(
                &sbert_path,
                format!("max_seq_length is {length}, which leaves no room for text"),
            ));
        }
    }
    Ok(SentenceConfig {
        pooling,
        normalize,
        max_seq_length: sbert.and_then(|s| s.max_seq_length),
    })
}

fn pooling_modes(file: &PoolingFile, path: &Path) -> Result<Vec<PoolingMode>, EmbedError> {
    if file.pooling_mode_weightedmean_tokens || file.pooling_mode_lasttoken {
        return Err(EmbedError::invalid(
            path,
            "weighted-mean and last-token pooling are not supported (use a model with cls, max or mean pooling)",
        ));
    }
    let enabled = [
        (file.pooling_mode_cls_token, PoolingMode::Cls),
        (file.pooling_mode_max_tokens, PoolingMode::Max),
        (file.pooling_mode_mean_tokens, PoolingMode::Mean),
        (
            file.pooling_mode_mean_sqrt_len_tokens,
            PoolingMode::MeanSqrtLen,
        ),
    ];
    let modes: Vec<PoolingMode> = enabled
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, m)| *m)
        .collect();
    if modes.is_empty() {
        return Err(EmbedError::invalid(path, "no pooling mode is enabled"));
    }
    Ok(modes)
}

/// Parses a JSON file that a model may or may not ship; present but broken is an error.
pub(crate) fn read_optional_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, EmbedError> {
    if !path.exists() {
        return Ok(None);
    }
    read_json(path).map(Some)
}

/// `config.json`, refused where its numbers would load without complaint and then
/// embed wrongly: heads that do not divide the width, no layers (the embedding
/// table alone), or a norm's epsilon that is not positive (every vector NaN).
pub(crate) fn read_bert_config(path: &Path) -> Result<BertConfig, EmbedError> {
    let config: BertConfig = read_json(path)?;
    let (hidden, heads) = (config.hidden_size, config.num_attention_heads);
    if hidden == 0 || heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(EmbedError::invalid(
            path,
            format!(
                "hidden_size {hidden} is not a positive multiple of num_attention_heads {heads}"
            ),
        ));
    }
    if config.num_hidden_layers == 0 {
        return Err(EmbedError::invalid(path, "num_hidden_layers is 0"));
    }
    let eps = config.layer_norm_eps;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(EmbedError::invalid(
            path,
            format!("layer_norm_eps is {eps}, where it must be a positive number"),
        ));
    }
    Ok(config)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EmbedError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EmbedError::MissingFile {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(EmbedError::invalid(path, e)),
    };
    serde_json::from_str(&text).map_err(|e| EmbedError::invalid(path, format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn pooling_and_normalisation_come_from_the_model_files() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "modules.json",
            r#"[{"path":"","type":"sentence_transformers.models.Transformer"},
                {"path":"pool","type":"sentence_transformers.models.Pooling"}]"#,
        );
        write(
            tmp.path(),
            "pool/config.json",
            r#"{"pooling_mode_cls_token": true, "pooling_mode_max_tokens": true}"#,
        );
        let config = read_sentence_config(tmp.path()).unwrap();
        assert_eq!(config.pooling, vec![PoolingMode::Cls, PoolingMode::Max]);
        assert!(!config.normalize);
        assert_eq!(config.max_seq_length, None);

        write(
            tmp.path(),
            "modules.json",
            r#"[{"path":"pool","type":"sentence_transformers.models.Pooling"},
                {"path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        );
        write(
            tmp.path(),
            "sentence_bert_config.json",
            r#"{"max_seq_length": 200}"#,
        );
        let config = read_sentence_config(tmp.path()).unwrap();
        assert!(config.normalize);
        assert_eq!(config.max_seq_length, Some(200));
    }

    #[test]
    fn a_bare_encoder_gets_mean_pooling() {
        let tmp = tempfile::tempdir().unwrap();
        let config = read_sentence_config(tmp.path()).unwrap();
        assert_eq!(config.pooling, vec![PoolingMode::Mean]);
        assert!(!config.normalize);
    }

    #[test]
    fn broken_pooling_config_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "1_Pooling/config.json", "{ not json");
        let err = read_sentence_config(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("1_Pooling/config.json") && err.contains("invalid JSON"),
            "{err}"
        );

        write(
            tmp.path(),
            "1_Pooling/config.json",
            r#"{"pooling_mode_lasttoken": true}"#,
        );
        let err = read_sentence_config(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
