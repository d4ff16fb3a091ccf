//! The run configuration: defaults, then `kura.toml`, then command-line flags, each
//! overriding the one before. The resolved configuration is written to `run.json`
//! so a run directory says how it was made.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::ValueEnum;
use kura_core::Outliers;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Model name from the manifest (`kura models list`) or a path to a GGUF file.
    pub llm: String,
    /// Model name from the manifest or a path to a sentence-transformers directory.
    pub embedder: String,
    pub device: Device,
    pub seed: u64,
    pub clusterer: ClustererKind,
    /// Number of base clusters for k-means; 0 chooses from the number of conversations.
    pub clusters: usize,
    /// HDBSCAN's smallest cluster.
    pub min_cluster_size: usize,
    /// What becomes of the points the clusterer leaves as noise.
    pub outliers: Outliers,
    pub map: MapKind,
    /// Target number of clusters at the top of the hierarchy.
    pub top_clusters: usize,
    /// Most levels above the base clusters; 0 means as many as needed.
    pub levels: usize,
    /// LLM context in tokens; longer conversations are cut to fit.
    pub max_context: usize,
    /// 0 decodes greedily.
    pub temperature: f32,
}

/// Where models run. The choices are one type for the command line and
/// `kura.toml`, so both accept (and `run.json` records) the same words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

/// Base clustering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClustererKind {
    /// Every conversation in one of k clusters.
    Kmeans,
    /// Density clusters on a 5-D UMAP reduction: finds its own number of clusters
    /// and leaves outliers as noise.
    Hdbscan,
}

/// The 2-D map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MapKind {
    Umap,
    /// Faster; keeps only the broadest structure.
    Pca,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            llm: "qwen2.5-coder-0.5b-instruct".into(),
            embedder: "all-minilm-l6-v2".into(),
            device: Device::Cpu,
            seed: 42,
            clusterer: ClustererKind::Kmeans,
            clusters: 0,
            min_cluster_size: 10,
            outliers: Outliers::Keep,
            map: MapKind::Umap,
            top_clusters: 8,
            levels: 0,
            max_context: 2048,
            temperature: 0.0,
        }
    }
}

impl Config {
    /// Reads `path`, or `./kura.toml` when no path is given and it exists.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let path: Option<PathBuf> = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("kura.toml")).filter(|p| p.exists()),
        };
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: invalid configuration", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kura.toml");
        std::fs::write(&path, "llm = \"smollm2-135m-instruct\"\ntop_clusters = 3\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.llm, "smollm2-135m-instruct");
        assert_eq!(config.top_clusters, 3);
        assert_eq!(config.embedder, Config::default().embedder);
        std::fs::write(&path, "map = \"tsne\"\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(err.contains("kura.toml") && err.contains("tsne"), "{err}");
        std::fs::write(&path, "clusterer = \"hdbscan\"\noutliers = \"assign\"\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.clusterer, ClustererKind::Hdbscan);
        assert_eq!(config.outliers, Outliers::Assign);
        assert_eq!(Config::default().outliers, Outliers::Keep);
        std::fs::write(&path, "top_cluster = 3\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(
            err.contains("kura.toml") && err.contains("top_cluster"),
            "{err}"
        );
    }
}
