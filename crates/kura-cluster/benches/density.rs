//! HDBSCAN, UMAP and k-nearest-neighbour speed. HDBSCAN runs on 50 000 points in
//! 5 dimensions, the space the `Hdbscan` clusterer hands it after UMAP (and the
//! size the Python `hdbscan` package is compared at); UMAP runs on 10 000 × 384
//! clustered vectors, MiniLM's width, from the exact k-NN to the finished 2-D
//! layout, and on 50 000, where its graph comes from NN-descent. The k-NN section
//! times the exact lists against NN-descent (k = 15) at 10 000, 50 000 and
//! 100 000 embedding-like points and measures NN-descent's recall on a sample.
//!
//! Run with `cargo bench -p kura-cluster --bench density`, or name sections to run
//! only those: `-- hdbscan umap knn umap50k`. With `KURA_BENCH_DATA=DIR` the bench
//! also writes the HDBSCAN and UMAP inputs there as `.npy` and the labels it
//! found, so `benches/density_reference.py DIR` can time and score the Python
//! packages on exactly the same points.

use std::path::PathBuf;
use std::time::Instant;

use kura_cluster::{
    cosine_neighbours, hdbscan, metrics::v_measure, nearest_rows, nn_descent, Neighbours, Umap,
    EXACT_NEIGHBOURS_UP_TO,
};
use kura_core::Matrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The exact k-NN is timed only up to this many points: it is quadratic, about a
/// minute and a half at 100 000 on two cores.
const EXACT_UP_TO: usize = 100_000;
/// Points whose lists are checked against an exact search for recall.
const RECALL_SAMPLE: usize = 1000;

fn main() {
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    let out = std::env::var_os("KURA_BENCH_DATA").map(PathBuf::from);
    let write = |name: &str, m: &Matrix| {
        if let Some(dir) = &out {
            if let Err(e) = kura_core::store::write_npy(&dir.join(name), m) {
                fail(&e.to_string());
            }
        }
    };

    if runs("hdbscan") {
        let (points, truth) = time_hdbscan();
        let column = |v: &[usize]| Matrix::new(v.len(), 1, v.iter().map(|&x| x as f32).collect());
        write("hdbscan_points.npy", &points);
        write("hdbscan_truth.npy", &column(&truth));
    }
    if runs("umap") {
        let (wide, _) = blobs(10_000, 384, 20, 0.05, 2);
        time_umap(&wide);
        write("umap_points.npy", &wide);
    }
    if runs("knn") {
        for n in [10_000, 50_000, 100_000] {
            time_neighbours(&embeddings(n, 3));
        }
    }
    if runs("umap50k") {
        time_umap(&embeddings(50_000, 4));
    }
    if let Some(dir) = &out {
        println!("inputs written to {}", dir.display());
    }
}

fn time_hdbscan() -> (Matrix, Vec<usize>) {
    let threads = rayon::current_num_threads();
    let (points, truth) = blobs(50_000, 5, 40, 0.5, 1);
    let started = Instant::now();
    let labels = match hdbscan(&points, 10, 10) {
        Ok(labels) => labels,
        Err(e) => fail(&e.to_string()),
    };
    let seconds = started.elapsed().as_secs_f64();
    let clusters = labels.iter().flatten().max().map_or(0, |m| m + 1);
    let noise = labels.iter().filter(|l| l.is_none()).count();
    let flat: Vec<usize> = labels.iter().map(|l| l.unwrap_or(clusters)).collect();
    println!(
        "HDBSCAN 50000 × 5, min_cluster_size 10, {threads} threads: {seconds:.2} s, {clusters} clusters, {:.1}% noise, V-measure {:.3}",
        100.0 * noise as f64 / labels.len() as f64,
        v_measure(&truth, &flat)
    );
    (points, truth)
}

fn time_umap(points: &Matrix) {
    let threads = rayon::current_num_threads();
    let graph = if points.rows() <= EXACT_NEIGHBOURS_UP_TO {
        "exact k-NN"
    } else {
        "NN-descent k-NN"
    };
    let started = Instant::now();
    if let Err(e) = Umap::default().embed(points, 42) {
        fail(&e.to_string());
    }
    println!(
        "UMAP {} × {} → 2, 15 neighbours ({graph}), {threads} threads: {:.2} s",
        points.rows(),
        points.cols(),
        started.elapsed().as_secs_f64()
    );
}

/// Exact and NN-descent lists for `points`, timed, and NN-descent's recall: the
/// share of the exact 15 nearest it found, over a sample of points (an exact
/// search for each).
fn time_neighbours(points: &Matrix) {
    let threads = rayon::current_num_threads();
    let (n, dim) = (points.rows(), points.cols());
    let started = Instant::now();
    let approx = nn_descent(points, 15, 42);
    let descent = started.elapsed().as_secs_f64();
    let exact = if n <= EXACT_UP_TO {
        let started = Instant::now();
        cosine_neighbours(points, 15);
        format!("{:.2} s", started.elapsed().as_secs_f64())
    } else {
        "not timed (quadratic)".into()
    };
    println!(
        "k-NN {n} × {dim}, k 15, {threads} threads: exact {exact}, NN-descent {descent:.2} s, recall {:.4} ({RECALL_SAMPLE} points)",
        sampled_recall(points, &approx)
    );
}

fn sampled_recall(points: &Matrix, approx: &Neighbours) -> f64 {
    let n = points.rows();
    let sample: Vec<usize> = (0..RECALL_SAMPLE).map(|s| s * n / RECALL_SAMPLE).collect();
    let found: usize = sample
        .iter()
        .map(|&i| {
            let truth = nearest_rows(points, points.row(i), |j| j == i, approx.k);
            approx.of(i).filter(|(j, _)| truth.contains(j)).count()
        })
        .sum();
    found as f64 / (sample.len() * approx.k) as f64
}

/// `count` points around `centres` random centres in `dim` dimensions plus 5%
/// uniform background noise, with the centre each point came from (`centres` for
/// noise).
fn blobs(count: usize, dim: usize, centres: usize, spread: f32, seed: u64) -> (Matrix, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let middle: Vec<f32> = (0..centres * dim)
        .map(|_| rng.gen_range(-10.0..10.0))
        .collect();
    let mut data = Vec::with_capacity(count * dim);
    let mut truth = Vec::with_capacity(count);
    for _ in 0..count {
        if rng.gen_range(0.0..1.0) < 0.05 {
            data.extend((0..dim).map(|_| rng.gen_range(-12.0f32..12.0)));
            truth.push(centres);
            continue;
        }
        let c = rng.gen_range(0..centres);
        for d in 0..dim {
            let noise: f32 = (0..4).map(|_| rng.gen_range(-spread..spread)).sum();
            data.push(middle[c * dim + d] + noise);
        }
        truth.push(c);
    }
    (Matrix::new(count, dim, data), truth)
}

/// `count` 384-d points shaped like sentence embeddings: 50 topics, each a centre
/// plus its own 16 directions of variation, plus a little isotropic noise. The low
/// intrinsic dimension is what makes neighbourhoods meaningful, and NN-descent's
/// recall on it is close to what it reaches on MiniLM embeddings. [`blobs`] is no
/// use for recall: its clusters are cones so narrow that rounding decides the
/// exact lists (two exact searches agree on 95% of them).
fn embeddings(count: usize, seed: u64) -> Matrix {
    const DIM: usize = 384;
    const TOPICS: usize = 50;
    const LATENT: usize = 16;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = move || (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>();
    let centres: Vec<f32> = (0..TOPICS * DIM).map(|_| normal()).collect();
    let axes: Vec<f32> = (0..TOPICS * LATENT * DIM).map(|_| 0.3 * normal()).collect();
    let mut data = Vec::with_capacity(count * DIM);
    for i in 0..count {
        let t = i % TOPICS;
        let z: Vec<f32> = (0..LATENT).map(|_| normal()).collect();
        for d in 0..DIM {
            let along: f32 = (0..LATENT)
                .map(|l| z[l] * axes[(t * LATENT + l) * DIM + d])
                .sum();
            data.push(centres[t * DIM + d] + along + 0.3 * normal());
        }
    }
    Matrix::new(count, DIM, data)
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1);
}
