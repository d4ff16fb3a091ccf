//! HDBSCAN and UMAP speed. HDBSCAN runs on 50 000 points in 5 dimensions, the
//! space the `Hdbscan` clusterer hands it after UMAP (and the size the Python
//! `hdbscan` package is compared at); UMAP runs on 10 000 × 384 clustered vectors,
//! MiniLM's width, from the exact k-NN to the finished 2-D layout.
//!
//! Run with `cargo bench -p kura-cluster --bench density`. With
//! `KURA_BENCH_DATA=DIR` the bench also writes its inputs there as `.npy` and the
//! labels it found, so `benches/density_reference.py DIR` can time and score the
//! Python packages on exactly the same points.

use std::path::PathBuf;
use std::time::Instant;

use kura_cluster::{hdbscan, metrics::v_measure, Umap};
use kura_core::Matrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

fn main() {
    let out = std::env::var_os("KURA_BENCH_DATA").map(PathBuf::from);
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

    let (wide, _) = blobs(10_000, 384, 20, 0.05, 2);
    let started = Instant::now();
    if let Err(e) = Umap::default().embed(&wide, 42) {
        fail(&e.to_string());
    }
    println!(
        "UMAP 10000 × 384 → 2, 15 neighbours, {threads} threads: {:.2} s",
        started.elapsed().as_secs_f64()
    );

    if let Some(dir) = out {
        let write = |name: &str, m: &Matrix| {
            if let Err(e) = kura_core::store::write_npy(&dir.join(name), m) {
                fail(&e.to_string());
            }
        };
        let column = |v: &[usize]| Matrix::new(v.len(), 1, v.iter().map(|&x| x as f32).collect());
        write("hdbscan_points.npy", &points);
        write("hdbscan_truth.npy", &column(&truth));
        write("umap_points.npy", &wide);
        println!("inputs written to {}", dir.display());
    }
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1);
}
