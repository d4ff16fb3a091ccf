//! Exact k-nearest-neighbour lists. In embedding space (hundreds of dimensions,
//! where trees prune nothing) they come from the blocked kernel of k-means
//! (`blocked.rs`): one pass of all points against all points, keeping a short
//! sorted list per point. In the few dimensions of a UMAP reduction a k-d tree
//! answers each query from a handful of leaves instead. The lists feed UMAP's
//! graph and HDBSCAN's core distances.

use kura_core::Matrix;
use rayon::prelude::*;

use crate::blocked::{k_nearest, PackedPoints};
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

/// Points per leaf of the k-d tree.
const LEAF: usize = 16;

/// A k-d tree over the rows of a matrix, split at the median of the widest
/// coordinate.
struct KdTree<'a> {
    points: &'a Matrix,
    /// Row indices, permuted so that every node's rows are contiguous.
    order: Vec<u32>,
    nodes: Vec<Node>,
}

enum Node {
    Leaf {
        start: usize,
        end: usize,
    },
    Split {
        dim: usize,
        value: f32,
        below: usize,
        above: usize,
    },
}

impl<'a> KdTree<'a> {
    fn new(points: &'a Matrix) -> Self {
        let mut tree = KdTree {
            points,
            order: (0..points.rows() as u32).collect(),
            nodes: Vec::new(),
        };
        tree.build(0, points.rows());
        tree
    }

    /// Builds the node for `order[start..end]` and returns its index.
    fn build(&mut self, start: usize, end: usize) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node::Leaf { start, end });
        if end - start <= LEAF {
            return id;
        }
        let points = self.points;
        let spread = |dim: usize| {
            let values = self.order[start..end]
                .iter()
                .map(|&i| points.row(i as usize)[dim]);
            let (lo, hi) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
            hi - lo
        };
        let dim = (0..points.cols())
            .max_by(|&a, &b| spread(a).total_cmp(&spread(b)).then(b.cmp(&a)))
            .unwrap_or(0);
        if spread(dim) <= 0.0 {
            return id; // all rows coincide: one (large) leaf
        }
        let mid = start + (end - start) / 2;
        let key = |&i: &u32| (points.row(i as usize)[dim], i);
        self.order[start..end].select_nth_unstable_by(mid - start, |a, b| {
            let (x, y) = (key(a), key(b));
            x.0.total_cmp(&y.0).then(x.1.cmp(&y.1))
        });
        let value = points.row(self.order[mid] as usize)[dim];
        let below = self.build(start, mid);
        let above = self.build(mid, end);
        self.nodes[id] = Node::Split {
            dim,
            value,
            below,
            above,
        };
        id
    }

    /// The `k` nearest rows to `query` as `(row, squared distance)`, nearest first,
    /// the lower row first on ties.
    fn nearest(&self, query: &[f32], k: usize) -> Vec<(u32, f32)> {
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        if k > 0 && !self.nodes.is_empty() {
            self.search(0, query, k, &mut best);
        }
        best
    }

    fn search(&self, node: usize, query: &[f32], k: usize, best: &mut Vec<(u32, f32)>) {
        match self.nodes[node] {
            Node::Leaf { start, end } => {
                for &i in &self.order[start..end] {
                    let row = self.points.row(i as usize);
                    let d: f32 = row.iter().zip(query).map(|(a, b)| (a - b) * (a - b)).sum();
                    let worse = |&(j, e): &(u32, f32)| e < d || (e == d && j < i);
                    if best.len() == k && best.last().is_some_and(&worse) {
                        continue;
                    }
                    let at = best.partition_point(worse);
                    best.insert(at, (i, d));
                    best.truncate(k);
                }
            }
            Node::Split {
                dim,
                value,
                below,
                above,
            } => {
                let offset = query[dim] - value;
                let (near, far) = if offset < 0.0 {
                    (below, above)
                } else {
                    (above, below)
                };
                self.search(near, query, k, best);
                let bound = best.last().map_or(f32::INFINITY, |&(_, d)| d);
                if best.len() < k || offset * offset <= bound {
                    self.search(far, query, k, best);
                }
            }
        }
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
    fn the_tree_finds_what_a_full_scan_finds() {
        let data: Vec<f32> = (0..500 * 5)
            .map(|i| (((i * 7919) % 1009) as f32 / 100.0) - 5.0)
            .collect();
        let points = Matrix::new(500, 5, data);
        let tree = KdTree::new(&points);
        let scan = k_nearest(&PackedPoints::new(&points), &points, 8);
        for (i, expected) in scan.iter().enumerate() {
            let got = tree.nearest(points.row(i), 8);
            let distances = |l: &[(u32, f32)]| l.iter().map(|&(_, d)| d).collect::<Vec<_>>();
            for (g, e) in distances(&got).iter().zip(distances(expected)) {
                assert!((g - e).abs() < 1e-3 * e.max(1.0), "row {i}");
            }
        }
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
