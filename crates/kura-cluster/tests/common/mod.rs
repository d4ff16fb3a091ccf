//! Synthetic data shared by the integration tests.
#![allow(dead_code)]

use kura_core::Matrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `per_blob` points around each of `blobs` random directions in `dim` dimensions,
/// with Gaussian-ish noise of scale `spread`; returns the points and true labels.
pub fn blobs(
    blobs: usize,
    per_blob: usize,
    dim: usize,
    spread: f32,
    seed: u64,
) -> (Matrix, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..blobs)
        .map(|_| unit((0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()))
        .collect();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for i in 0..blobs * per_blob {
        let blob = i % blobs;
        let row: Vec<f32> = centres[blob]
            .iter()
            .map(|&c| c + spread * (rng.gen_range(-1.0f32..1.0) + rng.gen_range(-1.0f32..1.0)))
            .collect();
        rows.push(row);
        labels.push(blob);
    }
    (Matrix::from_rows(&rows).unwrap(), labels)
}

pub fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}
