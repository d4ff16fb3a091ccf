//! Builds the pipeline's backends from the configuration: the local models
//! (resolved through the model manifest) and the clustering algorithms. Models are
//! loaded on first use, so `kura stage map` never loads an LLM.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use kura_cluster::{ClioHierarchy, Hdbscan, KMeans, Pca, Umap};
use kura_core::{ClusterNamer, Clusterer, Embedder, HierarchyBuilder, Reducer, Summarizer};
use kura_embed_candle::{CandleEmbedder, EmbedderOptions};
use kura_llm::{LlmClusterNamer, LlmOptions, LlmSummarizer, LocalLlm};
use kura_models::{ResolvedModel, Resolver};
use serde_json::{json, Value};

use crate::config::{ClustererKind, Config, Device, MapKind};
use crate::progress::{DownloadBars, Reporter};

pub fn resolver(reporter: Arc<Reporter>) -> Resolver {
    Resolver::from_env().with_progress(Arc::new(DownloadBars::new(reporter)))
}

pub struct Backends {
    config: Config,
    resolver: Resolver,
    llm: OnceLock<(Arc<LocalLlm>, Value)>,
    embedder: OnceLock<(Arc<CandleEmbedder>, Value)>,
}

impl Backends {
    pub fn new(config: &Config, reporter: Arc<Reporter>) -> Result<Self> {
        if config.min_cluster_size < 2 {
            bail!(
                "min_cluster_size must be at least 2, not {}",
                config.min_cluster_size
            );
        }
        Ok(Backends {
            config: config.clone(),
            resolver: resolver(reporter),
            llm: OnceLock::new(),
            embedder: OnceLock::new(),
        })
    }

    /// Kura's cache directory (models live in `models/` under it).
    pub fn cache_dir(&self) -> &std::path::Path {
        self.resolver.cache_dir()
    }

    fn cuda(&self) -> bool {
        self.config.device == Device::Cuda
    }

    pub fn llm(&self) -> Result<Arc<LocalLlm>> {
        if let Some((llm, _)) = self.llm.get() {
            return Ok(llm.clone());
        }
        let model = self.resolver.resolve(&self.config.llm)?;
        let gguf = gguf_file(&model)?;
        let device = kura_llm::device(self.cuda())?;
        let options = LlmOptions {
            max_context: self.config.max_context,
            temperature: self.config.temperature,
            seed: self.config.seed,
        };
        let llm = LocalLlm::load(&gguf, &device, options)
            .with_context(|| format!("cannot load the LLM {}", gguf.display()))?
            .with_model_id(format!("{}@{}", model.name, model.fingerprint));
        let record = json!({"name": model.name, "path": gguf.display().to_string(), "fingerprint": model.fingerprint});
        Ok(self.llm.get_or_init(|| (Arc::new(llm), record)).0.clone())
    }

    pub fn candle_embedder(&self) -> Result<Arc<CandleEmbedder>> {
        if let Some((e, _)) = self.embedder.get() {
            return Ok(e.clone());
        }
        let model = self.resolver.resolve(&self.config.embedder)?;
        let device = kura_embed_candle::device(self.cuda())?;
        let embedder = CandleEmbedder::from_dir(&model.dir, &device, EmbedderOptions::default())
            .with_context(|| format!("cannot load the embedder {}", model.dir.display()))?
            .with_model_id(format!("{}@{}", model.name, model.fingerprint));
        let record = json!({"name": model.name, "path": model.dir.display().to_string(), "fingerprint": model.fingerprint});
        Ok(self
            .embedder
            .get_or_init(|| (Arc::new(embedder), record))
            .0
            .clone())
    }

    pub fn summarizer(&self) -> Result<Box<dyn Summarizer>> {
        Ok(Box::new(LlmSummarizer::new(self.llm()?)?))
    }

    pub fn namer(&self) -> Result<Box<dyn ClusterNamer>> {
        Ok(Box::new(LlmClusterNamer::new(self.llm()?)))
    }

    pub fn embedder(&self) -> Result<Arc<dyn Embedder>> {
        Ok(self.candle_embedder()?)
    }

    pub fn clusterer(&self) -> Box<dyn Clusterer> {
        if self.config.clusterer == ClustererKind::Hdbscan {
            return Box::new(Hdbscan {
                min_cluster_size: self.config.min_cluster_size,
                ..Hdbscan::default()
            });
        }
        let k = Some(self.config.clusters).filter(|&k| k > 0);
        Box::new(KMeans {
            k,
            ..KMeans::default()
        })
    }

    pub fn hierarchy(&self) -> Box<dyn HierarchyBuilder> {
        let levels = Some(self.config.levels).filter(|&l| l > 0);
        Box::new(ClioHierarchy {
            top_clusters: self.config.top_clusters,
            levels,
            ..ClioHierarchy::default()
        })
    }

    pub fn reducer(&self) -> Box<dyn Reducer> {
        if self.config.map == MapKind::Pca {
            return Box::new(Pca);
        }
        Box::new(Umap::default())
    }

    /// Which models the run used, for `run.json`.
    pub fn models_record(&self) -> Value {
        json!({
            "llm": self.llm.get().map(|(_, r)| r.clone()).unwrap_or(json!({"name": self.config.llm})),
            "embedder": self.embedder.get().map(|(_, r)| r.clone()).unwrap_or(json!({"name": self.config.embedder})),
        })
    }
}

/// The GGUF file of a resolved LLM: its one file, whether it came from the
/// manifest or from an explicit path.
fn gguf_file(model: &ResolvedModel) -> Result<PathBuf> {
    match model.single_file() {
        Some(file) => Ok(file.to_path_buf()),
        None => bail!(
            "{}: an LLM must be a single .gguf file (pass --llm PATH/TO/model.gguf)",
            model.dir.display()
        ),
    }
}
