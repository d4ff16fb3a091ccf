//! PCA to two (or a few) dimensions by randomized subspace iteration.
//!
//! The covariance matrix is never formed: each iteration multiplies a thin random
//! basis by `Xᵀ(X·Q)`, which costs `O(n·d·p)` instead of `O(n·d²)` and stays fast
//! for wide embeddings. A handful of extra basis vectors (oversampling) makes the
//! top two directions converge in a fixed, small number of iterations; the fixed
//! count and the ordered reductions keep the result identical for a seed.

use kura_core::{BoxError, Matrix, Reducer};
use rand::Rng;
use rayon::prelude::*;

use crate::error::ClusterError;
use crate::vector::{check_finite, dot, seeded_rng};

/// Basis vectors beyond the two wanted; they absorb the slow-converging tail.
const OVERSAMPLE: usize = 8;
/// Subspace iterations; with the oversampling above the top two directions are
/// accurate to well below a pixel on any map.
const ITERATIONS: usize = 16;
/// Rows per partial sum of `Xᵀ·Z`; fixed so sums run in the same order on any
/// number of threads.
const REDUCE_BLOCK: usize = 512;
/// A basis vector that keeps less than this fraction of the largest one's length
/// after orthogonalisation lies in the data's null space and is dropped, so that
/// rank-deficient data (one point, two points, identical points) gives zeros, not
/// amplified rounding noise.
const RANK_TOLERANCE: f64 = 1e-5;

/// Principal component analysis onto the top two components.
///
/// Points are centred but not rescaled or normalised: the map shows the geometry it
/// is given. Each component's sign is fixed so that its largest-magnitude
/// coordinate is positive, so the map does not mirror between runs. Directions the
/// data lacks (n = 1, n = 2, identical points) come out as coordinate 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pca;

impl Reducer for Pca {
    fn id(&self) -> String {
        format!("pca-v1(components=2,oversample={OVERSAMPLE},iterations={ITERATIONS})")
    }

    fn reduce(&self, points: &Matrix, seed: u64) -> Result<Matrix, BoxError> {
        Ok(pca_2d(points, seed)?)
    }
}

/// Projects the rows of `points` onto their top two principal components.
pub fn pca_2d(points: &Matrix, seed: u64) -> Result<Matrix, ClusterError> {
    pca(points, 2, seed)
}

/// Projects the rows of `points` onto their top `count` principal components (UMAP
/// starts its layout from these).
pub fn pca(points: &Matrix, count: usize, seed: u64) -> Result<Matrix, ClusterError> {
    check_finite(points)?;
    let (n, d) = (points.rows(), points.cols());
    if n == 0 || d == 0 {
        return Ok(Matrix::zeros(n, count));
    }
    let centred = centre(points);
    let components = top_components(&centred, count, seed);
    let coords: Vec<f32> = centred
        .iter_rows()
        .flat_map(|x| components.iter().map(|c| dot(x, c)).collect::<Vec<_>>())
        .collect();
    Ok(Matrix::new(n, count, coords))
}

/// The rows minus their mean (the mean summed in `f64`, in row order).
fn centre(points: &Matrix) -> Matrix {
    let d = points.cols();
    let mut mean = vec![0.0f64; d];
    for row in points.iter_rows() {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += f64::from(x);
        }
    }
    let n = points.rows() as f64;
    let mean: Vec<f32> = mean.iter().map(|&m| (m / n) as f32).collect();
    let mut out = points.clone();
    for i in 0..out.rows() {
        for (x, m) in out.row_mut(i).iter_mut().zip(&mean) {
            *x -= m;
        }
    }
    out
}

/// The top `count` unit principal directions of centred data (a zero vector for a
/// direction the data does not have), with the sign convention applied.
fn top_components(x: &Matrix, count: usize, seed: u64) -> Vec<Vec<f32>> {
    let d = x.cols();
    let p = (count + OVERSAMPLE).min(d);
    let mut rng = seeded_rng(seed, 0);
    let random: Vec<Vec<f64>> = (0..p)
        .map(|_| (0..d).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect();
    let mut basis = orthonormalize(random);
    for _ in 0..ITERATIONS {
        basis = orthonormalize(multiply_covariance(x, &basis));
    }
    let ritz = ritz_vectors(x, &basis);
    let component = |which: usize| -> Vec<f32> {
        let mut v = ritz.get(which).cloned().unwrap_or_else(|| vec![0.0; d]);
        fix_sign(&mut v);
        v.into_iter().map(|c| c as f32).collect()
    };
    (0..count).map(component).collect()
}

/// `Xᵀ(X·q)` for every basis vector `q` (the covariance times `q`, up to scale).
fn multiply_covariance(x: &Matrix, basis: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let basis32: Vec<Vec<f32>> = basis
        .iter()
        .map(|q| q.iter().map(|&v| v as f32).collect())
        .collect();
    let (d, p) = (x.cols(), basis.len());
    let indices: Vec<usize> = (0..x.rows()).collect();
    let partials: Vec<Vec<f64>> = indices
        .par_chunks(REDUCE_BLOCK)
        .map(|block| {
            let mut acc = vec![0.0f64; p * d];
            for &i in block {
                let row = x.row(i);
                for (j, q) in basis32.iter().enumerate() {
                    let z = f64::from(dot(row, q));
                    for (a, &v) in acc[j * d..(j + 1) * d].iter_mut().zip(row) {
                        *a += z * f64::from(v);
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; p * d];
    for partial in &partials {
        total.iter_mut().zip(partial).for_each(|(t, v)| *t += v);
    }
    total.chunks_exact(d).map(<[f64]>::to_vec).collect()
}

/// Modified Gram–Schmidt; vectors left (nearly) without length become zero.
fn orthonormalize(mut vectors: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let longest = vectors.iter().map(|v| norm(v)).fold(0.0, f64::max);
    for j in 0..vectors.len() {
        for i in 0..j {
            let (done, rest) = vectors.split_at_mut(j);
            let projection = dot64(&rest[0], &done[i]);
            rest[0]
                .iter_mut()
                .zip(&done[i])
                .for_each(|(v, q)| *v -= projection * q);
        }
        let length = norm(&vectors[j]);
        if length > RANK_TOLERANCE * longest && length > 0.0 {
            vectors[j].iter_mut().for_each(|v| *v /= length);
        } else {
            vectors[j].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    vectors
}

/// Rayleigh–Ritz: the eigenvectors of the covariance restricted to the basis,
/// mapped back to full space, by decreasing eigenvalue.
fn ritz_vectors(x: &Matrix, basis: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let projected = multiply_covariance(x, basis);
    let p = basis.len();
    let mut small = vec![vec![0.0f64; p]; p];
    for i in 0..p {
        for j in 0..p {
            small[i][j] = dot64(&basis[i], &projected[j]);
        }
    }
    let (values, vectors) = jacobi_eigen(small);
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .map(|k| {
            let mut v = vec![0.0f64; x.cols()];
            for (j, q) in basis.iter().enumerate() {
                v.iter_mut()
                    .zip(q)
                    .for_each(|(a, &b)| *a += vectors[j][k] * b);
            }
            let length = norm(&v);
            if length > 0.0 {
                v.iter_mut().for_each(|a| *a /= length);
            }
            v
        })
        .collect()
}

/// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations.
/// Returns the eigenvalues and the eigenvectors as columns (`vectors[row][k]`).
fn jacobi_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let p = a.len();
    let mut v = vec![vec![0.0f64; p]; p];
    (0..p).for_each(|i| v[i][i] = 1.0);
    let scale: f64 = a.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..64 {
        let off: f64 = (0..p)
            .flat_map(|i| (0..p).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-14 * scale || off == 0.0 {
            break;
        }
        for i in 0..p {
            for j in i + 1..p {
                if a[i][j].abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                let theta = (a[j][j] - a[i][i]) / (2.0 * a[i][j]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                rotate(&mut a, &mut v, i, j, c, s);
            }
        }
    }
    ((0..p).map(|i| a[i][i]).collect(), v)
}

/// Applies the Jacobi rotation `(i, j, c, s)`, `i < j`, to `a` (both sides) and to `v`.
fn rotate(a: &mut [Vec<f64>], v: &mut [Vec<f64>], i: usize, j: usize, c: f64, s: f64) {
    let rotate_columns = |rows: &mut [Vec<f64>]| {
        for row in rows.iter_mut() {
            let (ri, rj) = (row[i], row[j]);
            row[i] = c * ri - s * rj;
            row[j] = s * ri + c * rj;
        }
    };
    rotate_columns(a);
    rotate_columns(v);
    // Then rows i and j (callers pass i < j).
    let (upper, lower) = a.split_at_mut(j);
    for (aik, ajk) in upper[i].iter_mut().zip(lower[0].iter_mut()) {
        let (x, y) = (*aik, *ajk);
        *aik = c * x - s * y;
        *ajk = s * x + c * y;
    }
}

/// Flips `v` so its largest-magnitude coordinate (the first, on ties) is positive.
fn fix_sign(v: &mut [f64]) {
    let mut largest = 0;
    for (i, x) in v.iter().enumerate() {
        if x.abs() > v[largest].abs() {
            largest = i;
        }
    }
    if v.get(largest).is_some_and(|&x| x < 0.0) {
        v.iter_mut().for_each(|x| *x = -*x);
    }
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(v: &[f64]) -> f64 {
    dot64(v, v).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises_a_known_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 3 and 1.
        let (values, vectors) = jacobi_eigen(vec![vec![2.0, 1.0], vec![1.0, 2.0]]);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        assert!((sorted[0] - 1.0).abs() < 1e-12 && (sorted[1] - 3.0).abs() < 1e-12);
        let top = if values[0] > values[1] { 0 } else { 1 };
        assert!((vectors[0][top].abs() - vectors[1][top].abs()).abs() < 1e-12);
    }
}
