//! Keys and values on the CPU as plain host memory, and the causal attention of new
//! tokens computed straight from them: row by row for a decoding step's few tokens,
//! as GEMMs over blocks of rows for a prompt.
//!
//! Why not tensors: with the cache held as tensors, every decoded token copied the
//! whole cache twice per layer (`cat` to append, then `repeat_kv` to widen grouped
//! heads: seven times over for Qwen 2.5, whose 14 query heads share 2 key/value
//! heads), so at 2,000 tokens of context the copies outweighed the weights. Here an
//! append is an `extend`, and each query head reads its group's keys and values in
//! place.

use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;
use kura_simd::{dot, matmul, multiversion, softmax, softmax_rows, MatRef, Threads};
use rayon::prelude::*;

/// One layer's keys and values, one buffer per key/value head (`[tokens, head_dim]`
/// each): a new token appends at the end of each, and attention streams through one
/// head's keys contiguously. Cloning shares the buffers; the first append to a shared
/// buffer copies it (a prompt prefix continued by many sessions).
///
/// Held in half precision, as llama.cpp holds them by default: at the summariser's
/// contexts (1,000+ tokens, 16 conversations in flight) the caches were the larger
/// part of its memory. Half precision took the peak of a Qwen summariser run from
/// 1737 to 1432 MiB and of SmolLM2's from 1461 to 1012. The rate did not move
/// (within the machine's drift): the step's attention is bound more by its
/// per-token sums than by the bytes it streams.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostKv {
    keys: Arc<Vec<Vec<f16>>>,
    values: Arc<Vec<Vec<f16>>>,
}

/// Tokens of keys or values widened to f32 at a time for a decoding step's
/// attention: a few KiB that stay in the first-level cache.
const WIDEN_TOKENS: usize = 32;

/// Tokens a head's buffer grows by when it is full.
const GROWTH_TOKENS: usize = 128;

/// The shape of the heads: `heads` query heads in `kv_heads` groups of `head_dim`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// Values of one token's queries, `heads × head_dim`.
    pub(crate) fn query_width(self) -> usize {
        self.heads * self.head_dim
    }

    /// Values of one token's keys (or values), `kv_heads × head_dim`.
    pub(crate) fn kv_width(self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Query heads that share a key/value head.
    pub(crate) fn group(self) -> usize {
        self.heads / self.kv_heads.max(1)
    }
}

impl HostKv {
    /// Appends tokens given token-major, `[tokens, kv_heads, head_dim]` each.
    pub(crate) fn append(&mut self, shape: Heads, keys: &[f32], values: &[f32]) {
        for (heads, new) in [(&mut self.keys, keys), (&mut self.values, values)] {
            let heads = Arc::make_mut(heads);
            heads.resize_with(shape.kv_heads, Vec::new);
            let per_head = new.len() / shape.kv_heads.max(1);
            for head in heads.iter_mut() {
                // Grown by a fixed step rather than doubled: 16 conversations in
                // flight would otherwise hold up to twice their caches.
                if head.capacity() - head.len() < per_head {
                    head.reserve_exact(per_head.max(GROWTH_TOKENS * shape.head_dim));
                }
            }
            for (i, row) in new.chunks_exact(shape.head_dim).enumerate() {
                let head = &mut heads[i % shape.kv_heads];
                let start = head.len();
                head.resize(start + row.len(), f16::ZERO);
                head[start..].convert_from_f32_slice(row);
            }
        }
    }

    /// Keeps the first `values` of each head's keys and values (a whole number of
    /// tokens): in place when no other cache shares the buffers, else by copying
    /// only what is kept.
    pub(crate) fn truncate(&mut self, values: usize) {
        for heads in [&mut self.keys, &mut self.values] {
            match Arc::get_mut(heads) {
                Some(owned) => owned.iter_mut().for_each(|head| head.truncate(values)),
                None => {
                    let kept = heads.iter().map(|h| h[..values.min(h.len())].to_vec());
                    *heads = Arc::new(kept.collect());
                }
            }
        }
    }

    /// Tokens held.
    pub(crate) fn len(&self, shape: Heads) -> usize {
        self.keys
            .first()
            .map_or(0, |keys| keys.len() / shape.head_dim.max(1))
    }

    /// Keys and values head-major, `[kv_heads, tokens, head_dim]` each, in f32.
    pub(crate) fn head_major(&self) -> (Vec<f32>, Vec<f32>) {
        let (keys, values) = self.widened(usize::MAX);
        (keys.concat(), values.concat())
    }

    /// The first `values` keys and values of each head, in f32.
    fn widened(&self, values: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let widen = |heads: &[Vec<f16>]| {
            heads
                .iter()
                .map(|head| {
                    let head = &head[..values.min(head.len())];
                    let mut wide = vec![0f32; head.len()];
                    head.convert_to_f32_slice(&mut wide);
                    wide
                })
                .collect()
        };
        (widen(&self.keys), widen(&self.values))
    }

    /// The attention output of one query token over every token held,
    /// `[heads, head_dim]`, for `query` given as `[heads, head_dim]`.
    pub(crate) fn attend_one(&self, query: &[f32], shape: Heads, scale: f32) -> Vec<f32> {
        self.attend_causal(self.len(shape), query, shape, scale)
    }

    /// Attention of the last tokens held, whose queries are `queries`
    /// (`[rows, heads, head_dim]`): row `j` sees the first `first + j` tokens, itself
    /// included and none after it (causal attention). Returns `[rows, heads,
    /// head_dim]`. The query heads that share a key/value head are taken together, so
    /// each key and value is read once per group and row; the groups run in parallel.
    pub(crate) fn attend_causal(
        &self,
        first: usize,
        queries: &[f32],
        shape: Heads,
        scale: f32,
    ) -> Vec<f32> {
        let (row, head_dim) = (shape.query_width(), shape.head_dim);
        if queries.len() >= PROMPT_ROWS * row {
            return self.attend_prompt(first, queries, shape, scale);
        }
        // A group's queries, side by side in a row.
        let group = shape.group() * head_dim;
        let rows = queries.len() / row;
        let per_group: Vec<Vec<f32>> = (0..shape.kv_heads)
            .into_par_iter()
            .map(|g| {
                let mut out = vec![0.0f32; rows * group];
                for ((seen, q), out) in (first..)
                    .zip(queries.chunks_exact(row))
                    .zip(out.chunks_exact_mut(group))
                {
                    let held = seen * head_dim;
                    let (keys, values) = (&self.keys[g][..held], &self.values[g][..held]);
                    attend_group(&q[g * group..][..group], keys, values, head_dim, scale, out);
                }
                out
            })
            .collect();
        let mut out = vec![0.0f32; rows * row];
        for (g, part) in per_group.iter().enumerate() {
            for (out, part) in out.chunks_exact_mut(row).zip(part.chunks_exact(group)) {
                out[g * group..][..group].copy_from_slice(part);
            }
        }
        out
    }

    /// [`HostKv::attend_causal`] for many rows (a prompt): per query head and block
    /// of [`PROMPT_ROWS`] rows, the scores are one GEMM over the keys the block's
    /// last row sees, the softmax runs over each row's own causal prefix (the rest
    /// of the row is zeroed), and the output is a second GEMM over the values.
    /// Tasks (head, block) run in parallel, each GEMM on one core.
    fn attend_prompt(&self, first: usize, queries: &[f32], shape: Heads, scale: f32) -> Vec<f32> {
        let (heads, head_dim, group) = (shape.heads, shape.head_dim, shape.group());
        let row = shape.query_width();
        let rows = queries.len() / row;
        // The GEMMs read f32: each head's keys and values widened once.
        let (all_keys, all_values) = self.widened((first + rows - 1) * head_dim);
        let tasks: Vec<(usize, usize)> = (0..heads)
            .flat_map(|head| {
                (0..rows)
                    .step_by(PROMPT_ROWS)
                    .map(move |start| (head, start))
            })
            .collect();
        let blocks: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(head, start)| {
                let count = PROMPT_ROWS.min(rows - start);
                let seen = first + start + count - 1;
                let (keys, values) = (&all_keys[head / group], &all_values[head / group]);
                let (keys, values) = (&keys[..seen * head_dim], &values[..seen * head_dim]);
                let q = MatRef::new(
                    &queries[start * row + head * head_dim..],
                    count,
                    head_dim,
                    row,
                    1,
                );
                let mut scores = vec![0.0f32; count * seen];
                let keys = MatRef::row_major(keys, seen, head_dim).t();
                matmul(&mut scores, q, keys, scale, false, Threads::One);
                for (sees, scores) in (first + start..).zip(scores.chunks_exact_mut(seen)) {
                    let (visible, hidden) = scores.split_at_mut(sees);
                    softmax_rows(visible, sees);
                    hidden.fill(0.0);
                }
                let mut out = vec![0.0f32; count * head_dim];
                let scores = MatRef::row_major(&scores, count, seen);
                let values = MatRef::row_major(values, seen, head_dim);
                matmul(&mut out, scores, values, 1.0, false, Threads::One);
                out
            })
            .collect();
        let mut out = vec![0.0f32; rows * row];
        for (&(head, start), block) in tasks.iter().zip(&blocks) {
            for (to, from) in out[start * row..]
                .chunks_mut(row)
                .zip(block.chunks_exact(head_dim))
            {
                to[head * head_dim..][..head_dim].copy_from_slice(from);
            }
        }
        out
    }
}

/// Rows from which [`HostKv::attend_causal`] computes attention as GEMMs: enough rows
/// that each product is a real matrix product.
const PROMPT_ROWS: usize = 32;

/// Softmax attention of the query heads in `queries` (`[group, head_dim]`, one
/// token) over the keys and values of one key/value head (`[tokens, head_dim]`
/// each), written to `out` (`[group, head_dim]`). Keys and values are widened
/// [`WIDEN_TOKENS`] at a time.
fn attend_group(
    queries: &[f32],
    keys: &[f16],
    values: &[f16],
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    let tokens = keys.len() / head_dim;
    let group = queries.len() / head_dim;
    let mut scores = vec![0.0f32; group * tokens];
    let mut wide = vec![0.0f32; WIDEN_TOKENS * head_dim];
    let chunk = WIDEN_TOKENS * head_dim;
    for (c, keys) in keys.chunks(chunk).enumerate() {
        let wide = &mut wide[..keys.len()];
        keys.convert_to_f32_slice(wide);
        score_tokens(
            queries,
            wide,
            head_dim,
            scale,
            &mut scores,
            tokens,
            c * WIDEN_TOKENS,
        );
    }
    softmax_each(&mut scores, tokens);
    out.fill(0.0);
    for (c, values) in values.chunks(chunk).enumerate() {
        let wide = &mut wide[..values.len()];
        values.convert_to_f32_slice(wide);
        weigh_values(&scores, wide, head_dim, out, tokens, c * WIDEN_TOKENS);
    }
}

multiversion! {
    /// The scores of the group's queries against keys of tokens `first..`:
    /// `scores[g * tokens + t]`.
    fn score_tokens<M>(
        queries: &[f32],
        keys: &[f32],
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        tokens: usize,
        first: usize,
    ) {
        for (t, k) in (first..).zip(keys.chunks_exact(head_dim)) {
            for (g, q) in queries.chunks_exact(head_dim).enumerate() {
                scores[g * tokens + t] = dot::<M>(q, k) * scale;
            }
        }
    }
}

multiversion! {
    fn softmax_each<M>(scores: &mut [f32], tokens: usize) {
        for row in scores.chunks_exact_mut(tokens.max(1)) {
            softmax::<M>(row);
        }
    }
}

multiversion! {
    /// Adds the values of tokens `first..`, weighed by each query's scores, to `out`.
    fn weigh_values<M>(
        scores: &[f32],
        values: &[f32],
        head_dim: usize,
        out: &mut [f32],
        tokens: usize,
        first: usize,
    ) {
        for (t, v) in (first..).zip(values.chunks_exact(head_dim)) {
            for (g, o) in out.chunks_exact_mut(head_dim).enumerate() {
                let weight = scores[g * tokens + t];
                for (o, &v) in o.iter_mut().zip(v) {
                    *o = M::mul_add(weight, v, *o);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention as written in the paper, each query head against its group's keys.
    fn naive(q: &[f32], keys: &[f32], values: &[f32], shape: Heads, scale: f32) -> Vec<f32> {
        let Heads {
            heads,
            kv_heads,
            head_dim,
        } = shape;
        let tokens = keys.len() / (kv_heads * head_dim);
        let mut out = Vec::new();
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            let at = |buf: &[f32], t: usize, i: usize| buf[(t * kv_heads + g) * head_dim + i];
            let scores: Vec<f32> = (0..tokens)
                .map(|t| {
                    (0..head_dim)
                        .map(|i| q[h * head_dim + i] * at(keys, t, i))
                        .sum::<f32>()
                        * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f32 = e.iter().sum();
            for i in 0..head_dim {
                out.push((0..tokens).map(|t| e[t] / total * at(values, t, i)).sum());
            }
        }
        out
    }

    fn numbers(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn one_token_attention_matches_the_definition_with_grouped_heads() {
        let shape = Heads {
            heads: 6,
            kv_heads: 2,
            head_dim: 12,
        };
        let row = shape.kv_heads * shape.head_dim;
        let mut kv = HostKv::default();
        // Appended in two parts, as a prompt and then a decoded token would be.
        let (keys, values) = (numbers(row * 9, 1), numbers(row * 9, 2));
        kv.append(shape, &keys[..row * 8], &values[..row * 8]);
        let shared = kv.clone();
        kv.append(shape, &keys[row * 8..], &values[row * 8..]);
        let query = numbers(shape.heads * shape.head_dim, 3);
        let got = kv.attend_one(&query, shape, 0.3);
        let want = naive(&query, &as_held(&keys), &as_held(&values), shape, 0.3);
        assert_close(&got, &want);
        // The clone taken before the last append still holds eight tokens.
        assert_eq!(shared.len(shape), 8);
        assert_eq!(kv.len(shape), 9);
    }

    /// Rows fed together see only the tokens up to their own, on both paths: one
    /// row at a time (few rows) and the GEMMs over blocks of rows (a prompt).
    #[test]
    fn rows_fed_together_attend_causally() {
        let shape = Heads {
            heads: 14,
            kv_heads: 2,
            head_dim: 64,
        };
        let (row, kv_row) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        for (held_before, rows) in [(5, 3), (0, 40), (21, 70)] {
            let total = held_before + rows;
            let (keys, values) = (numbers(kv_row * total, 4), numbers(kv_row * total, 5));
            let (held_keys, held_values) = (as_held(&keys), as_held(&values));
            let queries = numbers(row * rows, 6);
            let mut kv = HostKv::default();
            kv.append(
                shape,
                &keys[..kv_row * held_before],
                &values[..kv_row * held_before],
            );
            kv.append(
                shape,
                &keys[kv_row * held_before..],
                &values[kv_row * held_before..],
            );
            let got = kv.attend_causal(held_before + 1, &queries, shape, 0.125);
            assert_eq!(got.len(), queries.len());
            for (j, (got, query)) in got
                .chunks_exact(row)
                .zip(queries.chunks_exact(row))
                .enumerate()
            {
                let seen = (held_before + j + 1) * kv_row;
                let want = naive(
                    query,
                    &held_keys[..seen],
                    &held_values[..seen],
                    shape,
                    0.125,
                );
                assert_close(got, &want);
            }
        }
    }

    /// The values as the cache holds them: rounded to half precision.
    fn as_held(xs: &[f32]) -> Vec<f32> {
        xs.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
