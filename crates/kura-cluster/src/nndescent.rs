//! Approximate k-nearest-neighbour lists by NN-descent (Dong, Moses & Li, 2011),
//! the algorithm pynndescent builds umap-learn's graph with. A neighbour of a
//! neighbour is probably a neighbour, so from random lists each round compares,
//! for every point, the points on its list and the points whose lists it is on
//! (a "local join"), and keeps whatever comes closer. A handful of rounds find
//! about 99% of the exact neighbours of sentence embeddings with a few percent of
//! the `n²` dot products the exact scan needs.
//!
//! Why NN-descent rather than HNSW: UMAP needs every point's list once, which
//! NN-descent builds directly, where HNSW would build a search index and then
//! query it once per point; and NN-descent has a deterministic parallel form
//! (below), where HNSW's graph depends on the order points are inserted in.
//! Search queries in this tool are single linear scans that take milliseconds and
//! need no index.
//!
//! Determinism on any core count: each list is the `k` smallest of the candidates
//! it was offered by the total order `(distance, index)`, a set that does not
//! depend on the order the offers arrive in. Every random choice (the initial
//! lists, and the priorities by which a round samples candidates) comes from the
//! point's own seeded ChaCha stream, never from one shared by threads. A round
//! generates proposals in parallel against the lists as they stood at the start
//! of its block, and applies them per target row; a proposal filtered out there
//! would have been rejected later anyway, because lists only improve, so a round's
//! lists are a function of its candidates alone, whatever the block size, thread
//! count or order of work. Blocks exist only to bound memory.

use std::ops::Range;

use kura_core::Matrix;
use rand::seq::index::sample;
use rand::RngCore;
use rayon::prelude::*;

use crate::knn::Neighbours;
use crate::vector::{dot, normalized_rows, seeded_rng};

/// Candidates sampled per point and round, new and old each (umap-learn's
/// `max_candidates`). With `k` = 14 a point has about 28 candidates, so the cap
/// binds only for hubs, points on many lists.
const MAX_CANDIDATES: usize = 60;
/// A round that changes at most this share of all list entries ends the descent
/// (pynndescent's `delta`).
const DELTA: f64 = 0.001;
/// Points joined per block. A block's proposals wait in memory until they are
/// applied: a few million at most, tens of megabytes.
const BLOCK: usize = 4096;
/// Points joined per parallel task within a block.
const TASK: usize = 64;
/// Rows of the graph one parallel task updates when proposals are applied.
const RANGE: usize = 1024;
/// The random streams of this module.
const INIT_STREAM: u64 = 0x6e6e_696e;
const SAMPLE_STREAM: u64 = 0x6e6e_7361;

/// Each row's `k` nearest other rows by cosine distance (`1 − cos`, as
/// [`cosine_neighbours`](crate::cosine_neighbours) measures it), nearest first,
/// found by NN-descent from `seed`. The same inputs and seed give the same lists
/// on any number of threads. Rows are normalised first; `k` is capped at `n − 1`.
pub fn nn_descent(points: &Matrix, k: usize, seed: u64) -> Neighbours {
    let unit = normalized_rows(points);
    let space = Space::new(&unit);
    let n = space.rows();
    let k = k.min(n.saturating_sub(1));
    if k == 0 {
        return Neighbours {
            k,
            indices: Vec::new(),
            distances: Vec::new(),
        };
    }
    let mut graph = Graph::random(&space, k, seed);
    let settled = (DELTA * (n * k) as f64) as usize;
    for round in 0..max_rounds(n) {
        let before = graph.indices.clone();
        let candidates = sample_candidates(&mut graph, seed, round);
        local_join(&space, &mut graph, &candidates);
        let changed = graph.changed_since(&before);
        tracing::debug!(
            "NN-descent round {round}: {changed} of {} entries changed",
            n * k
        );
        if changed <= settled {
            break;
        }
    }
    Neighbours {
        k,
        indices: graph.indices,
        distances: graph.distances,
    }
}

/// pynndescent's `n_iters`: the rounds to convergence grow with `log n`.
fn max_rounds(n: usize) -> usize {
    ((n as f64).log2().round() as usize).max(5)
}

/// The current lists: row-major `n × k`, each row sorted by `(distance, index)`,
/// with a flag per entry saying whether it arrived since it was last sampled.
struct Graph {
    k: usize,
    indices: Vec<u32>,
    distances: Vec<f32>,
    fresh: Vec<bool>,
}

impl Graph {
    /// `k` distinct random other points per row, from the row's own stream.
    fn random(space: &Space, k: usize, seed: u64) -> Self {
        let n = space.rows();
        let mut indices = vec![0u32; n * k];
        let mut distances = vec![0.0f32; n * k];
        indices
            .par_chunks_mut(k)
            .zip(distances.par_chunks_mut(k))
            .enumerate()
            .for_each(|(i, (row, dist))| {
                let mut rng = seeded_rng(seed ^ INIT_STREAM, i as u64);
                let others: Vec<u32> = sample(&mut rng, n - 1, k)
                    .into_iter()
                    .map(|r| (if r >= i { r + 1 } else { r }) as u32)
                    .collect();
                let mut between = [Vec::with_capacity(k)];
                space.distances([i as u32], &others, &mut between);
                let [between] = between;
                let mut list: Vec<(f32, u32)> = between.into_iter().zip(others).collect();
                list.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                for ((slot, d), (distance, j)) in row.iter_mut().zip(dist).zip(list) {
                    *slot = j;
                    *d = distance;
                }
            });
        Graph {
            k,
            indices,
            distances,
            fresh: vec![true; n * k],
        }
    }

    fn rows(&self) -> usize {
        self.indices.len() / self.k
    }

    /// The distance a candidate must not exceed to enter `row`'s list.
    fn worst(&self, row: usize) -> f32 {
        self.distances[row * self.k + self.k - 1]
    }

    /// How many entries are not on the lists `before` held: a count that, unlike
    /// counting insertions, does not depend on the order they were made in.
    fn changed_since(&self, before: &[u32]) -> usize {
        self.indices
            .par_chunks(self.k)
            .zip(before.par_chunks(self.k))
            .map(|(now, then)| now.iter().filter(|j| !then.contains(j)).count())
            .sum()
    }
}

/// Per point, the candidates one round joins: up to [`MAX_CANDIDATES`] new ones
/// (entries that arrived since they were last sampled, in either direction: on
/// the point's own list, or the point on theirs) and as many old ones. [`NONE`]
/// pads short rows.
struct Candidates {
    new: Vec<u32>,
    old: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl Candidates {
    fn of(&self, row: usize) -> (&[u32], &[u32]) {
        let span = row * MAX_CANDIDATES..(row + 1) * MAX_CANDIDATES;
        (trimmed(&self.new[span.clone()]), trimmed(&self.old[span]))
    }
}

fn trimmed(row: &[u32]) -> &[u32] {
    &row[..row.iter().position(|&j| j == NONE).unwrap_or(row.len())]
}

/// pynndescent's `new_build_candidates`: every list entry `i → j` gets a random
/// priority and offers `j` to `i` and `i` to `j`; each point keeps the offers of
/// lowest `(priority, index)`, a choice independent of the order they are made in.
/// New entries that `i` sampled then count as old, so each pair is joined once.
fn sample_candidates(graph: &mut Graph, seed: u64, round: usize) -> Candidates {
    let (n, k) = (graph.rows(), graph.k);
    let mut priority = vec![0u32; n * k];
    priority.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
        // Round `round` reads its own stretch of the point's stream.
        let mut rng = seeded_rng(seed ^ SAMPLE_STREAM, i as u64);
        rng.set_word_pos((round * k) as u128);
        row.iter_mut().for_each(|p| *p = rng.next_u32());
    });
    let reverse = Reverse::new(graph);
    let mut new = vec![NONE; n * MAX_CANDIDATES];
    let mut old = vec![NONE; n * MAX_CANDIDATES];
    new.par_chunks_mut(MAX_CANDIDATES)
        .zip(old.par_chunks_mut(MAX_CANDIDATES))
        .enumerate()
        .for_each(|(i, (new_row, old_row))| {
            let forward = (i * k..(i + 1) * k).map(|e| (e, graph.indices[e]));
            let backward = reverse.of(i).iter().map(|&e| (e, (e / k) as u32));
            let (mut fresh, mut stale) = (Vec::new(), Vec::new());
            for (e, j) in forward.chain(backward) {
                let offers = if graph.fresh[e] {
                    &mut fresh
                } else {
                    &mut stale
                };
                offers.push((priority[e], j));
            }
            keep_lowest(&mut fresh, new_row);
            keep_lowest(&mut stale, old_row);
        });
    let candidates = Candidates { new, old };
    graph
        .fresh
        .par_chunks_mut(k)
        .zip(graph.indices.par_chunks(k))
        .enumerate()
        .for_each(|(i, (fresh, row))| {
            let (sampled, _) = candidates.of(i);
            for (f, j) in fresh.iter_mut().zip(row) {
                *f = *f && !sampled.contains(j);
            }
        });
    candidates
}

/// Writes the distinct indices among the lowest-priority `offers` into `out`, an
/// index offered twice counting at its lower priority.
fn keep_lowest(offers: &mut Vec<(u32, u32)>, out: &mut [u32]) {
    offers.sort_unstable_by_key(|&(p, j)| (j, p));
    offers.dedup_by_key(|o| o.1);
    offers.sort_unstable();
    for (slot, &(_, j)) in out.iter_mut().zip(offers.iter()) {
        *slot = j;
    }
}

/// The list entries pointing at each point, as entry positions `i·k + slot`.
struct Reverse {
    offsets: Vec<usize>,
    entries: Vec<usize>,
}

impl Reverse {
    /// A counting sort of the entries by target: O(n·k), in a fixed order.
    fn new(graph: &Graph) -> Self {
        let mut offsets = vec![0usize; graph.rows() + 1];
        for &j in &graph.indices {
            offsets[j as usize + 1] += 1;
        }
        for i in 1..offsets.len() {
            offsets[i] += offsets[i - 1];
        }
        let mut next = offsets.clone();
        let mut entries = vec![0usize; graph.indices.len()];
        for (e, &j) in graph.indices.iter().enumerate() {
            entries[next[j as usize]] = e;
            next[j as usize] += 1;
        }
        Reverse { offsets, entries }
    }

    fn of(&self, row: usize) -> &[usize] {
        &self.entries[self.offsets[row]..self.offsets[row + 1]]
    }
}

/// One proposed list entry: `candidate` for `target`'s list, at `distance`.
#[derive(Clone, Copy)]
struct Update {
    target: u32,
    candidate: u32,
    distance: f32,
}

/// One round of local joins, [`BLOCK`] points at a time: their proposals are
/// generated in parallel, then applied in parallel by target row.
fn local_join(space: &Space, graph: &mut Graph, candidates: &Candidates) {
    let n = graph.rows();
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let tasks: Vec<Range<usize>> = (start..end)
            .step_by(TASK)
            .map(|s| s..(s + TASK).min(end))
            .collect();
        let updates: Vec<Vec<Vec<Update>>> = tasks
            .into_par_iter()
            .map(|points| join(space, graph, candidates, points))
            .collect();
        apply(graph, &updates);
    }
}

/// The proposals of joining each point's candidates: new with new and new with
/// old (two old ones were compared when one of them was new), each pair offered
/// both ways where it would enter the target's list as it stands. They come back
/// bucketed by the [`RANGE`] of rows their target falls in.
fn join(
    space: &Space,
    graph: &Graph,
    candidates: &Candidates,
    points: Range<usize>,
) -> Vec<Vec<Update>> {
    let mut buckets: Vec<Vec<Update>> = vec![Vec::new(); graph.rows().div_ceil(RANGE)];
    let mut offer = |a: u32, b: u32, distance: f32| {
        for (target, candidate) in [(a, b), (b, a)] {
            if target != candidate && distance <= graph.worst(target as usize) {
                buckets[target as usize / RANGE].push(Update {
                    target,
                    candidate,
                    distance,
                });
            }
        }
    };
    let mut others = Vec::new();
    let mut between = [Vec::new(), Vec::new()];
    for u in points {
        let (new, old) = candidates.of(u);
        // Two new candidates at a time against the rest, so that each row loaded
        // serves two dot products.
        for a in (0..new.len()).step_by(2) {
            others.clear();
            match new[a..] {
                [p, q, ref rest @ ..] => {
                    others.extend(rest.iter().chain(old));
                    space.distances([p, q], &others, &mut between);
                    let [to_p, to_q] = &between;
                    for (&o, (&dp, &dq)) in others.iter().zip(to_p.iter().zip(to_q)) {
                        offer(p, o, dp);
                        offer(q, o, dq);
                    }
                    let [to_p, _] = &mut between;
                    space.distances([p], &[q], std::array::from_mut(to_p));
                    offer(p, q, to_p[0]);
                }
                [p] => {
                    others.extend(old);
                    let [to_p, _] = &mut between;
                    space.distances([p], &others, std::array::from_mut(to_p));
                    for (&o, &d) in others.iter().zip(to_p.iter()) {
                        offer(p, o, d);
                    }
                }
                [] => {}
            }
        }
    }
    buckets
}

/// Applies a block's proposals, rows in parallel by [`RANGE`].
fn apply(graph: &mut Graph, updates: &[Vec<Vec<Update>>]) {
    let k = graph.k;
    graph
        .indices
        .par_chunks_mut(RANGE * k)
        .zip(graph.distances.par_chunks_mut(RANGE * k))
        .zip(graph.fresh.par_chunks_mut(RANGE * k))
        .enumerate()
        .for_each(|(r, ((indices, distances), fresh))| {
            for update in updates.iter().flat_map(|task| &task[r]) {
                let row = update.target as usize - r * RANGE;
                let span = row * k..(row + 1) * k;
                insert(
                    &mut indices[span.clone()],
                    &mut distances[span.clone()],
                    &mut fresh[span],
                    update,
                );
            }
        });
}

/// Puts the proposed candidate into a sorted list, as a fresh entry, if it is not
/// there already and comes before the last entry by `(distance, index)`, which
/// then drops off.
fn insert(indices: &mut [u32], distances: &mut [f32], fresh: &mut [bool], update: &Update) {
    let key = (update.distance, update.candidate);
    let precedes = |s: usize| {
        distances[s]
            .total_cmp(&key.0)
            .then(indices[s].cmp(&key.1))
            .is_lt()
    };
    let last = indices.len() - 1;
    if precedes(last) || indices.contains(&key.1) {
        return;
    }
    let at = (0..last).find(|&s| !precedes(s)).unwrap_or(last);
    indices.copy_within(at..last, at + 1);
    distances.copy_within(at..last, at + 1);
    fresh.copy_within(at..last, at + 1);
    (indices[at], distances[at], fresh[at]) = (key.1, key.0, true);
}

/// Unit (or zero) rows and their squared norms.
struct Space<'a> {
    points: &'a Matrix,
    norms: Vec<f32>,
}

impl<'a> Space<'a> {
    fn new(points: &'a Matrix) -> Self {
        let norms = points.iter_rows().map(|r| dot(r, r)).collect();
        Space { points, norms }
    }

    fn rows(&self) -> usize {
        self.points.rows()
    }

    /// Cosine distances from each row of `from` to each row of `others`, into the
    /// matching `out`: half the squared Euclidean distance `|a|² + |b|² − 2a·b`, as
    /// the exact lists compute it, so that a zero row is as far from every unit row
    /// as they say (½) and duplicates are at exactly 0. A pair gets the same bits
    /// whichever side it is computed from and however it is batched.
    fn distances<const R: usize>(&self, from: [u32; R], others: &[u32], out: &mut [Vec<f32>; R]) {
        let row = |j: u32| self.points.row(j as usize);
        let xs = from.map(row);
        out.iter_mut().for_each(Vec::clear);
        // A short last group repeats its last row rather than fall back to one dot
        // product at a time, which costs as much as the whole group.
        for group in others.chunks(DOTS) {
            let ys = std::array::from_fn(|g| row(group[g.min(group.len() - 1)]));
            for (o, dots) in out.iter_mut().zip(dots(xs, ys)) {
                o.extend_from_slice(&dots[..group.len()]);
            }
        }
        for (o, &a) in out.iter_mut().zip(&from) {
            for (d, &b) in o.iter_mut().zip(others) {
                let (na, nb) = (self.norms[a as usize], self.norms[b as usize]);
                *d = ((na + nb - 2.0 * *d) / 2.0).max(0.0);
            }
        }
    }
}

/// Rows on the wide side of a kernel call.
const DOTS: usize = 4;

/// `x · y` for every `x` of `xs` and `y` of `ys`, each summed exactly as
/// `kura_core::vector::dot` sums it (eight lanes, added in a fixed tree, then the
/// tail), so the bits are `dot`'s whichever path computes them. The products only
/// share the loop, which keeps several sums in flight and loads each row once for
/// all the products it takes part in.
fn dots<const R: usize>(xs: [&[f32]; R], ys: [&[f32]; DOTS]) -> [[f32; DOTS]; R] {
    let len = xs.first().map_or(0, |x| x.len());
    assert!(
        xs.iter().chain(&ys).all(|r| r.len() == len),
        "rows of one matrix"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, and every row has the same length,
            // both checked just above.
            return unsafe { dots_avx2(xs, ys) };
        }
    }
    dots_portable(xs, ys)
}

/// [`dots_portable`] with each product's eight lanes in one AVX register: a
/// separate multiply and add (no FMA, whose fused rounding would change the bits),
/// then the same fixed sum of the lanes and the tail.
///
/// # Safety
///
/// The CPU supports AVX2, and every row has the length of `xs[0]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dots_avx2<const R: usize>(xs: [&[f32]; R], ys: [&[f32]; DOTS]) -> [[f32; DOTS]; R] {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let chunks = xs.first().map_or(0, |x| x.len() / 8);
    let mut acc = [[_mm256_setzero_ps(); DOTS]; R];
    let mut y = [_mm256_setzero_ps(); DOTS];
    for c in 0..chunks {
        for g in 0..DOTS {
            // SAFETY: `c * 8 + 8` is within every row.
            y[g] = unsafe { _mm256_loadu_ps(ys[g].as_ptr().add(c * 8)) };
        }
        for r in 0..R {
            // SAFETY: as above.
            let x = unsafe { _mm256_loadu_ps(xs[r].as_ptr().add(c * 8)) };
            for g in 0..DOTS {
                acc[r][g] = _mm256_add_ps(acc[r][g], _mm256_mul_ps(x, y[g]));
            }
        }
    }
    let mut lanes = [[[0.0f32; 8]; DOTS]; R];
    for r in 0..R {
        for g in 0..DOTS {
            // SAFETY: `lanes[r][g]` holds eight floats.
            unsafe { _mm256_storeu_ps(lanes[r][g].as_mut_ptr(), acc[r][g]) };
        }
    }
    finish(lanes, xs, ys)
}

fn dots_portable<const R: usize>(xs: [&[f32]; R], ys: [&[f32]; DOTS]) -> [[f32; DOTS]; R] {
    let mut lanes = [[[0.0f32; 8]; DOTS]; R];
    for (lanes, x) in lanes.iter_mut().zip(xs) {
        for (acc, y) in lanes.iter_mut().zip(ys) {
            for (x, y) in x.chunks_exact(8).zip(y.chunks_exact(8)) {
                for l in 0..8 {
                    acc[l] += x[l] * y[l];
                }
            }
        }
    }
    finish(lanes, xs, ys)
}

/// The eight lanes of each product added in `dot`'s tree, then the tail.
fn finish<const R: usize>(
    lanes: [[[f32; 8]; DOTS]; R],
    xs: [&[f32]; R],
    ys: [&[f32]; DOTS],
) -> [[f32; DOTS]; R] {
    let mut out = [[0.0f32; DOTS]; R];
    for ((out, lanes), x) in out.iter_mut().zip(lanes).zip(xs) {
        let tail = x.len() / 8 * 8;
        for ((o, a), y) in out.iter_mut().zip(lanes).zip(ys) {
            *o = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
            for (&p, &q) in x[tail..].iter().zip(&y[tail..]) {
                *o += p * q;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knn::cosine_neighbours;
    use rand::Rng;

    /// `n` points in `groups` clusters in `dim` dimensions, each cluster spread
    /// along its own `latent` random directions plus a little isotropic noise:
    /// the low intrinsic dimension of sentence embeddings, where neighbours of
    /// neighbours are neighbours, but enough of it that the lists are not trivial.
    fn clustered(n: usize, dim: usize, latent: usize, seed: u64) -> Matrix {
        const GROUPS: usize = 12;
        let mut rng = seeded_rng(seed, 0);
        let mut normal = move || (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>();
        let centres: Vec<f32> = (0..GROUPS * dim).map(|_| normal()).collect();
        let axes: Vec<f32> = (0..GROUPS * latent * dim).map(|_| 0.3 * normal()).collect();
        let mut data = Vec::with_capacity(n * dim);
        for i in 0..n {
            let g = i % GROUPS;
            let z: Vec<f32> = (0..latent).map(|_| normal()).collect();
            for d in 0..dim {
                let along: f32 = (0..latent)
                    .map(|l| z[l] * axes[(g * latent + l) * dim + d])
                    .sum();
                data.push(centres[g * dim + d] + along + 0.1 * normal());
            }
        }
        Matrix::new(n, dim, data)
    }

    /// The share of the exact lists' entries the approximate lists found.
    fn recall(approx: &Neighbours, exact: &Neighbours) -> f64 {
        let hits: usize = (0..exact.rows())
            .map(|i| {
                let truth: Vec<usize> = exact.of(i).map(|(j, _)| j).collect();
                approx.of(i).filter(|(j, _)| truth.contains(j)).count()
            })
            .sum();
        hits as f64 / exact.indices.len() as f64
    }

    #[test]
    fn finds_nearly_all_exact_neighbours() {
        // Measured 0.994 for both; without reverse candidates they fall to 0.94.
        for (n, dim, latent) in [(3000, 64, 32), (4000, 384, 48)] {
            let points = clustered(n, dim, latent, 5);
            let exact = cosine_neighbours(&points, 15);
            let approx = nn_descent(&points, 15, 1);
            let r = recall(&approx, &exact);
            assert!(r >= 0.98, "{n} × {dim}: recall {r}");
        }
    }

    #[test]
    fn lists_are_sorted_distinct_and_never_the_point_itself() {
        let points = clustered(2000, 48, 16, 2);
        let nn = nn_descent(&points, 10, 3);
        assert_eq!((nn.k, nn.rows()), (10, 2000));
        let unit = normalized_rows(&points);
        for i in 0..nn.rows() {
            let list: Vec<(usize, f32)> = nn.of(i).collect();
            assert!(list.iter().all(|&(j, _)| j != i), "row {i} lists itself");
            for pair in list.windows(2) {
                let ((a, da), (b, db)) = (pair[0], pair[1]);
                assert!(da < db || (da == db && a < b), "row {i} out of order");
            }
            for &(j, d) in &list {
                let cosine = 1.0 - dot(unit.row(i), unit.row(j));
                assert!((d - cosine).abs() < 1e-5, "row {i}: {d} vs {cosine}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_lists_on_any_number_of_threads() {
        // Several blocks, ranges and tasks, so the order of work varies; and k so
        // large that sampling drops candidates, so that the sampling priorities
        // matter (with a stream shared by the threads, this fails).
        let points = clustered(2 * BLOCK + 100, 32, 32, 4);
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| nn_descent(&points, 36, 9))
        };
        let one = on(1);
        for (name, other) in [
            ("4 threads", on(4)),
            ("3 threads", on(3)),
            ("the global pool", nn_descent(&points, 36, 9)),
        ] {
            let differs = (0..one.rows()).find(|&i| !one.of(i).eq(other.of(i)));
            assert_eq!(differs, None, "1 thread vs {name}: first differing row");
        }
    }

    #[test]
    fn the_seed_chooses_the_starting_lists() {
        let points = clustered(500, 16, 4, 1);
        let unit = normalized_rows(&points);
        let space = Space::new(&unit);
        let a = Graph::random(&space, 8, 1);
        assert_eq!(a.indices, Graph::random(&space, 8, 1).indices);
        assert_ne!(a.indices, Graph::random(&space, 8, 2).indices);
    }

    #[test]
    fn tiny_inputs_list_every_other_point() {
        for n in [0, 1, 2, 5, 16] {
            let points = clustered(n, 8, 2, 6);
            let nn = nn_descent(&points, 15, 1);
            let exact = cosine_neighbours(&points, 15);
            assert_eq!(nn.k, n.saturating_sub(1).min(15), "n = {n}");
            assert_eq!(nn.indices, exact.indices, "n = {n}");
        }
    }

    #[test]
    fn duplicates_and_zero_rows_have_defined_distances() {
        // Rows 0–3 are one direction (two of them scaled), 4 and 5 are zero, 6 is
        // another direction.
        let points = Matrix::from_rows(&[
            [1.0f32, 2.0, 0.0],
            [1.0, 2.0, 0.0],
            [2.0, 4.0, 0.0],
            [0.5, 1.0, 0.0],
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 3.0],
        ])
        .unwrap();
        let nn = nn_descent(&points, 6, 1);
        let exact = cosine_neighbours(&points, 6);
        assert_eq!(nn.indices, exact.indices);
        let first: Vec<(usize, f32)> = nn.of(0).collect();
        assert_eq!(first[..3], [(1, 0.0), (2, 0.0), (3, 0.0)]);
        let zero: Vec<(usize, f32)> = nn.of(4).collect();
        assert_eq!(zero[0], (5, 0.0), "zero rows are duplicates of each other");
        assert!(
            zero[1..].iter().all(|&(_, d)| (d - 0.5).abs() < 1e-6),
            "{zero:?}"
        );
        // Many duplicates: every list is at distance 0 and never the point itself.
        let same = Matrix::new(300, 4, vec![0.5; 1200]);
        let nn = nn_descent(&same, 5, 1);
        for i in 0..300 {
            assert!(nn.of(i).all(|(j, d)| j != i && d == 0.0), "row {i}");
        }
    }

    #[test]
    fn the_vector_path_gives_the_bits_of_dot() {
        for dim in [3, 8, 13, 384] {
            let points = clustered(6, dim, 2, 3);
            let ys: [&[f32]; DOTS] = std::array::from_fn(|g| points.row(g + 2));
            let expected = |x: &[f32]| -> [f32; DOTS] { std::array::from_fn(|g| dot(x, ys[g])) };
            let (x0, x1) = (points.row(0), points.row(1));
            assert_eq!(dots([x0], ys), [expected(x0)], "{dim} dimensions");
            assert_eq!(dots([x0, x1], ys), [expected(x0), expected(x1)], "{dim}");
            assert_eq!(dots_portable([x0, x1], ys), dots([x0, x1], ys), "{dim}");
        }
    }
}
