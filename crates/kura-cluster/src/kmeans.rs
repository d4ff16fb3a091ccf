//! Spherical k-means with greedy k-means++ seeding and restarts, on L2-normalised
//! rows; distances come from the blocked kernel in `blocked.rs`.
//!
//! Determinism is the main constraint: a run directory must reproduce byte for byte
//! from a seed, whatever the machine's core count. Every parallel step therefore
//! either computes each output from its own input alone (assignment, distances) or
//! is reduced in a fixed order (centroid sums run per cluster over its members in
//! row order; inertia is summed sequentially).

use kura_core::{BoxError, Clusterer, Matrix};
use rand::Rng;
use rayon::prelude::*;

use crate::blocked::{nearest, squared_distances, PackedPoints};
use crate::error::ClusterError;
use crate::vector::{
    check_finite, dot, normalize_in_place, normalized_rows, seeded_rng, squared_distance,
};

/// k-means as a [`Clusterer`]. `k: None` picks [`default_k`] of the number of points.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    pub k: Option<usize>,
    /// Independent seedings; the one with the lowest inertia wins (0 counts as 1).
    pub restarts: usize,
    /// Lloyd iterations per restart at most.
    pub max_iter: usize,
    /// Stop when an iteration lowers the inertia by less than this fraction of it.
    pub tol: f32,
}

impl Default for KMeans {
    fn default() -> Self {
        KMeans {
            k: None,
            restarts: 4,
            max_iter: 100,
            tol: 1e-4,
        }
    }
}

impl Clusterer for KMeans {
    fn id(&self) -> String {
        let k = self.k.map_or_else(|| "auto".to_string(), |k| k.to_string());
        format!(
            "kmeans-v2(k={k},restarts={},max_iter={},tol={})",
            self.restarts, self.max_iter, self.tol
        )
    }

    fn cluster(&self, points: &Matrix, seed: u64) -> Result<Vec<Option<usize>>, BoxError> {
        let k = self.k.unwrap_or_else(|| default_k(points.rows()));
        let fit = kmeans_with_tol(points, k, seed, self.restarts, self.max_iter, self.tol)?;
        Ok(fit.labels.into_iter().map(Some).collect())
    }
}

/// The result of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit {
    /// The cluster of each point, in `0..centroids.rows()`; every cluster is non-empty.
    pub labels: Vec<usize>,
    /// One row per cluster: the mean direction of its members' normalised vectors
    /// (unit length, or zero if they cancel out).
    pub centroids: Matrix,
    /// Sum of squared distances from each normalised point to its centroid
    /// (`2 − 2·cosine` for a unit point).
    pub inertia: f64,
}

impl KMeansFit {
    /// The members (row indices) of each cluster, in label order.
    pub fn groups(&self) -> Vec<Vec<usize>> {
        members_by_label(&self.labels, self.centroids.rows())
    }
}

/// The members of each of `k` labels, in row order; a label without members gets
/// an empty list, so indices stay aligned with the labels.
fn members_by_label(labels: &[usize], k: usize) -> Vec<Vec<usize>> {
    let mut members = vec![Vec::new(); k];
    for (row, &label) in labels.iter().enumerate() {
        members[label].push(row);
    }
    members
}

/// The number of base clusters when the user gives none.
///
/// Python Kura uses `n / 10` (ten conversations per cluster). That is kept while it
/// is small, but it grows linearly, and every base cluster costs one LLM naming call
/// and makes the hierarchy deeper; past a few hundred conversations the count grows
/// as `2·√n` instead (10 000 conversations → 200 clusters of about 50, not 1 000 of
/// 10). Always at least 1 and at most `n` (0 for no points).
pub fn default_k(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let kura = n.div_ceil(10);
    let sqrt_growth = (2.0 * (n as f64).sqrt()).round() as usize;
    kura.min(sqrt_growth).clamp(1, n)
}

/// Clusters the rows of `points` into at most `k` groups by cosine geometry (rows are
/// L2-normalised first; zero rows are valid points at the origin).
///
/// `k` is an upper bound with two defined shortfalls, both logged: more clusters
/// than points gives `k = n`, and data with fewer distinct points than `k` gives one
/// cluster per distinct point rather than splitting identical points arbitrarily.
/// Errors on no points, `k = 0`, or a non-finite coordinate (naming its row).
pub fn kmeans(
    points: &Matrix,
    k: usize,
    seed: u64,
    restarts: usize,
    max_iter: usize,
) -> Result<KMeansFit, ClusterError> {
    kmeans_with_tol(points, k, seed, restarts, max_iter, KMeans::default().tol)
}

fn kmeans_with_tol(
    points: &Matrix,
    k: usize,
    seed: u64,
    restarts: usize,
    max_iter: usize,
    tol: f32,
) -> Result<KMeansFit, ClusterError> {
    if points.is_empty() {
        return Err(ClusterError::NoPoints);
    }
    if k == 0 {
        return Err(ClusterError::ZeroClusters);
    }
    if tol.is_nan() || tol < 0.0 {
        return Err(ClusterError::invalid("tol", tol, "must be a number >= 0"));
    }
    check_finite(points)?;
    let n = points.rows();
    let k = if k > n {
        tracing::warn!("asked for {k} clusters of {n} points; using {n}");
        n
    } else {
        k
    };
    let unit = normalized_rows(points);
    let packed = PackedPoints::new(&unit);
    let mut best: Option<KMeansFit> = None;
    for restart in 0..restarts.max(1) {
        let mut rng = seeded_rng(seed, restart as u64);
        let centroids = seed_centroids(&unit, &packed, k, &mut rng);
        let fit = lloyd(&unit, &packed, centroids, max_iter, tol);
        if best.as_ref().is_none_or(|b| fit.inertia < b.inertia) {
            best = Some(fit);
        }
    }
    let best = best.ok_or(ClusterError::NoPoints)?;
    if best.centroids.rows() < k {
        tracing::warn!(
            "asked for {k} clusters but the points hold only {} distinct positions",
            best.centroids.rows()
        );
    }
    Ok(best)
}

/// Squared distances below this count as the same position: the expanded
/// `|x|² + |c|² − 2x·c` leaves rounding noise of about 1e-6 on unit vectors, and two
/// embeddings this close (cosine above 0.999995) are duplicates for clustering.
const SAME_POSITION: f32 = 1e-5;

/// A mean whose squared length is this close to 1 is already a unit vector.
const UNIT_TOLERANCE: f32 = 1e-6;

/// Greedy k-means++ seeding (as scikit-learn does it): each next centre is the best
/// of `2 + ln k` candidates drawn with probability proportional to their squared
/// distance from the nearest centre so far, "best" meaning the lowest total squared
/// distance once it is added. Stops early when every point coincides with a centre
/// (fewer distinct points than `k`).
fn seed_centroids(points: &Matrix, packed: &PackedPoints, k: usize, rng: &mut impl Rng) -> Matrix {
    let n = points.rows();
    let trials = 2 + (k as f64).ln() as usize;
    let first = rng.gen_range(0..n);
    let mut chosen = vec![first];
    let mut nearest = squared_distances(packed, &points.select(&[first]));
    clamp_same_position(&mut nearest);
    while chosen.len() < k {
        let candidates: Vec<usize> = (0..trials)
            .map_while(|_| draw_proportional(&nearest, rng))
            .collect();
        if candidates.is_empty() {
            break;
        }
        let mut distances = squared_distances(packed, &points.select(&candidates));
        clamp_same_position(&mut distances);
        let c = candidates.len();
        let potentials: Vec<f64> = (0..c)
            .map(|t| {
                (0..n)
                    .map(|i| f64::from(nearest[i].min(distances[i * c + t])))
                    .sum()
            })
            .collect();
        let best = (0..c).fold(0, |b, t| if potentials[t] < potentials[b] { t } else { b });
        for (i, d) in nearest.iter_mut().enumerate() {
            *d = d.min(distances[i * c + best]);
        }
        chosen.push(candidates[best]);
    }
    points.select(&chosen)
}

fn clamp_same_position(distances: &mut [f32]) {
    distances
        .iter_mut()
        .filter(|d| **d < SAME_POSITION)
        .for_each(|d| *d = 0.0);
}

/// An index drawn with probability proportional to `weights`; `None` if all are 0.
fn draw_proportional(weights: &[f32], rng: &mut impl Rng) -> Option<usize> {
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    if total <= 0.0 {
        return None;
    }
    let target = rng.gen::<f64>() * total;
    let mut cumulative = 0.0;
    for (i, &w) in weights.iter().enumerate() {
        cumulative += f64::from(w);
        if w > 0.0 && cumulative > target {
            return Some(i);
        }
    }
    // Rounding left the target just past the end: take the last candidate.
    weights.iter().rposition(|&w| w > 0.0)
}

/// Lloyd iterations from `centroids` until the labels stop changing, the inertia
/// stops falling by more than `tol`, or `max_iter` runs out.
fn lloyd(
    points: &Matrix,
    packed: &PackedPoints,
    centroids: Matrix,
    max_iter: usize,
    tol: f32,
) -> KMeansFit {
    let mut centroids = centroids;
    let mut labels = assign(packed, &centroids).0;
    let mut k = repair_empty_clusters(points, &centroids, &mut labels);
    let mut previous = f64::INFINITY;
    for _ in 0..max_iter {
        centroids = cluster_directions(points, &labels, k);
        let (mut new_labels, distances) = assign(packed, &centroids);
        k = repair_empty_clusters(points, &centroids, &mut new_labels);
        let inertia: f64 = distances.iter().map(|&d| f64::from(d)).sum();
        let changed = new_labels != labels;
        labels = new_labels;
        let converged = previous.is_finite() && previous - inertia <= f64::from(tol) * previous;
        if !changed || converged {
            break;
        }
        previous = inertia;
    }
    let centroids = cluster_directions(points, &labels, k);
    let distances: Vec<f32> = (0..points.rows())
        .into_par_iter()
        .map(|i| squared_distance(points.row(i), centroids.row(labels[i])))
        .collect();
    let inertia = distances.iter().map(|&d| f64::from(d)).sum();
    KMeansFit {
        labels,
        centroids,
        inertia,
    }
}

/// The nearest centroid of every point and its squared distance.
fn assign(packed: &PackedPoints, centroids: &Matrix) -> (Vec<usize>, Vec<f32>) {
    nearest(packed, centroids).into_iter().unzip()
}

/// Gives every empty cluster the point farthest from its own centroid (taken from a
/// cluster that keeps at least one member), the classic repair that keeps `k`
/// clusters alive. A cluster nothing can be moved to (every remaining point sits
/// exactly on its centroid) is dropped and the labels compacted. Returns the number
/// of clusters left.
fn repair_empty_clusters(points: &Matrix, centroids: &Matrix, labels: &mut [usize]) -> usize {
    let k = centroids.rows();
    let mut sizes = vec![0usize; k];
    labels.iter().for_each(|&l| sizes[l] += 1);
    if sizes.iter().all(|&s| s > 0) {
        return k;
    }
    let mut distances: Vec<f32> = (0..points.rows())
        .into_par_iter()
        .map(|i| squared_distance(points.row(i), centroids.row(labels[i])))
        .collect();
    for empty in 0..k {
        if sizes[empty] > 0 {
            continue;
        }
        let farthest = (0..points.rows())
            .filter(|&i| sizes[labels[i]] > 1 && distances[i] > 0.0)
            .fold(None, |best: Option<usize>, i| match best {
                Some(b) if distances[b] >= distances[i] => Some(b),
                _ => Some(i),
            });
        if let Some(i) = farthest {
            sizes[labels[i]] -= 1;
            sizes[empty] = 1;
            labels[i] = empty;
            distances[i] = 0.0;
        }
    }
    compact_labels(labels, &sizes)
}

/// Renumbers labels so the non-empty clusters are `0..count`, keeping their order.
fn compact_labels(labels: &mut [usize], sizes: &[usize]) -> usize {
    let mut new_index = vec![usize::MAX; sizes.len()];
    let mut count = 0;
    for (old, &size) in sizes.iter().enumerate() {
        if size > 0 {
            new_index[old] = count;
            count += 1;
        }
    }
    labels.iter_mut().for_each(|l| *l = new_index[*l]);
    count
}

/// The mean direction of each cluster's members: their mean scaled to unit length
/// (spherical k-means, which maximises the members' cosine similarity to it rather
/// than minimising their distance to a point inside the sphere; measured on the
/// labelled intent sets, it separates topics better). A mean of zero stays zero.
/// Parallel over clusters, each summed over its members in row order in `f64`, so
/// the result does not depend on the thread count.
fn cluster_directions(points: &Matrix, labels: &[usize], k: usize) -> Matrix {
    let members = members_by_label(labels, k);
    let d = points.cols();
    let rows: Vec<Vec<f32>> = members
        .par_iter()
        .map(|rows| {
            let mut sum = vec![0.0f64; d];
            for &r in rows {
                for (s, &x) in sum.iter_mut().zip(points.row(r)) {
                    *s += f64::from(x);
                }
            }
            let count = rows.len().max(1) as f64;
            let mut mean: Vec<f32> = sum.into_iter().map(|s| (s / count) as f32).collect();
            // The mean of identical unit points is that point, exactly; normalising it
            // again would move it by a rounding error and lose the exact zero distance.
            if (dot(&mean, &mean) - 1.0).abs() > UNIT_TOLERANCE {
                normalize_in_place(&mut mean);
            }
            mean
        })
        .collect();
    Matrix::new(k, d, rows.concat())
}
