//! Point-to-centroid scores as a blocked matrix product, the inner loop of k-means.
//!
//! Both sides are packed once into the layout the micro-kernel reads: points in
//! groups of [`GROUP`] interleaved by coordinate, centroids transposed in tiles of
//! up to [`TILE`] columns. One kernel call keeps a [`GROUP`] × [`TILE`] block of
//! dot products in registers and streams both operands exactly once, which is what
//! makes the assignment compute-bound instead of memory-bound.
//!
//! Every dot product is summed coordinate by coordinate in one accumulator, with a
//! separate multiply and add (never a fused one). The result of each dot product
//! therefore depends neither on the vector width the CPU offers nor on how points
//! and centroids are blocked or split across threads: the AVX2 path and the
//! portable path give the same bits, so labels reproduce on every machine.

use kura_core::Matrix;
use rayon::prelude::*;

/// Points per register block.
const GROUP: usize = 6;
/// Centroids per register block (two AVX2 vectors).
const TILE: usize = 16;
/// The narrow register block, for tiles of at most this many centroids.
const HALF_TILE: usize = 8;
/// Point groups per parallel task; fixed, so the split never depends on the
/// thread count (and each point's result depends only on its own row anyway).
const GROUPS_PER_TASK: usize = 48;

/// Unit (or zero) rows packed for [`nearest`] and [`squared_distances`].
pub(crate) struct PackedPoints {
    rows: usize,
    dim: usize,
    /// `rows.div_ceil(GROUP)` groups of `dim × GROUP`, zero-padded.
    groups: Vec<f32>,
    norms: Vec<f32>,
}

impl PackedPoints {
    pub(crate) fn new(points: &Matrix) -> Self {
        let (rows, dim) = (points.rows(), points.cols());
        let group_count = rows.div_ceil(GROUP);
        let mut groups = vec![0.0f32; group_count * dim * GROUP];
        groups
            .par_chunks_mut((dim * GROUP).max(1))
            .enumerate()
            .for_each(|(g, group)| {
                for p in 0..GROUP {
                    let row = g * GROUP + p;
                    if row < rows {
                        for (d, &x) in points.row(row).iter().enumerate() {
                            group[d * GROUP + p] = x;
                        }
                    }
                }
            });
        let norms = points
            .iter_rows()
            .map(|r| crate::vector::dot(r, r))
            .collect();
        PackedPoints {
            rows,
            dim,
            groups,
            norms,
        }
    }

    fn tasks(&self) -> impl IndexedParallelIterator<Item = (usize, &[f32])> {
        self.groups
            .par_chunks((GROUPS_PER_TASK * GROUP * self.dim).max(1))
            .enumerate()
            .map(|(t, chunk)| (t * GROUPS_PER_TASK * GROUP, chunk))
    }
}

/// Centroids transposed into tiles of [`TILE`] columns (the last one narrower).
struct PackedCentroids {
    tiles: Vec<Tile>,
}

struct Tile {
    start: usize,
    width: usize,
    /// `dim` rows of [`TILE`] (or [`HALF_TILE`] for a narrow tile) coordinates,
    /// column `j` holding centroid `start + j`, zero-padded.
    data: Vec<f32>,
    /// Squared norms; +∞ for padding so it never wins.
    norms: [f32; TILE],
}

impl PackedCentroids {
    fn new(centroids: &Matrix) -> Self {
        let (k, dim) = (centroids.rows(), centroids.cols());
        let tiles = (0..k)
            .step_by(TILE)
            .map(|start| {
                let width = TILE.min(k - start);
                let stride = if width <= HALF_TILE { HALF_TILE } else { TILE };
                let mut data = vec![0.0f32; dim * stride];
                let mut norms = [f32::INFINITY; TILE];
                for j in 0..width {
                    let c = centroids.row(start + j);
                    norms[j] = crate::vector::dot(c, c);
                    for (d, &x) in c.iter().enumerate() {
                        data[d * stride + j] = x;
                    }
                }
                Tile {
                    start,
                    width,
                    data,
                    norms,
                }
            })
            .collect();
        PackedCentroids { tiles }
    }
}

/// Streams every point against every tile of `centroids`: for each point (its row
/// within the task) and each tile, `visit` gets the tile and the point's row of dot
/// products with it. Each task's state starts as `start(rows in the task)`; the
/// states come back in row order with the first row each covers.
fn scan<S, Start, Visit>(
    points: &PackedPoints,
    centroids: &PackedCentroids,
    start: Start,
    visit: Visit,
) -> Vec<(usize, S)>
where
    S: Send,
    Start: Fn(usize) -> S + Sync,
    Visit: Fn(&mut S, usize, &Tile, &[f32; TILE]) + Sync,
{
    let dim = points.dim;
    points
        .tasks()
        .map(|(first, chunk)| {
            let count = chunk.len() / (GROUP * dim).max(1);
            let mut state = start(count * GROUP);
            for tile in &centroids.tiles {
                for (g, group) in chunk.chunks_exact((GROUP * dim).max(1)).enumerate() {
                    for (p, row) in group_dots(group, tile).iter().enumerate() {
                        visit(&mut state, g * GROUP + p, tile, row);
                    }
                }
            }
            (first, state)
        })
        .collect()
}

/// The nearest centroid of every point and its squared Euclidean distance (by
/// `|x|² + |c|² − 2x·c`, clamped at 0). Ties go to the lower centroid index.
pub(crate) fn nearest(points: &PackedPoints, centroids: &Matrix) -> Vec<(usize, f32)> {
    let packed = PackedCentroids::new(centroids);
    let tasks = scan(
        points,
        &packed,
        |rows| vec![(0usize, f32::INFINITY); rows],
        |best, i, tile, row| {
            let b = &mut best[i];
            let columns = tile.norms.iter().zip(row).take(tile.width);
            for (j, (&norm, &dot)) in columns.enumerate() {
                let score = norm - 2.0 * dot;
                if score < b.1 {
                    *b = (tile.start + j, score);
                }
            }
        },
    );
    let mut out: Vec<(usize, f32)> = tasks
        .into_iter()
        .flat_map(|(first, best)| {
            best.into_iter().enumerate().map(move |(i, (j, score))| {
                let norm = points.norms.get(first + i).copied().unwrap_or(0.0);
                (j, (norm + score).max(0.0))
            })
        })
        .collect();
    out.truncate(points.rows);
    out
}

/// The squared distance of every point to every centroid, row-major `rows × k`;
/// meant for a handful of centroids (the candidates of k-means++ seeding).
pub(crate) fn squared_distances(points: &PackedPoints, centroids: &Matrix) -> Vec<f32> {
    let packed = PackedCentroids::new(centroids);
    let k = centroids.rows();
    let tasks = scan(
        points,
        &packed,
        |rows| vec![0.0f32; rows * k],
        |block, i, tile, row| {
            for j in 0..tile.width {
                block[i * k + tile.start + j] = tile.norms[j] - 2.0 * row[j];
            }
        },
    );
    let mut out: Vec<f32> = tasks
        .into_iter()
        .flat_map(|(first, block)| {
            block.into_iter().enumerate().map(move |(e, score)| {
                let norm = points
                    .norms
                    .get(first + e / k.max(1))
                    .copied()
                    .unwrap_or(0.0);
                (norm + score).max(0.0)
            })
        })
        .collect();
    out.truncate(points.rows * k);
    out
}

/// The `k` nearest rows of `others` to every point, nearest first, as
/// `(row, squared distance)`; a point that is also a row of `others` finds itself.
/// Ties go to the lower row, so the lists are deterministic.
pub(crate) fn k_nearest(points: &PackedPoints, others: &Matrix, k: usize) -> Vec<Vec<(u32, f32)>> {
    let k = k.min(others.rows());
    let packed = PackedCentroids::new(others);
    let tasks = scan(
        points,
        &packed,
        |rows| vec![Vec::<(u32, f32)>::with_capacity(k + 1); rows],
        |lists, i, tile, row| {
            let list = &mut lists[i];
            let columns = tile.norms.iter().zip(row).take(tile.width);
            for (j, (&norm, &dot)) in columns.enumerate() {
                let score = norm - 2.0 * dot;
                if list.len() == k && list.last().is_some_and(|&(_, worst)| score >= worst) {
                    continue;
                }
                let at = list.partition_point(|&(_, s)| s <= score);
                list.insert(at, ((tile.start + j) as u32, score));
                list.truncate(k);
            }
        },
    );
    let mut out: Vec<Vec<(u32, f32)>> = tasks
        .into_iter()
        .flat_map(|(first, lists)| {
            lists.into_iter().enumerate().map(move |(i, list)| {
                let norm = points.norms.get(first + i).copied().unwrap_or(0.0);
                list.into_iter()
                    .map(|(j, score)| (j, (norm + score).max(0.0)))
                    .collect()
            })
        })
        .collect();
    out.truncate(points.rows);
    out
}

/// The [`GROUP`] × [`TILE`] dot products of one point group with one tile (columns
/// past the tile's width are zero). A tile of at most [`HALF_TILE`] columns, as the
/// candidates of a seeding step usually are, is computed at half the cost.
fn group_dots(group: &[f32], tile: &Tile) -> [[f32; TILE]; GROUP] {
    if tile.width <= HALF_TILE {
        let mut out = [[0.0f32; TILE]; GROUP];
        for (o, h) in out
            .iter_mut()
            .zip(dots_dispatch::<HALF_TILE>(group, &tile.data))
        {
            o[..HALF_TILE].copy_from_slice(&h);
        }
        return out;
    }
    dots_dispatch::<TILE>(group, &tile.data)
}

fn dots_dispatch<const W: usize>(group: &[f32], tile: &[f32]) -> [[f32; W]; GROUP] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { dots_avx2::<W>(group, tile) };
        }
    }
    dots_portable::<W>(group, tile)
}

/// [`dots_portable`] compiled for AVX2. FMA is deliberately not enabled: fused
/// multiply-adds round differently, and results must match the portable path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dots_avx2<const W: usize>(group: &[f32], tile: &[f32]) -> [[f32; W]; GROUP] {
    dots_portable::<W>(group, tile)
}

/// `tile` is `dim` rows of `W` centroid coordinates, read with that stride.
#[inline(always)]
fn dots_portable<const W: usize>(group: &[f32], tile: &[f32]) -> [[f32; W]; GROUP] {
    let mut acc = [[0.0f32; W]; GROUP];
    for (x, c) in group.chunks_exact(GROUP).zip(tile.chunks_exact(W)) {
        for p in 0..GROUP {
            let xp = x[p];
            for j in 0..W {
                acc[p][j] += xp * c[j];
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, salt: usize) -> Matrix {
        let data = (0..rows * cols)
            .map(|i| (((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        Matrix::new(rows, cols, data)
    }

    fn exact(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
    }

    #[test]
    fn nearest_matches_a_naive_search_for_ragged_shapes() {
        for (n, k, d) in [(1, 1, 1), (7, 3, 5), (100, 17, 33), (13, 40, 8)] {
            let points = matrix(n, d, 1);
            let centroids = matrix(k, d, 2);
            let got = nearest(&PackedPoints::new(&points), &centroids);
            assert_eq!(got.len(), n);
            for (i, &(j, dist)) in got.iter().enumerate() {
                let x = points.row(i);
                let best = (0..k)
                    .map(|c| exact(x, centroids.row(c)))
                    .fold(f32::INFINITY, f32::min);
                assert!((dist - best).abs() < 1e-3 * best.max(1.0), "{n} {k} {d}");
                assert!((exact(x, centroids.row(j)) - best).abs() < 1e-3 * best.max(1.0));
            }
        }
    }

    #[test]
    fn squared_distances_match_exact_ones() {
        let points = matrix(20, 9, 3);
        let centroids = matrix(5, 9, 4);
        let got = squared_distances(&PackedPoints::new(&points), &centroids);
        assert_eq!(got.len(), 100);
        for i in 0..20 {
            for j in 0..5 {
                let e = exact(points.row(i), centroids.row(j));
                assert!((got[i * 5 + j] - e).abs() < 1e-3 * e.max(1.0));
            }
        }
    }

    #[test]
    fn k_nearest_matches_a_sorted_naive_search() {
        let points = matrix(40, 7, 8);
        let got = k_nearest(&PackedPoints::new(&points), &points, 5);
        assert_eq!(got.len(), 40);
        for (i, list) in got.iter().enumerate() {
            let mut naive: Vec<(usize, f32)> = (0..40)
                .map(|j| (j, exact(points.row(i), points.row(j))))
                .collect();
            naive.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            assert_eq!(list.len(), 5);
            assert_eq!(list[0].0 as usize, i, "a point is its own nearest row");
            for (&(j, d), &(_, e)) in list.iter().zip(&naive) {
                assert!((d - e).abs() < 1e-3 * e.max(1.0), "row {i}");
                assert!(
                    (exact(points.row(i), points.row(j as usize)) - e).abs() < 1e-3 * e.max(1.0)
                );
            }
        }
        let few = k_nearest(&PackedPoints::new(&points), &matrix(3, 7, 9), 5);
        assert!(
            few.iter().all(|l| l.len() == 3),
            "k is capped at the rows there are"
        );
    }

    #[test]
    fn the_vector_path_gives_the_same_bits_as_the_portable_one() {
        let points = matrix(6, 50, 5);
        let centroids = matrix(16, 50, 6);
        let packed = PackedPoints::new(&points);
        let tiles = PackedCentroids::new(&centroids);
        let group = &packed.groups[..6 * 50];
        let portable = dots_portable::<TILE>(group, &tiles.tiles[0].data);
        assert_eq!(group_dots(group, &tiles.tiles[0]), portable);
        let narrow = PackedCentroids::new(&matrix(5, 50, 7));
        let portable = dots_portable::<HALF_TILE>(group, &narrow.tiles[0].data);
        let got = group_dots(group, &narrow.tiles[0]);
        for (g, p) in got.iter().zip(portable) {
            assert_eq!(g[..HALF_TILE], p);
        }
    }
}
