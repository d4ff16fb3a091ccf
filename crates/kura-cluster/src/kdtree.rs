//! A k-d tree over the rows of a matrix, for the few dimensions of a UMAP
//! reduction: k-nearest-neighbour queries, and the node boxes and ranges that
//! HDBSCAN's Borůvka spanning tree prunes with.

use kura_core::Matrix;

use crate::vector::squared_distance;

/// Points per leaf.
const LEAF: usize = 16;

/// Split at the median of the widest coordinate; nodes are numbered in preorder,
/// so a node's children always come after it.
pub(crate) struct KdTree<'a> {
    pub(crate) points: &'a Matrix,
    /// Row indices, permuted so that every node's rows are contiguous.
    pub(crate) order: Vec<u32>,
    pub(crate) nodes: Vec<Node>,
    /// Each node's bounding box, `dim` lower then `dim` upper corners per node.
    boxes: Vec<f32>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    /// The node's rows are `order[start..end]`.
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) split: Option<Split>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Split {
    pub(crate) dim: usize,
    pub(crate) value: f32,
    pub(crate) below: usize,
    pub(crate) above: usize,
}

impl<'a> KdTree<'a> {
    pub(crate) fn new(points: &'a Matrix) -> Self {
        let mut tree = KdTree {
            points,
            order: (0..points.rows() as u32).collect(),
            nodes: Vec::new(),
            boxes: Vec::new(),
        };
        tree.build(0, points.rows());
        tree
    }

    /// Builds the node for `order[start..end]` and returns its index.
    fn build(&mut self, start: usize, end: usize) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node {
            start,
            end,
            split: None,
        });
        let points = self.points;
        let dims = points.cols();
        let mut lo = vec![f32::INFINITY; dims];
        let mut hi = vec![f32::NEG_INFINITY; dims];
        for &i in &self.order[start..end] {
            for (d, &v) in points.row(i as usize).iter().enumerate() {
                lo[d] = lo[d].min(v);
                hi[d] = hi[d].max(v);
            }
        }
        self.boxes.extend_from_slice(&lo);
        self.boxes.extend_from_slice(&hi);
        if end - start <= LEAF {
            return id;
        }
        let spread = |d: usize| hi[d] - lo[d];
        let dim = (0..dims)
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
        self.nodes[id].split = Some(Split {
            dim,
            value,
            below,
            above,
        });
        id
    }

    /// The squared distance from `query` to the nearest point of `node`'s box.
    pub(crate) fn box_distance2(&self, node: usize, query: &[f32]) -> f32 {
        let dims = query.len();
        let corners = &self.boxes[node * 2 * dims..(node + 1) * 2 * dims];
        let (lo, hi) = corners.split_at(dims);
        let mut total = 0.0;
        for ((&q, &l), &h) in query.iter().zip(lo).zip(hi) {
            let gap = if q < l {
                l - q
            } else if q > h {
                q - h
            } else {
                0.0
            };
            total += gap * gap;
        }
        total
    }

    /// The `k` nearest rows to `query` as `(row, squared distance)`, nearest first,
    /// the lower row first on ties.
    pub(crate) fn nearest(&self, query: &[f32], k: usize) -> Vec<(u32, f32)> {
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        if k > 0 && !self.nodes.is_empty() {
            self.search(0, query, k, &mut best);
        }
        best
    }

    fn search(&self, node: usize, query: &[f32], k: usize, best: &mut Vec<(u32, f32)>) {
        let Node { start, end, split } = self.nodes[node];
        let Some(split) = split else {
            for &i in &self.order[start..end] {
                let row = self.points.row(i as usize);
                let d = squared_distance(row, query);
                let worse = |&(j, e): &(u32, f32)| e < d || (e == d && j < i);
                if best.len() == k && best.last().is_some_and(&worse) {
                    continue;
                }
                let at = best.partition_point(worse);
                best.insert(at, (i, d));
                best.truncate(k);
            }
            return;
        };
        let offset = query[split.dim] - split.value;
        let (near, far) = if offset < 0.0 {
            (split.below, split.above)
        } else {
            (split.above, split.below)
        };
        self.search(near, query, k, best);
        let bound = best.last().map_or(f32::INFINITY, |&(_, d)| d);
        if best.len() < k || self.box_distance2(far, query) <= bound {
            self.search(far, query, k, best);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocked::{k_nearest, PackedPoints};

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
    fn boxes_bound_their_points() {
        let data: Vec<f32> = (0..300 * 3).map(|i| ((i * 31) % 97) as f32).collect();
        let points = Matrix::new(300, 3, data);
        let tree = KdTree::new(&points);
        let query = [50.0f32, -3.0, 120.0];
        for (id, node) in tree.nodes.iter().enumerate() {
            let bound = tree.box_distance2(id, &query);
            for &i in &tree.order[node.start..node.end] {
                assert!(squared_distance(points.row(i as usize), &query) >= bound);
            }
        }
    }
}
