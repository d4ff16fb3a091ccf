//! Keys and values on the CPU as plain host memory, and the attention of one new
//! token computed straight from them.
//!
//! Why not tensors: with the cache held as tensors, every decoded token copied the
//! whole cache twice per layer (`cat` to append, then `repeat_kv` to widen grouped
//! heads: seven times over for Qwen 2.5, whose 14 query heads share 2 key/value
//! heads), so at 2,000 tokens of context the copies outweighed the weights. Here an
//! append is an `extend`, and each query head reads its group's keys and values in
//! place.

use std::sync::Arc;

use kura_simd::{dot, multiversion, softmax};
use rayon::prelude::*;

/// One layer's keys and values, token-major (`[tokens, kv_heads, head_dim]`), so a
/// new token appends at the end. Cloning shares the buffers; the first append to a
/// shared buffer copies it (a prompt prefix continued by many sessions).
#[derive(Clone, Debug, Default)]
pub(crate) struct HostKv {
    keys: Arc<Vec<f32>>,
    values: Arc<Vec<f32>>,
}

/// The shape of the heads: `heads` query heads in `kv_heads` groups of `head_dim`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl HostKv {
    /// Appends tokens given token-major, `[tokens, kv_heads, head_dim]` each.
    pub(crate) fn append(&mut self, keys: &[f32], values: &[f32]) {
        Arc::make_mut(&mut self.keys).extend_from_slice(keys);
        Arc::make_mut(&mut self.values).extend_from_slice(values);
    }

    pub(crate) fn keys(&self) -> &[f32] {
        &self.keys
    }

    pub(crate) fn values(&self) -> &[f32] {
        &self.values
    }

    /// The attention output of one query token over every token held,
    /// `[heads, head_dim]`, for `query` given as `[heads, head_dim]`. The query heads
    /// that share a key/value head are taken together, so each key and value is read
    /// once per group; the groups run in parallel.
    pub(crate) fn attend_one(&self, query: &[f32], shape: Heads, scale: f32) -> Vec<f32> {
        let Heads {
            heads,
            kv_heads,
            head_dim,
        } = shape;
        let group = heads / kv_heads;
        let mut out = vec![0.0f32; heads * head_dim];
        out.par_chunks_exact_mut(group * head_dim)
            .zip(query.par_chunks_exact(group * head_dim))
            .enumerate()
            .for_each(|(g, (out, queries))| {
                let place = KvPlace {
                    row: kv_heads * head_dim,
                    offset: g * head_dim,
                    head_dim,
                };
                attend_group(queries, &self.keys, &self.values, place, scale, out);
            });
        out
    }
}

/// Where one key/value head sits in a token-major row of the cache.
#[derive(Clone, Copy)]
struct KvPlace {
    /// Values per token (all key/value heads).
    row: usize,
    /// The head's first value within a token's row.
    offset: usize,
    head_dim: usize,
}

multiversion! {
    /// Softmax attention of the query heads in `queries` (`[group, head_dim]`, one
    /// token) over the keys and values of one key/value head, written to `out`
    /// (`[group, head_dim]`).
    fn attend_group<M>(
        queries: &[f32],
        keys: &[f32],
        values: &[f32],
        place: KvPlace,
        scale: f32,
        out: &mut [f32],
    ) {
        let head_dim = place.head_dim;
        let group = queries.len() / head_dim;
        let tokens = keys.len() / place.row;
        let mut scores = vec![0.0f32; group * tokens];
        for t in 0..tokens {
            let k = &keys[t * place.row + place.offset..][..head_dim];
            for (g, q) in queries.chunks_exact(head_dim).enumerate() {
                scores[g * tokens + t] = dot::<M>(q, k) * scale;
            }
        }
        for row in scores.chunks_exact_mut(tokens.max(1)) {
            softmax::<M>(row);
        }
        out.fill(0.0);
        for t in 0..tokens {
            let v = &values[t * place.row + place.offset..][..head_dim];
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
        kv.append(&keys[..row * 8], &values[..row * 8]);
        let shared = kv.clone();
        kv.append(&keys[row * 8..], &values[row * 8..]);
        let query = numbers(shape.heads * shape.head_dim, 3);
        let got = kv.attend_one(&query, shape, 0.3);
        let want = naive(&query, &keys, &values, shape, 0.3);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        // The clone taken before the last append still holds eight tokens.
        assert_eq!(shared.keys().len(), row * 8);
        assert_eq!(kv.values().len(), row * 9);
    }
}
