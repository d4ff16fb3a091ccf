//! The result of `kura eval` and how it is shown: a table for people with the
//! published reference figures beside ours, or one JSON object for scripts.

use kura_core::text::terminal_safe;
use serde::Serialize;

/// One clustering of one labelled set, scored against its labels.
#[derive(Debug, Serialize)]
pub struct Score {
    pub dataset: String,
    pub rows: usize,
    pub labels: usize,
    /// The number of clusters asked for; `None` when the clusterer chose.
    pub k: Option<usize>,
    pub clusters: usize,
    /// Share of points left unclustered (noise).
    pub noise: f64,
    pub v_measure: f64,
    pub nmi: f64,
    pub ari: f64,
    /// Seconds spent clustering (embedding is not counted: it is cached).
    pub seconds: f64,
    pub clusterer: String,
    pub embedder: String,
    pub embeddings_cached: bool,
}

/// A published V-measure to compare with, on the same MiniLM embeddings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reference {
    pub method: &'static str,
    pub k: Option<usize>,
    pub v_measure: f64,
}

/// Reference figures for the labelled sets Kura is measured on, matched by file
/// name: scikit-learn's k-means at k = number of labels, and BERTopic's default
/// UMAP + HDBSCAN, both on all-MiniLM-L6-v2 embeddings of every row.
pub fn references(dataset: &str) -> Vec<Reference> {
    let name = dataset.to_ascii_lowercase();
    if name.contains("banking77") {
        vec![
            Reference {
                method: "scikit-learn KMeans",
                k: Some(77),
                v_measure: 0.771,
            },
            Reference {
                method: "scikit-learn MiniBatchKMeans",
                k: Some(77),
                v_measure: 0.760,
            },
            Reference {
                method: "BERTopic UMAP+HDBSCAN",
                k: None,
                v_measure: 0.738,
            },
        ]
    } else if name.contains("clinc150") {
        vec![
            Reference {
                method: "scikit-learn KMeans",
                k: Some(150),
                v_measure: 0.894,
            },
            Reference {
                method: "BERTopic UMAP+HDBSCAN",
                k: None,
                v_measure: 0.784,
            },
        ]
    } else {
        Vec::new()
    }
}

/// The score as a table, with the reference figures (if any) as extra rows.
/// References are for whole data sets, so they are flagged when `--limit` cut it.
pub fn table(score: &Score, references: &[Reference], full_set: bool) -> String {
    let mut out = format!(
        "{:<32} {:>6} {:>6} {:>5} {:>8} {:>6} {:>9} {:>6} {:>6} {:>8}\n",
        "data set / method",
        "rows",
        "labels",
        "k",
        "clusters",
        "noise",
        "V-measure",
        "NMI",
        "ARI",
        "seconds"
    );
    let k = score
        .k
        .map_or_else(|| "auto".to_string(), |k| k.to_string());
    out += &format!(
        "{:<32} {:>6} {:>6} {:>5} {:>8} {:>5.1}% {:>9.3} {:>6.3} {:>6.3} {:>8.2}\n",
        terminal_safe(&score.dataset),
        score.rows,
        score.labels,
        k,
        score.clusters,
        score.noise * 100.0,
        score.v_measure,
        score.nmi,
        score.ari,
        score.seconds
    );
    for r in references {
        let k = r.k.map_or_else(|| "auto".to_string(), |k| k.to_string());
        out += &format!(
            "{:<32} {:>6} {:>6} {:>5} {:>8} {:>6} {:>9.3} {:>6} {:>6} {:>8}\n",
            format!("  {}", r.method),
            "all",
            "",
            k,
            "",
            "",
            r.v_measure,
            "",
            "",
            ""
        );
    }
    if !references.is_empty() && !full_set {
        out += "(reference figures are for the whole data set; this run used part of it)\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_our_scores_and_the_references() {
        let score = Score {
            dataset: "banking77".into(),
            rows: 100,
            labels: 7,
            k: Some(7),
            clusters: 7,
            noise: 0.0,
            v_measure: 0.81234,
            nmi: 0.81234,
            ari: 0.5,
            seconds: 0.25,
            clusterer: "kmeans".into(),
            embedder: "minilm".into(),
            embeddings_cached: false,
        };
        let refs = references("banking77");
        assert_eq!(refs.len(), 3);
        let text = table(&score, &refs, false);
        assert!(
            text.contains("0.812") && text.contains("0.771") && text.contains("BERTopic"),
            "{text}"
        );
        assert!(text.contains("used part of it"), "{text}");
        assert!(references("my-own-set").is_empty());
    }
}
