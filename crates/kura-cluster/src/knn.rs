//! k-nearest-neighbour lists. Exact ones in embedding space (hundreds of
//! dimensions, where trees prune nothing) come from the blocked kernel of k-means
//! (`blocked.rs`): one pass of all points against all points, keeping a short
//! sorted list per point. In the few dimensions of a UMAP reduction a k-d tree
//! answers each query from a handful of leaves instead. The lists feed UMAP's
//! graph and HDBSCAN's core distances.
//!
//! The exact pass costs `n²` dot products: a second and a half at ten thousand
//! embeddings, half a minute at fifty thousand, two minutes at a hundred thousand
//! (two cores).
//! Above [`EXACT_NEIGHBOURS_UP_TO`] points [`cosine_neighbours_seeded`] switches to
//! NN-descent (`nndescent.rs`), which finds about 99% of the same neighbours on
//! sentence embeddings in near-linear time.

use kura_core::Matrix;
use rayon::prelude::*;

use crate::blocked::{k_nearest, PackedPoints};
use crate::kdtree::KdTree;
use crate::nndescent::nn_descent;
use crate::vector::normalized_rows;

/// Each point's `k` nearest other points, nearest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    pub k: usize,
    /// Row-major `n × k`.
    pub indices: Vec<u32>,
    /// Row-major `n × k`, in the geometry the list was built in.
    pub distances: Vec<f32>,
}

impl Neighbours {
    pub fn rows(&self) -> usize {
        self.indices.len() / self.k.max(1)
    }

    pub fn of(&self, row: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let range = row * self.k..(row + 1) * self.k;
        self.indices[range.clone()]
            .iter()
            .zip(&self.distances[range])
            .map(|(&j, &d)| (j as usize, d))
    }
}

/// Neighbours by cosine distance (`1 − cos`), the geometry sentence embeddings are
/// trained for. Rows are normalised first. `k` is capped at `n − 1`.
pub fn cosine_neighbours(points: &Matrix, k: usize) -> Neighbours {
    let unit = normalized_rows(points);
    neighbours(&unit, k, |squared| squared / 2.0)
}

/// Up to this many points [`cosine_neighbours_seeded`] computes the exact lists,
/// so that small runs keep exact graphs and the very maps (and checkpoints) they
/// always had. Below it the exact pass takes seconds, less than UMAP's layout
/// after it (1–2 s of 12 s at 10 000 points on two cores). Above it the quadratic
/// pass takes over: on 22 500 MiniLM embeddings NN-descent finds 99.1% of the
/// same neighbours; on the density bench's points it takes 4.6 s against 31.6 s at
/// 50 000, and 10.3 s against 120 s at 100 000.
pub const EXACT_NEIGHBOURS_UP_TO: usize = 20_000;

/// [`cosine_neighbours`] up to [`EXACT_NEIGHBOURS_UP_TO`] points, approximate lists
/// by NN-descent from `seed` above it (see [`nn_descent`]); either way the same
/// inputs and seed give the same lists on any number of threads.
pub fn cosine_neighbours_seeded(points: &Matrix, k: usize, seed: u64) -> Neighbours {
    if points.rows() <= EXACT_NEIGHBOURS_UP_TO {
        cosine_neighbours(points, k)
    } else {
        nn_descent(points, k, seed)
    }
}

/// Neighbours by Euclidean distance. `k` is capped at `n − 1`.
pub fn euclidean_neighbours(points: &Matrix, k: usize) -> Neighbours {
    neighbours(points, k, f32::sqrt)
}

/// Up to this many dimensions a k-d tree beats the brute-force scan.
const TREE_DIMENSIONS: usize = 16;

fn neighbours(points: &Matrix, k: usize, distance: impl Fn(f32) -> f32) -> Neighbours {
    let n = points.rows();
    let k = k.min(n.saturating_sub(1));
    let lists = if points.cols() <= TREE_DIMENSIONS {
        let tree = KdTree::new(points);
        (0..n)
            .into_par_iter()
            .map(|i| tree.nearest(points.row(i), k + 1))
            .collect()
    } else {
        k_nearest(&PackedPoints::new(points), points, k + 1)
    };
    let mut indices = Vec::with_capacity(n * k);
    let mut distances = Vec::with_capacity(n * k);
    for (row, mut list) in lists.into_iter().enumerate() {
        // The point itself is among its k + 1 nearest unless k + 1 duplicates of it
        // come first; drop it where it is, else drop the farthest.
        match list.iter().position(|&(j, _)| j as usize == row) {
            Some(at) => {
                list.remove(at);
            }
            None => {
                list.pop();
            }
        }
        for (j, squared) in list.into_iter().take(k) {
            indices.push(j);
            distances.push(distance(squared));
        }
    }
    Neighbours {
        k,
        indices,
        distances,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_never_lists_itself_and_duplicates_list_each_other() {
        let points =
            Matrix::from_rows(&[[0.0f32, 0.0], [0.0, 0.0], [3.0, 4.0], [10.0, 0.0]]).unwrap();
        let nn = euclidean_neighbours(&points, 2);
        assert_eq!(nn.k, 2);
        for row in 0..4 {
            assert!(nn.of(row).all(|(j, _)| j != row), "row {row}");
        }
        assert_eq!(nn.of(0).next(), Some((1, 0.0)));
        let (j, d) = nn.of(2).next().unwrap();
        assert!(j <= 1 && (d - 5.0).abs() < 1e-4);
        assert_eq!(
            euclidean_neighbours(&points, 10).k,
            3,
            "k is capped at n - 1"
        );
    }

    #[test]
    fn up_to_the_threshold_the_seeded_lists_are_the_exact_ones() {
        let rows: Vec<[f32; 3]> = (0..40)
            .map(|i| [(i % 7) as f32, (i % 5) as f32 - 2.0, 1.0])
            .collect();
        let points = Matrix::from_rows(&rows).unwrap();
        assert_eq!(
            cosine_neighbours_seeded(&points, 6, 1),
            cosine_neighbours(&points, 6)
        );
    }

    #[test]
    fn cosine_distance_ignores_length() {
        let points = Matrix::from_rows(&[[1.0f32, 0.0], [5.0, 0.0], [0.0, 2.0]]).unwrap();
        let nn = cosine_neighbours(&points, 2);
        let first: Vec<(usize, f32)> = nn.of(0).collect();
        assert_eq!(first[0].0, 1);
        assert!(first[0].1.abs() < 1e-6 && (first[1].1 - 1.0).abs() < 1e-5);
    }
}
