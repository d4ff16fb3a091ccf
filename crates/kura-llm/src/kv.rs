//! Keys and values on the CPU as plain host memory, and the causal attention of new
//! tokens computed straight from them: with AVX-512 by the same kernels for a
//! decoding step's few tokens and a prompt's many, elsewhere as GEMMs for a prompt.
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
use kura_simd::{matmul, multiversion, softmax_rows, MatRef, Threads};
use rayon::prelude::*;

/// One layer's keys and values. Cloning shares the buffers; the first append to a
/// shared buffer copies it. A prompt prefix that many sessions continue is frozen
/// first (see [`HostKv::freeze`]): its whole blocks are then held once, read by every
/// session, and only the few tokens past them are copied.
///
/// Keys are held in blocks of [`KEY_BLOCK`] tokens, each block dimension-major
/// (`[head_dim, KEY_BLOCK]`), so that a decoding step scores a block's tokens with
/// one vector FMA per dimension and query head, each lane a token: no horizontal sum
/// per token, which is what bound the step's attention when keys were token-major.
/// Values stay token-major (`[tokens, head_dim]`): weighing them is already one
/// FMA per dimension and query head, each lane a dimension.
///
/// Held in half precision, as llama.cpp holds them by default: at the summariser's
/// contexts (1,000+ tokens, many conversations in flight) the caches were the larger
/// part of its memory. Half precision took the peak of a Qwen summariser run from
/// 1737 to 1432 MiB and of SmolLM2's from 1461 to 1012.
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
    keys: Vec<Vec<f16>>,
    /// Per key/value head: `[tokens, head_dim]`.
    values: Vec<Vec<f16>>,
}

/// How many of a head's key and value buffers' values hold `tokens` tokens.
fn head_lengths(tokens: usize, head_dim: usize) -> (usize, usize) {
    (key_values(tokens, head_dim), tokens * head_dim)
}

impl Held {
    /// Head `head`'s first `count` tokens, which are tokens `first..` of the cache.
    fn run(&self, head: usize, first: usize, count: usize, head_dim: usize) -> Run<'_> {
        if count == 0 {
            return Run {
                first,
                keys: &[],
                values: &[],
            };
        }
        let (keys, values) = head_lengths(count, head_dim);
        Run {
            first,
            keys: &self.keys[head][..keys],
            values: &self.values[head][..values],
        }
    }

    /// The first `tokens` tokens of each head, copied.
    fn first(&self, tokens: usize, head_dim: usize) -> Held {
        let (keys, values) = head_lengths(tokens, head_dim);
        let cut = |heads: &[Vec<f16>], len: usize| -> Vec<Vec<f16>> {
            heads.iter().map(|h| h[..len].to_vec()).collect()
        };
        Held {
            keys: cut(&self.keys, keys),
            values: cut(&self.values, values),
        }
    }

    /// Keeps the first `tokens` tokens of each head, in place.
    fn truncate(&mut self, tokens: usize, head_dim: usize) {
        let (keys, values) = head_lengths(tokens, head_dim);
        self.keys.iter_mut().for_each(|head| head.truncate(keys));
        self.values
            .iter_mut()
            .for_each(|head| head.truncate(values));
    }
}

/// The keys and values of one head over a run of tokens from token `first` (a
/// block boundary), as the kernels read them.
struct Run<'a> {
    first: usize,
    keys: &'a [f16],
    values: &'a [f16],
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
fn grow_to(head: &mut Vec<f16>, len: usize, step: usize) {
    if head.capacity() < len {
        head.reserve_exact((len - head.len()).max(step));
    }
    head.resize(len, f16::ZERO);
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
        let own = Arc::make_mut(&mut self.own);
        own.keys.resize_with(kv_heads, Vec::new);
        let mut row = vec![f16::ZERO; head_dim];
        for (h, head) in own.keys.iter_mut().enumerate() {
            grow_to(head, key_values(total, head_dim), step);
            for (t, keys) in (held..).zip(keys.chunks_exact(shape.kv_width())) {
                row.convert_from_f32_slice(&keys[h * head_dim..][..head_dim]);
                let block = &mut head[t / KEY_BLOCK * KEY_BLOCK * head_dim..];
                for (d, &key) in row.iter().enumerate() {
                    block[d * KEY_BLOCK + t % KEY_BLOCK] = key;
                }
            }
        }
        own.values.resize_with(kv_heads, Vec::new);
        for (h, head) in own.values.iter_mut().enumerate() {
            let start = head.len();
            grow_to(head, total * head_dim, step);
            for (to, values) in head[start..]
                .chunks_exact_mut(head_dim)
                .zip(values.chunks_exact(shape.kv_width()))
            {
                to.convert_from_f32_slice(&values[h * head_dim..][..head_dim]);
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
                let mut lanes = [0f32; KEY_BLOCK];
                for run in self.runs(head, tokens, head_dim) {
                    for (b, block) in run.keys.chunks_exact(KEY_BLOCK * head_dim).enumerate() {
                        let first = run.first + b * KEY_BLOCK;
                        let count = KEY_BLOCK.min(tokens - first);
                        for (d, keys) in block.chunks_exact(KEY_BLOCK).enumerate() {
                            keys.convert_to_f32_slice(&mut lanes);
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
                    run.values
                        .convert_to_f32_slice(&mut wide[at..at + run.values.len()]);
                }
                wide
            })
            .collect()
    }

    /// The attention output of one query token over every token held,
    /// `[heads, head_dim]`, for `query` given as `[heads, head_dim]`.
    pub(crate) fn attend_one(&self, query: &[f32], shape: Heads, scale: f32) -> Vec<f32> {
        self.attend_causal(self.len(), query, shape, scale)
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
        first: usize,
        queries: &[f32],
        shape: Heads,
        scale: f32,
    ) -> Vec<f32> {
        let (row, head_dim) = (shape.query_width(), shape.head_dim);
        // A group's queries, side by side in a row.
        let group = shape.group() * head_dim;
        let rows = queries.len() / row;
        let kernel = Kernel::for_heads(head_dim);
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
/// keys (whole blocks) and values (`[tokens, head_dim]`) in token order; the first
/// row sees `sees` tokens, each next row one more, and the last row every token of
/// the runs. Written to `out` (shaped as `queries`) by the build of the kernels its
/// caller picked once for all its rows and heads.
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
    let tokens = runs.iter().map(|run| run.values.len()).sum::<usize>() / head_dim;
    let count = queries.len() / head_dim;
    // Each query's scores take whole blocks; lanes past `tokens` are never read.
    let stride = whole_blocks(tokens);
    // Scores in the thread's scratch, not zeroed: the runs' scores write every lane
    // that the softmax and the weighing read.
    kura_simd::with_scratch(count * stride, |scores: &mut [f32]| {
        for run in runs {
            kernel.score(queries, run, head_dim, scale, scores, stride);
        }
        causal_softmax(scores, (stride, tokens), sees, row_heads);
        out.fill(0.0);
        for run in runs {
            kernel.weigh(scores, stride, run, head_dim, out);
        }
    });
}

/// Softmax of rows of scores (`stride` apart, `tokens` each) that causal attention
/// lets see a prefix: rows come `per_row` at a time (a token's query heads), the
/// first rows see `sees` tokens and each next token one more. What a row does not
/// see is zeroed, so that weighing every token adds nothing for it.
fn causal_softmax(
    scores: &mut [f32],
    (stride, tokens): (usize, usize),
    sees: usize,
    per_row: usize,
) {
    for (i, scores) in scores.chunks_exact_mut(stride).enumerate() {
        let seen = sees + i / per_row;
        let (visible, hidden) = scores[..tokens].split_at_mut(seen);
        softmax_rows(visible, seen);
        hidden.fill(0.0);
    }
}

/// Which build of the attention kernels runs: AVX-512 reads the half-precision
/// cache in place (`vcvtph2ps` widens a load), the plain one widens a block at a
/// time into f32 first.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Plain,
}

impl Kernel {
    fn for_heads(head_dim: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if head_dim.is_multiple_of(avx512::LANES) && std::arch::is_x86_feature_detected!("avx512f")
        {
            return Kernel::Avx512;
        }
        let _ = head_dim;
        Kernel::Plain
    }

    /// `scores[g * stride + t] = scale · queries[g] · key[t]` for every token `t` of
    /// the blocks of `run`.
    fn score(
        self,
        queries: &[f32],
        run: &Run<'_>,
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        let (keys, first) = (run.keys, run.first);
        let group = queries.len() / head_dim;
        assert!(
            keys.len().is_multiple_of(KEY_BLOCK * head_dim)
                && first + keys.len() / head_dim <= stride
                && scores.len() >= group * stride,
            "a run's whole blocks of keys inside each query's scores"
        );
        match self {
            // SAFETY: `for_heads` chose this build only where the CPU has AVX-512F and
            // `head_dim` is whole registers; the shapes are checked above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                avx512::score(queries, keys, head_dim, scale, scores, stride, first)
            },
            Kernel::Plain => plain_score(queries, keys, head_dim, scale, scores, stride, first),
        }
    }

    /// `out[g] += Σ_t scores[g * stride + t] · value[t]` over the tokens of `run`.
    fn weigh(self, scores: &[f32], stride: usize, run: &Run<'_>, head_dim: usize, out: &mut [f32]) {
        let (values, first) = (run.values, run.first);
        let group = out.len() / head_dim;
        assert!(
            first + values.len() / head_dim <= stride && scores.len() >= group * stride,
            "a run's values inside each query's scores"
        );
        match self {
            // SAFETY: as for `score`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                avx512::weigh(scores, stride, values, head_dim, out, first)
            },
            Kernel::Plain => plain_weigh(scores, stride, values, head_dim, out, first),
        }
    }
}

/// [`Kernel::score`] on keys widened a block at a time.
fn plain_score(
    queries: &[f32],
    keys: &[f16],
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
    first: usize,
) {
    let mut wide = vec![0f32; KEY_BLOCK * head_dim];
    for (b, block) in keys.chunks_exact(KEY_BLOCK * head_dim).enumerate() {
        block.convert_to_f32_slice(&mut wide);
        score_block(
            queries,
            &wide,
            head_dim,
            scale,
            scores,
            stride,
            first + b * KEY_BLOCK,
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
/// stay in the first-level cache.
const WIDEN_TOKENS: usize = 32;

/// [`Kernel::weigh`] on values widened [`WIDEN_TOKENS`] at a time.
fn plain_weigh(
    scores: &[f32],
    stride: usize,
    values: &[f16],
    head_dim: usize,
    out: &mut [f32],
    first: usize,
) {
    let mut wide = vec![0f32; WIDEN_TOKENS * head_dim];
    for (c, values) in values.chunks(WIDEN_TOKENS * head_dim).enumerate() {
        let wide = &mut wide[..values.len()];
        values.convert_to_f32_slice(wide);
        weigh_values(
            scores,
            wide,
            head_dim,
            out,
            stride,
            first + c * WIDEN_TOKENS,
        );
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

/// The attention kernels with AVX-512: every sum in registers, the half-precision
/// cache widened as it is loaded.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::KEY_BLOCK;

    /// f32 lanes of a register.
    pub(super) const LANES: usize = 16;
    /// How far ahead the kernels ask for the cache's next bytes: blocks of keys,
    /// tokens of values. The caches of a step's sequences are too large for any
    /// cache level, and without the hint the kernels waited on memory: the step's
    /// attention over 29 sequences of 832 tokens took 31.7 ms where the same work
    /// over one cache already in cache took 13.4; with it, 24 to 26 ms.
    const KEYS_AHEAD: usize = 4;
    const VALUES_AHEAD: usize = 32;

    /// Query heads taken together: each holds one register of sums per lane block.
    const HEADS: usize = 8;

    /// Calls `$kernel::<G>(..)` with `G` = `$heads`, the query heads of a chunk (1
    /// to [`HEADS`]), so that each count keeps its sums in registers.
    macro_rules! with_heads {
        ($heads:expr, $kernel:ident($($arg:expr),*)) => {
            match $heads {
                1 => $kernel::<1>($($arg),*),
                2 => $kernel::<2>($($arg),*),
                3 => $kernel::<3>($($arg),*),
                4 => $kernel::<4>($($arg),*),
                5 => $kernel::<5>($($arg),*),
                6 => $kernel::<6>($($arg),*),
                7 => $kernel::<7>($($arg),*),
                8 => $kernel::<8>($($arg),*),
                _ => unreachable!("chunks of 1 to {HEADS} heads"),
            }
        };
    }

    /// [`Kernel::score`](super::Kernel::score), which checked the shapes;
    /// `head_dim` is whole registers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn score(
        queries: &[f32],
        keys: &[f16],
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
        first: usize,
    ) {
        for (chunk, queries) in queries.chunks(HEADS * head_dim).enumerate() {
            let scores = &mut scores[chunk * HEADS * stride + first..];
            let heads = queries.len() / head_dim;
            with_heads!(
                heads,
                score_heads(queries, keys, head_dim, scale, scores, stride)
            );
        }
    }

    #[inline(always)]
    unsafe fn score_heads<const G: usize>(
        queries: &[f32],
        keys: &[f16],
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        let scale = _mm512_set1_ps(scale);
        let q = queries.as_ptr();
        for (b, block) in keys.chunks_exact(KEY_BLOCK * head_dim).enumerate() {
            let mut sums = [_mm512_setzero_ps(); G];
            let block = block.as_ptr() as *const __m256i;
            for d in 0..head_dim {
                _mm_prefetch::<_MM_HINT_T0>(
                    block.wrapping_add(d + KEYS_AHEAD * head_dim) as *const i8
                );
                let keys = _mm512_cvtph_ps(_mm256_loadu_si256(block.add(d)));
                for (g, sum) in sums.iter_mut().enumerate() {
                    let query = _mm512_set1_ps(*q.add(g * head_dim + d));
                    *sum = _mm512_fmadd_ps(query, keys, *sum);
                }
            }
            for (g, sum) in sums.iter().enumerate() {
                let at = scores.as_mut_ptr().add(g * stride + b * KEY_BLOCK);
                _mm512_storeu_ps(at, _mm512_mul_ps(*sum, scale));
            }
        }
    }

    /// [`Kernel::weigh`](super::Kernel::weigh), which checked the shapes;
    /// `head_dim` is whole registers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weigh(
        scores: &[f32],
        stride: usize,
        values: &[f16],
        head_dim: usize,
        out: &mut [f32],
        first: usize,
    ) {
        for (chunk, out) in out.chunks_mut(HEADS * head_dim).enumerate() {
            let scores = &scores[chunk * HEADS * stride + first..];
            let heads = out.len() / head_dim;
            with_heads!(heads, weigh_heads(scores, stride, values, head_dim, out));
        }
    }

    /// Query heads for which [`weigh_heads`] takes four registers of dimensions at a
    /// time: `G × 4` sums, the four registers of values and a broadcast weight fit
    /// in the 32 registers up to six heads.
    const WIDE_HEADS: usize = 6;

    /// Each span of dimensions in one pass over the tokens: four registers at a time
    /// for up to [`WIDE_HEADS`] heads (a step of SmolLM2 has three), else two, and
    /// one where `head_dim` is odd in registers. With four, a head of 64 dimensions
    /// is one pass over the values, reading each token's 128 bytes in order and
    /// broadcasting each weight once, where two spans read every other cache line
    /// twice over. Each sum still adds the tokens in order: the same bits either way.
    #[inline(always)]
    unsafe fn weigh_heads<const G: usize>(
        scores: &[f32],
        stride: usize,
        values: &[f16],
        head_dim: usize,
        out: &mut [f32],
    ) {
        let mut d = 0;
        while d < head_dim {
            d += if G <= WIDE_HEADS && d + 4 * LANES <= head_dim {
                weigh_span::<G, 4>(scores, stride, values, head_dim, out, d)
            } else if d + 2 * LANES <= head_dim {
                weigh_span::<G, 2>(scores, stride, values, head_dim, out, d)
            } else {
                weigh_span::<G, 1>(scores, stride, values, head_dim, out, d)
            };
        }
    }

    /// `W` registers of dimensions from `d`, for `G` heads: the `G × W` sums and the
    /// `W` registers of values stay in registers over every token. Returns the
    /// dimensions done.
    #[inline(always)]
    unsafe fn weigh_span<const G: usize, const W: usize>(
        scores: &[f32],
        stride: usize,
        values: &[f16],
        head_dim: usize,
        out: &mut [f32],
        d: usize,
    ) -> usize {
        let tokens = values.len() / head_dim;
        let v = values.as_ptr();
        let s = scores.as_ptr();
        let mut sums = [[_mm512_setzero_ps(); W]; G];
        for (g, sums) in sums.iter_mut().enumerate() {
            let at = out.as_ptr().add(g * head_dim + d);
            for (w, sum) in sums.iter_mut().enumerate() {
                *sum = _mm512_loadu_ps(at.add(w * LANES));
            }
        }
        for t in 0..tokens {
            // A register of half-precision values is half a cache line.
            for line in (0..W).step_by(2) {
                _mm_prefetch::<_MM_HINT_T0>(
                    v.wrapping_add((t + VALUES_AHEAD) * head_dim + d + line * LANES) as *const i8,
                );
            }
            let at = v.add(t * head_dim + d) as *const __m256i;
            let mut row = [_mm512_setzero_ps(); W];
            for (w, row) in row.iter_mut().enumerate() {
                *row = _mm512_cvtph_ps(_mm256_loadu_si256(at.add(w)));
            }
            for (g, sums) in sums.iter_mut().enumerate() {
                let weight = _mm512_set1_ps(*s.add(g * stride + t));
                for (sum, &row) in sums.iter_mut().zip(&row) {
                    *sum = _mm512_fmadd_ps(weight, row, *sum);
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
        let got = kv.attend_one(&query, shape, 0.3);
        let want = naive(&query, &as_held(&keys), &as_held(&values), shape, 0.3);
        assert_close(&got, &want);
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
            let mut paths = vec![kv.attend_causal(held_before + 1, &queries, shape, 0.125)];
            if rows >= PROMPT_ROWS {
                // The GEMMs that CPUs without AVX-512 read prompts with.
                paths.push(kv.attend_prompt(held_before + 1, &queries, shape, 0.125));
            }
            for got in &paths {
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
        let together = kv.attend_causal(held_before + 1, &queries, shape, 0.125);
        for (j, (got, query)) in together
            .chunks_exact(row)
            .zip(queries.chunks_exact(row))
            .enumerate()
        {
            let mut alone = kv.clone();
            alone.truncate(held_before + j + 1, shape);
            assert_eq!(got, alone.attend_one(query, shape, 0.125), "row {j}");
        }
    }

    /// Both builds of the kernels against the definition, for every number of query
    /// heads a chunk of them can hold (and more), one row and several (each seeing
    /// one token more), head widths of one and of several registers (spans of
    /// four, two and one register of values), and contexts that end inside a block
    /// of keys.
    #[test]
    fn each_build_of_the_kernels_attends_as_the_definition() {
        let mut builds = vec![Kernel::Plain];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            builds.push(Kernel::Avx512);
        } else {
            eprintln!("this CPU has no AVX-512: only the plain build is checked");
        }
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
                        let want =
                            naive(query, &held_keys[..seen], &held_values[..seen], shape, 0.2);
                        for (g, w) in got.iter().zip(&want) {
                            assert!(
                                (g - w).abs() < 1e-5,
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
        let want = plain.attend_causal(prefix + 1, &queries, shape, 0.125);
        for kv in [&first, &second] {
            assert_eq!(kv.len(), total);
            assert_eq!(kv.attend_causal(prefix + 1, &queries, shape, 0.125), want);
            let last = &queries[row * (added - 1)..];
            assert_eq!(
                kv.attend_one(last, shape, 0.125),
                plain.attend_one(last, shape, 0.125)
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
            first.attend_causal(prefix + 1, &queries, shape, 0.125),
            plain.attend_causal(prefix + 1, &queries, shape, 0.125)
        );
        // The other clone still reads the frozen blocks.
        assert_eq!(
            second.attend_causal(prefix + 1, &queries, shape, 0.125),
            want
        );
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
