//! k-means speed on 100 000 × 384 clustered vectors (the size of a large chat log
//! embedded with MiniLM), k = 50: full Lloyd with one seeding (scikit-learn's
//! `KMeans(n_clusters=50)` protocol, `n_init=1`) and with Kura's default restarts,
//! beside forced mini-batch. Run with `cargo bench -p kura-cluster --bench kmeans`.
//!
//! Two optional inputs:
//! - `KURA_BENCH_POINTS=N[,M…]` times synthetic sets of those sizes instead of
//!   100 000 (empty for none); 1 000 000 points take about 1.5 GB, and above
//!   100 000 full Lloyd runs one seeding only;
//! - `KURA_BENCH_LABELLED=LABELS.jsonl=EMBEDDINGS.npy[,…]` scores full Lloyd and
//!   mini-batch against known labels: the `.jsonl` has a string `label` field per
//!   row, the `.npy` the row embeddings in the same order (as `kura eval` caches
//!   them), at k = the number of distinct labels (MTEB's protocol) and at Kura's
//!   automatic k, seed 42.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use kura_cluster::metrics::v_measure;
use kura_cluster::{default_k, KMeans, KMeansFit, KMeansMode};
use kura_core::Matrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const POINTS: usize = 100_000;
const DIM: usize = 384;
const CENTRES: usize = 50;
const SEED: u64 = 42;

fn main() {
    let threads = rayon::current_num_threads();
    println!("k-means, {DIM} dimensions, {threads} threads");
    for n in synthetic_sizes() {
        synthetic(n);
    }
    if let Ok(spec) = std::env::var("KURA_BENCH_LABELLED") {
        for pair in spec.split(',').filter(|p| !p.is_empty()) {
            if let Err(e) = labelled(pair) {
                eprintln!("{pair}: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Times each mode on `n` synthetic points; full Lloyd's default restarts only up
/// to [`POINTS`] (on a million points they take minutes and say nothing new).
fn synthetic(n: usize) {
    let points = clustered_data(n, 1);
    println!("\n{n} × {DIM}, k = {CENTRES}");
    let defaults = KMeans::default();
    let lloyd = KMeans {
        k: Some(CENTRES),
        mode: KMeansMode::Lloyd,
        ..defaults.clone()
    };
    let mini_batch = KMeans {
        mode: KMeansMode::MiniBatch,
        ..lloyd.clone()
    };
    let mut runs = vec![(
        "full Lloyd, 1 seeding (scikit-learn's n_init=1)",
        KMeans {
            restarts: 1,
            ..lloyd.clone()
        },
    )];
    if n <= POINTS {
        runs.push(("full Lloyd, default restarts", lloyd.clone()));
    }
    runs.push(("mini-batch, default (batch 1024)", mini_batch.clone()));
    runs.push((
        "mini-batch, batch 4096",
        KMeans {
            batch_size: 4096,
            ..mini_batch
        },
    ));
    for (label, config) in runs {
        let (fit, timing) = timed(|| fit_or_exit(&config, &points));
        println!(
            "{label:<50} {:>2} restarts  {timing}  {:>10.0} points/s  inertia {:.1}",
            config.restarts,
            n as f64 / timing.wall,
            fit.inertia
        );
    }
}

/// V-measure of full Lloyd and mini-batch on one labelled set, `LABELS=EMBEDDINGS`.
fn labelled(pair: &str) -> Result<(), String> {
    let (labels_path, npy_path) = pair
        .split_once('=')
        .ok_or("expected LABELS.jsonl=EMBEDDINGS.npy")?;
    let points = kura_core::store::read_npy(Path::new(npy_path)).map_err(|e| e.to_string())?;
    let truth = read_labels(Path::new(labels_path))?;
    if truth.len() != points.rows() {
        return Err(format!(
            "{} labels for {} embeddings: they must be the same rows in the same order",
            truth.len(),
            points.rows()
        ));
    }
    let labels = truth.iter().max().map_or(0, |&m| m + 1);
    println!("\n{labels_path}: {} × {}", points.rows(), points.cols());
    for (k_label, k) in [
        ("k = labels", labels),
        ("automatic k", default_k(points.rows())),
    ] {
        for (name, mode) in [
            ("full Lloyd", KMeansMode::Lloyd),
            ("mini-batch", KMeansMode::MiniBatch),
        ] {
            let config = KMeans {
                k: Some(k),
                mode,
                ..KMeans::default()
            };
            let (fit, timing) = timed(|| fit_or_exit(&config, &points));
            println!(
                "{k_label:<11} ({k:>3}), {name:<10}  V-measure {:.3}  {timing}  inertia {:.1}",
                v_measure(&truth, &fit.labels),
                fit.inertia
            );
        }
    }
    Ok(())
}

/// The `label` field of every row, numbered in order of first appearance.
fn read_labels(path: &Path) -> Result<Vec<usize>, String> {
    let rows: Vec<BTreeMap<String, String>> = kura_core::store::read_jsonl(path)
        .map_err(|e| format!("{e} (every field must be a string)"))?;
    let mut ids: HashMap<String, usize> = HashMap::new();
    rows.into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            let label = row
                .remove("label")
                .ok_or_else(|| format!("row {}: no \"label\" field", i + 1))?;
            let next = ids.len();
            Ok(*ids.entry(label).or_insert(next))
        })
        .collect()
}

fn fit_or_exit(config: &KMeans, points: &Matrix) -> KMeansFit {
    config.fit(points, SEED).unwrap_or_else(|e| {
        eprintln!("k-means failed: {e}");
        std::process::exit(1);
    })
}

struct Timing {
    wall: f64,
    cpu: Option<f64>,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>7.2} s", self.wall)?;
        match self.cpu {
            Some(cpu) => write!(f, " ({cpu:>6.2} CPU s)"),
            None => Ok(()),
        }
    }
}

fn timed<T>(work: impl FnOnce() -> T) -> (T, Timing) {
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let out = work();
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(cpu_seconds()).map(|(a, b)| b - a);
    (out, Timing { wall, cpu })
}

/// The synthetic sizes to time: `KURA_BENCH_POINTS` (comma-separated; empty for
/// none), else [`POINTS`].
fn synthetic_sizes() -> Vec<usize> {
    let Ok(list) = std::env::var("KURA_BENCH_POINTS") else {
        return vec![POINTS];
    };
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .filter_map(|s| match s.trim().parse() {
            Ok(n) => Some(n),
            Err(_) => {
                eprintln!("KURA_BENCH_POINTS: {s:?} is not a number of points; skipped");
                None
            }
        })
        .collect()
}

/// Gaussian-ish blobs around random centres, noisy enough that clusters overlap
/// the way sentence embeddings do (the sum of four uniforms stands in for a normal).
fn clustered_data(points: usize, seed: u64) -> Matrix {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..CENTRES * DIM)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let mut data = Vec::with_capacity(points * DIM);
    for _ in 0..points {
        let c = rng.gen_range(0..CENTRES);
        for d in 0..DIM {
            let noise: f32 = (0..4).map(|_| rng.gen_range(-0.5f32..0.5)).sum();
            data.push(centres[c * DIM + d] + noise);
        }
    }
    Matrix::new(points, DIM, data)
}

/// CPU seconds this process has used (user + system), where Linux tells: on a
/// shared machine wall time alone says more about the neighbours than about k-means.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel reports in USER_HZ, which is 100 on every mainstream Linux build.
    Some(ticks / 100.0)
}
