//! `kura eval`: scores the configured embedder and clusterer on a labelled data set
//! (V-measure, NMI, ARI), so a change to either is judged by numbers that can be put
//! beside published ones (MTEB's clustering protocol when k = number of labels).

mod labelled;
mod report;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use kura_cluster::metrics::{ari, nmi, v_measure};
use kura_core::pipeline::Progress;
use kura_core::{Embedder, Matrix};

use crate::backends::Backends;
use crate::config::ClustererKind;
use crate::embedding_cache;
use crate::progress::{Mode, Reporter};
use crate::Common;
use report::Score;

#[derive(Args)]
pub struct EvalArgs {
    /// JSON Lines with one text and one label per row.
    pub file: PathBuf,
    /// The field with the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// The field with the label (a string or a number).
    #[arg(long, default_value = "label")]
    pub label_field: String,
    /// Ask for as many clusters as there are distinct labels (MTEB's protocol).
    #[arg(long, conflicts_with = "clusters")]
    pub k_from_labels: bool,
    /// Only the first N rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Where to keep the embeddings (default: one file per model and text set
    /// under the cache directory, `~/.cache/kura/eval/`).
    #[arg(long)]
    pub embeddings_cache: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

pub fn eval(args: EvalArgs, reporter: Arc<Reporter>) -> Result<()> {
    let mut config = crate::config(&args.common)?;
    let set = labelled::read(&args.file, &args.text_field, &args.label_field, args.limit)?;
    if args.k_from_labels {
        if config.clusterer == ClustererKind::Hdbscan {
            bail!("--k-from-labels sets k-means' k; HDBSCAN finds its own number of clusters");
        }
        config.clusters = set.label_names.len();
    }
    let backends = Backends::new(&config, reporter.clone())?;
    let embedder = backends.embedder()?;
    let (points, cached) = embeddings(&args, &backends, embedder.as_ref(), &set.texts, &reporter)?;

    let clusterer = backends.clusterer();
    reporter.begin("clustering", 0);
    let started = Instant::now();
    let assigned = clusterer
        .cluster(&points, config.seed)
        .map_err(|e| anyhow::anyhow!("clustering failed: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    reporter.end("clustering", &format!("{seconds:.2} s"));
    if assigned.len() != set.texts.len() {
        bail!(
            "the clusterer returned {} labels for {} points",
            assigned.len(),
            set.texts.len()
        );
    }

    let found: BTreeSet<usize> = assigned.iter().flatten().copied().collect();
    // Noise counts as one more cluster, as scikit-learn scores HDBSCAN's -1 label.
    let noise_label = found.last().map_or(0, |&m| m + 1);
    let predicted: Vec<usize> = assigned.iter().map(|a| a.unwrap_or(noise_label)).collect();
    let noise = assigned.iter().filter(|a| a.is_none()).count();
    let dataset = args
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().trim_end_matches(".jsonl").to_string())
        .unwrap_or_default();
    let score = Score {
        rows: set.texts.len(),
        labels: set.label_names.len(),
        k: Some(config.clusters).filter(|&k| k > 0 && config.clusterer == ClustererKind::Kmeans),
        clusters: found.len(),
        noise: noise as f64 / set.texts.len() as f64,
        v_measure: v_measure(&set.labels, &predicted),
        nmi: nmi(&set.labels, &predicted),
        ari: ari(&set.labels, &predicted),
        seconds,
        clusterer: clusterer.id(),
        embedder: embedder.id(),
        embeddings_cached: cached,
        dataset,
    };
    let references = report::references(&score.dataset);
    if reporter.mode() == Mode::Json {
        let mut value = serde_json::to_value(&score)?;
        value["event"] = "result".into();
        value["references"] = serde_json::to_value(&references)?;
        println!("{value}");
    } else {
        print!(
            "{}",
            report::table(&score, &references, args.limit.is_none())
        );
    }
    Ok(())
}

/// The embeddings of `texts`, from the cache when it holds them for this embedder.
/// Returns whether they came from the cache.
fn embeddings(
    args: &EvalArgs,
    backends: &Backends,
    embedder: &dyn Embedder,
    texts: &[String],
    reporter: &Reporter,
) -> Result<(Matrix, bool)> {
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let key = embedding_cache::key(&embedder.id(), &texts);
    let path = embedding_cache::path(
        args.embeddings_cache.as_deref(),
        &backends.cache_dir().join("eval"),
        &key,
    );
    let (matrix, cached) = embedding_cache::load_or_embed(embedder, &texts, &path, &key, reporter)
        .with_context(|| format!("embeddings cache {}", path.display()))?;
    if cached {
        reporter.say(&format!("embeddings from {}", path.display()));
    }
    Ok((matrix, cached))
}
