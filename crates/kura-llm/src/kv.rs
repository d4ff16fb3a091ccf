//! Keys and values on the CPU as plain host memory, and the causal attention of new
//! tokens computed straight from them: with AVX-512 by the same kernels for a
//! decoding step's few tokens and a prompt's many, elsewhere as GEMMs for a prompt.
//!
//! Why 16-bit integers in pairs: `vpdpwssd` (AVX-512 VNNI) multiplies a register
//! of pairs of 16-bit integers by a broadcast pair and adds both products to 32-bit
//! sums, twice the multiply-adds of an f32 FMA, with nothing to widen. Held as
//! bfloat16 pairs, keys and values were widened to f32 as they were loaded (a shift
//! and a mask a register besides its two FMAs) wherever `vdpbf16ps` was no faster
//! than FMAs (Intel's cores), and attention was a sixth of Qwen's summariser there.
//! So keys are held with each token's dimensions in pairs, values with each
//! dimension's tokens in pairs, each head of each token as integers and one scale
//! (see [`HostKv`]); the queries, and the weights (probabilities times each token's
//! scale of values), are rounded to integers as they are used, within bounds that
//! keep every sum within 32 bits. CPUs without AVX-512 widen a block at a time to
//! f32.
//!
//! Why not tensors: with the cache held as tensors, every decoded token copied the
//! whole cache twice per layer (`cat` to append, then `repeat_kv` to widen grouped
//! heads: seven times over for Qwen 2.5, whose 14 query heads share 2 key/value
//! heads), so at 2,000 tokens of context the copies outweighed the weights. Here an
//! append is an `extend`, and each query head reads its group's keys and values in
//! place.

use std::ops::Range;
use std::sync::Arc;

use kura_simd::{matmul, max, multiversion, softmax_rows, MatRef, Threads};
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
/// 1461 to 1012. Each head of each token is held as integers within ±16383 and a
/// scale (its largest magnitude over 16383), which keeps more of it than bfloat16's
/// eight bits of mantissa: over the keys and values of four real conversations the
/// rounding's error (root mean square, relative) was 5–9 × 10⁻⁵ for Qwen and SmolLM2,
/// bfloat16's 1.7 × 10⁻³. Rounding the queries and the weights as well moved their
/// next-token distributions by a mean KL divergence of 0.000002 nats from f32
/// attention over the same cache (with the products exact, so that nothing else
/// moved them).
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
    keys: Vec<Rounded>,
    /// Per key/value head: whole pairs of tokens covering them; the second of an
    /// odd count's last pair is zero, so that weighing it adds nothing.
    values: Vec<Rounded>,
}

/// One head's keys or values for a run of token slots: `head_dim` integers a slot
/// (see [`key_at`] and [`value_at`]), and each slot's scale.
#[derive(Clone, Debug, Default)]
struct Rounded {
    ints: Vec<i16>,
    scales: Vec<f32>,
}

impl Rounded {
    /// Slots `slots`, copied.
    fn copy(&self, slots: Range<usize>, head_dim: usize) -> Rounded {
        Rounded {
            ints: self.ints[slots.start * head_dim..slots.end * head_dim].to_vec(),
            scales: self.scales[slots].to_vec(),
        }
    }

    /// Keeps the first `slots` slots.
    fn truncate(&mut self, slots: usize, head_dim: usize) {
        self.ints.truncate(slots * head_dim);
        self.scales.truncate(slots);
    }

    /// Grows to `slots` slots, reserving by a fixed step rather than doubling: the
    /// summariser's conversations in flight would otherwise hold up to twice their
    /// caches.
    fn grow_to(&mut self, slots: usize, head_dim: usize) {
        let (len, step) = (slots * head_dim, GROWTH_TOKENS * head_dim);
        if self.ints.capacity() < len {
            self.ints.reserve_exact((len - self.ints.len()).max(step));
            self.scales
                .reserve_exact((slots - self.scales.len()).max(GROWTH_TOKENS));
        }
        self.ints.resize(len, 0);
        self.scales.resize(slots, 0.0);
    }

    /// Slot `slot` set to one head of a token, `xs`, rounded (see [`head_scale`]):
    /// its integer of dimension `d` at `at(d)`.
    fn set(&mut self, slot: usize, xs: &[f32], at: impl Fn(usize) -> usize) {
        let (scale, inverse) = head_scale(xs);
        for (d, &x) in xs.iter().enumerate() {
            self.ints[at(d)] = rounded(x * inverse);
        }
        self.scales[slot] = scale;
    }

    /// Slot `slot` emptied: zero integers, a zero scale.
    fn clear(&mut self, slot: usize, head_dim: usize, at: impl Fn(usize) -> usize) {
        for d in 0..head_dim {
            self.ints[at(d)] = 0;
        }
        self.scales[slot] = 0.0;
    }
}

/// Slots of a head's keys and of its values that hold `tokens` tokens: whole
/// blocks of keys, whole pairs of values.
fn head_slots(tokens: usize) -> (usize, usize) {
    (whole_blocks(tokens), tokens.div_ceil(2) * 2)
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
fn clear_unpaired(values: &mut Rounded, tokens: usize, head_dim: usize) {
    if !tokens.is_multiple_of(2) {
        values.clear(tokens, head_dim, |d| value_at(tokens, d, head_dim));
    }
}

/// The largest magnitude of a key's or a value's integers: 14 bits, so that a
/// head's sum of products with a query's integers (within [`query_max`]), or a
/// query's sum of values weighed (see [`WEIGHT_MAX`]), stays within 32 bits.
const HELD_MAX: f32 = 16383.0;

/// The integer of a weight (a probability times its token's scale of values) whose
/// token has the largest scale of values that the query sees, at probability 1.
/// Probabilities add up to 1, so a query's weights add up to at most this, and
/// half a step more a token rounded up: times [`HELD_MAX`], within an `i32` for up
/// to [`INT_TOKENS`] tokens.
const WEIGHT_MAX: f32 = 32767.0;

/// The most tokens the integer kernels weigh for a query: past it, the plain
/// build attends.
const INT_TOKENS: usize = 1 << 16;

/// The largest magnitude of a query's integers for heads of `head_dim`: the
/// head's sum of products with keys within [`HELD_MAX`] stays within an `i32`
/// (2048 for heads of 64, 1024 for 128).
fn query_max(head_dim: usize) -> f32 {
    let most = i32::MAX as usize / (head_dim.max(1) * HELD_MAX as usize);
    most.clamp(1, i16::MAX as usize) as f32
}

/// The scale of one head of a token, `xs`, held as integers within ±[`HELD_MAX`]
/// (`rounded(x × inverse)`), and its inverse. A value that is not finite makes the
/// scale NaN rather than a scale for the rest: widened, the head reads as NaN. (The
/// integer kernels may weigh such a token as nothing; a key or value is not finite
/// only where the hidden state it came from is not, which reaches the logits by the
/// residual path whatever attention makes of it.)
fn head_scale(xs: &[f32]) -> (f32, f32) {
    let largest = xs.iter().fold(0f32, |m, &x| m.max(x.abs()));
    match largest {
        _ if !xs.iter().all(|x| x.is_finite()) => (f32::NAN, 0.0),
        0.0 => (0.0, 0.0),
        _ => (largest / HELD_MAX, HELD_MAX / largest),
    }
}

/// `x` (within ±2²²) rounded to the nearest integer, ties to even: adding and
/// taking off 1.5 × 2²³ leaves no fraction to an f32 that size. (The standard
/// library's rounding is a call to `rintf` a value here.)
#[inline(always)]
fn rounded(x: f32) -> i16 {
    const SHIFT: f32 = 12_582_912.0;
    ((x + SHIFT) - SHIFT) as i16
}

impl Held {
    /// Head `head`'s first `count` tokens, which are tokens `first..` of the cache.
    fn run(&self, head: usize, first: usize, count: usize, head_dim: usize) -> Run<'_> {
        if count == 0 {
            return Run {
                first,
                tokens: 0,
                keys: &[],
                key_scales: &[],
                values: &[],
                value_scales: &[],
            };
        }
        let (keys, values) = head_slots(count);
        let (k, v) = (&self.keys[head], &self.values[head]);
        Run {
            first,
            tokens: count,
            keys: &k.ints[..keys * head_dim],
            key_scales: &k.scales[..keys],
            values: &v.ints[..values * head_dim],
            value_scales: &v.scales[..values],
        }
    }

    /// The first `tokens` tokens of each head, copied.
    fn first(&self, tokens: usize, head_dim: usize) -> Held {
        let (keys, values) = head_slots(tokens);
        let cut = |heads: &[Rounded], slots: usize| -> Vec<Rounded> {
            heads.iter().map(|h| h.copy(0..slots, head_dim)).collect()
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
        let (keys, values) = head_slots(tokens);
        self.keys
            .iter_mut()
            .for_each(|head| head.truncate(keys, head_dim));
        for head in &mut self.values {
            head.truncate(values, head_dim);
            clear_unpaired(head, tokens, head_dim);
        }
    }
}

/// The keys and values of one head over a run of `tokens` tokens from token
/// `first` (a block boundary), as the kernels read them: integers, and each
/// token's scale.
struct Run<'a> {
    first: usize,
    tokens: usize,
    keys: &'a [i16],
    key_scales: &'a [f32],
    values: &'a [i16],
    value_scales: &'a [f32],
}

/// Tokens per block of keys: one 512-bit register of f32 lanes.
pub(crate) const KEY_BLOCK: usize = 16;

/// Tokens from which [`HostKv::append`] rounds its heads in parallel.
const PARALLEL_APPEND_TOKENS: usize = 64;

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

impl HostKv {
    /// Appends tokens given token-major, `[tokens, kv_heads, head_dim]` each, each
    /// head of each token rounded to integers and a scale (see [`head_scale`]).
    pub(crate) fn append(&mut self, shape: Heads, keys: &[f32], values: &[f32]) {
        let Heads {
            kv_heads, head_dim, ..
        } = shape;
        let added = keys.len() / shape.kv_width().max(1);
        // Positions in `own`, which starts on a block boundary.
        let held = self.tokens - self.frozen_tokens;
        let (key_slots, value_slots) = head_slots(held + added);
        let own = Arc::make_mut(&mut self.own);
        own.keys.resize_with(kv_heads, Rounded::default);
        own.values.resize_with(kv_heads, Rounded::default);
        let append_head = |(h, (head_keys, head_values)): (usize, (&mut Rounded, &mut Rounded))| {
            head_keys.grow_to(key_slots, head_dim);
            head_values.grow_to(value_slots, head_dim);
            let tokens = keys
                .chunks_exact(shape.kv_width())
                .zip(values.chunks_exact(shape.kv_width()));
            for (t, (k, v)) in (held..).zip(tokens) {
                let (k, v) = (
                    &k[h * head_dim..][..head_dim],
                    &v[h * head_dim..][..head_dim],
                );
                head_keys.set(t, k, |d| key_at(t, d, head_dim));
                head_values.set(t, v, |d| value_at(t, d, head_dim));
            }
        };
        // A prompt's heads in parallel (on one core, a 526-token prompt's appends
        // took Qwen 7 ms); a step's few tokens in one task, on the core that runs
        // its sequence.
        let heads_a_task = match added >= PARALLEL_APPEND_TOKENS {
            true => 1,
            false => kv_heads,
        };
        own.keys
            .par_iter_mut()
            .zip(&mut own.values)
            .enumerate()
            .with_min_len(heads_a_task)
            .for_each(append_head);
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
        frozen.keys.resize_with(heads, Rounded::default);
        frozen.values.resize_with(heads, Rounded::default);
        // Whole blocks: as many slots of keys as of values.
        let held = self.tokens - self.frozen_tokens;
        let (key_slots, value_slots) = head_slots(held);
        let mut own = Held::default();
        // The first `moved` slots onto the frozen head; the rest, copied.
        let moving = |to: &mut Rounded, from: &Rounded, slots: usize| {
            to.ints.extend_from_slice(&from.ints[..moved * head_dim]);
            to.scales.extend_from_slice(&from.scales[..moved]);
            from.copy(moved..slots, head_dim)
        };
        for (h, (keys, values)) in self.own.keys.iter().zip(&self.own.values).enumerate() {
            own.keys.push(moving(&mut frozen.keys[h], keys, key_slots));
            own.values
                .push(moving(&mut frozen.values[h], values, value_slots));
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
                    let blocks = run.keys.chunks_exact(KEY_BLOCK * head_dim);
                    let scales = run.key_scales.chunks_exact(KEY_BLOCK);
                    for (b, (block, scales)) in blocks.zip(scales).enumerate() {
                        let first = run.first + b * KEY_BLOCK;
                        let count = KEY_BLOCK.min(tokens - first);
                        widen_keys(block, scales, &mut block_wide);
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
                        run.value_scales,
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
    pub(crate) fn attend_causal(
        &self,
        kernel: Kernel,
        first: usize,
        queries: &[f32],
        shape: Heads,
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; queries.len()];
        self.attend_causal_into(kernel, first, queries, shape, scale, &mut out);
        out
    }

    /// [`HostKv::attend_causal`] written into `out` (shaped as `queries`), so that a
    /// pass's sequences write their rows where the next product reads them.
    ///
    /// The query heads that share a key/value head are taken together, and so are
    /// up to [`ROWS_TOGETHER`] rows: each key and value is read once for all of
    /// them, and tasks (key/value head, block of rows) run in parallel. With
    /// AVX-512 a decoding step and a prompt go through the same kernels, so a row
    /// attends to the same bits whatever was fed beside it; without, prompts go
    /// through GEMMs (see [`PROMPT_ROWS`]).
    pub(crate) fn attend_causal_into(
        &self,
        kernel: Kernel,
        first: usize,
        queries: &[f32],
        shape: Heads,
        scale: f32,
        out: &mut [f32],
    ) {
        let (row, head_dim) = (shape.query_width(), shape.head_dim);
        // A group's queries, side by side in a row.
        let group = shape.group() * head_dim;
        let rows = queries.len() / row;
        if kernel == Kernel::Plain && rows >= PROMPT_ROWS {
            return self.attend_prompt(first, queries, shape, scale, out);
        }
        in_blocks_of_rows(
            out,
            (shape.kv_heads, group),
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
    fn attend_prompt(
        &self,
        first: usize,
        queries: &[f32],
        shape: Heads,
        scale: f32,
        out: &mut [f32],
    ) {
        let (heads, head_dim, group) = (shape.heads, shape.head_dim, shape.group());
        let row = shape.query_width();
        let rows = queries.len() / row;
        // The GEMMs read f32: each head's keys and values widened once.
        let held = first + rows - 1;
        let (all_keys, all_values) = (
            self.keys_transposed(held, head_dim),
            self.values_widened(held, head_dim),
        );
        in_blocks_of_rows(out, (heads, head_dim), PROMPT_ROWS, |head, start, count| {
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
            causal_softmax(&mut scores, (seen, seen), first + start, 1, plain_softmax);
            let mut block = vec![0.0f32; count * head_dim];
            let scores = MatRef::row_major(&scores, count, seen);
            let values = MatRef::row_major(&values[..seen * head_dim], seen, head_dim);
            matmul(&mut block, scores, values, 1.0, false, Threads::One);
            block
        })
    }
}

/// The attention of rows of `parts × width` values into `out`, computed by
/// `task(part, start, count)` for each part and block of up to `size` rows from
/// `start` (its `count × width` values), the tasks in parallel, each written to
/// its columns by the task's own core. (Gathered and written by the calling
/// thread, a 526-token prompt's outputs took Qwen 6 ms alone on one core.)
fn in_blocks_of_rows(
    out: &mut [f32],
    (parts, width): (usize, usize),
    size: usize,
    task: impl Fn(usize, usize, usize) -> Vec<f32> + Sync,
) {
    let row = parts * width;
    let write = |rows: &mut [f32], part: usize, block: &[f32]| {
        for (to, from) in rows.chunks_exact_mut(row).zip(block.chunks_exact(width)) {
            to[part * width..][..width].copy_from_slice(from);
        }
    };
    let rows = out.len() / row.max(1);
    if rows <= size {
        // One block (a decoding step's few rows): its parts are the tasks.
        let blocks: Vec<Vec<f32>> = (0..parts)
            .into_par_iter()
            .map(|part| task(part, 0, rows))
            .collect();
        for (part, block) in blocks.iter().enumerate() {
            write(out, part, block);
        }
        return;
    }
    out.par_chunks_mut(size * row)
        .enumerate()
        .for_each(|(index, rows)| {
            let (start, count) = (index * size, rows.len() / row);
            for part in 0..parts {
                write(rows, part, &task(part, start, count));
            }
        });
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
    // that the softmax and the weighing read. After them, room for a scale a query
    // head, of its query and then of its weights rounded to integers.
    let room = count * stride + count;
    let kernel = match stride > INT_TOKENS {
        true => Kernel::Plain,
        false => kernel,
    };
    kura_simd::with_scratch(room, |room: &mut [f32]| {
        let (scores, scales) = room.split_at_mut(count * stride);
        kernel.score(queries, runs, head_dim, scale, scores, stride, scales);
        kernel.causal_softmax(scores, (stride, tokens), sees, row_heads);
        out.fill(0.0);
        kernel.weigh(
            scores,
            stride,
            runs,
            head_dim,
            (sees, row_heads),
            out,
            scales,
        );
    });
}

/// Softmax of rows of scores (`stride` apart, `tokens` each) that causal attention
/// lets see a prefix: rows come `per_row` at a time (a token's query heads), the
/// first rows see `sees` tokens and each next token one more. What a row does not
/// see is zeroed, up to the end of the last pair of tokens where the row has room
/// for it, so that weighing every pair adds nothing for it. What a row sees goes
/// through `softmax`, the build's.
fn causal_softmax(
    scores: &mut [f32],
    (stride, tokens): (usize, usize),
    sees: usize,
    per_row: usize,
    softmax: impl Fn(&mut [f32]),
) {
    let paired = tokens.next_multiple_of(2).min(stride);
    for (i, scores) in scores.chunks_exact_mut(stride).enumerate() {
        let seen = sees + i / per_row;
        let (visible, hidden) = scores[..paired].split_at_mut(seen);
        softmax(visible);
        hidden.fill(0.0);
    }
}

/// The library's softmax of one row, which [`causal_softmax`] takes where the
/// kernels are not AVX-512's.
fn plain_softmax(row: &mut [f32]) {
    softmax_rows(row, row.len());
}

/// Which build of the attention kernels runs: with AVX-512, the cache's integers
/// multiplied as they are held, by queries and weights rounded to integers too
/// (`vpdpwssd` with VNNI, else `vpmaddwd` and an add); or the plain one, which
/// widens a block at a time into f32 first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Plain,
}

impl Kernel {
    /// The fastest build for heads of `head_dim` on this CPU.
    pub(crate) fn for_heads(head_dim: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if head_dim.is_multiple_of(avx512::LANES) && has!("avx512f") && has!("avx512bw") {
                return match has!("avx512vnni") {
                    true => Kernel::Vnni,
                    false => Kernel::Avx512,
                };
            }
        }
        let _ = head_dim;
        Kernel::Plain
    }

    /// Whether the queries and the weights are rounded to integers.
    #[cfg(test)]
    fn rounds_to_integers(self) -> bool {
        self != Kernel::Plain
    }

    /// [`causal_softmax`] in this build. The AVX-512 builds take an exponential of
    /// fewer instructions (a relative error of 3 × 10⁻⁶, a tenth of a weight's
    /// rounding to integers): the library's, exact to 3 × 10⁻⁷, was a quarter of
    /// a Qwen prompt's attention.
    fn causal_softmax(
        self,
        scores: &mut [f32],
        (stride, tokens): (usize, usize),
        sees: usize,
        per_row: usize,
    ) {
        let shape = (stride, tokens);
        match self {
            // SAFETY: `for_heads` chose these builds only where the CPU has AVX-512 F.
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni | Kernel::Avx512 => {
                causal_softmax(scores, shape, sees, per_row, |row| unsafe {
                    avx512::softmax(row)
                })
            }
            Kernel::Plain => causal_softmax(scores, shape, sees, per_row, plain_softmax),
        }
    }

    /// `scores[g * stride + t] = scale · queries[g] · key[t]` for every token `t` of
    /// the runs' blocks. `scales` is room for a scale a query head.
    #[allow(clippy::too_many_arguments)]
    fn score(
        self,
        queries: &[f32],
        runs: &[Run<'_>],
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
        scales: &mut [f32],
    ) {
        let group = queries.len() / head_dim;
        for run in runs {
            assert!(
                run.keys.len().is_multiple_of(KEY_BLOCK * head_dim)
                    && run.key_scales.len() * head_dim == run.keys.len()
                    && run.first + run.keys.len() / head_dim <= stride
                    && scores.len() >= group * stride
                    && scales.len() >= group,
                "a run's whole blocks of keys inside each query's scores"
            );
        }
        match self {
            // SAFETY (both): `for_heads` chose these builds only where the CPU has
            // AVX-512 F and BW (and VNNI for `Vnni`) and `head_dim` is whole
            // registers; the shapes are checked above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni | Kernel::Avx512 => {
                kura_simd::with_scratch(queries.len() / 2, |pairs: &mut [u32]| {
                    let scales = &mut scales[..group];
                    unsafe { avx512::round_queries(queries, head_dim, scale, pairs, scales) };
                    for run in runs {
                        unsafe { avx512::score(self, pairs, scales, run, head_dim, scores, stride) }
                    }
                })
            }
            Kernel::Plain => {
                for run in runs {
                    plain_score(queries, run, head_dim, scale, scores, stride)
                }
            }
        }
    }

    /// `out[g] += Σ_t scores[g * stride + t] · value[t]` over the runs' tokens,
    /// where the first `per_row` query heads see `sees` tokens, each next
    /// `per_row` one more, and their probabilities past that are zero. `scales` is
    /// room for a scale a query head.
    #[allow(clippy::too_many_arguments)]
    fn weigh(
        self,
        scores: &[f32],
        stride: usize,
        runs: &[Run<'_>],
        head_dim: usize,
        (sees, per_row): (usize, usize),
        out: &mut [f32],
        scales: &mut [f32],
    ) {
        let group = out.len() / head_dim;
        for run in runs {
            assert!(
                run.first + run.tokens.next_multiple_of(2) <= stride
                    && run.values.len() == run.tokens.div_ceil(2) * 2 * head_dim
                    && run.value_scales.len() * head_dim == run.values.len()
                    && scores.len() >= group * stride
                    && scales.len() >= group,
                "a run's pairs of values inside each query's scores"
            );
        }
        match self {
            // SAFETY: as for `score`; `attend_group` picks the plain build for more
            // tokens than `INT_TOKENS`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni | Kernel::Avx512 => {
                let scales = &mut scales[..group];
                weight_scales(runs, (sees, per_row), scales);
                kura_simd::with_scratch(group * stride / 2, |pairs: &mut [u32]| {
                    unsafe { avx512::round_weights(scores, stride, runs, pairs, scales) };
                    // Integer sums over every run, so that where the runs part does
                    // not change the bits.
                    kura_simd::with_scratch(out.len(), |sums: &mut [i32]| {
                        sums.fill(0);
                        for run in runs {
                            unsafe { avx512::weigh(self, pairs, stride, run, head_dim, sums) }
                        }
                        let heads = out
                            .chunks_exact_mut(head_dim)
                            .zip(sums.chunks_exact(head_dim));
                        for ((out, sums), &scale) in heads.zip(scales.iter()) {
                            for (out, &sum) in out.iter_mut().zip(sums) {
                                *out += sum as f32 * scale;
                            }
                        }
                    })
                })
            }
            Kernel::Plain => {
                for run in runs {
                    plain_weigh(scores, stride, run, head_dim, out)
                }
            }
        }
    }
}

/// Each query head's scale of weights (see [`WEIGHT_MAX`]): the largest scale of
/// values among the tokens it sees, over [`WEIGHT_MAX`]. Found from what the head
/// sees alone, so that a row gets the same weights whatever rows come with it.
fn weight_scales(runs: &[Run<'_>], (sees, per_row): (usize, usize), scales: &mut [f32]) {
    // The largest scale of values of tokens `from..to`, a run's slice at a time.
    let largest_of = |from: usize, to: usize| {
        runs.iter().fold(0f32, |largest, run| {
            let (start, end) = (from.max(run.first), to.min(run.first + run.tokens));
            match start < end {
                true => largest.max(max(&run.value_scales[start - run.first..end - run.first])),
                false => largest,
            }
        })
    };
    let (mut largest, mut counted) = (0f32, 0);
    for (g, scale) in scales.iter_mut().enumerate() {
        let seen = sees + g / per_row.max(1);
        if seen > counted {
            largest = largest.max(largest_of(counted, seen));
            counted = seen;
        }
        *scale = largest / WEIGHT_MAX;
    }
}

/// A block of keys (see [`key_at`]) in f32, dimension-major (`[head_dim,
/// KEY_BLOCK]`), each token's integers times its scale.
fn widen_keys(block: &[i16], scales: &[f32], wide: &mut [f32]) {
    let head_dim = block.len() / KEY_BLOCK;
    for (d, lanes) in wide.chunks_exact_mut(KEY_BLOCK).enumerate() {
        for (t, lane) in lanes.iter_mut().enumerate() {
            *lane = f32::from(block[key_at(t, d, head_dim)]) * scales[t];
        }
    }
}

/// Values held in pairs of tokens (see [`value_at`]), from a pair's first token, in
/// f32, token-major: as many tokens as `wide` holds rows of `head_dim`.
fn widen_values(values: &[i16], scales: &[f32], head_dim: usize, wide: &mut [f32]) {
    for (t, row) in wide.chunks_exact_mut(head_dim).enumerate() {
        for (d, value) in row.iter_mut().enumerate() {
            *value = f32::from(values[value_at(t, d, head_dim)]) * scales[t];
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
    let blocks = run.keys.chunks_exact(KEY_BLOCK * head_dim);
    for (b, (block, scales)) in blocks
        .zip(run.key_scales.chunks_exact(KEY_BLOCK))
        .enumerate()
    {
        widen_keys(block, scales, &mut wide);
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
        let (values, scales) = (&run.values[start * head_dim..], &run.value_scales[start..]);
        widen_values(values, scales, head_dim, wide);
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

/// The attention kernels with AVX-512: the cache's integers multiplied as they are
/// held, two to a 32-bit lane, by a query head's (or a weight's) pair of integers
/// broadcast, every integer sum in registers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{query_max, whole_blocks, Kernel, Run, INT_TOKENS, KEY_BLOCK};

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
    /// integers: two dimensions of a token's key, or two tokens' values of a
    /// dimension) by a broadcast pair (two of a query's integers, or two weights),
    /// adding both products to a register of 32-bit sums.
    trait PairProduct {
        unsafe fn multiply_add(sum: __m512i, held: __m512i, pair: __m512i) -> __m512i;
    }

    /// `vpdpwssd` (AVX-512 VNNI): twice the multiply-adds of an f32 FMA.
    struct Dot;

    impl PairProduct for Dot {
        #[inline(always)]
        unsafe fn multiply_add(sum: __m512i, held: __m512i, pair: __m512i) -> __m512i {
            _mm512_dpwssd_epi32(sum, held, pair)
        }
    }

    /// `vpmaddwd` and an add (AVX-512 BW), where the CPU has no VNNI.
    struct MaddAdd;

    impl PairProduct for MaddAdd {
        #[inline(always)]
        unsafe fn multiply_add(sum: __m512i, held: __m512i, pair: __m512i) -> __m512i {
            _mm512_add_epi32(sum, _mm512_madd_epi16(held, pair))
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

    /// Each query head's values (`head_dim` each) as integers within
    /// ±[`query_max`], two to a lane of `pairs`, and the head's scale times `scale`
    /// in `scales`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn round_queries(
        queries: &[f32],
        head_dim: usize,
        scale: f32,
        pairs: &mut [u32],
        scales: &mut [f32],
    ) {
        assert!(
            head_dim.is_multiple_of(LANES)
                && queries.len() == scales.len() * head_dim
                && pairs.len() == queries.len() / 2,
            "whole registers a head, two values to a pair"
        );
        let most = query_max(head_dim);
        let heads = queries
            .chunks_exact(head_dim)
            .zip(pairs.chunks_exact_mut(head_dim / 2))
            .zip(scales.iter_mut());
        for ((query, pairs), head_scale) in heads {
            let mut largest = _mm512_setzero_ps();
            for values in query.chunks_exact(LANES) {
                let values = _mm512_abs_ps(_mm512_loadu_ps(values.as_ptr()));
                largest = _mm512_max_ps(largest, values);
            }
            let largest = _mm512_reduce_max_ps(largest);
            let inverse = _mm512_set1_ps(if largest > 0.0 { most / largest } else { 0.0 });
            for (values, pairs) in query
                .chunks_exact(LANES)
                .zip(pairs.chunks_exact_mut(LANES / 2))
            {
                let ints =
                    _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(values.as_ptr()), inverse));
                _mm256_storeu_si256(pairs.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(ints));
            }
            *head_scale = largest / most * scale;
        }
    }

    /// Softmax of `row` in place, with `2^x` of a polynomial of degree 4 (a
    /// least-squares fit on the Chebyshev nodes of ±½, relative error 3.1 × 10⁻⁶)
    /// and `vscalefps` for the power of two: 9 instructions a register where the
    /// library's exponential takes 22.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax(row: &mut [f32]) {
        const C: [f32; 4] = [0.693_122, 0.240_237_19, 0.055_916_894, 0.009_600_395];
        let count = row.len();
        let p = row.as_mut_ptr();
        let whole = count / LANES * LANES;
        let tail = ((1u32 << (count - whole)) - 1) as __mmask16;
        let mut top = _mm512_set1_ps(f32::NEG_INFINITY);
        for at in (0..whole).step_by(LANES) {
            top = _mm512_max_ps(top, _mm512_loadu_ps(p.add(at)));
        }
        let last = _mm512_mask_loadu_ps(top, tail, p.add(whole));
        let top = _mm512_reduce_max_ps(_mm512_max_ps(top, last));
        let log2_e = _mm512_set1_ps(std::f32::consts::LOG2_E);
        let shift = _mm512_set1_ps(-top * std::f32::consts::LOG2_E);
        // 2^-126, the smallest normal power: what lies below adds nothing to a sum
        // of at least 1.
        let floor = _mm512_set1_ps(-126.0);
        let exp = |x: __m512| {
            let t = _mm512_max_ps(_mm512_fmadd_ps(x, log2_e, shift), floor);
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
            let f = _mm512_sub_ps(t, n);
            let mut poly = _mm512_set1_ps(C[3]);
            for c in [C[2], C[1], C[0], 1.0] {
                poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(c));
            }
            _mm512_scalef_ps(poly, n)
        };
        let mut sum = _mm512_setzero_ps();
        for at in (0..whole).step_by(LANES) {
            let e = exp(_mm512_loadu_ps(p.add(at)));
            _mm512_storeu_ps(p.add(at), e);
            sum = _mm512_add_ps(sum, e);
        }
        let e = _mm512_maskz_mov_ps(tail, exp(_mm512_maskz_loadu_ps(tail, p.add(whole))));
        _mm512_mask_storeu_ps(p.add(whole), tail, e);
        let inverse = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(_mm512_add_ps(sum, e)));
        for at in (0..whole).step_by(LANES) {
            _mm512_storeu_ps(
                p.add(at),
                _mm512_mul_ps(_mm512_loadu_ps(p.add(at)), inverse),
            );
        }
        let last = _mm512_maskz_loadu_ps(tail, p.add(whole));
        _mm512_mask_storeu_ps(p.add(whole), tail, _mm512_mul_ps(last, inverse));
    }

    /// Each query head's weights over the runs (its probabilities times each
    /// token's scale of values) as integers, two to a lane of `pairs` (`stride / 2`
    /// a head), for the head's scale in `scales` (see
    /// [`WEIGHT_MAX`](super::WEIGHT_MAX)).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn round_weights(
        scores: &[f32],
        stride: usize,
        runs: &[Run<'_>],
        pairs: &mut [u32],
        scales: &[f32],
    ) {
        let heads = scales.len();
        for run in runs {
            assert!(
                run.first.is_multiple_of(KEY_BLOCK)
                    && run.first + whole_blocks(run.value_scales.len()) <= stride
                    && stride <= INT_TOKENS
                    && scores.len() >= heads * stride
                    && pairs.len() >= heads * stride / 2,
                "every block of the runs' weights inside each head's room"
            );
        }
        for (g, &scale) in scales.iter().enumerate() {
            let inverse = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let row = scores.as_ptr().add(g * stride);
            for run in runs {
                let tokens = run.value_scales.len();
                let mut start = 0;
                while start < tokens {
                    let count = KEY_BLOCK.min(tokens - start);
                    let mask = ((1u32 << count) - 1) as __mmask16;
                    let t = run.first + start;
                    let probabilities = _mm512_maskz_loadu_ps(mask, row.add(t));
                    let value_scales =
                        _mm512_maskz_loadu_ps(mask, run.value_scales.as_ptr().add(start));
                    let weights =
                        _mm512_mul_ps(_mm512_mul_ps(probabilities, value_scales), inverse);
                    let to = pairs.as_mut_ptr().add((g * stride + t) / 2);
                    _mm256_storeu_si256(
                        to.cast(),
                        _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(weights)),
                    );
                    start += KEY_BLOCK;
                }
            }
        }
    }

    /// Defines `$name(kernel, args…)`: `$generic::<Dot>` compiled for AVX-512 VNNI
    /// where `kernel` is [`Kernel::Vnni`], else `$generic::<MaddAdd>` compiled for
    /// AVX-512 BW.
    macro_rules! builds {
        ($(#[$doc:meta])* fn $name:ident = $generic:ident($($arg:ident: $ty:ty),* $(,)?)) => {
            $(#[$doc])*
            pub(super) unsafe fn $name(kernel: Kernel, $($arg: $ty),*) {
                #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
                unsafe fn dot($($arg: $ty),*) {
                    $generic::<Dot>($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx512bw")]
                unsafe fn madd($($arg: $ty),*) {
                    $generic::<MaddAdd>($($arg),*)
                }
                match kernel {
                    Kernel::Vnni => dot($($arg),*),
                    _ => madd($($arg),*),
                }
            }
        };
    }

    builds! {
        /// [`Kernel::score`](super::Kernel::score) of one run, for queries rounded
        /// by [`round_queries`].
        ///
        /// # Safety
        /// The CPU has what `kernel` needs (see [`Kernel::for_heads`]); `head_dim`
        /// is whole registers; the caller checked the shapes.
        fn score = score_with(
            queries: &[u32],
            scales: &[f32],
            run: &Run<'_>,
            head_dim: usize,
            scores: &mut [f32],
            stride: usize,
        )
    }

    builds! {
        /// [`Kernel::weigh`](super::Kernel::weigh) of one run, for weights rounded
        /// by [`round_weights`], added to each head's integer sums.
        ///
        /// # Safety
        /// As for [`score`].
        fn weigh = weigh_with(
            weights: &[u32],
            stride: usize,
            run: &Run<'_>,
            head_dim: usize,
            sums: &mut [i32],
        )
    }

    #[inline(always)]
    unsafe fn score_with<P: PairProduct>(
        queries: &[u32],
        scales: &[f32],
        run: &Run<'_>,
        head_dim: usize,
        scores: &mut [f32],
        stride: usize,
    ) {
        let chunks = queries
            .chunks(HEADS * head_dim / 2)
            .zip(scales.chunks(HEADS));
        for (chunk, (queries, scales)) in chunks.enumerate() {
            let scores = &mut scores[chunk * HEADS * stride + run.first..];
            with_heads!(
                scales.len(),
                score_heads::<P>(
                    queries.as_ptr(),
                    scales.as_ptr(),
                    run,
                    head_dim,
                    scores,
                    stride
                )
            );
        }
    }

    /// `G` heads' scores, two blocks of keys at a time (see [`score_blocks`]).
    #[inline(always)]
    unsafe fn score_heads<P: PairProduct, const G: usize>(
        queries: *const u32,
        scales: *const f32,
        run: &Run<'_>,
        head_dim: usize,
        scores: &mut [f32],
        stride: usize,
    ) {
        let pairs = head_dim / 2;
        let blocks = run.keys.len() / (KEY_BLOCK * head_dim);
        let mut b = 0;
        while b + 2 <= blocks {
            score_blocks::<P, G, 2>(queries, scales, run, pairs, scores, stride, b);
            b += 2;
        }
        if b < blocks {
            score_blocks::<P, G, 1>(queries, scales, run, pairs, scores, stride, b);
        }
    }

    /// `G` heads' scores over blocks `b..b + B` of keys: each head's integer sums,
    /// then times each token's scale and the head's. Each broadcast pair of a
    /// query's integers multiplies `B` registers of keys. A block at a time, each
    /// `vpdpwssd` waited on the one before it (5 cycles, where two issue each
    /// cycle), and the broadcasts, one for each, held the load ports.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn score_blocks<P: PairProduct, const G: usize, const B: usize>(
        queries: *const u32,
        scales: *const f32,
        run: &Run<'_>,
        pairs: usize,
        scores: &mut [f32],
        stride: usize,
        b: usize,
    ) {
        // A block of keys is `pairs` registers (16 tokens of two dimensions each).
        let keys = (run.keys.as_ptr() as *const __m512i).add(b * pairs);
        let mut sums = [[_mm512_setzero_si512(); G]; B];
        for p in 0..pairs {
            let mut held = [_mm512_setzero_si512(); B];
            for (j, held) in held.iter_mut().enumerate() {
                let at = j * pairs + p;
                _mm_prefetch::<_MM_HINT_T0>(keys.wrapping_add(at + KEYS_AHEAD * pairs) as *const i8);
                *held = _mm512_loadu_si512(keys.add(at));
            }
            for g in 0..G {
                let pair = _mm512_set1_epi32(*queries.add(g * pairs + p) as i32);
                for (sums, &held) in sums.iter_mut().zip(&held) {
                    sums[g] = P::multiply_add(sums[g], held, pair);
                }
            }
        }
        for (j, sums) in sums.iter().enumerate() {
            let block = b + j;
            let key_scales = _mm512_loadu_ps(run.key_scales.as_ptr().add(block * KEY_BLOCK));
            for (g, sum) in sums.iter().enumerate() {
                let scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(*sum), key_scales);
                let at = scores.as_mut_ptr().add(g * stride + block * KEY_BLOCK);
                _mm512_storeu_ps(at, _mm512_mul_ps(scaled, _mm512_set1_ps(*scales.add(g))));
            }
        }
    }

    #[inline(always)]
    unsafe fn weigh_with<P: PairProduct>(
        weights: &[u32],
        stride: usize,
        run: &Run<'_>,
        head_dim: usize,
        sums: &mut [i32],
    ) {
        for (chunk, sums) in sums.chunks_mut(HEADS * head_dim).enumerate() {
            let weights = weights.as_ptr().add(chunk * HEADS * stride / 2);
            let heads = sums.len() / head_dim;
            with_heads!(
                heads,
                weigh_heads::<P>(weights, stride, run, head_dim, sums)
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
    /// order and broadcasting each weight once.
    #[inline(always)]
    unsafe fn weigh_heads<P: PairProduct, const G: usize>(
        weights: *const u32,
        stride: usize,
        run: &Run<'_>,
        head_dim: usize,
        sums: &mut [i32],
    ) {
        let mut d = 0;
        while d < head_dim {
            let span = (weights, stride, run, head_dim, &mut *sums, d);
            d += if G <= WIDE_HEADS && d + 4 * LANES <= head_dim {
                weigh_span::<P, G, 4>(span)
            } else if d + 2 * LANES <= head_dim {
                weigh_span::<P, G, 2>(span)
            } else {
                weigh_span::<P, G, 1>(span)
            };
        }
    }

    /// `W` registers of dimensions from `d`, for `G` heads: the `G × W` sums and the
    /// `W` registers of values stay in registers over every pair of tokens. Returns
    /// the dimensions done.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    unsafe fn weigh_span<P: PairProduct, const G: usize, const W: usize>(
        (weights, stride, run, head_dim, sums, d): (
            *const u32,
            usize,
            &Run<'_>,
            usize,
            &mut [i32],
            usize,
        ),
    ) -> usize {
        let v = run.values.as_ptr() as *const __m512i;
        // A pair of tokens' values fill `head_dim / 16` registers.
        let registers = head_dim / LANES;
        let column = d / LANES;
        let first = run.first / 2;
        let mut held = [[_mm512_setzero_si512(); W]; G];
        for (g, held) in held.iter_mut().enumerate() {
            let at = sums.as_ptr().add(g * head_dim + d);
            for (w, sum) in held.iter_mut().enumerate() {
                *sum = _mm512_loadu_si512(at.add(w * LANES).cast());
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
            for (g, held) in held.iter_mut().enumerate() {
                let weight = *weights.add(g * stride / 2 + first + pair);
                let weight = _mm512_set1_epi32(weight as i32);
                for (sum, &row) in held.iter_mut().zip(&row) {
                    *sum = P::multiply_add(*sum, row, weight);
                }
            }
        }
        for (g, held) in held.iter().enumerate() {
            let at = sums.as_mut_ptr().add(g * head_dim + d);
            for (w, sum) in held.iter().enumerate() {
                _mm512_storeu_si512(at.add(w * LANES).cast(), *sum);
            }
        }
        W * LANES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention as written in the paper, each query head against its group's keys,
    /// in f32.
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

    /// Every build of the kernels this CPU runs.
    fn builds() -> Vec<Kernel> {
        let mut builds = vec![Kernel::Plain];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") {
                builds.push(Kernel::Avx512);
                if has!("avx512vnni") {
                    builds.push(Kernel::Vnni);
                } else {
                    eprintln!("this CPU has no AVX-512 VNNI: the `vpdpwssd` build is not checked");
                }
            } else {
                eprintln!("this CPU has no AVX-512 BW: only the plain build is checked");
            }
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

    /// Each build's causal softmax against the definition in f64, over rows of
    /// every length up to a few registers (whole ones and tails) and of a prompt's,
    /// with scores as spread as attention's. The AVX-512 builds' exponential is
    /// held to its stated error; what a row does not see is zero.
    #[test]
    fn every_builds_causal_softmax_is_the_definitions() {
        for kernel in builds() {
            for tokens in (1..=70).chain([257, 900]) {
                let stride = whole_blocks(tokens);
                let (sees, per_row) = (tokens.saturating_sub(3).max(1), 2);
                let rows = 2 * per_row;
                let mut scores: Vec<f32> = numbers(rows * stride, tokens as u32)
                    .iter()
                    .map(|x| x * 24.0)
                    .collect();
                let given = scores.clone();
                kernel.causal_softmax(&mut scores, (stride, tokens), sees, per_row);
                for (i, (got, given)) in scores
                    .chunks_exact(stride)
                    .zip(given.chunks_exact(stride))
                    .enumerate()
                {
                    let seen = (sees + i / per_row).min(tokens);
                    let top = given[..seen].iter().fold(f64::MIN, |m, &x| m.max(x as f64));
                    let exps: Vec<f64> = given[..seen]
                        .iter()
                        .map(|&x| (x as f64 - top).exp())
                        .collect();
                    let total: f64 = exps.iter().sum();
                    for (t, &got) in got[..tokens.next_multiple_of(2).min(stride)]
                        .iter()
                        .enumerate()
                    {
                        let want = exps.get(t).map_or(0.0, |e| e / total);
                        let error = (got as f64 - want).abs();
                        assert!(
                            error <= 4e-6 * want + 1e-9,
                            "{kernel:?}, {tokens} tokens, row {i}, token {t}: {got} for {want}"
                        );
                    }
                }
            }
        }
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
            &query,
            &as_held(&keys, shape.head_dim),
            &as_held(&values, shape.head_dim),
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
            let (held_keys, held_values) = (
                as_held(&keys, shape.head_dim),
                as_held(&values, shape.head_dim),
            );
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
            let (held_keys, held_values) = (
                as_held(&keys, shape.head_dim),
                as_held(&values, shape.head_dim),
            );
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

    /// The integer sums at their largest stay within 32 bits: a query and keys whose
    /// values are all of one magnitude (each product is the largest the roundings
    /// allow), and values of one magnitude a token, all of one sign within a block
    /// of tokens. Keys and values change sign from block to block, so that a sum
    /// wrapped past 32 bits would change the output (by about 1, where it wrapped).
    /// Every build attends as the definition, to within the weights' rounding: the
    /// tokens' equal weights all round the same way, so their errors add up (70
    /// tokens of half a step of 1/32767 at most, times values of 3).
    #[test]
    fn the_largest_integer_sums_do_not_overflow() {
        for head_dim in [64, 128] {
            let shape = Heads {
                heads: 3,
                kv_heads: 1,
                head_dim,
            };
            let tokens = 70;
            let sign = |i: usize| match (i / head_dim / KEY_BLOCK) % 2 {
                0 => 1.0f32,
                _ => -1.0,
            };
            let keys: Vec<f32> = (0..head_dim * tokens).map(|i| 0.5 * sign(i)).collect();
            let values: Vec<f32> = (0..head_dim * tokens)
                .map(|i| if sign(i) > 0.0 { 3.0 } else { -2.0 })
                .collect();
            let mut kv = HostKv::default();
            kv.append(shape, &keys, &values);
            let query = vec![1.5f32; shape.query_width()];
            let (keys, values) = (as_held(&keys, head_dim), as_held(&values, head_dim));
            let want = naive(&query, &keys, &values, shape, 0.01);
            for kernel in builds() {
                let got = kv.attend_one(kernel, &query, shape, 0.01);
                for (got, want) in got.iter().zip(&want) {
                    assert!(
                        (got - want).abs() < 4e-3,
                        "{kernel:?}, heads of {head_dim}: {got} vs {want}"
                    );
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

    /// Keys or values (token-major, heads of `head_dim`) as the cache holds them:
    /// each head of each token rounded to integers and a scale.
    fn as_held(xs: &[f32], head_dim: usize) -> Vec<f32> {
        xs.chunks_exact(head_dim)
            .flat_map(|head| {
                let (scale, inverse) = head_scale(head);
                head.iter()
                    .map(move |&x| f32::from(rounded(x * inverse)) * scale)
            })
            .collect()
    }

    /// How far a kernel's output may be from [`naive`]'s: sums in another order,
    /// and where it rounds the queries (to ±2048 for heads of 64) and the weights,
    /// up to a few steps of each.
    fn tolerance(kernel: Kernel) -> f32 {
        match kernel.rounds_to_integers() {
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
