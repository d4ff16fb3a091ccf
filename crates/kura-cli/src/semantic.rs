//! Semantic search over a run: the query is embedded by the same local model as
//! the run's summaries. Both the model and, for runs that carry no embeddings
//! (Python Kura's checkpoints), the summaries' embeddings are made on first use,
//! so opening a run or a keyword search never loads a model. Embeddings made for
//! such a run are kept in the local cache (`CACHE/embeddings/KEY.npy`).

use std::sync::{Arc, OnceLock};

use anyhow::{bail, Result};
use kura_core::explore::{Embeddings, RunView};
use kura_core::pipeline::NoProgress;
use kura_core::{Embedder, Matrix};
use kura_models::Resolver;

use crate::backends::Backends;
use crate::config::Config;
use crate::embedding_cache;
use crate::progress::{Mode, Reporter};

pub struct Semantic {
    backends: Backends,
    embedder_name: String,
    embedder: OnceLock<Arc<dyn Embedder>>,
    computed: OnceLock<Embeddings>,
}

impl Semantic {
    /// Uses the embedder the run recorded, else the configured one.
    pub fn new(view: &RunView, config: &Config, mode: Mode) -> Result<Self> {
        let mut config = config.clone();
        if let Some(name) = &view.embedder {
            config.embedder = name.clone();
        }
        let embedder_name = config.embedder.clone();
        Ok(Semantic {
            backends: Backends::new(&config, Arc::new(Reporter::new(mode)))?,
            embedder_name,
            embedder: OnceLock::new(),
            computed: OnceLock::new(),
        })
    }

    pub fn embedder_name(&self) -> &str {
        &self.embedder_name
    }

    /// The query's vector and the run's embeddings to rank against.
    pub fn prepare<'a>(
        &'a self,
        view: &'a RunView,
        query: &str,
    ) -> Result<(Vec<f32>, &'a Embeddings)> {
        let embedder = self.embedder()?;
        let vector = embedder
            .embed(&[query])
            .map_err(|e| anyhow::anyhow!("cannot embed the query: {e}"))?;
        if vector.rows() != 1 {
            bail!("the embedder returned {} rows for one query", vector.rows());
        }
        let embeddings = self.embeddings(view, embedder.as_ref())?;
        if embeddings.matrix.cols() != vector.cols() && !embeddings.matrix.is_empty() {
            bail!(
                "the run's embeddings have {} dimensions but {} gives {}: search with the run's embedder",
                embeddings.matrix.cols(),
                self.embedder_name,
                vector.cols()
            );
        }
        Ok((vector.row(0).to_vec(), embeddings))
    }

    fn embedder(&self) -> Result<Arc<dyn Embedder>> {
        if let Some(e) = self.embedder.get() {
            return Ok(e.clone());
        }
        let e = self.backends.embedder()?;
        Ok(self.embedder.get_or_init(|| e).clone())
    }

    fn embeddings<'a>(
        &'a self,
        view: &'a RunView,
        embedder: &dyn Embedder,
    ) -> Result<&'a Embeddings> {
        if let Some(e) = &view.embeddings {
            return Ok(e);
        }
        if let Some(e) = self.computed.get() {
            return Ok(e);
        }
        let (texts, conversation_of_row) = view.summary_texts();
        let matrix = cached_embeddings(embedder, &texts)?;
        let embeddings = Embeddings {
            matrix,
            conversation_of_row,
        };
        Ok(self.computed.get_or_init(|| embeddings))
    }
}

/// The summaries' embeddings from the local cache, else computed and cached: a
/// run without embeddings would otherwise be embedded again on every search. The
/// key covers the embedder (name and checksum) and every text.
fn cached_embeddings(embedder: &dyn Embedder, texts: &[&str]) -> Result<Matrix> {
    let key = embedding_cache::key(&embedder.id(), texts);
    let dir = Resolver::from_env().cache_dir().join("embeddings");
    let path = embedding_cache::path(None, &dir, &key);
    let (matrix, _) = embedding_cache::load_or_embed(embedder, texts, &path, &key, &NoProgress)
        .map_err(|e| anyhow::anyhow!("cannot embed the run's summaries: {e:#}"))?;
    Ok(matrix)
}
