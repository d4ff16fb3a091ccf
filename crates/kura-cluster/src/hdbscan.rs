//! HDBSCAN (Campello, Moulavi & Sander, 2013; McInnes & Healy's `hdbscan`
//! package) on a UMAP reduction of the embeddings, the pipeline BERTopic made the
//! default for topic discovery.
//!
//! Density in 384 dimensions is meaningless and quadratic to compute, so points are
//! first laid out by UMAP in a few dimensions (five, as BERTopic does), where
//! HDBSCAN is both fast and sensible. Then, as in the `hdbscan` package: core
//! distances from the `min_samples`-th neighbour, the minimum spanning tree of the
//! mutual reachability graph (Borůvka's algorithm on a k-d tree, in `O(n)` memory;
//! on wide input the tree prunes little and each round nears an all-pairs scan),
//! the single-linkage tree, its condensed form for
//! `min_cluster_size`, and the excess-of-mass selection of stable clusters. Points
//! in no selected cluster are noise (`None`); the pipeline places them with their
//! nearest cluster and says how many it placed. Ties are broken by index
//! throughout, so a seed gives the same labels.

use std::sync::atomic::{AtomicU32, Ordering};

use kura_core::{BoxError, Clusterer, Matrix};
use rayon::prelude::*;

use crate::error::ClusterError;
use crate::kdtree::KdTree;
use crate::umap::Umap;
use crate::vector::check_finite;
use crate::vector::squared_distance;

/// UMAP to a few dimensions, then HDBSCAN, as a [`Clusterer`].
#[derive(Debug, Clone, PartialEq)]
pub struct Hdbscan {
    /// The fewest points a cluster may have (BERTopic's default is 10).
    pub min_cluster_size: usize,
    /// Neighbours that define a point's density; `None` takes `min_cluster_size`.
    pub min_samples: Option<usize>,
    /// The reduction clustered in; `components: 0` clusters the points as given.
    pub reduction: Umap,
}

impl Default for Hdbscan {
    fn default() -> Self {
        Hdbscan {
            min_cluster_size: 10,
            min_samples: None,
            reduction: Umap {
                components: 5,
                min_dist: 0.0,
                ..Umap::default()
            },
        }
    }
}

impl Clusterer for Hdbscan {
    fn id(&self) -> String {
        let samples = self
            .min_samples
            .map_or_else(|| "auto".into(), |s| s.to_string());
        let reduction = if self.reduction.components == 0 {
            "none".to_string()
        } else {
            kura_core::Reducer::id(&self.reduction)
        };
        format!(
            "hdbscan-v1(min_cluster_size={},min_samples={samples},reduction={reduction})",
            self.min_cluster_size
        )
    }

    fn cluster(&self, points: &Matrix, seed: u64) -> Result<Vec<Option<usize>>, BoxError> {
        if points.is_empty() {
            return Err(ClusterError::NoPoints.into());
        }
        check_finite(points)?;
        let reduced = if self.reduction.components == 0 {
            points.clone()
        } else {
            self.reduction.embed(points, seed)?
        };
        let min_samples = self.min_samples.unwrap_or(self.min_cluster_size);
        Ok(hdbscan(&reduced, self.min_cluster_size, min_samples)?)
    }
}

/// HDBSCAN labels for the rows of `points` (Euclidean): `Some(cluster)` numbered
/// from 0 by the cluster's first point, `None` for noise.
pub fn hdbscan(
    points: &Matrix,
    min_cluster_size: usize,
    min_samples: usize,
) -> Result<Vec<Option<usize>>, ClusterError> {
    if min_cluster_size < 2 {
        return Err(ClusterError::invalid(
            "min_cluster_size",
            min_cluster_size,
            "must be at least 2",
        ));
    }
    if min_samples == 0 {
        return Err(ClusterError::invalid(
            "min_samples",
            0,
            "must be at least 1",
        ));
    }
    check_finite(points)?;
    let n = points.rows();
    if n < min_cluster_size {
        tracing::warn!("{n} points are fewer than min_cluster_size {min_cluster_size}: all noise");
        return Ok(vec![None; n]);
    }
    let tree = KdTree::new(points);
    let core = core_distances(&tree, min_samples);
    let dendrogram = single_linkage(n, boruvka_spanning_tree(&tree, &core));
    let condensed = condense(&dendrogram, n, min_cluster_size);
    let selected = select_eom(&condensed);
    Ok(label(&condensed, &selected, n))
}

/// Each point's distance to its `min_samples`-th nearest point, itself counted
/// first (as the `hdbscan` package counts).
fn core_distances(tree: &KdTree, min_samples: usize) -> Vec<f32> {
    let points = tree.points;
    (0..points.rows())
        .into_par_iter()
        .map(|i| {
            let nearest = tree.nearest(points.row(i), min_samples);
            nearest.last().map_or(0.0, |&(_, d2)| d2.sqrt())
        })
        .collect()
}

/// An MST edge or a merge of the single-linkage tree.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Link {
    a: usize,
    b: usize,
    distance: f32,
}

/// Borůvka's algorithm on the mutual reachability distance with a k-d tree (the
/// `hdbscan` package's `boruvka_kdtree`): each round finds, for every component,
/// its cheapest edge to another component and adds them all, so at most `log₂ n`
/// rounds. A point's search skips subtrees wholly inside its own component and
/// subtrees whose bound (box distance, the smallest core distance in it, the
/// point's own core distance) exceeds the cheapest edge its component has found.
/// Edges compare by `(distance, lower end, higher end)`, which makes every round's
/// choice, and so the tree, independent of thread timing.
fn boruvka_spanning_tree(tree: &KdTree, core: &[f32]) -> Vec<Link> {
    let n = tree.points.rows();
    let core2: Vec<f32> = core.iter().map(|c| c * c).collect();
    let mut node_core2 = vec![f32::INFINITY; tree.nodes.len()];
    for (id, node) in tree.nodes.iter().enumerate().rev() {
        node_core2[id] = match node.split {
            Some(s) => node_core2[s.below].min(node_core2[s.above]),
            None => tree.order[node.start..node.end]
                .iter()
                .map(|&i| core2[i as usize])
                .fold(f32::INFINITY, f32::min),
        };
    }
    let mut sets = UnionFind::new(n);
    let mut edges = Vec::with_capacity(n.saturating_sub(1));
    while edges.len() + 1 < n {
        let component: Vec<u32> = (0..n).map(|i| sets.find(i) as u32).collect();
        let search = ForeignSearch {
            tree,
            core2: &core2,
            node_core2: &node_core2,
            node_component: node_components(tree, &component),
            component: &component,
            bound: (0..n)
                .map(|_| AtomicU32::new(f32::INFINITY.to_bits()))
                .collect(),
        };
        let found: Vec<(f32, u32)> = (0..n)
            .into_par_iter()
            .map(|p| {
                let mut best = (f32::INFINITY, u32::MAX);
                search.visit(0, p, &mut best);
                best
            })
            .collect();
        let mut cheapest: Vec<Option<(f32, u32, u32)>> = vec![None; n];
        for (p, &(w, q)) in found.iter().enumerate() {
            if q == u32::MAX {
                continue;
            }
            let key = (w, (p as u32).min(q), (p as u32).max(q));
            let slot = &mut cheapest[component[p] as usize];
            if slot.is_none_or(|s| key < s) {
                *slot = Some(key);
            }
        }
        let mut round: Vec<(f32, u32, u32)> = cheapest.into_iter().flatten().collect();
        round.sort_by(|x, y| x.0.total_cmp(&y.0).then((x.1, x.2).cmp(&(y.1, y.2))));
        let before = edges.len();
        for (w, a, b) in round {
            if sets.union(a as usize, b as usize) {
                edges.push(Link {
                    a: a as usize,
                    b: b as usize,
                    distance: w.sqrt(),
                });
            }
        }
        if edges.len() == before {
            break; // cannot happen with n > 1; guards against an endless loop
        }
    }
    edges
}

/// Each node's component when all its points share one, else `u32::MAX`.
fn node_components(tree: &KdTree, component: &[u32]) -> Vec<u32> {
    let mut out = vec![u32::MAX; tree.nodes.len()];
    for (id, node) in tree.nodes.iter().enumerate().rev() {
        out[id] = match node.split {
            Some(s) if out[s.below] == out[s.above] => out[s.below],
            Some(_) => u32::MAX,
            None => {
                let mut members = tree.order[node.start..node.end]
                    .iter()
                    .map(|&i| component[i as usize]);
                let first = members.next().unwrap_or(u32::MAX);
                if members.all(|c| c == first) {
                    first
                } else {
                    u32::MAX
                }
            }
        };
    }
    out
}

/// One Borůvka round's search for each point's cheapest edge out of its component.
struct ForeignSearch<'a> {
    tree: &'a KdTree<'a>,
    core2: &'a [f32],
    node_core2: &'a [f32],
    component: &'a [u32],
    node_component: Vec<u32>,
    /// The cheapest edge weight each component (by root) has found so far, as f32
    /// bits: for non-negative floats the bit patterns order like the values.
    bound: Vec<AtomicU32>,
}

impl ForeignSearch<'_> {
    fn visit(&self, node: usize, p: usize, best: &mut (f32, u32)) {
        let own = self.component[p];
        if self.node_component[node] == own {
            return;
        }
        let query = self.tree.points.row(p);
        let shared = f32::from_bits(self.bound[own as usize].load(Ordering::Relaxed));
        let limit = best.0.min(shared);
        let floor = self.core2[p]
            .max(self.node_core2[node])
            .max(self.tree.box_distance2(node, query));
        if floor > limit {
            return;
        }
        let here = self.tree.nodes[node];
        let Some(split) = here.split else {
            for &q in &self.tree.order[here.start..here.end] {
                let qi = q as usize;
                if self.component[qi] == own {
                    continue;
                }
                let w = squared_distance(query, self.tree.points.row(qi))
                    .max(self.core2[p])
                    .max(self.core2[qi]);
                if (w, q) < *best {
                    *best = (w, q);
                    self.bound[own as usize].fetch_min(w.to_bits(), Ordering::Relaxed);
                }
            }
            return;
        };
        let (near, far) = if query[split.dim] < split.value {
            (split.below, split.above)
        } else {
            (split.above, split.below)
        };
        self.visit(near, p, best);
        self.visit(far, p, best);
    }
}

/// Disjoint sets with path halving and union by size.
struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    /// Joins the sets of `a` and `b`; false when they were one already.
    fn union(&mut self, a: usize, b: usize) -> bool {
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        if self.size[ra] < self.size[rb] {
            std::mem::swap(&mut ra, &mut rb);
        }
        self.parent[rb] = ra;
        self.size[ra] += self.size[rb];
        true
    }
}

/// A merge of the single-linkage dendrogram: nodes `0..n` are points, node `n + i`
/// is the `i`-th merge.
#[derive(Debug, Clone, Copy)]
struct Merge {
    left: usize,
    right: usize,
    distance: f32,
    size: usize,
}

/// The dendrogram of the MST edges taken in order of distance (scipy's layout).
fn single_linkage(n: usize, mut edges: Vec<Link>) -> Vec<Merge> {
    edges.sort_by(|x, y| x.distance.total_cmp(&y.distance).then(x.b.cmp(&y.b)));
    let mut sets = UnionFind::new(n);
    // The dendrogram node that each set's root currently stands for.
    let mut node: Vec<usize> = (0..n).collect();
    let mut merges = Vec::with_capacity(edges.len());
    for edge in edges {
        let (ra, rb) = (sets.find(edge.a), sets.find(edge.b));
        let (left, right) = (node[ra], node[rb]);
        sets.union(ra, rb);
        let root = sets.find(ra);
        node[root] = n + merges.len();
        merges.push(Merge {
            left,
            right,
            distance: edge.distance,
            size: sets.size[root],
        });
    }
    merges
}

/// A row of the condensed tree: `child` (a point below `n`, or a cluster id at or
/// above `n`) leaves cluster `parent` at density `lambda = 1 / distance`.
#[derive(Debug, Clone, Copy)]
struct Condensed {
    parent: usize,
    child: usize,
    lambda: f32,
    size: usize,
}

/// The condensed tree (the `hdbscan` package's `condense_tree`): walking down from
/// the root, a split where both sides have at least `min_cluster_size` points makes
/// two new clusters; otherwise the small side's points fall out of the cluster,
/// which lives on as the big side. Cluster ids start at `n` (the root).
fn condense(merges: &[Merge], n: usize, min_cluster_size: usize) -> Vec<Condensed> {
    let mut out = Vec::new();
    let Some(root_merge) = merges.len().checked_sub(1) else {
        return out;
    };
    let node_size = |node: usize| if node < n { 1 } else { merges[node - n].size };
    let lambda_of = |d: f32| if d > 0.0 { 1.0 / d } else { f32::INFINITY };
    let mut next_cluster = n + 1;
    // (dendrogram node, the cluster it belongs to)
    let mut stack = vec![(n + root_merge, n)];
    while let Some((node, cluster)) = stack.pop() {
        if node < n {
            continue;
        }
        let merge = merges[node - n];
        let lambda = lambda_of(merge.distance);
        let (left, right) = (merge.left, merge.right);
        let (left_size, right_size) = (node_size(left), node_size(right));
        let left_big = left_size >= min_cluster_size;
        let right_big = right_size >= min_cluster_size;
        if left_big && right_big {
            for (child, size) in [(left, left_size), (right, right_size)] {
                let id = next_cluster;
                next_cluster += 1;
                out.push(Condensed {
                    parent: cluster,
                    child: id,
                    lambda,
                    size,
                });
                stack.push((child, id));
            }
        } else {
            for (child, big) in [(left, left_big), (right, right_big)] {
                if big {
                    stack.push((child, cluster));
                } else {
                    for point in leaves(merges, n, child) {
                        out.push(Condensed {
                            parent: cluster,
                            child: point,
                            lambda,
                            size: 1,
                        });
                    }
                }
            }
        }
    }
    out
}

/// The points under dendrogram node `node`.
fn leaves(merges: &[Merge], n: usize, node: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut stack = vec![node];
    while let Some(x) = stack.pop() {
        if x < n {
            out.push(x);
        } else {
            let m = merges[x - n];
            stack.push(m.right);
            stack.push(m.left);
        }
    }
    out
}

/// Excess-of-mass selection: a cluster is kept when its stability beats the summed
/// stability of the best selection below it. The root is never selected (a single
/// cluster of everything says nothing). Returns the selected cluster ids, sorted.
fn select_eom(condensed: &[Condensed]) -> Vec<usize> {
    let Some(root) = condensed.iter().map(|c| c.parent).min() else {
        return Vec::new();
    };
    let last = condensed
        .iter()
        .map(|c| c.parent.max(if c.size > 1 { c.child } else { 0 }))
        .max()
        .unwrap_or(root);
    let count = last - root + 1;
    let mut birth = vec![0.0f32; count];
    for c in condensed.iter().filter(|c| c.size > 1) {
        birth[c.child - root] = c.lambda;
    }
    let mut stability = vec![0.0f64; count];
    for c in condensed {
        let gained = f64::from(c.lambda.min(f32::MAX) - birth[c.parent - root]);
        stability[c.parent - root] += gained * c.size as f64;
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); count];
    for c in condensed.iter().filter(|c| c.size > 1) {
        children[c.parent - root].push(c.child - root);
    }
    // Children always have larger ids than their parent, so a reverse sweep sees
    // every cluster after all of its descendants.
    let mut selected = vec![false; count];
    let mut best = stability.clone();
    for id in (1..count).rev() {
        let below: f64 = children[id].iter().map(|&c| best[c]).sum();
        if children[id].is_empty() || stability[id] >= below {
            selected[id] = true;
            best[id] = stability[id];
            let mut stack = children[id].clone();
            while let Some(c) = stack.pop() {
                selected[c] = false;
                stack.extend(&children[c]);
            }
        } else {
            best[id] = below;
        }
    }
    (1..count)
        .filter(|&id| selected[id])
        .map(|id| id + root)
        .collect()
}

/// Each point's selected cluster (the one it fell out of, or its selected
/// ancestor), numbered from 0 in order of each cluster's first point.
fn label(condensed: &[Condensed], selected: &[usize], n: usize) -> Vec<Option<usize>> {
    let mut parent_of = std::collections::HashMap::new();
    for c in condensed.iter().filter(|c| c.size > 1) {
        parent_of.insert(c.child, c.parent);
    }
    let chosen: std::collections::HashSet<usize> = selected.iter().copied().collect();
    let owner = |mut cluster: usize| -> Option<usize> {
        loop {
            if chosen.contains(&cluster) {
                return Some(cluster);
            }
            cluster = *parent_of.get(&cluster)?;
        }
    };
    let mut raw = vec![None; n];
    for c in condensed.iter().filter(|c| c.size == 1) {
        raw[c.child] = owner(c.parent);
    }
    let mut numbering = std::collections::HashMap::new();
    raw.into_iter()
        .map(|cluster| {
            cluster.map(|c| {
                let next = numbering.len();
                *numbering.entry(c).or_insert(next)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::v_measure;
    use rand::Rng;

    fn euclidean(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt()
    }

    /// Three tight 2-D blobs of 30 points and 6 far-flung outliers.
    fn blobs_with_outliers() -> (Matrix, Vec<Option<usize>>) {
        let mut rng = crate::vector::seeded_rng(11, 0);
        let centres = [(0.0f32, 0.0f32), (10.0, 0.0), (0.0, 10.0)];
        let mut rows = Vec::new();
        let mut truth = Vec::new();
        for i in 0..90 {
            let (cx, cy) = centres[i % 3];
            rows.push([cx + rng.gen_range(-1.0..1.0), cy + rng.gen_range(-1.0..1.0)]);
            truth.push(Some(i % 3));
        }
        for (x, y) in [
            (30.0, 30.0),
            (-30.0, 5.0),
            (5.0, -30.0),
            (40.0, -40.0),
            (-25.0, -25.0),
            (25.0, 60.0),
        ] {
            rows.push([x, y]);
            truth.push(None);
        }
        (Matrix::from_rows(&rows).unwrap(), truth)
    }

    #[test]
    fn finds_the_blobs_and_calls_outliers_noise() {
        let (points, truth) = blobs_with_outliers();
        let labels = hdbscan(&points, 5, 5).unwrap();
        assert_eq!(labels.len(), truth.len());
        for (i, (got, want)) in labels.iter().zip(&truth).enumerate() {
            assert_eq!(got.is_none(), want.is_none(), "point {i}: {got:?}");
        }
        let clustered: Vec<(usize, usize)> = labels
            .iter()
            .zip(&truth)
            .filter_map(|(g, w)| Some(((*g)?, (*w)?)))
            .collect();
        let (got, want): (Vec<usize>, Vec<usize>) = clustered.into_iter().unzip();
        assert!((v_measure(&want, &got) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn core_distances_and_the_spanning_tree_match_naive_ones() {
        let (points, _) = blobs_with_outliers();
        let n = points.rows();
        let tree = KdTree::new(&points);
        let core = core_distances(&tree, 4);
        for (i, &c) in core.iter().enumerate() {
            let mut all: Vec<f32> = (0..n)
                .map(|j| euclidean(points.row(i), points.row(j)))
                .collect();
            all.sort_by(f32::total_cmp);
            assert!((c - all[3]).abs() < 1e-4, "point {i}: {c} vs {}", all[3]);
        }
        let spanning = boruvka_spanning_tree(&tree, &core);
        assert_eq!(spanning.len(), n - 1);
        let total: f32 = spanning.iter().map(|l| l.distance).sum();
        // Kruskal over all pairs as the reference.
        let mut pairs = Vec::new();
        for a in 0..n {
            for b in a + 1..n {
                let d = euclidean(points.row(a), points.row(b))
                    .max(core[a])
                    .max(core[b]);
                pairs.push((d, a, b));
            }
        }
        pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut group: Vec<usize> = (0..n).collect();
        let mut expected = 0.0f32;
        for (d, a, b) in pairs {
            let (ga, gb) = (group[a], group[b]);
            if ga != gb {
                expected += d;
                group.iter_mut().filter(|g| **g == gb).for_each(|g| *g = ga);
            }
        }
        assert!(
            (total - expected).abs() < 1e-3 * expected,
            "{total} {expected}"
        );
    }

    #[test]
    fn degenerate_inputs_have_defined_answers() {
        let one = Matrix::new(1, 3, vec![0.2; 3]);
        assert_eq!(hdbscan(&one, 5, 5).unwrap(), vec![None]);
        let same = Matrix::new(20, 3, vec![1.0; 60]);
        let labels = hdbscan(&same, 5, 5).unwrap();
        assert_eq!(labels.len(), 20);
        assert!(hdbscan(&same, 1, 5)
            .unwrap_err()
            .to_string()
            .contains("min_cluster_size"));
        let mut bad = same.clone();
        bad.row_mut(3)[0] = f32::INFINITY;
        assert!(hdbscan(&bad, 5, 5)
            .unwrap_err()
            .to_string()
            .contains("row 3"));
    }

    #[test]
    fn the_clusterer_handles_tiny_zero_and_identical_inputs() {
        let clusterer = Hdbscan::default();
        let one = Matrix::new(1, 8, vec![0.3; 8]);
        assert_eq!(clusterer.cluster(&one, 1).unwrap(), vec![None]);
        let err = clusterer.cluster(&Matrix::zeros(0, 8), 1).unwrap_err();
        assert!(err.to_string().contains("no points"), "{err}");
        // Zero vectors and exact duplicates among ordinary points.
        let (mut points, _) = crate::umap::tests::blobs(3, 20, 8, 0.3);
        points.row_mut(0).fill(0.0);
        points.row_mut(1).fill(0.0);
        let copy = points.row(5).to_vec();
        points.row_mut(6).copy_from_slice(&copy);
        let labels = clusterer.cluster(&points, 1).unwrap();
        assert_eq!(labels.len(), 60);
        assert!(labels.iter().flatten().count() > 30, "{labels:?}");
        let same = Matrix::new(40, 8, vec![1.0; 320]);
        assert_eq!(clusterer.cluster(&same, 1).unwrap().len(), 40);
    }

    #[test]
    fn clusters_embeddings_through_umap_deterministically() {
        let (points, truth) = crate::umap::tests::blobs(4, 30, 24, 0.5);
        let clusterer = Hdbscan::default();
        let labels = clusterer.cluster(&points, 5).unwrap();
        let noise = labels.iter().filter(|l| l.is_none()).count();
        assert!(noise < 12, "{noise} noise points");
        let (got, want): (Vec<usize>, Vec<usize>) = labels
            .iter()
            .zip(&truth)
            .filter_map(|(g, &w)| Some(((*g)?, w)))
            .unzip();
        assert!(v_measure(&want, &got) > 0.95);
        assert_eq!(labels, clusterer.cluster(&points, 5).unwrap());
    }
}
