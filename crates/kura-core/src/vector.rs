//! Vector arithmetic in cosine geometry, shared by the pipeline, clustering and
//! search: an embedding's direction carries its meaning and its length does not, so
//! rows are compared after L2 normalisation. Every sum runs in a fixed order, so
//! results are the same on every machine and thread count.

use rayon::prelude::*;

use crate::matrix::Matrix;

/// Rows scored per parallel task in [`nearest_rows`]; fixed so results never depend
/// on the thread count.
const SEARCH_BLOCK: usize = 1024;

/// A dot product; the summation order is fixed, so results are reproducible.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_of_terms(a, b, |x, y| x * y)
}

/// The exact squared Euclidean distance; used where an expanded
/// `|x|² + |c|² − 2x·c` would round a true zero to a tiny positive number.
pub fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    sum_of_terms(a, b, |x, y| (x - y) * (x - y))
}

/// `Σ term(a[i], b[i])` with eight independent accumulators, so the compiler can
/// keep them in one SIMD register, added in a fixed order.
#[inline(always)]
fn sum_of_terms(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    let mut acc = [0.0f32; 8];
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += term(x[i], y[i]);
        }
    }
    let mut sum = lanes_sum(acc);
    for (&x, &y) in rest_a.iter().zip(rest_b) {
        sum += term(x, y);
    }
    sum
}

/// The eight partial sums added in a fixed tree order.
fn lanes_sum(acc: [f32; 8]) -> f32 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Scales `v` to unit length in place; a zero vector stays zero (it is a valid
/// point that is equally far from every direction).
pub fn normalize_in_place(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The mean direction of `rows`: each row is normalised, the results averaged and
/// the average normalised again. This is the vector a cluster is represented by
/// (for naming contrast and for the hierarchy), in the same geometry k-means uses.
/// No rows, or rows that cancel out, give the zero vector.
pub fn normalized_mean(points: &Matrix, rows: &[usize]) -> Vec<f32> {
    let mut mean = vec![0.0f64; points.cols()];
    let mut unit = vec![0.0f32; points.cols()];
    for &r in rows {
        unit.copy_from_slice(points.row(r));
        normalize_in_place(&mut unit);
        for (m, &u) in mean.iter_mut().zip(&unit) {
            *m += f64::from(u);
        }
    }
    let mut out: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    normalize_in_place(&mut out);
    out
}

/// The `k` rows most similar to `query` by cosine similarity, best first, skipping
/// rows for which `exclude` returns true. Exact (every row is scored), in parallel
/// blocks; ties go to the lower row index so the answer is deterministic. Zero rows
/// and a zero query score 0.
///
/// # Panics
/// If `query.len()` differs from `points.cols()` (a programming error).
pub fn nearest_rows<F>(points: &Matrix, query: &[f32], exclude: F, k: usize) -> Vec<usize>
where
    F: Fn(usize) -> bool + Sync,
{
    assert_eq!(
        query.len(),
        points.cols(),
        "query length must match the row length"
    );
    if k == 0 || points.is_empty() {
        return Vec::new();
    }
    let mut q = query.to_vec();
    normalize_in_place(&mut q);
    let indices: Vec<usize> = (0..points.rows()).collect();
    let mut scored: Vec<(f32, usize)> = indices
        .par_chunks(SEARCH_BLOCK)
        .flat_map_iter(|block| {
            block
                .iter()
                .filter(|&&i| !exclude(i))
                .map(|&i| (cosine_to_unit(points.row(i), &q), i))
                .collect::<Vec<_>>()
        })
        .collect();
    let by_rank = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if scored.len() > k {
        scored.select_nth_unstable_by(k - 1, by_rank);
        scored.truncate(k);
    }
    scored.sort_unstable_by(by_rank);
    scored.into_iter().map(|(_, i)| i).collect()
}

/// Cosine similarity of `row` with the unit vector `unit`.
pub fn cosine_to_unit(row: &[f32], unit: &[f32]) -> f32 {
    let norm = dot(row, row).sqrt();
    if norm > 0.0 {
        dot(row, unit) / norm
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum_for_odd_lengths() {
        let a: Vec<f32> = (0..13).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..13).map(|i| 1.0 - i as f32 * 0.25).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn normalized_mean_ignores_row_length() {
        let m = Matrix::from_rows(&[[2.0f32, 0.0], [0.0, 10.0]]).unwrap();
        let mean = normalized_mean(&m, &[0, 1]);
        let expected = std::f32::consts::FRAC_1_SQRT_2;
        assert!((mean[0] - expected).abs() < 1e-6 && (mean[1] - expected).abs() < 1e-6);
        assert_eq!(normalized_mean(&m, &[]), vec![0.0, 0.0]);
    }

    #[test]
    fn nearest_rows_ranks_by_cosine_and_respects_exclusion() {
        let m = Matrix::from_rows(&[
            [1.0f32, 0.0],
            [0.0, 1.0],
            [5.0, 0.1],
            [-1.0, 0.0],
            [0.0, 0.0],
        ])
        .unwrap();
        assert_eq!(nearest_rows(&m, &[1.0, 0.0], |_| false, 3), vec![0, 2, 1]);
        assert_eq!(nearest_rows(&m, &[1.0, 0.0], |i| i == 0, 2), vec![2, 1]);
        assert_eq!(nearest_rows(&m, &[1.0, 0.0], |_| false, 10).len(), 5);
        assert!(nearest_rows(&m, &[1.0, 0.0], |_| false, 0).is_empty());
    }
}
