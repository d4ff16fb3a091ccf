//! End-to-end tests of `kura eval` with the real MiniLM embedder on part of the
//! banking77 intent set.

mod support;

use std::process::Output;

use kura_cluster::metrics::v_measure;
use serde_json::Value;
use support::{kura, run_err, run_ok, shared};

const ROWS: usize = 1500;

/// The `result` object among the JSON lines `kura eval --json` prints.
fn result(out: &Output) -> Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "result")
        .expect("a result line")
}

/// The labels of the first `ROWS` rows, numbered in order of appearance.
fn true_labels() -> Vec<usize> {
    let text = std::fs::read_to_string(shared("labeled/banking77.jsonl")).unwrap();
    let mut names: Vec<String> = Vec::new();
    text.lines()
        .take(ROWS)
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            let name = row["label"].as_str().unwrap().to_string();
            match names.iter().position(|n| *n == name) {
                Some(i) => i,
                None => {
                    names.push(name);
                    names.len() - 1
                }
            }
        })
        .collect()
}

/// A labelling that ignores the texts: a fixed pseudo-random cluster per row.
fn random_labels(n: usize, k: usize) -> Vec<usize> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % k as u64) as usize
        })
        .collect()
}

#[test]
fn eval_scores_minilm_clusters_far_above_a_random_labelling() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("banking77.npy");
    let eval = |extra: &[&str]| {
        let mut cmd = kura();
        cmd.arg("eval")
            .arg(shared("labeled/banking77.jsonl"))
            .args([
                "--limit",
                &ROWS.to_string(),
                "--embedder",
                "all-minilm-l6-v2",
            ])
            .arg("--embeddings-cache")
            .arg(&cache)
            .args(extra);
        run_ok(&mut cmd)
    };
    let first = result(&eval(&["--k-from-labels", "--json"]));
    let truth = true_labels();
    let labels = 1 + truth.iter().max().unwrap();
    assert_eq!(first["rows"], ROWS);
    assert_eq!(first["labels"], labels);
    assert_eq!(first["k"], labels);
    assert_eq!(first["clusters"], labels);
    assert_eq!(first["noise"], 0.0);
    assert_eq!(first["embeddings_cached"], false);
    let v = first["v_measure"].as_f64().unwrap();
    let random = v_measure(&truth, &random_labels(ROWS, labels));
    assert!(
        v <= 1.0 && v > random + 0.4,
        "V-measure {v}, random {random}"
    );
    assert!((first["nmi"].as_f64().unwrap() - v).abs() < 1e-9);
    assert!(first["ari"].as_f64().unwrap() > 0.3, "{first}");
    assert!(cache.exists());

    // The second run reads the cached embeddings and, with the same seed, gives
    // the same clusters.
    let second = result(&eval(&["--k-from-labels", "--json"]));
    assert_eq!(second["embeddings_cached"], true);
    assert_eq!(second["v_measure"], first["v_measure"]);

    let table = String::from_utf8_lossy(&eval(&["--clusters", "20"]).stdout).to_string();
    assert!(
        table.contains("V-measure") && table.contains("banking77"),
        "{table}"
    );
    assert!(
        table.contains("scikit-learn KMeans") && table.contains("0.771"),
        "{table}"
    );
    let ours = table.lines().nth(1).unwrap_or_default();
    assert!(ours.split_whitespace().any(|w| w == "20"), "{table}");

    // HDBSCAN on UMAP finds its own number of clusters and reports its noise; it
    // must still be far better than chance, and repeat for a seed.
    let density = result(&eval(&["--clusterer", "hdbscan", "--json"]));
    let clusters = density["clusters"].as_u64().unwrap();
    let noise = density["noise"].as_f64().unwrap();
    assert!((10..300).contains(&clusters), "{density}");
    assert!(
        density["k"].is_null(),
        "HDBSCAN was asked for no k: {density}"
    );
    assert!(noise > 0.0 && noise < 0.5, "{density}");
    let v = density["v_measure"].as_f64().unwrap();
    assert!(v > random + 0.3, "V-measure {v}, random {random}");
    assert!(density["clusterer"]
        .as_str()
        .unwrap()
        .starts_with("hdbscan"));
    let again = result(&eval(&["--clusterer", "hdbscan", "--json"]));
    assert_eq!(again["v_measure"], density["v_measure"]);
}

#[test]
fn eval_names_file_line_and_field_of_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("set.jsonl");
    std::fs::write(
        &file,
        "{\"text\": \"hi\", \"label\": \"a\"}\n{\"text\": \"yo\"}\n",
    )
    .unwrap();
    let stderr = run_err(kura().arg("eval").arg(&file));
    assert!(
        stderr.contains("set.jsonl: line 2") && stderr.contains("\"label\""),
        "{stderr}"
    );
}
