//! k-means speed on 100 000 × 384 clustered vectors (the size of a large chat log
//! embedded with MiniLM), k = 50. Prints seconds and points per second for one
//! seeding (scikit-learn's `KMeans(n_clusters=50)` protocol, `n_init=1`) and for
//! Kura's default restarts. Run with `cargo bench -p kura-cluster --bench kmeans`.

use std::time::Instant;

use kura_cluster::{kmeans, KMeans};
use kura_core::Matrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const POINTS: usize = 100_000;
const DIM: usize = 384;
const CENTRES: usize = 50;

/// Gaussian-ish blobs around random centres, noisy enough that clusters overlap
/// the way sentence embeddings do (the sum of four uniforms stands in for a normal).
fn clustered_data(seed: u64) -> Matrix {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..CENTRES * DIM)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let mut data = Vec::with_capacity(POINTS * DIM);
    for _ in 0..POINTS {
        let c = rng.gen_range(0..CENTRES);
        for d in 0..DIM {
            let noise: f32 = (0..4).map(|_| rng.gen_range(-0.5f32..0.5)).sum();
            data.push(centres[c * DIM + d] + noise);
        }
    }
    Matrix::new(POINTS, DIM, data)
}

fn main() {
    let points = clustered_data(1);
    let threads = rayon::current_num_threads();
    println!("k-means, {POINTS} × {DIM}, k = {CENTRES}, {threads} threads");
    let defaults = KMeans::default();
    for (label, restarts) in [
        ("1 seeding (scikit-learn's n_init=1)", 1),
        ("default restarts", defaults.restarts),
    ] {
        let (started, cpu_before) = (Instant::now(), cpu_seconds());
        let fit = match kmeans(&points, CENTRES, 42, restarts, defaults.max_iter) {
            Ok(fit) => fit,
            Err(e) => {
                eprintln!("k-means failed: {e}");
                std::process::exit(1);
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let cpu = match (cpu_before, cpu_seconds()) {
            (Some(a), Some(b)) => format!("  {:.2} CPU s", b - a),
            _ => String::new(),
        };
        println!(
            "{label:<40} {restarts:>2} restarts  {seconds:>7.2} s  {:>10.0} points/s  inertia {:.1}{cpu}",
            POINTS as f64 / seconds,
            fit.inertia
        );
    }
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
