//! One decoding step of many sequences on the CPU, written on plain host buffers: a
//! step feeds each sequence one new token, or a few (a piece of a template), after
//! its cache.
//!
//! Why not candle's tensor ops (which a GPU still runs): with one new token per
//! sequence the arithmetic of a layer is small, and each tensor op costs more to
//! dispatch than to compute; with a dozen of them per layer (and a narrow, a rotation
//! and two copies per sequence) a SmolLM2 token took 22 ms, of which streaming the
//! weights is 8.
//! Here a layer is its 8-bit products (queries, keys and values stacked into one,
//! gate and up into another, whose activation feeds the down product; see `q8`) and
//! a few loops between them.
//! Every loop works on one row at a time, so a sequence's step is the same bits alone
//! or in any batch, as the products are.

use std::cell::RefCell;
use std::ops::Range;

use candle_core::{Storage, Tensor};
use kura_simd::{dot, multiversion, silu_times};
use rayon::prelude::*;

use super::prompt::prompt_product;
use super::{host_kv, Architecture, Cache, Embedding, Layer, Linear, Model};
use crate::error::LlmError;
use crate::logits::Logits;
use crate::q8::{Layout, Q8Matrix, Widen};

/// The host copies a step needs: the norms, the biases, the rotation tables (small),
/// and the 8-bit projections, those that read the same input stacked into one.
pub(super) struct HostWeights {
    layers: Vec<HostLayer>,
    output_norm: Vec<f32>,
    /// `[context, head_dim / 2]` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

struct HostLayer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// The 8-bit rows of the queries, keys and values, one after another.
    qkv: Q8Matrix,
    qkv_widths: [usize; 3],
    /// The three biases side by side (zeros for a projection without one).
    qkv_bias: Option<Vec<f32>>,
    /// The 8-bit rows of the gate and up projections.
    gate_up: Q8Matrix,
}

impl HostLayer {
    /// The rows of the queries (0), keys (1) or values (2) in `qkv`.
    fn qkv_rows(&self, part: usize) -> Range<usize> {
        let start: usize = self.qkv_widths[..part].iter().sum();
        start..start + self.qkv_widths[part]
    }

    /// The bias of the queries (0), keys (1) or values (2): its slice of
    /// `qkv_bias`.
    fn qkv_bias_of(&self, part: usize) -> Option<&[f32]> {
        Some(&self.qkv_bias.as_deref()?[self.qkv_rows(part)])
    }
}

impl HostWeights {
    /// `None` when some projection has no 8-bit copy (a GPU model, or rows that are
    /// not whole blocks) or the copies do not stack: such a model runs through
    /// candle. The stacked projections' own 8-bit copies are moved into the stacks,
    /// and every matrix the host multiplies gets its packed copy (see
    /// [`Q8Matrix::add_packed_copy`]).
    pub(super) fn new(
        layers: &mut [Layer],
        output_norm: &Tensor,
        output: &mut Linear,
        (cos, sin): (&Tensor, &Tensor),
    ) -> candle_core::Result<Option<Self>> {
        let all_packed = output.packed.is_some()
            && layers.iter().all(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .all(|p| p.packed.is_some())
            });
        let all_stack = || {
            layers
                .iter()
                .all(|l| stackable(&[&l.q, &l.k, &l.v]) && stackable(&[&l.gate, &l.up]))
        };
        if !all_packed || !output_norm.device().is_cpu() || !all_stack() {
            return Ok(None);
        }
        let host = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let bias = |l: &Linear| l.bias.as_ref().map(host).transpose();
        // Layer by layer, so that each projection's copy is freed as soon as it is
        // stacked: loading holds at most one layer's projections twice.
        let mut host_layers = Vec::with_capacity(layers.len());
        for l in layers.iter_mut() {
            let biases = [bias(&l.q)?, bias(&l.k)?, bias(&l.v)?];
            let qkv_widths = [&l.q, &l.k, &l.v].map(|p| packed(p).rows());
            let qkv_bias = side_by_side(&biases, &qkv_widths);
            let qkv = stack([&mut l.q, &mut l.k, &mut l.v]);
            let gate_up = stack([&mut l.gate, &mut l.up]);
            let (Some(mut qkv), Some(mut gate_up)) = (qkv, gate_up) else {
                unreachable!("every layer's projections were checked to stack");
            };
            for matrix in [&mut qkv, &mut gate_up].into_iter().chain(
                [&mut l.o, &mut l.down]
                    .into_iter()
                    .filter_map(|p| p.packed.as_mut()),
            ) {
                matrix.add_packed_copy();
            }
            host_layers.push(HostLayer {
                attn_norm: host(&l.attn_norm)?,
                ffn_norm: host(&l.ffn_norm)?,
                qkv,
                qkv_widths,
                qkv_bias,
                gate_up,
            });
        }
        if let Some(matrix) = output.packed.as_mut() {
            matrix.add_packed_copy();
        }
        Ok(Some(HostWeights {
            layers: host_layers,
            output_norm: host(output_norm)?,
            cos: host(cos)?,
            sin: host(sin)?,
        }))
    }

    /// Whether the projections are in the int8 layout, whose kernel also reads
    /// prompts: its integer products outrun f32 GEMM over widened weights at any
    /// number of rows.
    pub(super) fn reads_prompts_in_int8(&self) -> bool {
        matches!(self.layout(), Some(Layout::Int8(_)))
    }

    /// The layout of the 8-bit copies (every projection has the one it was
    /// loaded with).
    pub(super) fn layout(&self) -> Option<Layout> {
        self.layers.first().map(|l| l.qkv.layout())
    }

    /// Whether a layer's feed-forward (most of its weights) has a packed copy
    /// for the products of a few rows.
    pub(super) fn has_packed_copies(&self) -> bool {
        self.layers.iter().any(|l| l.gate_up.has_packed_copy())
    }
}

fn stackable(linears: &[&Linear]) -> bool {
    let parts: Option<Vec<&Q8Matrix>> = linears.iter().map(|l| l.packed.as_ref()).collect();
    parts.is_some_and(|parts| Q8Matrix::stackable(&parts))
}

/// The 8-bit copies of `linears`, stacked, and moved out of them.
fn stack<const N: usize>(linears: [&mut Linear; N]) -> Option<Q8Matrix> {
    let parts: Option<Vec<&Q8Matrix>> = linears.iter().map(|l| l.packed.as_ref()).collect();
    let stacked = Q8Matrix::stack(&parts?)?;
    for linear in linears {
        linear.packed = None;
    }
    Some(stacked)
}

/// Biases of the given widths side by side, zeros for the missing ones; `None`
/// when all are missing.
fn side_by_side(biases: &[Option<Vec<f32>>], widths: &[usize]) -> Option<Vec<f32>> {
    if biases.iter().all(Option::is_none) {
        return None;
    }
    let mut all = Vec::new();
    for (bias, &width) in biases.iter().zip(widths) {
        match bias {
            Some(bias) => all.extend_from_slice(bias),
            None => all.resize(all.len() + width, 0.0),
        }
    }
    Some(all)
}

/// Which copy of the weights a pass multiplies by.
#[derive(Clone, Copy)]
pub(super) enum Weights<'a> {
    /// The 8-bit copies: steps (few rows per pass, bound by the bytes streamed),
    /// and prompts too where the copies are in the int8 layout, whose kernel
    /// outruns f32 GEMM at any number of rows.
    Packed,
    /// f32 GEMM, over the weights widened a slab at a time into the buffer given
    /// (or the dense ones a rounded type keeps): many rows per pass (prompts).
    Dense(&'a RefCell<Vec<f32>>),
}

impl Weights<'_> {
    /// The queries, keys and values of `xs`, in that order.
    fn qkv(self, layer: &Layer, host: &HostLayer, xs: &[f32]) -> Result<[Vec<f32>; 3], LlmError> {
        match self {
            Weights::Packed => {
                let mut parts = host.qkv.matmul_parts(xs, host.qkv_widths);
                for (i, part) in parts.iter_mut().enumerate() {
                    if let Some(bias) = host.qkv_bias_of(i) {
                        add_rows(part, bias);
                    }
                }
                Ok(parts)
            }
            Weights::Dense(slab) => {
                let part = |linear: &Linear, i: usize| {
                    let rows = host.qkv_rows(i);
                    prompt_product(linear, &host.qkv, rows, xs, host.qkv_bias_of(i), slab)
                };
                Ok([part(&layer.q, 0)?, part(&layer.k, 1)?, part(&layer.v, 2)?])
            }
        }
    }

    /// The feed-forward block of `xs`: `down · (silu(gate) · up)`.
    fn feed_forward(
        self,
        layer: &Layer,
        host: &HostLayer,
        xs: &[f32],
    ) -> Result<Vec<f32>, LlmError> {
        match self {
            Weights::Packed => Ok(host.gate_up.feed_forward(packed(&layer.down), xs)),
            Weights::Dense(slab) => {
                let width = host.gate_up.rows() / 2;
                let mut gate =
                    prompt_product(&layer.gate, &host.gate_up, 0..width, xs, None, slab)?;
                let up =
                    prompt_product(&layer.up, &host.gate_up, width..2 * width, xs, None, slab)?;
                silu_times(&mut gate, &up);
                self.plain(&layer.down, &gate)
            }
        }
    }

    /// `xs · Wᵀ` with this copy of `linear`'s weights (which has no bias).
    fn plain(self, linear: &Linear, xs: &[f32]) -> Result<Vec<f32>, LlmError> {
        match self {
            Weights::Packed => Ok(product(packed(linear), xs, None)),
            Weights::Dense(slab) => {
                let matrix = packed(linear);
                prompt_product(linear, matrix, 0..matrix.rows(), xs, None, slab)
            }
        }
    }
}

impl Model {
    /// [`Model::step`] on host buffers; see the module's documentation.
    pub(super) fn decode_on_host(
        &self,
        host: &HostWeights,
        feeds: &[&[u32]],
        caches: &mut [Cache],
    ) -> Result<Vec<Logits>, LlmError> {
        kura_simd::on_a_worker(|| self.run_on_host(host, feeds, caches, Weights::Packed))
    }

    /// The whole model on host buffers: `feeds[i]` follows what `caches[i]` holds;
    /// the rows of all feeds go through each product together, and only each feed's
    /// last row through the output matrix (always its 8-bit copy: one row a feed).
    /// Returns the logits after each feed.
    pub(super) fn run_on_host(
        &self,
        host: &HostWeights,
        feeds: &[&[u32]],
        caches: &mut [Cache],
        weights: Weights<'_>,
    ) -> Result<Vec<Logits>, LlmError> {
        let c = &self.config;
        let counts: Vec<usize> = feeds.iter().map(|feed| feed.len()).collect();
        let mut xs = self.embedding_rows(&feeds.concat())?;
        let last = self.layers.len().saturating_sub(1);
        for (index, (layer, norms)) in self.layers.iter().zip(&host.layers).enumerate() {
            let normed = rms_norm_rows(&xs, &norms.attn_norm, c.rms_eps);
            let qkv = weights.qkv(layer, norms, &normed)?;
            // Only a feed's last token predicts what comes next, and the last layer's
            // output is read by nothing else: the other rows (all but one of a
            // prompt's) need the keys and values it appends, not its attention nor
            // its products, which were 1/24 of Qwen's prompt time.
            let only_last = index == last;
            let attended = self.attend_each(host, index, qkv, &counts, caches, only_last);
            if only_last && xs.len() > counts.len() * host.output_norm.len() {
                xs = last_rows(&xs, &counts);
            }
            add_rows(&mut xs, &weights.plain(&layer.o, &attended)?);
            let normed = rms_norm_rows(&xs, &norms.ffn_norm, c.rms_eps);
            add_rows(&mut xs, &weights.feed_forward(layer, norms, &normed)?);
        }
        for (cache, count) in caches.iter_mut().zip(&counts) {
            cache.len += count;
        }
        let normed = rms_norm_rows(&xs, &host.output_norm, c.rms_eps);
        let logits = product(packed(&self.output), &normed, None);
        Ok(Logits::rows(logits, feeds.len()))
    }

    /// Rotates each sequence's queries and keys to their positions, appends the keys
    /// and values to its cache, and lets each new token attend to the tokens up to
    /// itself (`only_last`: the last token of each sequence alone); sequences run in
    /// parallel. `counts[i]` rows belong to `caches[i]`. Each sequence writes its
    /// rows where the output projection reads them: collected element by element
    /// from a vector a sequence, a 526-token prompt's rows took Qwen 20 ms of its
    /// 640 on one core.
    fn attend_each(
        &self,
        host: &HostWeights,
        index: usize,
        [mut q, mut k, v]: [Vec<f32>; 3],
        counts: &[usize],
        caches: &mut [Cache],
        only_last: bool,
    ) -> Vec<f32> {
        let c = &self.config;
        let shape = c.heads();
        let (q_width, kv_width) = (shape.query_width(), shape.kv_width());
        let scale = c.attention_scale() as f32;
        let rows_out = |count: usize| match only_last {
            true => count.min(1),
            false => count,
        };
        let total: usize = counts.iter().map(|&count| rows_out(count)).sum();
        let mut attended = vec![0f32; total * q_width];
        let mut feeds = Vec::with_capacity(counts.len());
        let (mut q_rest, mut k_rest, mut v_rest) = (&mut q[..], &mut k[..], &v[..]);
        let mut out_rest = &mut attended[..];
        for &count in counts {
            let (q, q_tail) = std::mem::take(&mut q_rest).split_at_mut(count * q_width);
            let (k, k_tail) = std::mem::take(&mut k_rest).split_at_mut(count * kv_width);
            let (v, v_tail) = v_rest.split_at(count * kv_width);
            let (out, out_tail) =
                std::mem::take(&mut out_rest).split_at_mut(rows_out(count) * q_width);
            (q_rest, k_rest, v_rest, out_rest) = (q_tail, k_tail, v_tail, out_tail);
            feeds.push((q, k, v, out));
        }
        caches
            .par_iter_mut()
            .zip(feeds)
            .for_each(|(cache, (q, k, v, out))| {
                let start = cache.len;
                self.rotate_rows(host, q, k, start);
                let kv = host_kv(&mut cache.layers[index]);
                kv.append(shape, k, v);
                let (first, queries) = match only_last {
                    true => (start + q.len() / q_width, &q[q.len() - out.len()..]),
                    false => (start + 1, &q[..]),
                };
                kv.attend_causal_into(self.attention, first, queries, shape, scale, out);
            });
        attended
    }

    /// RoPE of rows of queries and keys (`[rows, heads · head_dim]` and `[rows,
    /// kv_heads · head_dim]`) at positions `start`, `start + 1`, …
    fn rotate_rows(&self, host: &HostWeights, q: &mut [f32], k: &mut [f32], start: usize) {
        let c = &self.config;
        let shape = c.heads();
        let (q_width, kv_width) = (shape.query_width(), shape.kv_width());
        let half = c.head_dim / 2;
        let interleaved = c.architecture == Architecture::Llama;
        // Runs of rows in parallel: on one core, a 526-token prompt's rotations
        // took Qwen 3 ms.
        const ROWS_PER_TASK: usize = 32;
        q.par_chunks_mut(ROWS_PER_TASK * q_width)
            .zip(k.par_chunks_mut(ROWS_PER_TASK * kv_width))
            .enumerate()
            .for_each(|(task, (q, k))| {
                let rows = q
                    .chunks_exact_mut(q_width)
                    .zip(k.chunks_exact_mut(kv_width));
                for (position, (q, k)) in (start + task * ROWS_PER_TASK..).zip(rows) {
                    let at = position * half;
                    let (cos, sin) = (&host.cos[at..at + half], &host.sin[at..at + half]);
                    rotate_heads(q, cos, sin, interleaved);
                    rotate_heads(k, cos, sin, interleaved);
                }
            });
    }
}

impl Model {
    /// The embedding rows of `tokens`, widened from the 8-bit table or read from the
    /// dense one.
    fn embedding_rows(&self, tokens: &[u32]) -> Result<Vec<f32>, LlmError> {
        let table = match &self.embedding {
            Embedding::Dense(table) => table,
            Embedding::Packed(matrix) => return widened_rows(matrix, tokens),
            Embedding::Q6k(blocks) => return widened_rows(blocks, tokens),
            Embedding::Output => {
                let table = self.output.exact_form().ok_or_else(|| {
                    LlmError::InvalidOutput("the tied output has no exact weights".into())
                })?;
                return widened_rows(table, tokens);
            }
        };
        let (vocab, width) = table.dims2()?;
        with_host_values(table, |table| {
            let mut rows = vec![0f32; tokens.len() * width];
            for (&token, row) in tokens.iter().zip(rows.chunks_exact_mut(width)) {
                row.copy_from_slice(&table[in_vocabulary(token, vocab)? * width..][..width]);
            }
            Ok(rows)
        })?
    }
}

/// Rows `tokens` of `matrix`, widened to f32.
fn widened_rows(matrix: &dyn Widen, tokens: &[u32]) -> Result<Vec<f32>, LlmError> {
    let width = matrix.cols();
    let mut rows = vec![0f32; tokens.len() * width];
    for (&token, row) in tokens.iter().zip(rows.chunks_exact_mut(width)) {
        matrix.dequantize_row(in_vocabulary(token, matrix.rows())?, 0, row);
    }
    Ok(rows)
}

fn in_vocabulary(token: u32, vocab: usize) -> Result<usize, LlmError> {
    let token = token as usize;
    if token >= vocab {
        return Err(LlmError::InvalidOutput(format!(
            "token {token} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(token)
}

/// Runs `read` on the values of a contiguous f32 tensor in host memory, in place.
pub(super) fn with_host_values<R>(
    tensor: &Tensor,
    read: impl FnOnce(&[f32]) -> R,
) -> Result<R, LlmError> {
    let (storage, layout) = tensor.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(cpu), Some((start, end))) => Ok(read(&cpu.as_slice::<f32>()?[start..end])),
        _ => Err(LlmError::InvalidOutput(
            "a weight is not a contiguous f32 table in host memory".into(),
        )),
    }
}

/// The 8-bit copy of a projection that was not stacked, which [`HostWeights::new`]
/// checked is there.
fn packed(linear: &Linear) -> &Q8Matrix {
    linear
        .packed
        .as_ref()
        .expect("HostWeights exist only when every projection has an 8-bit copy")
}

/// `xs · Wᵀ (+ bias)` through an 8-bit matrix.
fn product(matrix: &Q8Matrix, xs: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let mut ys = matrix.matmul(xs);
    if let Some(bias) = bias {
        add_rows(&mut ys, bias);
    }
    ys
}

multiversion! {
    /// `rows[i] += add[i % add.len()]`: a residual (same length) or a bias (one row).
    pub(super) fn add_rows<M>(rows: &mut [f32], add: &[f32]) {
        for row in rows.chunks_exact_mut(add.len().max(1)) {
            for (r, a) in row.iter_mut().zip(add) {
                *r += a;
            }
        }
    }
}

/// RMS norm of each row of `weight.len()` values, scaled by `weight`: the mean of
/// squares in f32, then `x · (1 / √(mean + eps)) · w`, where candle divides each
/// value (within a rounding of it; a division a value was half the norm's time).
/// Runs of rows in parallel: on one core a Qwen prompt's two norms a layer were 2%
/// of its time. 512 rows of 896 took 0.65 ms before both changes, 0.20–0.25 after.
fn rms_norm_rows(xs: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    const ROWS_PER_TASK: usize = 16;
    let width = weight.len().max(1);
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(ROWS_PER_TASK * width)
        .zip(xs.par_chunks(ROWS_PER_TASK * width))
        .for_each(|(out, xs)| rms_norm_into(xs, weight, eps, out));
    out
}

multiversion! {
    /// [`rms_norm_rows`] of some rows, into `out`.
    fn rms_norm_into<M>(xs: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let width = weight.len().max(1);
        for (row, out) in xs.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let mean = dot::<M>(row, row) / width as f32;
            let inverse = 1.0 / (mean + eps).sqrt();
            for ((o, &x), &w) in out.iter_mut().zip(row).zip(weight) {
                *o = x * inverse * w;
            }
        }
    }
}

/// RoPE of every head in `xs` (`[heads, head_dim]`) at one position: pairs
/// `(2i, 2i + 1)` when `interleaved` (llama GGUF files), else `(i, i + half)`
/// (Qwen2's NeoX halves), as candle's `rope_i` and `rope` rotate them.
fn rotate_heads(xs: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = cos.len();
    for head in xs.chunks_exact_mut(2 * half) {
        for i in 0..half {
            let (a, b) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (x, y) = (head[a], head[b]);
            head[a] = x * cos[i] - y * sin[i];
            head[b] = x * sin[i] + y * cos[i];
        }
    }
}

/// The last row of each feed in `rows` (`counts[i]` rows for feed `i`, every row the
/// same width).
fn last_rows(rows: &[f32], counts: &[usize]) -> Vec<f32> {
    let width = rows.len() / counts.iter().sum::<usize>().max(1);
    let mut last = Vec::with_capacity(counts.len() * width);
    let mut end = 0;
    for count in counts {
        end += count;
        last.extend_from_slice(&rows[(end - 1) * width..end * width]);
    }
    last
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::model::{
        argmax, assert_close_logits, cached_model, cached_model_in, host_weights, max_difference,
        one_each, smollm2, smollm2_with_tensors,
    };

    fn numbers(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn rotation_matches_candles_rope_in_both_layouts() {
        let (heads, head_dim, position) = (3, 8, 5);
        let xs = numbers(heads * head_dim, 1);
        let angles = numbers(7 * head_dim / 2, 2);
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let at = position * head_dim / 2..(position + 1) * head_dim / 2;
        let device = Device::Cpu;
        let table =
            |v: &[f32]| Tensor::from_slice(&v[at.clone()], (1, head_dim / 2), &device).unwrap();
        let x = Tensor::from_slice(&xs, (1, heads, 1, head_dim), &device).unwrap();
        for interleaved in [true, false] {
            let want = if interleaved {
                candle_nn::rotary_emb::rope_i(&x, &table(&cos), &table(&sin))
            } else {
                candle_nn::rotary_emb::rope(&x, &table(&cos), &table(&sin))
            };
            let want = want
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut got = xs.clone();
            rotate_heads(&mut got, &cos[at.clone()], &sin[at.clone()], interleaved);
            assert!(
                max_difference(&got, &want) < 1e-6,
                "interleaved: {interleaved}"
            );
        }
    }

    #[test]
    fn norms_and_the_gated_activation_match_candle() {
        let (rows, width) = (3, 37);
        let xs = numbers(rows * width, 3);
        let weight = numbers(width, 4);
        let device = Device::Cpu;
        let x = Tensor::from_slice(&xs, (rows, width), &device).unwrap();
        let w = Tensor::from_slice(&weight, width, &device).unwrap();
        let want = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(max_difference(&rms_norm_rows(&xs, &weight, 1e-5), &want) < 1e-5);

        let up = numbers(rows * width, 5);
        let mut gate = xs.clone();
        silu_times(&mut gate, &up);
        let want: Vec<f32> = xs
            .iter()
            .zip(&up)
            .map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32)
            .collect();
        assert!(max_difference(&gate, &want) < 1e-6);
    }

    /// The whole step against candle's tensor path on the real model: same logits
    /// (up to summation order), the same next token, and caches that continue alike.
    #[test]
    fn a_step_on_host_buffers_matches_the_tensor_path() {
        let mut llm = smollm2_with_tensors();
        // In f32, as candle attends: the integer kernels are held to the
        // definition in `kv`.
        llm.model_mut().attend_in_f32();
        let model = llm.model();
        let host = host_weights(model);
        let prompts: [&[u32]; 2] = [&[1, 520, 2_000, 33, 7_000], &[42, 9, 314]];
        let mut caches: Vec<Cache> = prompts
            .iter()
            .map(|p| {
                let mut cache = model.new_cache();
                model.forward(p, &mut cache).expect("prompt");
                cache
            })
            .collect();
        let mut tokens = vec![100u32, 200];
        for _ in 0..3 {
            let mut on_tensors = caches.clone();
            let want = model
                .decode_through_tensors(&tokens, &mut on_tensors)
                .expect("tensors");
            let got = model
                .decode_on_host(host, &one_each(&tokens), &mut caches)
                .expect("host");
            for (g, w) in got.iter().zip(&want) {
                assert_close_logits(g, w, "step");
            }
            tokens = got.iter().map(|row| argmax(row)).collect();
        }
        assert!(caches
            .iter()
            .zip(prompts)
            .all(|(c, p)| c.len() == p.len() + 3));
    }

    /// On the CPU a model holds no f32 weights besides its 8-bit copies and Q6_K
    /// blocks: not for prompts, not for the output; SmolLM2's embedding rows come
    /// from the tied output's copy (Q8_0), Qwen's from its own (Q5_0). Loaded to run
    /// through candle's ops, a model keeps them all.
    #[test]
    fn a_cpu_model_holds_exact_weights_once() {
        let dense_count = |model: &Model| {
            let mut layers: Vec<&Linear> = Vec::new();
            for l in &model.layers {
                layers.extend([&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]);
            }
            layers.push(&model.output);
            layers.iter().filter(|p| p.dense.is_some()).count()
        };
        let llm = smollm2();
        let model = llm.model();
        assert_eq!(dense_count(model), 0);
        assert!(matches!(model.embedding, Embedding::Output));

        let all = smollm2_with_tensors();
        let model = all.model();
        assert_eq!(dense_count(model), model.layers.len() * 7 + 1);
        assert!(matches!(model.embedding, Embedding::Dense(_)));

        // Qwen's Q6_K projections keep the file's blocks instead of f32.
        let qwen = cached_model("qwen2.5-coder-0.5b-instruct");
        let model = qwen.model();
        assert_eq!(dense_count(model), 0);
        let q6k = model.layers.iter().filter(|l| l.down.q6k.is_some()).count();
        assert_eq!(q6k, 12);
        assert!(matches!(model.embedding, Embedding::Packed(_)));
    }

    /// The stacked bias holds each projection's bias (zeros for a missing one) at
    /// its rows of the stack, and each projection reads its own back.
    #[test]
    fn stacked_biases_sit_at_their_projections_rows() {
        let biases = [Some(vec![1.0, 2.0]), None, Some(vec![5.0])];
        let widths = [2, 3, 1];
        let stacked = side_by_side(&biases, &widths);
        assert_eq!(
            stacked.as_deref(),
            Some(&[1.0, 2.0, 0.0, 0.0, 0.0, 5.0][..])
        );
        assert_eq!(side_by_side(&[None, None, None], &widths), None);
        let matrix =
            || Q8Matrix::quantize(Layout::Panels, &[0.0; 32 * 4], 4, 32).expect("one panel");
        let layer = HostLayer {
            attn_norm: Vec::new(),
            ffn_norm: Vec::new(),
            qkv: matrix(),
            qkv_widths: widths,
            qkv_bias: stacked,
            gate_up: matrix(),
        };
        assert_eq!(layer.qkv_bias_of(0), Some(&[1.0, 2.0][..]));
        assert_eq!(layer.qkv_bias_of(1), Some(&[0.0, 0.0, 0.0][..]));
        assert_eq!(layer.qkv_bias_of(2), Some(&[5.0][..]));
    }

    /// A model names its products from the layout its 8-bit copies were loaded
    /// in, and candle's ops where it has no host weights.
    #[test]
    fn products_name_the_loaded_layout_or_candle() {
        let panels = cached_model_in("smollm2-135m-instruct", Layout::Panels);
        assert_eq!(panels.products(), "8-bit weights by f32 activations (FMA)");
        if crate::q8::int8_supported() {
            let twice = cached_model_in(
                "smollm2-135m-instruct",
                Layout::Int8(crate::q8::Rounding::Twice),
            );
            let products = twice.products();
            assert!(
                products.starts_with("int8, activations rounded to 8 bits twice"),
                "{products}"
            );
            // Its Q4_1 layers have packed copies wherever the CPU reads them.
            let packed = "; 4- and 5-bit weights packed for one to three rows";
            assert_eq!(products.ends_with(packed), crate::q8::packed_copies_here());
        }
        let mut tensors = smollm2_with_tensors();
        tensors.model_mut().host = None;
        assert_eq!(tensors.products(), "candle on the CPU, f32");
    }

    /// Without host weights (as on a GPU), a step of ragged feeds runs through
    /// candle's tensor ops, each feed after its own cache: the same next tokens as
    /// the host step, and logits within summation order.
    #[test]
    fn ragged_steps_without_host_weights_match_the_host_step() {
        let mut llm = cached_model_in("smollm2-135m-instruct", Layout::Panels);
        llm.model_mut().attend_in_f32();
        let model = llm.model();
        let mut tensors_llm = smollm2_with_tensors();
        tensors_llm.model_mut().host = None;
        tensors_llm.model_mut().attend_in_f32();
        let on_tensors = tensors_llm.model();
        let prompts: [&[u32]; 2] = [&[1, 520, 2_000, 33, 7_000], &[42, 9, 314]];
        let prefill = |model: &Model| -> Vec<Cache> {
            let caches = prompts.iter().map(|p| {
                let mut cache = model.new_cache();
                model.forward(p, &mut cache).expect("prompt");
                cache
            });
            caches.collect()
        };
        let (mut host_caches, mut tensor_caches) = (prefill(model), prefill(on_tensors));
        let feeds: [&[u32]; 2] = [&[100, 200, 300], &[9]];
        let want = model.step(&feeds, &mut host_caches).expect("host step");
        let got = on_tensors
            .step(&feeds, &mut tensor_caches)
            .expect("tensor step");
        for (g, w) in got.iter().zip(&want) {
            assert_close_logits(g, w, "ragged step");
        }
        let lens = |caches: &[Cache]| caches.iter().map(Cache::len).collect::<Vec<_>>();
        assert_eq!(lens(&tensor_caches), [8, 4]);
        assert_eq!(lens(&tensor_caches), lens(&host_caches));
    }

    /// Cutting a cache back to an earlier length gives back that cache exactly: a
    /// retry continues its prompt with the bits a copy kept aside would give.
    #[test]
    fn a_truncated_cache_continues_as_it_was() {
        let llm = smollm2();
        let model = llm.model();
        let mut prompt = model.new_cache();
        model
            .forward(&[1, 520, 2_000, 33, 7_000], &mut prompt)
            .expect("prompt");
        let mut kept = prompt.clone();
        let want = model
            .decode(&[5], std::slice::from_mut(&mut kept))
            .expect("step");

        let mut reused = prompt;
        model
            .forward(&[100, 200, 300], &mut reused)
            .expect("attempt");
        model
            .decode(&[7], std::slice::from_mut(&mut reused))
            .expect("step");
        model.truncate_cache(&mut reused, 5).expect("truncate");
        assert_eq!(reused.len(), 5);
        let got = model
            .decode(&[5], std::slice::from_mut(&mut reused))
            .expect("step");
        assert_eq!(got, want);
    }

    /// A feed of several tokens beside another sequence's one token gives the very
    /// bits of feeding them one at a time alone: the template's fixed text may join
    /// any batched step without changing what a conversation's summary says.
    #[test]
    fn several_tokens_in_one_step_are_the_bits_of_one_at_a_time() {
        let llm = smollm2();
        let model = llm.model();
        let host = host_weights(model);
        let mut base = model.new_cache();
        model
            .forward(&[1, 520, 2_000, 33, 7_000], &mut base)
            .expect("prompt");
        let feed = [100u32, 200, 300, 400];

        let mut alone = base.clone();
        let mut want = Vec::new();
        for token in feed {
            want = model
                .decode(&[token], std::slice::from_mut(&mut alone))
                .expect("step");
        }
        let mut together = vec![base.clone(), base];
        let got = model
            .decode_on_host(host, &[&feed, &[9]], &mut together)
            .expect("ragged step");
        assert_eq!(got[0], want[0]);
        assert_eq!(together[0].len(), alone.len());

        let next = model
            .decode(&[5], std::slice::from_mut(&mut alone))
            .expect("after");
        let together_next = model.decode(&[5], &mut together[..1]).expect("after");
        assert_eq!(together_next[0], next[0], "the caches continue alike");
    }
}
