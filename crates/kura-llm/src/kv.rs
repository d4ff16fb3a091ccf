//! Keys and values on the CPU as plain host memory, and the causal attention of new
//! tokens computed straight from them: with AVX-512 by the same kernels for a
//! decoding step's few tokens and a prompt's many, elsewhere as GEMMs for a prompt.
//!
//! Why bfloat16 pairs: `vdpbf16ps` multiplies a register of pairs of bfloat16 by a
//! broadcast pair and adds both products to f32 sums, twice the multiply-adds of an
//! f32 FMA on AMD's cores (see [`kura_simd::bf16`]), and attention was a sixth of
//! Qwen's summariser there at the FMA units' peak. So keys are held with each
//! token's dimensions in pairs, values with each dimension's tokens in pairs, and
//! on those cores the queries and the probabilities are rounded to bfloat16 too,
//! with every sum in f32. Other CPUs widen the pairs to f32 as they load them.
//!
//! Why not tensors: with the cache held as tensors, every decoded token copied the
//! whole cache twice per layer (`cat` to append, then `repeat_kv` to widen grouped
//! heads: seven times over for Qwen 2.5, whose 14 query heads share 2 key/value
//! heads), so at 2,000 tokens of context the copies outweighed the weights. Here an
//! append is an `extend`, and each query head reads its group's keys and values in
//! place.

use std::sync::Arc;

use half::bf16;
use kura_simd::{matmul, multiversion, softmax_rows, MatRef, Threads};
use rayon::prelude::*;

/// One layer's keys and values. Cloning shares the buffers; the first append to a
/// shared buffer copies it. A prompt prefix that many sessions continue is frozen
/// first (see [`HostKv::freeze`]): its whole blocks are then held once, read by every
/// session, and only the few tokens past them are copied.
///
/// Keys are held in blocks of [`KEY_BLOCK`] tokens, each block pairs of dimensions
/// major (`[head_dim / 2, KEY_BLOCK, 2]`), so that a decoding step scores a block's
/// tokens with one vector instruction per pair of dimensions and query head, each
/// lane a token: no horizontal sum per token, which is what bound the step's
/// attention when keys were token-major. Values are held in pairs of tokens
/// (`[tokens / 2, head_dim, 2]`): weighing them is one instruction per pair of
/// tokens and query head, each lane a dimension.
///
/// Held in 16 bits: at the summariser's contexts (1,000+ tokens, many conversations
/// in flight) the caches were the larger part of its memory. Half precision took
/// the peak of a Qwen summariser run from 1737 to 1432 MiB and of SmolLM2's from
/// 1461 to 1012. Bfloat16 holds the same bytes with three bits of mantissa fewer:
/// with queries, keys, values and probabilities all rounded to it, Qwen's
/// next-token distribution over 994 tokens of six real conversations moved by a
/// mean KL divergence of 0.0005 nats (8 of the 994 most likely tokens changed), as
/// much as rounding its queries alone to half precision moved it (0.00045): the
/// rounding of the activations to 8 bits turns any small change into about that.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostKv {
    tokens: usize,
    /// The first `frozen_tokens` tokens (whole blocks), never written again.
    frozen: Arc<Held>,
    frozen_tokens: usize,
    /// The tokens after them.
    own: Arc<Held>,
}

/// Keys and values of a run of tokens that starts on a block boundary.
#[derive(Clone, Debug, Default)]
struct Held {
    /// Per key/value head: whole blocks covering the tokens (the last one's lanes
    /// past them are never read as scores).
    keys: Vec<Vec<bf16>>,
    /// Per key/value head: whole pairs of tokens covering them; the second of an
    /// odd count's last pair is zero, so that weighing it adds nothing.
    values: Vec<Vec<bf16>>,
}

/// How many of a head's key and value buffers' values hold `tokens` tokens.
fn head_lengths(tokens: usize, head_dim: usize) -> (usize, usize) {
    (
        key_values(tokens, head_dim),
        tokens.div_ceil(2) * 2 * head_dim,
    )
}

/// Where dimension `d` of token `t` sits in a head's keys: blocks of
/// [`KEY_BLOCK`] tokens, each `[head_dim / 2, KEY_BLOCK, 2]`.
fn key_at(t: usize, d: usize, head_dim: usize) -> usize {
    t / KEY_BLOCK * KEY_BLOCK * head_dim + d / 2 * 2 * KEY_BLOCK + t % KEY_BLOCK * 2 + d % 2
}

/// Where dimension `d` of token `t` sits in a head's values: pairs of tokens,
/// `[tokens / 2, head_dim, 2]`.
fn value_at(t: usize, d: usize, head_dim: usize) -> usize {
    t / 2 * 2 * head_dim + 2 * d + t % 2
}

/// Zeroes the second of the last pair of a head's values when `tokens` is odd
/// (the slot of token `tokens`).
fn clear_unpaired(values: &mut [bf16], tokens: usize, head_dim: usize) {
    if !tokens.is_multiple_of(2) {
        for d in 0..head_dim {
            values[value_at(tokens, d, head_dim)] = bf16::ZERO;
        }
    }
}

impl Held {
    /// Head `head`'s first `count` tokens, which are tokens `first..` of the cache.
    fn run(&self, head: usize, first: usize, count: usize, head_dim: usize) -> Run<'_> {
        if count == 0 {
            return Run {
                first,
                tokens: 0,
                keys: &[],
                values: &[],
            };
        }
        let (keys, values) = head_lengths(count, head_dim);
        Run {
            first,
            tokens: count,
            keys: &self.keys[head][..keys],
            values: &self.values[head][..values],
        }
    }

    /// The first `tokens` tokens of each head, copied.
    fn first(&self, tokens: usize, head_dim: usize) -> Held {
        let (keys, values) = head_lengths(tokens, head_dim);
        let cut = |heads: &[Vec<bf16>], len: usize| -> Vec<Vec<bf16>> {
            heads.iter().map(|h| h[..len].to_vec()).collect()
        };
        let mut first = Held {
            keys: cut(&self.keys, keys),
            values: cut(&self.values, values),
        };
        for head in &mut first.values {
            clear_unpaired(head, tokens, head_dim);
        }
        first
    }

    /// Keeps the first `tokens` tokens of each head, in place.
    fn truncate(&mut self, tokens: usize, head_dim: usize) {
        let (keys, values) = head_lengths(tokens, head_dim);
        self.keys.iter_mut().for_each(|head| head.truncate(keys));
        for head in &mut self.values {
            head.truncate(values);
            clear_unpaired(head, tokens, head_dim);
        }
    }
}

/// The keys and values of one head over a run of `tokens` tokens from token
/// `first` (a block boundary), as the kernels read them.
struct Run<'a> {
    first: usize,
    tokens: usize,
    keys: &'a [bf16],
    values: &'a [bf16],
}

/// Tokens per block of keys: one 512-bit register of f32 lanes.
pub(crate) const KEY_BLOCK: usize = 16;

/// Tokens a head's buffer grows by when it is full (a multiple of [`KEY_BLOCK`]).
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

/// `tokens` rounded up to whole blocks of keys.
fn whole_blocks(tokens: usize) -> usize {
    tokens.div_ceil(KEY_BLOCK) * KEY_BLOCK
}

/// Values of the blocks of keys that cover `tokens` tokens.
fn key_values(tokens: usize, head_dim: usize) -> usize {
    whole_blocks(tokens) * head_dim
}

/// Grows `head` to `len` values, reserving by a fixed step rather than doubling:
/// the summariser's conversations in flight would otherwise hold up to twice their
/// caches.
fn grow_to(head: &mut Vec<bf16>, len: usize, step: usize) {
    if head.capacity() < len {
        head.reserve_exact((len - head.len()).max(step));
    }
    head.resize(len, bf16::ZERO);
}

impl HostKv {
    /// Appends tokens given token-major, `[tokens, kv_heads, head_dim]` each.
    pub(crate) fn append(&mut self, shape: Heads, keys: &[f32], values: &[f32]) {
        let Heads {
            kv_heads, head_dim, ..
        } = shape;
        let added = keys.len() / shape.kv_width().max(1);
        // Positions in `own`, which starts on a block boundary.
        let held = self.tokens - self.frozen_tokens;
        let total = held + added;
        let step = GROWTH_TOKENS * head_dim;
        let (key_len, value_len) = head_lengths(total, head_dim);
        let own = Arc::make_mut(&mut self.own);
        own.keys.resize_with(kv_heads, Vec::new);
        for (h, head) in own.keys.iter_mut().enumerate() {
            grow_to(head, key_len, step);
            for (t, keys) in (held..).zip(keys.chunks_exact(shape.kv_width())) {
                for (d, &key) in keys[h * head_dim..][..head_dim].iter().enumerate() {
                    head[key_at(t, d, head_dim)] = bf16::from_f32(key);
                }
            }
        }
        own.values.resize_with(kv_heads, Vec::new);
        for (h, head) in own.values.iter_mut().enumerate() {
            grow_to(head, value_len, step);
            for (t, values) in (held..).zip(values.chunks_exact(shape.kv_width())) {
                for (d, &value) in values[h * head_dim..][..head_dim].iter().enumerate() {
                    head[value_at(t, d, head_dim)] = bf16::from_f32(value);
                }
            }
        }
        self.tokens += added;
    }

    /// Makes the whole blocks held so far read-only, shared by every clone taken
    /// after this: a clone's first append then copies only the tokens past them (at
    /// most a block) where it copied the whole cache. The summariser's instruction
    /// prefix is some 280 tokens; copied into each of the 32 conversations in flight
    /// it cost about 100 MB of Qwen's keys and values. (Decoding did not
    /// get faster for reading it from one place: 0.81 conversations a second
    /// either way.)
    pub(crate) fn freeze(&mut self, head_dim: usize) {
        let whole = self.tokens / KEY_BLOCK * KEY_BLOCK;
        if whole <= self.frozen_tokens {
            return;
        }
        let moved = whole - self.frozen_tokens;
        let mut frozen = Held::clone(&self.frozen);
        let heads = self.own.keys.len();
        frozen.keys.resize_with(heads, Vec::new);
        frozen.values.resize_with(heads, Vec::new);
        let (key_cut, value_cut) = head_lengths(moved, head_dim);
        let mut own = Held::default();
        for (h, (keys, values)) in self.own.keys.iter().zip(&self.own.values).enumerate() {
            frozen.keys[h].extend_from_slice(&keys[..key_cut]);
            frozen.values[h].extend_from_slice(&values[..value_cut]);
            own.keys.push(keys[key_cut..].to_vec());
            own.values.push(values[value_cut..].to_vec());
        }
        self.frozen = Arc::new(frozen);
        self.frozen_tokens = whole;
        self.own = Arc::new(own);
    }

    /// Keeps the first `tokens` tokens: in place when no other cache shares the
    /// buffers, else by copying only what is kept.
    pub(crate) fn truncate(&mut self, tokens: usize, shape: Heads) {
        if tokens >= self.tokens {
            return;
        }
        let head_dim = shape.head_dim;
        if tokens < self.frozen_tokens {
            self.own = Arc::new(self.frozen.first(tokens, head_dim));
            self.frozen = Arc::default();
            self.frozen_tokens = 0;
        } else {
            let kept = tokens - self.frozen_tokens;
            match Arc::get_mut(&mut self.own) {
                Some(own) => own.truncate(kept, head_dim),
                None => self.own = Arc::new(self.own.first(kept, head_dim)),
            }
        }
        self.tokens = tokens;
    }

    /// Key/value heads held.
    fn heads(&self) -> usize {
        self.own.keys.len().max(self.frozen.keys.len())
    }

    /// Head `head`'s keys and values of the first `tokens` tokens: the frozen run
    /// and the own run after it (either may be empty).
    fn runs(&self, head: usize, tokens: usize, head_dim: usize) -> [Run<'_>; 2] {
        let in_frozen = tokens.min(self.frozen_tokens);
        let in_own = tokens - in_frozen;
        [
            self.frozen.run(head, 0, in_frozen, head_dim),
            self.own.run(head, self.frozen_tokens, in_own, head_dim),
        ]
    }

    /// Tokens held.
    pub(crate) fn len(&self) -> usize {
        self.tokens
    }

    /// Keys and values head-major, `[kv_heads, tokens, head_dim]` each, in f32.
    pub(crate) fn head_major(&self, head_dim: usize) -> (Vec<f32>, Vec<f32>) {
        let tokens = self.tokens;
        let mut keys = Vec::with_capacity(self.heads() * tokens * head_dim);
        for transposed in self.keys_transposed(tokens, head_dim) {
            for t in 0..tokens {
                keys.extend((0..head_dim).map(|d| transposed[d * tokens + t]));
            }
        }
        (keys, self.values_widened(tokens, head_dim).concat())
    }

    /// Each head's keys of the first `tokens` tokens as an f32 matrix
    /// `[head_dim, tokens]`: the right-hand side of a prompt's score GEMM.
    fn keys_transposed(&self, tokens: usize, head_dim: usize) -> Vec<Vec<f32>> {
        (0..self.heads())
            .map(|head| {
                let mut wide = vec![0f32; head_dim * tokens];
                let mut block_wide = vec![0f32; KEY_BLOCK * head_dim];
                for run in self.runs(head, tokens, head_dim) {
                    for (b, block) in run.keys.chunks_exact(KEY_BLOCK * head_dim).enumerate() {
                        let first = run.first + b * KEY_BLOCK;
                        let count = KEY_BLOCK.min(tokens - first);
                        widen_keys(block, &mut block_wide);
                        for (d, lanes) in block_wide.chunks_exact(KEY_BLOCK).enumerate() {
                            wide[d * tokens + first..][..count].copy_from_slice(&lanes[..count]);
                        }
                    }
                }
                wide
            })
            .collect()
    }

    /// Each head's values of the first `tokens` tokens in f32, `[tokens, head_dim]`.
    fn values_widened(&self, tokens: usize, head_dim: usize) -> Vec<Vec<f32>> {
        (0..self.heads())
            .map(|head| {
                let mut wide = vec![0f32; tokens * head_dim];
                for run in self.runs(head, tokens, head_dim) {
                    let at = run.first * head_dim;
                    widen_values(
                        run.values,
                        head_dim,
                        &mut wide[at..at + run.tokens * head_dim],
                    );
                }
                wide
            })
            .collect()
    }

    /// The attention output of one query token over every token held,
    /// `[heads, head_dim]`, for `query` given as `[heads, head_dim]`.
    pub(crate) fn attend_one(
        &self,
        kernel: Kernel,
        query: &[f32],
        shape: Heads,
        scale: f32,
    ) -> Vec<f32> {
        self.attend_causal(kernel, self.len(), query, shape, scale)
    }

    /// Attention of the last tokens held, whose queries are `queries`
    /// (`[rows, heads, head_dim]`): row `j` sees the first `first + j` tokens, itself
    /// included and none after it (causal attention). Returns `[rows, heads,
    /// head_dim]`.
    ///
    /// The query heads that share a key/value head are taken together, and so are
    /// up to [`ROWS_TOGETHER`] rows: each key and value is read once for all of
    /// them, and tasks (key/value head, block of rows) run in parallel. With
    /// AVX-512 a decoding step and a prompt go through the same kernels, so a row
    /// attends to the same bits whatever was fed beside it; without, prompts go
    /// through GEMMs (see [`PROMPT_ROWS`]).
    pub(crate) fn attend_causal(
        &self,
        kernel: Kernel,
        first: usize,
        queries: &[f32],
        shape: Heads,
        scale: f32,
    ) -> Vec<f32> {
        let (row, head_dim) = (shape.query_width(), shape.head_dim);
        // A group's queries, side by side in a row.
        let group = shape.group() * head_dim;
        let rows = queries.len() / row;
        if kernel == Kernel::Plain && rows >= PROMPT_ROWS {
            return self.attend_prompt(first, queries, shape, scale);
        }
        in_blocks_of_rows(
            (shape.kv_heads, group),
            rows,
            ROWS_TOGETHER,
            |g, start, count| {
                let mut block = Vec::with_capacity(count * group);
                for q in queries[start * row..].chunks_exact(row).take(count) {
                    block.extend_from_slice(&q[g * group..][..group]);
                }
                let sees = first + start;
                let runs = self.runs(g, sees + count - 1, head_dim);
                let mut out = vec![0.0f32; count * group];
                attend_group(
                    kernel,
                    &block,
                    (shape.group(), head_dim),
                    sees,
                    &runs,
                    scale,
                    &mut out,
                );
                out
            },
        )
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
        let held = first + rows - 1;
        let (all_keys, all_values) = (
            self.keys_transposed(held, head_dim),
            self.values_widened(held, head_dim),
        );
        in_blocks_of_rows(
            (heads, head_dim),
            rows,
            PROMPT_ROWS,
            |head, start, count| {
                let seen = first + start + count - 1;
                let (keys, values) = (&all_keys[head / group], &all_values[head / group]);
                let q = MatRef::new(
                    &queries[start * row + head * head_dim..],
                    count,
                    head_dim,
                    row,
                    1,
                );
                let mut scores = vec![0.0f32; count * seen];
                let keys = MatRef::new(keys, head_dim, seen, held, 1);
                matmul(&mut scores, q, keys, scale, false, Threads::One);
                causal_softmax(&mut scores, (seen, seen), first + start, 1);
                let mut out = vec![0.0f32; count * head_dim];
                let scores = MatRef::row_major(&scores, count, seen);
                let values = MatRef::row_major(&values[..seen * head_dim], seen, head_dim);
                matmul(&mut out, scores, values, 1.0, false, Threads::One);
                out
            },
        )
    }
}

/// The attention of `rows` rows of `parts × width` values, computed by `task(part,
/// start, count)` for each part and block of up to `size` rows from `start` (its
/// `count × width` values), the tasks in parallel, each written to its columns.
fn in_blocks_of_rows(
    (parts, width): (usize, usize),
    rows: usize,
    size: usize,
    task: impl Fn(usize, usize, usize) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let tasks: Vec<(usize, usize)> = (0..parts)
        .flat_map(|part| (0..rows).step_by(size).map(move |start| (part, start)))
        .collect();
    let blocks: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(part, start)| task(part, start, size.min(rows - start)))
        .collect();
    let row = parts * width;
    let mut out = vec![0.0f32; rows * row];
    for (&(part, start), block) in tasks.iter().zip(&blocks) {
        for (to, from) in out[start * row..]
            .chunks_mut(row)
            .zip(block.chunks_exact(width))
        {
            to[part * width..][..width].copy_from_slice(from);
        }
    }
    out
}

/// Rows from which [`HostKv::attend_causal`] computes attention as GEMMs where the
/// CPU has no AVX-512: the plain kernels' sums go through memory, and with them
/// for prompts too Qwen's summariser took 53 s for 32 conversations on the Xeon
/// (plain build forced) against 45.4 s with the GEMMs.
const PROMPT_ROWS: usize = 32;

/// Rows of queries [`HostKv::attend_causal`] takes together: each block of keys is
/// widened once for their query heads (56 for Qwen 2.5), and their scores (some
/// 180 KiB at 800 tokens) stay in the core's second-level cache.
const ROWS_TOGETHER: usize = 8;

/// Softmax attention of consecutive rows' query heads that share one key/value
/// head, `queries` (`[rows, row_heads, head_dim]`), over the runs of that head's
/// keys and values in token order; the first row sees `sees` tokens, each next row
/// one more, and the last row every token of the runs. Written to `out` (shaped as
/// `queries`) by the build of the kernels its caller picked once for all its rows
/// and heads.
///
/// Every row is scored against every token; a row's scores past what it sees are
/// zeroed after its softmax, so they add nothing to its sums.
fn attend_group(
    kernel: Kernel,
    queries: &[f32],
    (row_heads, head_dim): (usize, usize),
    sees: usize,
    runs: &[Run<'_>],
    scale: f32,
    out: &mut [f32],
) {
    let tokens = runs.iter().map(|run| run.tokens).sum::<usize>();
    let count = queries.len() / head_dim;
    // Each query's scores take whole blocks; lanes past `tokens` are never read,
    // but for the one that pairs with an odd last token, which the softmax zeroes.
    let stride = whole_blocks(tokens);
    // Scores in the thread's scratch, not zeroed: the runs' scores write every lane
    // that the softmax and the weighing read.
    kura_simd::with_scratch(count * stride, |scores: &mut [f32]| {
        kernel.score(queries, runs, head_dim, scale, scores, stride);
        causal_softmax(scores, (stride, tokens), sees, row_heads);
        out.fill(0.0);
        kernel.weigh(scores, stride, runs, head_dim, out);
    });
}

/// Softmax of rows of scores (`stride` apart, `tokens` each) that causal attention
/// lets see a prefix: rows come `per_row` at a time (a token's query heads), the
/// first rows see `sees` tokens and each next token one more. What a row does not
/// see is zeroed, up to the end of the last pair of tokens where the row has room
/// for it, so that weighing every pair adds nothing for it.
fn causal_softmax(
    scores: &mut [f32],
    (stride, tokens): (usize, usize),
    sees: usize,
    per_row: usize,
) {
    let paired = tokens.next_multiple_of(2).min(stride);
    for (i, scores) in scores.chunks_exact_mut(stride).enumerate() {
        let seen = sees + i / per_row;
        let (visible, hidden) = scores[..paired].split_at_mut(seen);
        softmax_rows(visible, seen);
        hidden.fill(0.0);
    }
}

/// Which build of the attention kernels runs: `vdpbf16ps` on the pairs as they
/// are held, where it is faster than f32 FMAs; AVX-512 FMAs on the pairs widened as
/// they are loaded; or the plain one, which widens a block at a time into f32 first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Pairs,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Plain,
}

impl Kernel {
    /// The fastest build for heads of `head_dim` on this CPU.
    pub(crate) fn for_heads(head_dim: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if head_dim.is_multiple_of(avx512::LANES) && std::arch::is_x86_feature_detected!("avx512f")
        {
            return match kura_simd::bf16::pairs_faster_than_fma() {
                true => Kernel::Pairs,
                false => Kernel::Avx512,
            };
        }
        let _ = head_dim;
        Kernel::Plain
    }

    /// [`Kernel::for_heads`] with f32 products, never the pairs'.
    #[cfg(test)]
    pub(crate) fn in_f32(head_dim: usize) -> Self {
        match Self::for_heads(head_dim) {
            #[cfg(target_arch = "x86_64")]
            Kernel::Pairs => Kernel::Avx512,
            kernel => kernel,
        }
    }

    /// Whether the queries and the probabilities are rounded to bfloat16.
    #[cfg(test)]
    fn rounds_to_pairs(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Pairs {
            return true;
        }
        false
    }

    /// `scores[g * stride + t] = scale · queries[g] · key[t]` for every token `t` of
    /// the runs' blocks.
    fn score(
        self,
        queries: &[f32],
        runs: &[Run<'_>],
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        let group = queries.len() / head_dim;
        for run in runs {
            assert!(
                run.keys.len().is_multiple_of(KEY_BLOCK * head_dim)
                    && run.first + run.keys.len() / head_dim <= stride
                    && scores.len() >= group * stride,
                "a run's whole blocks of keys inside each query's scores"
            );
        }
        match self {
            // SAFETY (all three): `for_heads` chose these builds only where the CPU
            // has AVX-512F (and BF16 for pairs) and `head_dim` is whole registers;
            // the shapes are checked above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Pairs => kura_simd::with_scratch(queries.len() / 2, |pairs: &mut [u32]| {
                unsafe { avx512::round_to_pairs(queries, pairs) };
                for run in runs {
                    unsafe { avx512::score_dot(pairs, run, head_dim, scale, scores, stride) }
                }
            }),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                for run in runs {
                    unsafe { avx512::score_widened(queries, run, head_dim, scale, scores, stride) }
                }
            }
            Kernel::Plain => {
                for run in runs {
                    plain_score(queries, run, head_dim, scale, scores, stride)
                }
            }
        }
    }

    /// `out[g] += Σ_t scores[g * stride + t] · value[t]` over the runs' tokens.
    fn weigh(
        self,
        scores: &[f32],
        stride: usize,
        runs: &[Run<'_>],
        head_dim: usize,
        out: &mut [f32],
    ) {
        let group = out.len() / head_dim;
        for run in runs {
            assert!(
                run.first + run.tokens.next_multiple_of(2) <= stride
                    && run.values.len() == run.tokens.div_ceil(2) * 2 * head_dim
                    && scores.len() >= group * stride,
                "a run's pairs of values inside each query's scores"
            );
        }
        match self {
            // SAFETY: as for `score`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Pairs => {
                kura_simd::with_scratch(group * stride / 2, |weights: &mut [u32]| {
                    // Each query's weights in bfloat16, two tokens to a 32-bit lane.
                    unsafe { avx512::round_to_pairs(&scores[..group * stride], weights) };
                    for run in runs {
                        unsafe { avx512::weigh_dot(weights, stride, run, head_dim, out) }
                    }
                })
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                for run in runs {
                    unsafe { avx512::weigh_widened(scores, stride, run, head_dim, out) }
                }
            }
            Kernel::Plain => {
                for run in runs {
                    plain_weigh(scores, stride, run, head_dim, out)
                }
            }
        }
    }
}

/// `x` in f32: its bits moved up, as the AVX-512 kernels widen it. `bf16::to_f32`
/// also quiets a NaN, a branch per value that these loops have no use for.
#[inline(always)]
fn widened(x: bf16) -> f32 {
    f32::from_bits(u32::from(x.to_bits()) << 16)
}

/// A block of keys (see [`key_at`]) in f32, dimension-major (`[head_dim,
/// KEY_BLOCK]`).
fn widen_keys(block: &[bf16], wide: &mut [f32]) {
    let head_dim = block.len() / KEY_BLOCK;
    for (d, lanes) in wide.chunks_exact_mut(KEY_BLOCK).enumerate() {
        for (t, lane) in lanes.iter_mut().enumerate() {
            *lane = widened(block[key_at(t, d, head_dim)]);
        }
    }
}

/// Values held in pairs of tokens (see [`value_at`]), from a pair's first token, in
/// f32, token-major: as many tokens as `wide` holds rows of `head_dim`.
fn widen_values(values: &[bf16], head_dim: usize, wide: &mut [f32]) {
    for (t, row) in wide.chunks_exact_mut(head_dim).enumerate() {
        for (d, value) in row.iter_mut().enumerate() {
            *value = widened(values[value_at(t, d, head_dim)]);
        }
    }
}

/// [`Kernel::score`] on keys widened a block at a time.
fn plain_score(
    queries: &[f32],
    run: &Run<'_>,
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    let mut wide = vec![0f32; KEY_BLOCK * head_dim];
    for (b, block) in run.keys.chunks_exact(KEY_BLOCK * head_dim).enumerate() {
        widen_keys(block, &mut wide);
        score_block(
            queries,
            &wide,
            head_dim,
            scale,
            scores,
            stride,
            run.first + b * KEY_BLOCK,
        );
    }
}

multiversion! {
    /// The scores of one block of widened keys (`[head_dim, KEY_BLOCK]`), tokens
    /// `first..first + KEY_BLOCK`.
    fn score_block<M>(
        queries: &[f32],
        block: &[f32],
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
        first: usize,
    ) {
        for (q, scores) in queries.chunks_exact(head_dim).zip(scores.chunks_exact_mut(stride)) {
            let mut lanes = [0f32; KEY_BLOCK];
            for (&q, keys) in q.iter().zip(block.chunks_exact(KEY_BLOCK)) {
                for (lane, &key) in lanes.iter_mut().zip(keys) {
                    *lane = M::mul_add(q, key, *lane);
                }
            }
            for (score, lane) in scores[first..first + KEY_BLOCK].iter_mut().zip(lanes) {
                *score = lane * scale;
            }
        }
    }
}

/// Tokens of values widened to f32 at a time by [`plain_weigh`]: a few KiB that
/// stay in the first-level cache (whole pairs).
const WIDEN_TOKENS: usize = 32;

/// [`Kernel::weigh`] on values widened [`WIDEN_TOKENS`] at a time.
fn plain_weigh(scores: &[f32], stride: usize, run: &Run<'_>, head_dim: usize, out: &mut [f32]) {
    let mut wide = vec![0f32; WIDEN_TOKENS * head_dim];
    for start in (0..run.tokens).step_by(WIDEN_TOKENS) {
        let count = WIDEN_TOKENS.min(run.tokens - start);
        let wide = &mut wide[..count * head_dim];
        widen_values(&run.values[start * head_dim..], head_dim, wide);
        weigh_values(scores, wide, head_dim, out, stride, run.first + start);
    }
}

multiversion! {
    /// Adds the values of tokens `first..`, weighed by each query's scores, to `out`.
    fn weigh_values<M>(
        scores: &[f32],
        values: &[f32],
        head_dim: usize,
        out: &mut [f32],
        stride: usize,
        first: usize,
    ) {
        for (t, v) in (first..).zip(values.chunks_exact(head_dim)) {
            for (g, o) in out.chunks_exact_mut(head_dim).enumerate() {
                let weight = scores[g * stride + t];
                for (o, &v) in o.iter_mut().zip(v) {
                    *o = M::mul_add(weight, v, *o);
                }
            }
        }
    }
}

/// The attention kernels with AVX-512: every sum in registers, the bfloat16 pairs
/// of the cache multiplied as they are (`vdpbf16ps`, see `Dot`) or widened as they
/// are loaded (see `Widened`), by the same loops.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Run, KEY_BLOCK};

    /// f32 lanes of a register.
    pub(super) const LANES: usize = 16;
    /// How far ahead the kernels ask for the cache's next bytes: blocks of keys,
    /// pairs of tokens of values. The caches of a step's sequences are too large for
    /// any cache level, and without the hint the kernels waited on memory: the step's
    /// attention over 29 sequences of 832 tokens took 31.7 ms where the same work
    /// over one cache already in cache took 13.4; with it, 24 to 26 ms.
    const KEYS_AHEAD: usize = 4;
    const PAIRS_AHEAD: usize = 16;

    /// Query heads taken together: each holds one register of sums per lane block.
    const HEADS: usize = 8;

    /// How a build multiplies a register of the cache's pairs (16 lanes of two
    /// bfloat16: two dimensions of a token's key, or two tokens' values of a
    /// dimension) by one query head's pair of inputs (two values of its query, or two
    /// of its weights), adding both products to a register of f32 sums.
    pub(super) trait PairProduct: Copy {
        /// How the inputs are held, [`PairProduct::HELD`] to a pair.
        type Input;
        const HELD: usize;
        /// Inputs `2 · pair` and `2 · pair + 1` of `inputs`, ready to multiply.
        unsafe fn pair(inputs: *const Self::Input, pair: usize) -> Self;
        unsafe fn multiply_add(self, pairs: __m512i, sum: __m512) -> __m512;
    }

    /// `vdpbf16ps` on inputs rounded to bfloat16 pairs ([`round_to_pairs`]).
    #[derive(Clone, Copy)]
    pub(super) struct Dot(__m512bh);

    impl PairProduct for Dot {
        type Input = u32;
        const HELD: usize = 1;

        #[inline(always)]
        unsafe fn pair(inputs: *const u32, pair: usize) -> Self {
            Dot(as_bf16(_mm512_set1_epi32(*inputs.add(pair) as i32)))
        }

        #[inline(always)]
        unsafe fn multiply_add(self, pairs: __m512i, sum: __m512) -> __m512 {
            _mm512_dpbf16_ps(sum, as_bf16(pairs), self.0)
        }
    }

    /// The pairs widened to f32 (a shift, a mask), then an FMA for each of them,
    /// the first's before the second's: for f32 inputs, where `vdpbf16ps` is slower
    /// than FMAs (Intel's cores) or missing.
    #[derive(Clone, Copy)]
    pub(super) struct Widened([__m512; 2]);

    impl PairProduct for Widened {
        type Input = f32;
        const HELD: usize = 2;

        #[inline(always)]
        unsafe fn pair(inputs: *const f32, pair: usize) -> Self {
            let at = inputs.add(2 * pair);
            Widened([_mm512_set1_ps(*at), _mm512_set1_ps(*at.add(1))])
        }

        #[inline(always)]
        unsafe fn multiply_add(self, pairs: __m512i, sum: __m512) -> __m512 {
            let first = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(pairs));
            let second = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(-65536)));
            _mm512_fmadd_ps(self.0[1], second, _mm512_fmadd_ps(self.0[0], first, sum))
        }
    }

    /// The 32 bfloat16 in `v`'s bits, as `vdpbf16ps` takes them.
    #[inline(always)]
    fn as_bf16(v: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// `xs` rounded to bfloat16 (to nearest, ties to even), each two side by side in
    /// a 32-bit lane of `pairs` as `vdpbf16ps` multiplies them.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round_to_pairs(xs: &[f32], pairs: &mut [u32]) {
        assert!(
            xs.len().is_multiple_of(LANES) && pairs.len() == xs.len() / 2,
            "whole registers of values, two to a pair"
        );
        for (xs, pairs) in xs
            .chunks_exact(LANES)
            .zip(pairs.chunks_exact_mut(LANES / 2))
        {
            let rounded = _mm512_cvtneps_pbh(_mm512_loadu_ps(xs.as_ptr()));
            _mm256_storeu_si256(
                pairs.as_mut_ptr().cast(),
                std::mem::transmute::<__m256bh, __m256i>(rounded),
            );
        }
    }

    /// Calls `$kernel::<P, G>(..)` with `G` = `$heads`, the query heads of a chunk
    /// (1 to [`HEADS`]), so that each count keeps its sums in registers.
    macro_rules! with_heads {
        ($heads:expr, $kernel:ident::<$p:ty>($($arg:expr),*)) => {
            match $heads {
                1 => $kernel::<$p, 1>($($arg),*),
                2 => $kernel::<$p, 2>($($arg),*),
                3 => $kernel::<$p, 3>($($arg),*),
                4 => $kernel::<$p, 4>($($arg),*),
                5 => $kernel::<$p, 5>($($arg),*),
                6 => $kernel::<$p, 6>($($arg),*),
                7 => $kernel::<$p, 7>($($arg),*),
                8 => $kernel::<$p, 8>($($arg),*),
                _ => unreachable!("chunks of 1 to {HEADS} heads"),
            }
        };
    }

    /// [`Kernel::score`](super::Kernel::score) of one run with `vdpbf16ps`, for
    /// queries rounded to pairs.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `head_dim` is whole registers; the caller
    /// checked the shapes.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn score_dot(
        queries: &[u32],
        run: &Run<'_>,
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        score::<Dot>(queries, run, head_dim, scale, scores, stride)
    }

    /// [`score_dot`] for f32 queries, the keys widened.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; as for [`score_dot`] otherwise.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn score_widened(
        queries: &[f32],
        run: &Run<'_>,
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        score::<Widened>(queries, run, head_dim, scale, scores, stride)
    }

    #[inline(always)]
    unsafe fn score<P: PairProduct>(
        queries: &[P::Input],
        run: &Run<'_>,
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        let inputs = head_dim / 2 * P::HELD;
        for (chunk, queries) in queries.chunks(HEADS * inputs).enumerate() {
            let scores = &mut scores[chunk * HEADS * stride + run.first..];
            let heads = queries.len() / inputs;
            with_heads!(
                heads,
                score_heads::<P>(queries.as_ptr(), run.keys, head_dim, scale, scores, stride)
            );
        }
    }

    #[inline(always)]
    unsafe fn score_heads<P: PairProduct, const G: usize>(
        queries: *const P::Input,
        keys: &[half::bf16],
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        let pairs = head_dim / 2;
        let scale = _mm512_set1_ps(scale);
        for (b, block) in keys.chunks_exact(KEY_BLOCK * head_dim).enumerate() {
            let mut sums = [_mm512_setzero_ps(); G];
            let block = block.as_ptr() as *const __m512i;
            for p in 0..pairs {
                _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(p + KEYS_AHEAD * pairs) as *const i8);
                let keys = _mm512_loadu_si512(block.add(p));
                for (g, sum) in sums.iter_mut().enumerate() {
                    *sum = P::pair(queries, g * pairs + p).multiply_add(keys, *sum);
                }
            }
            for (g, sum) in sums.iter().enumerate() {
                let at = scores.as_mut_ptr().add(g * stride + b * KEY_BLOCK);
                _mm512_storeu_ps(at, _mm512_mul_ps(*sum, scale));
            }
        }
    }

    /// [`Kernel::weigh`](super::Kernel::weigh) of one run with `vdpbf16ps`, for
    /// weights rounded to pairs (`stride` weights a head).
    ///
    /// # Safety
    /// As for [`score_dot`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn weigh_dot(
        weights: &[u32],
        stride: usize,
        run: &Run<'_>,
        head_dim: usize,
        out: &mut [f32],
    ) {
        weigh::<Dot>(weights, stride, run, head_dim, out)
    }

    /// [`weigh_dot`] for f32 weights, the values widened.
    ///
    /// # Safety
    /// As for [`score_widened`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weigh_widened(
        weights: &[f32],
        stride: usize,
        run: &Run<'_>,
        head_dim: usize,
        out: &mut [f32],
    ) {
        weigh::<Widened>(weights, stride, run, head_dim, out)
    }

    #[inline(always)]
    unsafe fn weigh<P: PairProduct>(
        weights: &[P::Input],
        stride: usize,
        run: &Run<'_>,
        head_dim: usize,
        out: &mut [f32],
    ) {
        // A head's weights and the run's first, in pairs.
        let (stride, first) = (stride / 2, run.first / 2);
        let inputs = stride * P::HELD;
        for (chunk, out) in out.chunks_mut(HEADS * head_dim).enumerate() {
            let weights = &weights[chunk * HEADS * inputs..];
            let heads = out.len() / head_dim;
            with_heads!(
                heads,
                weigh_heads::<P>(weights.as_ptr(), stride, first, run, head_dim, out)
            );
        }
    }

    /// Query heads for which the weighing takes four registers of dimensions at a
    /// time: `G × 4` sums, the four registers of values and a broadcast weight fit
    /// in the 32 registers up to six heads.
    const WIDE_HEADS: usize = 6;

    /// Each span of dimensions in one pass over the pairs of tokens: four registers
    /// at a time for up to [`WIDE_HEADS`] heads (a step of SmolLM2 has three), else
    /// two, and one where `head_dim` is odd in registers. With four, a head of 64
    /// dimensions is one pass over the values, reading each pair's 256 bytes in
    /// order and broadcasting each weight once. Each sum still adds the tokens in
    /// order: the same bits whatever the span.
    #[inline(always)]
    unsafe fn weigh_heads<P: PairProduct, const G: usize>(
        weights: *const P::Input,
        stride: usize,
        first: usize,
        run: &Run<'_>,
        head_dim: usize,
        out: &mut [f32],
    ) {
        let mut d = 0;
        while d < head_dim {
            d += if G <= WIDE_HEADS && d + 4 * LANES <= head_dim {
                weigh_span::<P, G, 4>(weights, stride, first, run, head_dim, out, d)
            } else if d + 2 * LANES <= head_dim {
                weigh_span::<P, G, 2>(weights, stride, first, run, head_dim, out, d)
            } else {
                weigh_span::<P, G, 1>(weights, stride, first, run, head_dim, out, d)
            };
        }
    }

    /// `W` registers of dimensions from `d`, for `G` heads: the `G × W` sums and the
    /// `W` registers of values stay in registers over every pair of tokens. Returns
    /// the dimensions done.
    #[inline(always)]
    unsafe fn weigh_span<P: PairProduct, const G: usize, const W: usize>(
        weights: *const P::Input,
        stride: usize,
        first: usize,
        run: &Run<'_>,
        head_dim: usize,
        out: &mut [f32],
        d: usize,
    ) -> usize {
        let v = run.values.as_ptr() as *const __m512i;
        // A pair of tokens' values fill `head_dim / 16` registers.
        let registers = head_dim / LANES;
        let column = d / LANES;
        let mut sums = [[_mm512_setzero_ps(); W]; G];
        for (g, sums) in sums.iter_mut().enumerate() {
            let at = out.as_ptr().add(g * head_dim + d);
            for (w, sum) in sums.iter_mut().enumerate() {
                *sum = _mm512_loadu_ps(at.add(w * LANES));
            }
        }
        for pair in 0..run.tokens.div_ceil(2) {
            for w in (0..W).step_by(2) {
                _mm_prefetch::<_MM_HINT_T0>(
                    v.wrapping_add((pair + PAIRS_AHEAD) * registers + column + w) as *const i8,
                );
            }
            let mut row = [_mm512_setzero_si512(); W];
            for (w, row) in row.iter_mut().enumerate() {
                *row = _mm512_loadu_si512(v.add(pair * registers + column + w));
            }
            for (g, sums) in sums.iter_mut().enumerate() {
                let weight = P::pair(weights, g * stride + first + pair);
                for (sum, &row) in sums.iter_mut().zip(&row) {
                    *sum = weight.multiply_add(row, *sum);
                }
            }
        }
        for (g, sums) in sums.iter().enumerate() {
            let at = out.as_mut_ptr().add(g * head_dim + d);
            for (w, sum) in sums.iter().enumerate() {
                _mm512_storeu_ps(at.add(w * LANES), *sum);
            }
        }
        W * LANES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention as written in the paper, each query head against its group's keys,
    /// with the queries and the probabilities rounded as `kernel` rounds them.
    fn naive(
        kernel: Kernel,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        shape: Heads,
        scale: f32,
    ) -> Vec<f32> {
        let rounded = |x: f32| match kernel.rounds_to_pairs() {
            true => bf16::from_f32(x).to_f32(),
            false => x,
        };
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
                        .map(|i| rounded(q[h * head_dim + i]) * at(keys, t, i))
                        .sum::<f32>()
                        * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f32 = e.iter().sum();
            for i in 0..head_dim {
                out.push(
                    (0..tokens)
                        .map(|t| rounded(e[t] / total) * at(values, t, i))
                        .sum(),
                );
            }
        }
        out
    }

    /// Every build of the kernels this CPU runs.
    fn builds() -> Vec<Kernel> {
        let mut builds = vec![Kernel::Plain];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            builds.push(Kernel::Avx512);
            if std::arch::is_x86_feature_detected!("avx512bf16") {
                builds.push(Kernel::Pairs);
            } else {
                eprintln!("this CPU has no AVX-512 BF16: the pairs' build is not checked");
            }
        } else {
            eprintln!("this CPU has no AVX-512: only the plain build is checked");
        }
        builds
    }

    /// Qwen 2.5 0.5B's heads: 14 query heads sharing 2 key/value heads of 64.
    const QWEN: Heads = Heads {
        heads: 14,
        kv_heads: 2,
        head_dim: 64,
    };

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
        let kernel = Kernel::for_heads(shape.head_dim);
        let got = kv.attend_one(kernel, &query, shape, 0.3);
        let want = naive(
            kernel,
            &query,
            &as_held(&keys),
            &as_held(&values),
            shape,
            0.3,
        );
        assert_close(kernel, &got, &want);
        // The clone taken before the last append still holds eight tokens.
        assert_eq!(shared.len(), 8);
        assert_eq!(kv.len(), 9);
    }

    /// Rows fed together see only the tokens up to their own, whether they fit in
    /// one block of rows taken together (a step) or span several (a prompt), and
    /// through the GEMMs that read prompts where the CPU has no AVX-512.
    #[test]
    fn rows_fed_together_attend_causally() {
        let shape = QWEN;
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
            // The plain build reads 32 rows or more as GEMMs (as CPUs without
            // AVX-512 read prompts).
            for kernel in builds() {
                let got = &kv.attend_causal(kernel, held_before + 1, &queries, shape, 0.125);
                assert_eq!(got.len(), queries.len());
                for (j, (got, query)) in got
                    .chunks_exact(row)
                    .zip(queries.chunks_exact(row))
                    .enumerate()
                {
                    let seen = (held_before + j + 1) * kv_row;
                    let want = naive(
                        kernel,
                        query,
                        &held_keys[..seen],
                        &held_values[..seen],
                        shape,
                        0.125,
                    );
                    assert_close(kernel, got, &want);
                }
            }
        }
    }

    /// Rows taken together attend to the bits each row gets fed alone after the
    /// rows before it: what a row does not see adds exact zeros, and a query's sums
    /// do not depend on the queries beside it. Twenty rows span blocks of
    /// [`ROWS_TOGETHER`] and stay below [`PROMPT_ROWS`], so every build runs them
    /// through the kernels; the cache has a frozen prefix, as the summariser's do.
    #[test]
    fn rows_together_are_the_bits_of_each_row_alone() {
        let shape = QWEN;
        let (row, kv_row) = (shape.query_width(), shape.kv_width());
        let (held_before, rows) = (37, 20);
        let total = held_before + rows;
        let (keys, values) = (numbers(kv_row * total, 11), numbers(kv_row * total, 12));
        let queries = numbers(row * rows, 13);
        let mut kv = HostKv::default();
        let before = kv_row * held_before;
        kv.append(shape, &keys[..before], &values[..before]);
        kv.freeze(shape.head_dim);
        kv.append(shape, &keys[before..], &values[before..]);
        for kernel in builds() {
            let together = kv.attend_causal(kernel, held_before + 1, &queries, shape, 0.125);
            for (j, (got, query)) in together
                .chunks_exact(row)
                .zip(queries.chunks_exact(row))
                .enumerate()
            {
                let mut alone = kv.clone();
                alone.truncate(held_before + j + 1, shape);
                assert_eq!(
                    got,
                    alone.attend_one(kernel, query, shape, 0.125),
                    "{kernel:?}, row {j}"
                );
            }
        }
    }

    /// Every build of the kernels against the definition, for every number of query
    /// heads a chunk of them can hold (and more), one row and several (each seeing
    /// one token more), head widths of one and of several registers (spans of
    /// four, two and one register of values), and contexts that end inside a block
    /// of keys.
    #[test]
    fn each_build_of_the_kernels_attends_as_the_definition() {
        let builds = builds();
        for (group, head_dim, tokens, rows) in [
            (1, 16, 1, 1),
            (3, 64, 17, 1),
            (7, 64, 40, 1),
            (7, 64, 40, 5),
            (8, 48, 16, 1),
            (4, 48, 18, 1),
            (5, 80, 21, 1),
            (2, 48, 33, 16),
            (11, 128, 33, 2),
        ] {
            let shape = Heads {
                heads: group,
                kv_heads: 1,
                head_dim,
            };
            let (keys, values) = (numbers(head_dim * tokens, 7), numbers(head_dim * tokens, 8));
            let (held_keys, held_values) = (as_held(&keys), as_held(&values));
            let mut kv = HostKv::default();
            kv.append(shape, &keys, &values);
            let mut frozen = kv.clone();
            // Its whole blocks one run, the tokens past them another.
            frozen.freeze(head_dim);
            // The last `rows` tokens' queries: row `j` sees `tokens - rows + 1 + j`.
            let queries = numbers(rows * group * head_dim, 9);
            let sees = tokens - rows + 1;
            for &build in &builds {
                for kv in [&kv, &frozen] {
                    // Stale values in `out`: the runs are added to it after it is cleared.
                    let mut got = vec![1f32; queries.len()];
                    let runs = kv.runs(0, tokens, head_dim);
                    attend_group(
                        build,
                        &queries,
                        (group, head_dim),
                        sees,
                        &runs,
                        0.2,
                        &mut got,
                    );
                    let each = got
                        .chunks_exact(group * head_dim)
                        .zip(queries.chunks_exact(group * head_dim));
                    for (j, (got, query)) in each.enumerate() {
                        let seen = (sees + j) * head_dim;
                        let want = naive(
                            build,
                            query,
                            &held_keys[..seen],
                            &held_values[..seen],
                            shape,
                            0.2,
                        );
                        for (g, w) in got.iter().zip(&want) {
                            assert!(
                                (g - w).abs() < tolerance(build),
                                "{build:?}, {group} heads of {head_dim}, row {j} of {rows}, {} frozen: {g} vs {w}",
                                kv.frozen_tokens
                            );
                        }
                    }
                }
            }
        }
    }

    /// A frozen prefix continued by two clones: each attends, on both paths, as a
    /// cache that was never frozen; the clones share the frozen blocks rather than
    /// copy them; and cutting back into the frozen part and continuing is exact too.
    #[test]
    fn clones_of_a_frozen_prefix_share_it_and_attend_as_unfrozen_caches() {
        for kernel in builds() {
            let shape = QWEN;
            let (row, kv_row) = (shape.query_width(), shape.kv_width());
            let (prefix, added) = (37, 40);
            let total = prefix + added;
            let (keys, values) = (numbers(kv_row * total, 10), numbers(kv_row * total, 11));
            let split = |kv: &mut HostKv, from: usize, to: usize| {
                kv.append(
                    shape,
                    &keys[kv_row * from..kv_row * to],
                    &values[kv_row * from..kv_row * to],
                )
            };
            let mut plain = HostKv::default();
            split(&mut plain, 0, total);
            let mut shared = HostKv::default();
            split(&mut shared, 0, prefix);
            shared.freeze(shape.head_dim);
            assert_eq!(shared.frozen_tokens, 32, "the whole blocks of 37 tokens");
            assert_eq!(shared.len(), prefix);
            let (mut first, mut second) = (shared.clone(), shared.clone());
            // One clone continues a few tokens at a time, the other in one prompt.
            split(&mut first, prefix, prefix + 3);
            split(&mut first, prefix + 3, total);
            split(&mut second, prefix, total);
            assert!(Arc::ptr_eq(&first.frozen, &second.frozen));
            assert!(Arc::ptr_eq(&first.frozen, &shared.frozen));
            assert!(!Arc::ptr_eq(&first.own, &shared.own));
            let queries = numbers(row * added, 12);
            let want = plain.attend_causal(kernel, prefix + 1, &queries, shape, 0.125);
            for kv in [&first, &second] {
                assert_eq!(kv.len(), total);
                assert_eq!(
                    kv.attend_causal(kernel, prefix + 1, &queries, shape, 0.125),
                    want
                );
                let last = &queries[row * (added - 1)..];
                assert_eq!(
                    kv.attend_one(kernel, last, shape, 0.125),
                    plain.attend_one(kernel, last, shape, 0.125)
                );
                assert_eq!(
                    kv.head_major(shape.head_dim),
                    plain.head_major(shape.head_dim)
                );
            }
            // Back to 20 tokens, inside the frozen blocks, and on again.
            for kv in [&mut first, &mut plain] {
                kv.truncate(20, shape);
                split(kv, 20, total);
            }
            assert_eq!(first.frozen_tokens, 0);
            assert_eq!(
                first.attend_causal(kernel, prefix + 1, &queries, shape, 0.125),
                plain.attend_causal(kernel, prefix + 1, &queries, shape, 0.125)
            );
            // The other clone still reads the frozen blocks.
            assert_eq!(
                second.attend_causal(kernel, prefix + 1, &queries, shape, 0.125),
                want
            );
        }
    }

    /// The values as the cache holds them: rounded to bfloat16.
    fn as_held(xs: &[f32]) -> Vec<f32> {
        xs.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
    }

    /// How far a kernel's output may be from [`naive`]'s: sums in another order,
    /// and where it rounds probabilities, one of them rounded the other way (its
    /// `exp` is not the standard library's) moves an output by up to 2⁻⁹ of it.
    fn tolerance(kernel: Kernel) -> f32 {
        match kernel.rounds_to_pairs() {
            true => 1e-3,
            false => 1e-5,
        }
    }

    fn assert_close(kernel: Kernel, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < tolerance(kernel), "{kernel:?}: {g} vs {w}");
        }
    }
}
