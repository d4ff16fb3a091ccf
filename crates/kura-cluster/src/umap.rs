//! UMAP (McInnes, Healy & Melville, 2018): a 2-D map that keeps each point's
//! nearest neighbours near it, and the few-dimensional space HDBSCAN clusters in.
//!
//! This follows umap-learn step for step (the fuzzy k-NN graph with per-point
//! `ρ` and `σ`, the fuzzy union, edge sampling by weight, negative sampling,
//! the `a`, `b` curve fitted to `min_dist`), with two deliberate differences. The
//! layout starts from PCA rather than a spectral embedding, which needs no
//! eigensolver on a sparse graph and is umap-learn's own `init="pca"`. And the
//! optimisation runs on one thread with a seeded stream, where umap-learn
//! races threads against each other: the same seed gives the same map, bit for bit,
//! which is what lets the checkpoint store trust a fingerprint. The layout costs
//! seconds for tens of thousands of points; the k-NN graph before it dominates,
//! which is why above a size threshold it comes from NN-descent, as in umap-learn.

use kura_core::{BoxError, Matrix, Reducer};
use rand::Rng;

use crate::error::ClusterError;
use crate::knn::{cosine_neighbours_seeded, Neighbours};
use crate::pca::pca;
use crate::vector::{check_finite, seeded_rng, squared_distance};

/// Negative samples per positive one (umap-learn's `negative_sample_rate`).
const NEGATIVE_SAMPLES: f32 = 5.0;
/// Gradient coordinates are clipped to ±this (umap-learn's `clip`).
const CLIP: f32 = 4.0;
/// Below this many points there is no neighbourhood to keep; PCA is used instead.
const FEWEST_POINTS: usize = 4;

/// UMAP on cosine distance, as a [`Reducer`] (the map) and via [`Umap::embed`] (the
/// space HDBSCAN clusters in).
#[derive(Debug, Clone, PartialEq)]
pub struct Umap {
    /// Neighbourhood size, the point itself included (umap-learn's `n_neighbors`).
    pub neighbours: usize,
    pub components: usize,
    /// How tightly points may pack: small values keep clusters dense.
    pub min_dist: f32,
    /// Optimisation epochs; `None` takes umap-learn's 500 up to 10 000 points, else 200.
    pub epochs: Option<usize>,
}

impl Default for Umap {
    fn default() -> Self {
        Umap {
            neighbours: 15,
            components: 2,
            min_dist: 0.1,
            epochs: None,
        }
    }
}

impl Reducer for Umap {
    fn id(&self) -> String {
        let epochs = self.epochs.map_or_else(|| "auto".into(), |e| e.to_string());
        format!(
            "umap-v2(neighbours={},components={},min_dist={},epochs={epochs})",
            self.neighbours, self.components, self.min_dist
        )
    }

    fn reduce(&self, points: &Matrix, seed: u64) -> Result<Matrix, BoxError> {
        Ok(self.embed(points, seed)?)
    }
}

impl Umap {
    /// The rows of `points` laid out in `self.components` dimensions.
    pub fn embed(&self, points: &Matrix, seed: u64) -> Result<Matrix, ClusterError> {
        check_finite(points)?;
        if self.neighbours < 2 {
            return Err(ClusterError::invalid(
                "neighbours",
                self.neighbours,
                "must be at least 2 (the point itself and one neighbour)",
            ));
        }
        if self.components == 0 {
            return Err(ClusterError::invalid("components", 0, "must be at least 1"));
        }
        if !(self.min_dist >= 0.0 && self.min_dist < 1.0) {
            return Err(ClusterError::invalid(
                "min_dist",
                self.min_dist,
                "must be in [0, 1)",
            ));
        }
        let n = points.rows();
        if n < FEWEST_POINTS {
            return pca(points, self.components, seed);
        }
        let epochs = self
            .epochs
            .unwrap_or(if n <= 10_000 { 500 } else { 200 })
            .max(1);
        let neighbours = cosine_neighbours_seeded(points, self.neighbours - 1, seed);
        let edges = fuzzy_graph(&neighbours, self.neighbours, epochs);
        let layout = initial_layout(points, self.components, seed)?;
        let (a, b) = fit_curve(1.0, self.min_dist);
        Ok(optimize(layout, &edges, Curve { a, b }, epochs, seed))
    }
}

/// One directed edge of the symmetric fuzzy graph.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Edge {
    head: u32,
    tail: u32,
    weight: f32,
}

/// The fuzzy simplicial set: each point's membership weights to its neighbours,
/// then the fuzzy union `w + wᵀ − w∘wᵀ`, both directions listed, sorted by
/// `(head, tail)`. Edges too weak to be sampled once in `epochs` are dropped.
fn fuzzy_graph(nn: &Neighbours, neighbours: usize, epochs: usize) -> Vec<Edge> {
    let mean_all = mean(&nn.distances);
    let target = (neighbours as f32).log2();
    // (low, high, weight from low to high, weight from high to low)
    let mut pairs: Vec<(u32, u32, f32, f32)> = Vec::with_capacity(nn.indices.len());
    for row in 0..nn.rows() {
        let distances: Vec<f32> = nn.of(row).map(|(_, d)| d).collect();
        let (rho, sigma) = smooth_distance(&distances, target, mean_all);
        for (j, d) in nn.of(row) {
            let w = if d - rho <= 0.0 || sigma == 0.0 {
                1.0
            } else {
                (-(d - rho) / sigma).exp()
            };
            let (i, j) = (row as u32, j as u32);
            pairs.push(if i < j {
                (i, j, w, 0.0)
            } else {
                (j, i, 0.0, w)
            });
        }
    }
    pairs.sort_by_key(|&(i, j, _, _)| (i, j));
    let mut merged: Vec<(u32, u32, f32)> = Vec::with_capacity(pairs.len());
    let mut k = 0;
    while k < pairs.len() {
        let (i, j, mut forward, mut backward) = pairs[k];
        k += 1;
        while k < pairs.len() && pairs[k].0 == i && pairs[k].1 == j {
            forward = forward.max(pairs[k].2);
            backward = backward.max(pairs[k].3);
            k += 1;
        }
        merged.push((i, j, forward + backward - forward * backward));
    }
    let strongest = merged.iter().map(|e| e.2).fold(0.0f32, f32::max);
    let floor = strongest / epochs as f32;
    let mut edges: Vec<Edge> = merged
        .into_iter()
        .filter(|&(_, _, w)| w >= floor && w > 0.0)
        .flat_map(|(i, j, weight)| {
            [
                Edge {
                    head: i,
                    tail: j,
                    weight,
                },
                Edge {
                    head: j,
                    tail: i,
                    weight,
                },
            ]
        })
        .collect();
    edges.sort_by_key(|e| (e.head, e.tail));
    edges
}

/// umap-learn's `smooth_knn_dist` for one point: `ρ`, the distance to the nearest
/// neighbour that is not a duplicate, and `σ`, found by bisection so that the
/// memberships sum to `log2(neighbours)`.
fn smooth_distance(distances: &[f32], target: f32, mean_all: f32) -> (f32, f32) {
    let rho = distances.iter().copied().find(|&d| d > 0.0).unwrap_or(0.0);
    let (mut lo, mut hi, mut mid) = (0.0f32, f32::INFINITY, 1.0f32);
    for _ in 0..64 {
        let total: f32 = distances
            .iter()
            .map(|&d| {
                let excess = d - rho;
                if excess > 0.0 {
                    (-excess / mid).exp()
                } else {
                    1.0
                }
            })
            .sum();
        if (total - target).abs() < 1e-5 {
            break;
        }
        if total > target {
            hi = mid;
            mid = (lo + hi) / 2.0;
        } else {
            lo = mid;
            mid = if hi.is_infinite() {
                mid * 2.0
            } else {
                (lo + hi) / 2.0
            };
        }
    }
    let floor = 1e-3 * if rho > 0.0 { mean(distances) } else { mean_all };
    (rho, mid.max(floor))
}

fn mean(values: &[f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    (values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64) as f32
}

/// PCA of the points, each axis scaled to `[0, 10]` (umap-learn's `init="pca"`),
/// plus a tiny seeded jitter so that duplicate points can separate.
fn initial_layout(points: &Matrix, components: usize, seed: u64) -> Result<Matrix, ClusterError> {
    let mut layout = pca(points, components, seed)?;
    let mut rng = seeded_rng(seed, 1);
    for c in 0..components {
        let column = (0..layout.rows()).map(|i| layout.row(i)[c]);
        let (lo, hi) = column.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let span = hi - lo;
        for i in 0..layout.rows() {
            let v = &mut layout.row_mut(i)[c];
            let scaled = if span > 0.0 {
                10.0 * (*v - lo) / span
            } else {
                0.0
            };
            *v = scaled + rng.gen_range(-1e-4f32..1e-4);
        }
    }
    Ok(layout)
}

/// The low-dimensional similarity `1 / (1 + a·d^(2b))`.
#[derive(Debug, Clone, Copy)]
struct Curve {
    a: f32,
    b: f32,
}

/// Stochastic gradient descent on the layout's cross-entropy with the graph,
/// sampling each edge in proportion to its weight (umap-learn's
/// `optimize_layout_euclidean`, with both ends of an edge moved).
fn optimize(mut layout: Matrix, edges: &[Edge], curve: Curve, epochs: usize, seed: u64) -> Matrix {
    let n = layout.rows();
    let dim = layout.cols();
    let strongest = edges.iter().map(|e| e.weight).fold(0.0f32, f32::max);
    let per_sample: Vec<f32> = edges.iter().map(|e| strongest / e.weight).collect();
    let per_negative: Vec<f32> = per_sample.iter().map(|p| p / NEGATIVE_SAMPLES).collect();
    let mut next_sample = per_sample.clone();
    let mut next_negative = per_negative.clone();
    let mut rng = seeded_rng(seed, 2);
    let (a, b) = (curve.a, curve.b);
    let mut current = vec![0.0f32; dim];
    for epoch in 0..epochs {
        let alpha = 1.0 - epoch as f32 / epochs as f32;
        let now = epoch as f32;
        for (e, edge) in edges.iter().enumerate() {
            if next_sample[e] > now {
                continue;
            }
            let (head, tail) = (edge.head as usize, edge.tail as usize);
            current.copy_from_slice(layout.row(head));
            let other = layout.row_mut(tail);
            let d2 = squared_distance(&current, other);
            let coeff = if d2 > 0.0 {
                let p = d2.powf(b);
                -2.0 * a * b * (p / d2) / (a * p + 1.0)
            } else {
                0.0
            };
            for (c, o) in current.iter_mut().zip(other.iter_mut()) {
                let g = (coeff * (*c - *o)).clamp(-CLIP, CLIP) * alpha;
                *c += g;
                *o -= g;
            }
            next_sample[e] += per_sample[e];

            let negatives = ((now - next_negative[e]) / per_negative[e])
                .floor()
                .max(0.0);
            for _ in 0..negatives as usize {
                let k = rng.gen_range(0..n);
                if k == head {
                    continue;
                }
                let other = layout.row(k);
                let d2 = squared_distance(&current, other);
                if d2 <= 0.0 {
                    continue;
                }
                let coeff = 2.0 * b / ((0.001 + d2) * (a * d2.powf(b) + 1.0));
                for (c, &o) in current.iter_mut().zip(other) {
                    *c += (coeff * (*c - o)).clamp(-CLIP, CLIP) * alpha;
                }
            }
            next_negative[e] += negatives * per_negative[e];
            layout.row_mut(head).copy_from_slice(&current);
        }
    }
    layout
}

/// Fits `a`, `b` of `1 / (1 + a·x^(2b))` to the target membership curve (1 up to
/// `min_dist`, then `exp(−(x − min_dist)/spread)`) by damped Gauss–Newton on the
/// 300 points umap-learn's `find_ab_params` uses.
fn fit_curve(spread: f32, min_dist: f32) -> (f32, f32) {
    let (spread, min_dist) = (f64::from(spread), f64::from(min_dist));
    let xs: Vec<f64> = (0..300).map(|i| 3.0 * spread * i as f64 / 299.0).collect();
    let target = |x: f64| {
        if x < min_dist {
            1.0
        } else {
            (-(x - min_dist) / spread).exp()
        }
    };
    let loss = |a: f64, b: f64| -> f64 {
        xs.iter()
            .map(|&x| (1.0 / (1.0 + a * x.powf(2.0 * b)) - target(x)).powi(2))
            .sum()
    };
    let (mut a, mut b, mut damping) = (1.0f64, 1.0f64, 1e-3f64);
    let mut current = loss(a, b);
    for _ in 0..200 {
        // Normal equations of the linearised residuals.
        let (mut jaa, mut jab, mut jbb, mut ga, mut gb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &x in xs.iter().filter(|&&x| x > 0.0) {
            let p = x.powf(2.0 * b);
            let f = 1.0 / (1.0 + a * p);
            let r = f - target(x);
            let da = -p * f * f;
            let db = -a * p * 2.0 * x.ln() * f * f;
            jaa += da * da;
            jab += da * db;
            jbb += db * db;
            ga += da * r;
            gb += db * r;
        }
        let (maa, mbb) = (jaa * (1.0 + damping), jbb * (1.0 + damping));
        let det = maa * mbb - jab * jab;
        if det.abs() < 1e-300 {
            break;
        }
        let step_a = -(mbb * ga - jab * gb) / det;
        let step_b = -(maa * gb - jab * ga) / det;
        let (na, nb) = (a + step_a, b + step_b);
        let candidate = if na > 0.0 && nb > 0.0 {
            loss(na, nb)
        } else {
            f64::INFINITY
        };
        if candidate < current {
            let converged = current - candidate < 1e-14;
            (a, b, current, damping) = (na, nb, candidate, damping / 10.0);
            if converged {
                break;
            }
        } else {
            damping *= 10.0;
            if damping > 1e12 {
                break;
            }
        }
    }
    (a as f32, b as f32)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `groups` blobs of `per_group` points around random unit directions in `dim`
    /// dimensions, rows shuffled by a fixed stride so groups interleave.
    pub(crate) fn blobs(
        groups: usize,
        per_group: usize,
        dim: usize,
        spread: f32,
    ) -> (Matrix, Vec<usize>) {
        let mut rng = seeded_rng(7, 0);
        let centres: Vec<Vec<f32>> = (0..groups)
            .map(|_| (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
            .collect();
        let n = groups * per_group;
        let mut rows = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let g = i % groups;
            let row: Vec<f32> = centres[g]
                .iter()
                .map(|&c| c + rng.gen_range(-spread..spread))
                .collect();
            rows.push(row);
            labels.push(g);
        }
        (Matrix::from_rows(&rows).unwrap(), labels)
    }

    #[test]
    fn the_curve_fit_matches_umap_learn() {
        // umap-learn's find_ab_params(1.0, 0.1) gives a = 1.577, b = 0.895.
        let (a, b) = fit_curve(1.0, 0.1);
        assert!(
            (a - 1.577).abs() < 0.01 && (b - 0.895).abs() < 0.01,
            "{a} {b}"
        );
        // and (1.0, 0.0), BERTopic's setting, gives a = 1.929, b = 0.7915.
        let (a, b) = fit_curve(1.0, 0.0);
        assert!(
            (a - 1.929).abs() < 0.01 && (b - 0.7915).abs() < 0.01,
            "{a} {b}"
        );
    }

    #[test]
    fn sigma_makes_the_memberships_sum_to_the_target() {
        let distances = [0.1f32, 0.2, 0.3, 0.5, 0.8];
        let target = 6f32.log2();
        let (rho, sigma) = smooth_distance(&distances, target, 0.4);
        assert_eq!(rho, 0.1);
        let total: f32 = distances
            .iter()
            .map(|&d| (-(d - rho).max(0.0) / sigma).exp())
            .sum();
        assert!((total - target).abs() < 1e-3, "{total}");
    }

    #[test]
    fn the_fuzzy_graph_is_symmetric_and_weights_are_memberships() {
        let (points, _) = blobs(3, 10, 8, 0.2);
        let nn = crate::knn::cosine_neighbours(&points, 5);
        let edges = fuzzy_graph(&nn, 6, 200);
        assert!(!edges.is_empty());
        for e in &edges {
            assert!(e.weight > 0.0 && e.weight <= 1.0);
            assert!(edges
                .iter()
                .any(|f| f.head == e.tail && f.tail == e.head && f.weight == e.weight));
        }
    }

    /// The share of each point's 10 nearest neighbours in the layout that share its
    /// label.
    fn neighbour_purity(layout: &Matrix, labels: &[usize]) -> f32 {
        let nn = crate::knn::euclidean_neighbours(layout, 10);
        let same = (0..layout.rows())
            .map(|i| nn.of(i).filter(|&(j, _)| labels[j] == labels[i]).count())
            .sum::<usize>();
        same as f32 / (layout.rows() * nn.k) as f32
    }

    #[test]
    fn the_map_keeps_groups_together_and_repeats_for_a_seed() {
        let (points, labels) = blobs(5, 40, 32, 0.6);
        let umap = Umap::default();
        let layout = umap.embed(&points, 3).unwrap();
        assert_eq!((layout.rows(), layout.cols()), (200, 2));
        assert!(layout.as_slice().iter().all(|v| v.is_finite()));
        let purity = neighbour_purity(&layout, &labels);
        assert!(purity > 0.95, "purity {purity}");
        assert_eq!(
            layout,
            umap.embed(&points, 3).unwrap(),
            "same seed, same map"
        );
        assert_ne!(layout, umap.embed(&points, 4).unwrap(), "the seed matters");
    }

    #[test]
    fn degenerate_inputs_give_finite_maps() {
        let umap = Umap::default();
        for rows in [0usize, 1, 3] {
            let points = Matrix::new(rows, 4, vec![0.5; rows * 4]);
            let layout = umap.embed(&points, 1).unwrap();
            assert_eq!((layout.rows(), layout.cols()), (rows, 2));
        }
        let same = Matrix::new(30, 4, vec![1.0; 120]);
        let layout = umap.embed(&same, 1).unwrap();
        assert!(layout.as_slice().iter().all(|v| v.is_finite()));
        let mut bad = Matrix::new(10, 4, vec![1.0; 40]);
        bad.row_mut(6)[2] = f32::NAN;
        let err = umap.embed(&bad, 1).unwrap_err().to_string();
        assert!(err.contains("row 6"), "{err}");
        let err = Umap {
            neighbours: 1,
            ..Umap::default()
        }
        .embed(&same, 1)
        .unwrap_err()
        .to_string();
        assert!(err.contains("neighbours"), "{err}");
    }
}
