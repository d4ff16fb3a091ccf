//! A compact decoder-only transformer for the llama family and Qwen2.
//!
//! The two differ only in a bias on the q/k/v projections (Qwen2), the RoPE layout (llama
//! GGUF files store q/k permuted for interleaved rotation, Qwen2 uses the NeoX halves),
//! RoPE theta and whether the output projection is tied to the embedding. Writing the
//! model here rather than using candle-transformers lets us choose the weight format per
//! use (see [`Linear`]) and keep the KV cache a plain value the caller owns, so a cache
//! for a shared prompt prefix can be cloned and extended per conversation.

mod host;
mod prompt;

use std::fs::File;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, D};

use crate::error::LlmError;
use crate::gguf::Metadata;
use crate::kv::{Heads, HostKv};
use crate::logits::Logits;
use crate::q6k::Q6kMatrix;
use crate::q8::{ExactBlocks, Layout, Q8Matrix, Widen};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Architecture {
    Llama,
    Qwen2,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub architecture: Architecture,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// Linear RoPE scaling (`rope.scaling.type = linear`): positions turn this many
    /// times slower. 1 without scaling.
    pub rope_linear_factor: f32,
    pub context_length: usize,
    /// The tokenizer's vocabulary (`tokenizer.ggml.tokens`): the embedding needs a
    /// row for each token.
    pub tokens: usize,
}

impl Config {
    /// The shape of the attention heads, as the host caches take it.
    fn heads(&self) -> Heads {
        Heads {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Scores are scaled by 1/√head_dim.
    fn attention_scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    pub(crate) fn from_metadata(meta: &Metadata<'_>) -> Result<Self, LlmError> {
        let name = meta.string("general.architecture")?;
        let architecture = match name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(meta.error(format!(
                    "architecture `{other}` is not supported (llama and qwen2 are)"
                )))
            }
        };
        let key = |suffix: &str| format!("{name}.{suffix}");
        let heads = meta.u32(&key("attention.head_count"))? as usize;
        let hidden = meta.u32(&key("embedding_length"))? as usize;
        let kv_heads = meta
            .optional(&key("attention.head_count_kv"), Metadata::u32)?
            .map_or(heads, |n| n as usize);
        if heads == 0
            || kv_heads == 0
            || !hidden.is_multiple_of(heads)
            || !heads.is_multiple_of(kv_heads)
        {
            return Err(meta.error(format!(
                "inconsistent attention shape: {heads} heads, {kv_heads} kv heads, width {hidden}"
            )));
        }
        let rope_theta = meta
            .optional(&key("rope.freq_base"), Metadata::f32)?
            .unwrap_or(10_000.0);
        let head_dim = hidden / heads;
        if !head_dim.is_multiple_of(2) {
            // RoPE rotates pairs of dimensions, and the cache holds them in pairs.
            return Err(meta.error(format!(
                "heads of {head_dim} dimensions (width {hidden} over {heads} heads): \
                 an odd head size is not supported"
            )));
        }
        if let Some(rotated) = meta.optional(&key("rope.dimension_count"), Metadata::u32)? {
            let rotated = rotated as usize;
            if rotated != head_dim {
                return Err(meta.error(format!(
                    "{name}.rope.dimension_count is {rotated} for heads of {head_dim}: \
                     rotating part of a head is not supported"
                )));
            }
        }
        // Zero layers or context, or a norm's epsilon or RoPE's base that is not a
        // positive number, load without complaint and then write nothing usable.
        let positive = |key: String| -> Result<usize, LlmError> {
            match meta.u32(&key)? {
                0 => Err(meta.error(format!("GGUF metadata `{key}` is 0"))),
                n => Ok(n as usize),
            }
        };
        let rms_eps = meta.f32(&key("attention.layer_norm_rms_epsilon"))?;
        for (what, value) in [
            ("attention.layer_norm_rms_epsilon", rms_eps),
            ("rope.freq_base", rope_theta),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(meta.error(format!(
                    "GGUF metadata `{name}.{what}` is {value}, where it must be a positive number"
                )));
            }
        }
        Ok(Config {
            architecture,
            layers: positive(key("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            rms_eps,
            rope_theta,
            rope_linear_factor: rope_linear_factor(meta, name)?,
            context_length: positive(key("context_length"))?,
            tokens: meta.array_len("tokenizer.ggml.tokens")?,
        })
    }
}

/// The factor of a model's linear RoPE scaling, 1 without any. Other scalings
/// (YaRN, LongRoPE) are refused by name: run without them, every position would
/// turn at the wrong rate, and the model would write worse text with no error.
fn rope_linear_factor(meta: &Metadata<'_>, arch: &str) -> Result<f32, LlmError> {
    let kind = format!("{arch}.rope.scaling.type");
    match meta.optional(&kind, Metadata::string)?.unwrap_or("none") {
        "none" => Ok(1.0),
        "linear" => {
            let key = format!("{arch}.rope.scaling.factor");
            let factor = meta.f32(&key)?;
            if factor.is_finite() && factor >= 1.0 {
                Ok(factor)
            } else {
                Err(meta.error(format!("{key} is {factor}; a linear scaling is 1 or more")))
            }
        }
        other => Err(meta.error(format!(
            "{kind} is `{other}`; RoPE scaling of that kind is not supported (none and linear are)"
        ))),
    }
}

/// A projection. On the CPU its weights are our own 8-bit [`Q8Matrix`]: decoding and
/// short feeds multiply it directly (few rows: bound by the bytes streamed, a quarter
/// of f32's), and prompts widen it to f32 a slab at a time for GEMM (many rows: f32
/// GEMM runs near the FMA units' peak; see `prompt`). Every GGUF type is re-packed to
/// it at load, so types without a SIMD kernel in candle (Q4_1, Q5_0…) never take a
/// scalar path.
struct Linear {
    /// candle's f32 weights: on a GPU, where the model runs through candle's ops, or
    /// for a type that the 8-bit copy rounds and `q6k` does not hold (so that prompts
    /// still multiply the file's weights). Holding them for every projection would
    /// double a model's memory: Qwen 0.5B's are 2 GB.
    dense: Option<Tensor>,
    /// The file's Q6_K blocks, which prompts widen (the 8-bit copy is rounded).
    q6k: Option<Q6kMatrix>,
    /// Moved into the host steps' stacks for the projections that share an input
    /// (see `host`), so the 8-bit weights are held once.
    packed: Option<Q8Matrix>,
    bias: Option<Tensor>,
}

/// Up to this many rows (tokens, summed over sequences) a product streams the 8-bit
/// weights; above it the dense GEMM is faster. Measured on Qwen's 4864 × 896
/// projection on two cores: 8-bit 0.31 / 1.70 / 2.55 ms at 1 / 16 / 24 rows, dense
/// 0.62 / 2.11 / 2.45 ms.
const PACKED_MAX_ROWS: usize = 16;

/// The most tokens a sequence may feed in one [`Model::step`]; longer feeds (prompts)
/// are read on their own. The summariser's longest piece of skeleton (the forced
/// languages and score, then the next key) is 24 tokens for Qwen: at 16 it was read
/// alone, a whole pass over the weights while the 31 other conversations waited.
pub(crate) const STEP_MAX_TOKENS: usize = 32;

impl Linear {
    /// `decoding`: every sequence in `xs` is one new token. Then the 8-bit copy is
    /// used whatever the number of sequences, so that a row's result does not depend
    /// on the batch it is in (the kernel sums each row in one fixed order) and batched
    /// decoding gives exactly the tokens of one-at-a-time decoding.
    fn forward(&self, xs: &Tensor, decoding: bool) -> candle_core::Result<Tensor> {
        let width = xs.dim(D::Minus1)?;
        let rows = xs.elem_count() / width.max(1);
        let ys = match &self.packed {
            Some(q) if decoding || rows <= PACKED_MAX_ROWS => {
                let input = xs.flatten_all()?.to_vec1::<f32>()?;
                let mut dims = xs.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = q.rows();
                }
                Tensor::from_vec(q.matmul(&input), dims, xs.device())?
            }
            _ => {
                let dense = self.dense.as_ref().ok_or_else(|| {
                    candle_core::Error::Msg("a projection has no f32 weights for candle".into())
                })?;
                xs.broadcast_matmul(&dense.t()?)?
            }
        };
        match &self.bias {
            Some(bias) => ys.broadcast_add(bias),
            None => Ok(ys),
        }
    }

    /// The compact form that holds the file's own weights: the Q6_K blocks, or an
    /// 8-bit copy that is exact.
    fn exact_form(&self) -> Option<&dyn Widen> {
        match (&self.q6k, &self.packed) {
            (Some(blocks), _) => Some(blocks),
            (None, Some(packed)) if packed.is_exact() => Some(packed),
            _ => None,
        }
    }

    /// Gives the projection candle's f32 weights, widened from its exact form when
    /// it was loaded without them.
    fn ensure_dense(&mut self, device: &Device) -> Result<(), LlmError> {
        let source = match (&self.dense, self.exact_form()) {
            (None, Some(source)) => source,
            _ => return Ok(()),
        };
        let (rows, cols) = (source.rows(), source.cols());
        let mut weights = vec![0f32; rows * cols];
        source.dequantize(0..rows, 0..cols, &mut weights);
        self.dense = Some(Tensor::from_vec(weights, (rows, cols), device)?);
        Ok(())
    }
}

struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    fn linears(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }
}

pub(crate) struct Model {
    config: Config,
    embedding: Embedding,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    /// Present on the CPU: steps and prompts run on host buffers (see `host` and
    /// `prompt`); on a GPU, and for weights without 8-bit copies, candle runs them.
    host: Option<host::HostWeights>,
    /// Held while a prompt is read on host buffers, one at a time (see `prompt`):
    /// the slab its weights are widened into, kept from prompt to prompt.
    reading_prompt: std::sync::Mutex<Vec<f32>>,
    /// The kernels that attend over caches held on the host.
    attention: crate::kv::Kernel,
}

/// Where a token's embedding row is read.
enum Embedding {
    /// candle's f32 table (a GPU, candle's ops, or a type that is not copied exactly).
    Dense(Tensor),
    /// The exact 8-bit copy, widened row by row as tokens come.
    Packed(Q8Matrix),
    /// The file's Q6_K blocks, widened row by row.
    Q6k(Q6kMatrix),
    /// The output projection's exact form (see [`Linear::exact_form`]): the two are
    /// one matrix (SmolLM2).
    Output,
}

/// Keys and values of every layer for the tokens seen so far. A plain value: cloning
/// it is cheap (buffers are shared until one side appends) and gives an independent
/// continuation, which is how a prompt prefix is reused.
#[derive(Clone, Default)]
pub(crate) struct Cache {
    layers: Vec<LayerKv>,
    len: usize,
}

/// One layer's keys and values.
#[derive(Clone, Default)]
enum LayerKv {
    #[default]
    Empty,
    /// On the CPU: host memory, appended in place (see `kv`).
    Host(HostKv),
    /// On a GPU: tensors `[1, kv_heads, tokens, head_dim]`, appended with `cat`.
    Device(Tensor, Tensor),
}

impl Cache {
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Model {
    /// Forgets every token of `cache` after its first `len`. Appending never changes
    /// the tokens before, so this gives back the cache exactly as it was at `len`:
    /// a retry continues its prompt from the one cache instead of a copy kept aside.
    pub(crate) fn truncate_cache(&self, cache: &mut Cache, len: usize) -> Result<(), LlmError> {
        if len >= cache.len {
            return Ok(());
        }
        for slot in &mut cache.layers {
            match slot {
                LayerKv::Empty => {}
                LayerKv::Host(kv) => kv.truncate(len, self.config.heads()),
                LayerKv::Device(k, v) => {
                    *slot = LayerKv::Device(k.narrow(2, 0, len)?, v.narrow(2, 0, len)?);
                }
            }
        }
        cache.len = len;
        Ok(())
    }

    /// Makes what `cache` holds read-only and shared by its clones (see
    /// [`HostKv::freeze`]): for a prefix that many sessions continue.
    pub(crate) fn freeze_cache(&self, cache: &mut Cache) {
        for slot in &mut cache.layers {
            if let LayerKv::Host(kv) = slot {
                kv.freeze(self.config.head_dim);
            }
        }
    }
}

struct Loader<'a> {
    content: &'a Content,
    file: File,
    meta: &'a Metadata<'a>,
    device: &'a Device,
    /// Which of candle's f32 weights to keep.
    tensors: Tensors,
    /// The layout of the 8-bit copies, which picks their kernel.
    layout: Layout,
    /// `general.alignment` (32 where absent): every tensor starts at a multiple.
    alignment: u64,
}

/// Which of candle's f32 weights a CPU model keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tensors {
    /// Only those the host code needs: the rounded types' (see [`Linear::dense`]).
    Needed,
    /// All of them, to run a model through candle's ops on the CPU (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    All,
}

impl Loader<'_> {
    /// `name`'s shape as the file declares it, checked against `want` (`None`: any
    /// size there) before its data is read. The products index by the model's
    /// settings, so a file whose tensors disagree with them is refused here, by
    /// name, rather than failing in a product halfway through a run.
    fn shape(&self, name: &str, want: &[Option<usize>]) -> Result<Vec<usize>, LlmError> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(self.meta.error(format!("missing tensor `{name}`")));
        };
        let dims = info.shape.dims();
        let fits = dims.len() == want.len()
            && dims
                .iter()
                .zip(want)
                .all(|(d, w)| w.is_none_or(|w| *d == w));
        if !fits {
            let wanted: Vec<String> = want
                .iter()
                .map(|w| w.map_or("any".to_string(), |w| w.to_string()))
                .collect();
            return Err(self.meta.error(format!(
                "tensor `{name}` has the shape {dims:?} where the file's settings make it [{}]: \
                 the file is corrupt or was converted wrongly",
                wanted.join(", ")
            )));
        }
        Ok(dims.to_vec())
    }

    fn qtensor(&mut self, name: &str, want: &[Option<usize>]) -> Result<QTensor, LlmError> {
        self.shape(name, want)?;
        // The format puts every tensor at a multiple of the file's alignment; one
        // elsewhere would be read from the wrong bytes, without an error.
        let alignment = self.alignment;
        let offset = self.content.tensor_infos[name].offset;
        if !offset.is_multiple_of(alignment) {
            return Err(self.meta.error(format!(
                "tensor `{name}` starts at {offset}, not a multiple of the file's alignment \
                 ({alignment}): the file is corrupt"
            )));
        }
        self.content
            .tensor(&mut self.file, name, self.device)
            .map_err(|e| self.meta.error(format!("tensor `{name}`: {e}")))
    }

    /// A vector of `len` values.
    fn dense(&mut self, name: &str, len: usize) -> Result<Tensor, LlmError> {
        Ok(self.qtensor(name, &[Some(len)])?.dequantize(self.device)?)
    }

    fn optional_dense(&mut self, name: &str, len: usize) -> Result<Option<Tensor>, LlmError> {
        if self.content.tensor_infos.contains_key(name) {
            self.dense(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Llama 3.1's and later's `rope_freqs.weight`: per pair of dimensions, how many
    /// times slower it turns than plain RoPE (its long-context scaling, which the
    /// converter writes as this tensor rather than as settings). `None` when absent.
    fn rope_factors(&mut self, pairs: usize) -> Result<Option<Vec<f32>>, LlmError> {
        const NAME: &str = "rope_freqs.weight";
        let Some(factors) = self.optional_dense(NAME, pairs)? else {
            return Ok(None);
        };
        let factors = factors.flatten_all()?.to_vec1::<f32>()?;
        if factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
            return Err(self.meta.error(format!(
                "`{NAME}` must hold {pairs} positive factors (one per pair of a head's dimensions)"
            )));
        }
        Ok(Some(factors))
    }

    /// The projection `name` from `cols` inputs to `rows` outputs.
    fn linear(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear, LlmError> {
        let q = self.qtensor(&format!("{name}.weight"), &[Some(rows), Some(cols)])?;
        let mut linear = self.linear_of(&q)?;
        linear.bias = self.optional_dense(&format!("{name}.bias"), rows)?;
        Ok(linear)
    }

    /// The projection by `q`: its exact 8-bit copy alone where there is one; for
    /// Q6_K, the file's blocks and a rounded 8-bit copy; else candle's f32 weights
    /// and (on the CPU) their rounded 8-bit copy.
    fn linear_of(&self, q: &QTensor) -> Result<Linear, LlmError> {
        let linear = |dense, q6k, packed| Linear {
            dense,
            q6k,
            packed,
            bias: None,
        };
        let mut linear = match exact_copy(q, self.device, self.layout)? {
            Some(packed) => linear(None, None, Some(packed)),
            None => {
                let dense = q.dequantize(self.device)?;
                let packed = rounded_copy(&dense, self.layout)?;
                match q6k_blocks(q, self.device)? {
                    // The file's blocks stand in for the f32 weights.
                    Some(blocks) => linear(None, Some(blocks), packed),
                    None => linear(Some(dense), None, packed),
                }
            }
        };
        if self.tensors == Tensors::All && linear.dense.is_none() {
            // candle's own numbers, not our widening: tests hold the one to the other.
            linear.dense = Some(q.dequantize(self.device)?);
        }
        Ok(linear)
    }
}

/// The 8-bit copy of a weight that holds the file's own weights: only on the CPU
/// (GPUs run dense f32 fast enough), for the legacy block types and Q4_K, and
/// matrices whose rows are whole blocks.
fn exact_copy(q: &QTensor, device: &Device, layout: Layout) -> Result<Option<Q8Matrix>, LlmError> {
    if !device.is_cpu() {
        return Ok(None);
    }
    let (rows, cols) = q.shape().dims2()?;
    let exact = match q.dtype() {
        GgmlDType::Q4_0 => Some(ExactBlocks::Q4_0),
        GgmlDType::Q4_1 => Some(ExactBlocks::Q4_1),
        GgmlDType::Q5_0 => Some(ExactBlocks::Q5_0),
        GgmlDType::Q5_1 => Some(ExactBlocks::Q5_1),
        GgmlDType::Q8_0 => Some(ExactBlocks::Q8_0),
        GgmlDType::Q4K => Some(ExactBlocks::Q4K),
        _ => None,
    };
    match exact {
        Some(kind) => Ok(Q8Matrix::from_blocks(layout, kind, &q.data()?, rows, cols)),
        None => Ok(None),
    }
}

/// A Q6_K matrix's blocks as the file stores them: only on the CPU.
fn q6k_blocks(q: &QTensor, device: &Device) -> Result<Option<Q6kMatrix>, LlmError> {
    if !device.is_cpu() || q.dtype() != GgmlDType::Q6K {
        return Ok(None);
    }
    let (rows, cols) = q.shape().dims2()?;
    Ok(Q6kMatrix::new(q.data()?.to_vec(), rows, cols))
}

/// The 8-bit copy of weights of another type (Q6_K…), rounded once: only on the CPU,
/// for matrices whose rows are whole blocks.
fn rounded_copy(dense: &Tensor, layout: Layout) -> Result<Option<Q8Matrix>, LlmError> {
    if !dense.device().is_cpu() {
        return Ok(None);
    }
    let (rows, cols) = dense.dims2()?;
    let weights = dense.flatten_all()?.to_vec1::<f32>()?;
    Ok(Q8Matrix::quantize(layout, &weights, rows, cols))
}

impl Model {
    pub(crate) fn load(
        content: &Content,
        meta: &Metadata<'_>,
        config: Config,
        max_context: usize,
        device: &Device,
        tensors: Tensors,
        layout: Layout,
    ) -> Result<Self, LlmError> {
        let file = File::open(meta.path()).map_err(|source| LlmError::Io {
            path: meta.path().to_path_buf(),
            source,
        })?;
        let alignment = meta.optional("general.alignment", Metadata::u32)?;
        let mut loader = Loader {
            content,
            file,
            meta,
            device,
            tensors,
            layout,
            // `gguf::read_content` has refused 0.
            alignment: u64::from(alignment.unwrap_or(32).max(1)),
        };
        let width = config.heads * config.head_dim;
        let kv_width = config.kv_heads * config.head_dim;
        let embedding_q = loader.qtensor("token_embd.weight", &[None, Some(width)])?;
        let rows = embedding_q.shape().dims()[0];
        if rows < config.tokens {
            return Err(meta.error(format!(
                "the tokenizer has {} tokens but `token_embd.weight` only {rows} rows: \
                 the file is corrupt or was converted wrongly",
                config.tokens
            )));
        }
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let p = format!("blk.{i}");
            let ffn = loader.shape(&format!("{p}.ffn_gate.weight"), &[None, Some(width)])?[0];
            layers.push(Layer {
                attn_norm: loader.dense(&format!("{p}.attn_norm.weight"), width)?,
                q: loader.linear(&format!("{p}.attn_q"), width, width)?,
                k: loader.linear(&format!("{p}.attn_k"), kv_width, width)?,
                v: loader.linear(&format!("{p}.attn_v"), kv_width, width)?,
                o: loader.linear(&format!("{p}.attn_output"), width, width)?,
                ffn_norm: loader.dense(&format!("{p}.ffn_norm.weight"), width)?,
                gate: loader.linear(&format!("{p}.ffn_gate"), ffn, width)?,
                up: loader.linear(&format!("{p}.ffn_up"), ffn, width)?,
                down: loader.linear(&format!("{p}.ffn_down"), width, ffn)?,
            });
        }
        let output_norm = loader.dense("output_norm.weight", width)?;
        let tied = !content.tensor_infos.contains_key("output.weight");
        let mut output = match tied {
            true => loader.linear_of(&embedding_q)?,
            false => loader.linear("output", rows, width)?,
        };
        let rope_factors = loader.rope_factors(config.head_dim / 2)?;
        let (cos, sin) = rope_tables(&config, rope_factors.as_deref(), max_context, device)?;
        let host = host::HostWeights::new(&mut layers, &output_norm, &mut output, (&cos, &sin))?;
        let embedding = if host.is_some() && tensors == Tensors::Needed {
            // The host multiplies the output by its 8-bit copy only; its Q6_K blocks
            // serve embedding lookups, when the two are one matrix.
            output.dense = None;
            if !tied {
                output.q6k = None;
            }
            host_embedding(&embedding_q, tied.then_some(&output), device, layout)?
        } else {
            // candle's ops run this model: every projection needs its f32 weights.
            for linear in layers
                .iter_mut()
                .flat_map(Layer::linears)
                .chain([&mut output])
            {
                linear.ensure_dense(device)?;
            }
            match (tied, &output.dense) {
                // One table for both: on a GPU a second would cost its whole size.
                (true, Some(table)) => Embedding::Dense(table.clone()),
                _ => Embedding::Dense(embedding_q.dequantize(device)?),
            }
        };
        Ok(Model {
            embedding,
            layers,
            output_norm,
            output,
            cos,
            sin,
            host,
            reading_prompt: std::sync::Mutex::new(Vec::new()),
            attention: crate::kv::Kernel::for_heads(config.head_dim),
            config,
        })
    }

    /// Attends in f32 (the cache widened), where the fastest kernels round the
    /// queries and weights to integers: for tests that hold the host path to
    /// candle's f32 attention, or measure the products' rounding alone.
    #[cfg(test)]
    pub(crate) fn attend_in_f32(&mut self) {
        self.attention = crate::kv::Kernel::Plain;
    }

    /// How the projections are multiplied here, in words: the 8-bit layout and its
    /// kernel where the host code runs them, else candle's ops.
    pub(crate) fn products(&self) -> String {
        let host = self.host.as_ref();
        match host.and_then(|host| Some((host.layout()?, host.has_packed_copies()))) {
            Some((layout, true)) => format!(
                "{}; 4- and 5-bit weights packed for one to three rows",
                layout.describe()
            ),
            Some((layout, false)) => layout.describe(),
            None if self.output_norm.device().is_cpu() => "candle on the CPU, f32".to_string(),
            None => "candle on the GPU, f32".to_string(),
        }
    }

    pub(crate) fn new_cache(&self) -> Cache {
        Cache {
            layers: vec![LayerKv::Empty; self.layers.len()],
            len: 0,
        }
    }

    /// Runs `tokens` after what `cache` holds and returns the logits of the last token.
    pub(crate) fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Logits, LlmError> {
        let count = tokens.len();
        if count == 0 {
            return Err(LlmError::InvalidOutput("no tokens to run".into()));
        }
        self.check_room(cache.len + count)?;
        if let Some(host) = &self.host {
            if count > STEP_MAX_TOKENS {
                return self.prefill_on_host(host, tokens, cache);
            }
            let mut rows = self.step(&[tokens], std::slice::from_mut(cache))?;
            return rows
                .pop()
                .ok_or_else(|| LlmError::InvalidOutput("a step returned no logits".into()));
        }
        self.forward_through_tensors(tokens, cache)
    }

    /// [`Model::forward`] with candle's tensor ops, as on a GPU.
    fn forward_through_tensors(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
    ) -> Result<Logits, LlmError> {
        let count = tokens.len();
        let device = self.output_norm.device();
        let ids = Tensor::new(tokens, device)?;
        let xs = self
            .embedding_table()?
            .index_select(&ids, 0)?
            .unsqueeze(0)?;
        let mask = causal_mask(count, cache.len, device)?;
        let xs = self.layers_forward(xs, std::slice::from_mut(cache), mask.as_ref())?;
        let last = xs.narrow(1, count - 1, 1)?;
        Ok(Logits::from(self.logits(&last)?.flatten_all()?.to_vec1()?))
    }

    /// Decodes one step of several sequences at once: `tokens[i]` follows what
    /// `caches[i]` holds. Every weight is read once per step for all sequences, which
    /// is what decoding (bound by memory, not arithmetic) needs to go faster. Returns
    /// each sequence's logits.
    pub(crate) fn decode(
        &self,
        tokens: &[u32],
        caches: &mut [Cache],
    ) -> Result<Vec<Logits>, LlmError> {
        self.step(&one_each(tokens), caches)
    }

    /// [`Model::decode`] with up to [`STEP_MAX_TOKENS`] tokens per sequence: `feeds[i]`
    /// follows what `caches[i]` holds. A template's fixed text between two values is
    /// such a feed; run beside other sequences' tokens it shares their pass over the
    /// weights instead of making its own. Returns the logits after each feed.
    pub(crate) fn step(
        &self,
        feeds: &[&[u32]],
        caches: &mut [Cache],
    ) -> Result<Vec<Logits>, LlmError> {
        if feeds.is_empty() || feeds.len() != caches.len() {
            return Err(LlmError::InvalidOutput(format!(
                "{} feeds for {} sequences",
                feeds.len(),
                caches.len()
            )));
        }
        for (feed, cache) in feeds.iter().zip(caches.iter()) {
            if feed.is_empty() || feed.len() > STEP_MAX_TOKENS {
                return Err(LlmError::InvalidOutput(format!(
                    "a step feeds 1 to {STEP_MAX_TOKENS} tokens per sequence, not {}",
                    feed.len()
                )));
            }
            self.check_room(cache.len + feed.len())?;
        }
        if let Some(host) = &self.host {
            return self.decode_on_host(host, feeds, caches);
        }
        if feeds.iter().all(|feed| feed.len() == 1) {
            let tokens: Vec<u32> = feeds.iter().map(|feed| feed[0]).collect();
            return self.decode_through_tensors(&tokens, caches);
        }
        feeds
            .iter()
            .zip(caches.iter_mut())
            .map(|(feed, cache)| self.forward(feed, cache))
            .collect()
    }

    /// [`Model::decode`] with candle's tensor ops, as on a GPU.
    fn decode_through_tensors(
        &self,
        tokens: &[u32],
        caches: &mut [Cache],
    ) -> Result<Vec<Logits>, LlmError> {
        let ids = Tensor::new(tokens, self.output_norm.device())?;
        let xs = self
            .embedding_table()?
            .index_select(&ids, 0)?
            .unsqueeze(1)?;
        let xs = self.layers_forward(xs, caches, None)?;
        let all = self.logits(&xs)?.flatten_all()?.to_vec1()?;
        Ok(Logits::rows(all, tokens.len()))
    }

    /// candle's embedding table, which a model that runs through candle's ops has.
    fn embedding_table(&self) -> Result<&Tensor, LlmError> {
        match &self.embedding {
            Embedding::Dense(table) => Ok(table),
            _ => Err(LlmError::InvalidOutput(
                "this model has no f32 embedding table for candle's ops".into(),
            )),
        }
    }

    fn check_room(&self, total: usize) -> Result<(), LlmError> {
        let context = self.cos.dim(0)?;
        if total > context {
            return Err(LlmError::InvalidOutput(format!(
                "{total} tokens exceed the context of {context}"
            )));
        }
        Ok(())
    }

    /// `xs` is `[sequences, tokens, width]`, sequence `i` continuing `caches[i]`.
    fn layers_forward(
        &self,
        mut xs: Tensor,
        caches: &mut [Cache],
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let decoding = xs.dim(1)? == 1;
        for (index, layer) in self.layers.iter().enumerate() {
            let normed = candle_nn::ops::rms_norm(&xs, &layer.attn_norm, self.config.rms_eps)?;
            let attended = self.attention(index, &normed, mask, caches)?;
            xs = (xs + attended)?;
            let normed = candle_nn::ops::rms_norm(&xs, &layer.ffn_norm, self.config.rms_eps)?;
            let gated = (candle_nn::ops::silu(&layer.gate.forward(&normed, decoding)?)?
                * layer.up.forward(&normed, decoding)?)?;
            xs = (xs + layer.down.forward(&gated, decoding)?)?;
        }
        let count = xs.dim(1)?;
        for cache in caches.iter_mut() {
            cache.len += count;
        }
        Ok(xs)
    }

    /// Logits of one position per sequence, which is a decoding-shaped product.
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let normed = candle_nn::ops::rms_norm(xs, &self.output_norm, self.config.rms_eps)?;
        self.output.forward(&normed, true)
    }

    /// Projections run on all sequences together; rotation, the cache and attention
    /// per sequence, since each has its own position and history.
    fn attention(
        &self,
        index: usize,
        xs: &Tensor,
        mask: Option<&Tensor>,
        caches: &mut [Cache],
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let layer = &self.layers[index];
        let (batch, count, width) = xs.dims3()?;
        let decoding = count == 1;
        let split = |t: Tensor, heads: usize| {
            t.reshape((batch, count, heads, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(layer.q.forward(xs, decoding)?, c.heads)?;
        let k = split(layer.k.forward(xs, decoding)?, c.kv_heads)?;
        let v = split(layer.v.forward(xs, decoding)?, c.kv_heads)?;
        if decoding && xs.device().is_cpu() {
            let out = self.attend_new_tokens(index, &q, &k, &v, caches)?;
            let out = out.transpose(1, 2)?.reshape((batch, count, width))?;
            return layer.o.forward(&out, decoding);
        }
        let mut outs = Vec::with_capacity(batch);
        for (i, cache) in caches.iter_mut().enumerate() {
            let pick = |t: &Tensor| t.narrow(0, i, 1);
            let cos = self.cos.narrow(0, cache.len, count)?;
            let sin = self.sin.narrow(0, cache.len, count)?;
            outs.push(self.attend(
                &pick(&q)?,
                &pick(&k)?,
                &pick(&v)?,
                (&cos, &sin),
                mask,
                &mut cache.layers[index],
            )?);
        }
        let out = Tensor::cat(&outs, 0)?;
        let out = out.transpose(1, 2)?.reshape((batch, count, width))?;
        layer.o.forward(&out, decoding)
    }

    /// One new token per sequence on the CPU (`q`, `k`, `v`: `[sequences, heads, 1,
    /// head_dim]`): each sequence's key and value are appended to its host cache,
    /// then every sequence and head attends in parallel. Over a long context this is
    /// as much work as the weights, so it must not run on one core.
    fn attend_new_tokens(
        &self,
        index: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        caches: &mut [Cache],
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let shape = c.heads();
        let mut queries = Vec::with_capacity(caches.len());
        for (i, cache) in caches.iter_mut().enumerate() {
            let pick = |t: &Tensor| t.narrow(0, i, 1);
            let cos = self.cos.narrow(0, cache.len, 1)?;
            let sin = self.sin.narrow(0, cache.len, 1)?;
            let (q, k) = self.rotate(&pick(q)?, &pick(k)?, (&cos, &sin))?;
            // One token: [1, kv_heads, 1, head_dim] is already token-major.
            host_kv(&mut cache.layers[index]).append(
                shape,
                &k.flatten_all()?.to_vec1::<f32>()?,
                &pick(v)?.flatten_all()?.to_vec1::<f32>()?,
            );
            queries.push(q.flatten_all()?.to_vec1::<f32>()?);
        }
        let scale = c.attention_scale() as f32;
        let outs: Vec<f32> = caches
            .par_iter()
            .zip(queries.par_iter())
            .map(|(cache, query)| match &cache.layers[index] {
                LayerKv::Host(kv) => kv.attend_one(self.attention, query, shape, scale),
                _ => unreachable!("every sequence's cache was made a host cache above"),
            })
            .collect::<Vec<_>>()
            .concat();
        Tensor::from_vec(outs, (caches.len(), c.heads, 1, c.head_dim), q.device())
    }

    /// RoPE in the family's layout.
    fn rotate(
        &self,
        q: &Tensor,
        k: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
    ) -> candle_core::Result<(Tensor, Tensor)> {
        match self.config.architecture {
            Architecture::Llama => Ok((
                candle_nn::rotary_emb::rope_i(q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(k, cos, sin)?,
            )),
            Architecture::Qwen2 => Ok((
                candle_nn::rotary_emb::rope(q, cos, sin)?,
                candle_nn::rotary_emb::rope(k, cos, sin)?,
            )),
        }
    }

    /// One sequence's attention: `q`, `k`, `v` are `[1, heads, tokens, head_dim]`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        slot: &mut LayerKv,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (q, k) = self.rotate(q, k, (cos, sin))?;
        let scale = c.attention_scale();
        if k.device().is_cpu() {
            return self.attend_host(&q, &k, v, mask, slot, scale);
        }
        let (k, v) = match std::mem::take(slot) {
            LayerKv::Device(past_k, past_v) => (
                Tensor::cat(&[&past_k, &k], 2)?,
                Tensor::cat(&[&past_v, v], 2)?,
            ),
            _ => (k, v.clone()),
        };
        *slot = LayerKv::Device(k.clone(), v.clone());
        let k = repeat_kv(k, c.heads / c.kv_heads)?;
        let v = repeat_kv(v, c.heads / c.kv_heads)?;
        masked_attention(&q, &k, &v, mask, scale)
    }

    /// [`Model::attend`] on the CPU for several new tokens (one new token per
    /// sequence takes [`Model::attend_new_tokens`]): GEMM over the cache widened once.
    fn attend_host(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        slot: &mut LayerKv,
        scale: f64,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let shape = c.heads();
        // [1, kv_heads, tokens, head_dim] -> [tokens, kv_heads, head_dim]
        let token_major = |t: &Tensor| t.squeeze(0)?.transpose(0, 1)?.flatten_all()?.to_vec1();
        let kv = host_kv(slot);
        kv.append(shape, &token_major(k)?, &token_major(v)?);
        let tokens = kv.len();
        let (keys, values) = kv.head_major(c.head_dim);
        let as_heads =
            |buf: Vec<f32>| Tensor::from_vec(buf, (1, c.kv_heads, tokens, c.head_dim), q.device());
        let k = repeat_kv(as_heads(keys)?, c.heads / c.kv_heads)?;
        let v = repeat_kv(as_heads(values)?, c.heads / c.kv_heads)?;
        masked_attention(q, &k, &v, mask, scale)
    }
}

/// The host cache in `slot`, made one if the slot is still empty.
fn host_kv(slot: &mut LayerKv) -> &mut HostKv {
    if !matches!(slot, LayerKv::Host(_)) {
        *slot = LayerKv::Host(HostKv::default());
    }
    match slot {
        LayerKv::Host(kv) => kv,
        _ => unreachable!("the slot was made a host cache above"),
    }
}

/// Softmax attention of `q` over `k`, `v` (`[1, heads, tokens, head_dim]`).
fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

/// The embedding table for the host code: the tied output's copy or the embedding's
/// own when exact, else f32 (the rows must be the file's).
fn host_embedding(
    q: &QTensor,
    tied_output: Option<&Linear>,
    device: &Device,
    layout: Layout,
) -> Result<Embedding, LlmError> {
    if tied_output.and_then(Linear::exact_form).is_some() {
        return Ok(Embedding::Output);
    }
    if let Some(copy) = exact_copy(q, device, layout)? {
        return Ok(Embedding::Packed(copy));
    }
    Ok(match q6k_blocks(q, device)? {
        Some(blocks) => Embedding::Q6k(blocks),
        None => Embedding::Dense(q.dequantize(device)?),
    })
}

/// RoPE's cosines and sines by position and pair of dimensions: pair `i` turns by
/// `theta^(-2i / head_dim)` a position, divided by `factors[i]` where given (as
/// llama.cpp reads `rope_freqs.weight`) and by a linear scaling's factor.
fn rope_tables(
    config: &Config,
    factors: Option<&[f32]>,
    max_context: usize,
    device: &Device,
) -> Result<(Tensor, Tensor), LlmError> {
    let half = config.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let factor = factors.map_or(1.0, |f| f[i]) * config.rope_linear_factor;
            1.0 / (config
                .rope_theta
                .powf(2.0 * i as f32 / config.head_dim as f32)
                * factor)
        })
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
    let positions = Tensor::arange(0u32, max_context as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((max_context, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// `-inf` above the diagonal, offset by the `start` tokens already in the cache; `None`
/// for a single token, which may attend to everything before it.
fn causal_mask(count: usize, start: usize, device: &Device) -> candle_core::Result<Option<Tensor>> {
    if count == 1 {
        return Ok(None);
    }
    let total = start + count;
    let values: Vec<f32> = (0..count)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (count, total), device).map(Some)
}

/// SmolLM2 from the model cache, for the tests that check our host code against
/// candle's ops on real weights.
#[cfg(test)]
pub(crate) fn smollm2() -> crate::llm::LocalLlm {
    cached_model("smollm2-135m-instruct")
}

/// [`smollm2`] with every f32 weight kept, to run through candle's ops.
#[cfg(test)]
pub(crate) fn smollm2_with_tensors() -> crate::llm::LocalLlm {
    cached_model_with_tensors("smollm2-135m-instruct")
}

/// A model of the manifest from the model cache, loaded as users load it.
#[cfg(test)]
pub(crate) fn cached_model(name: &str) -> crate::llm::LocalLlm {
    let options = crate::llm::LlmOptions::default();
    crate::llm::LocalLlm::load(&cached_path(name), &Device::Cpu, options).expect("load")
}

/// [`cached_model`] with every f32 weight kept, to run through candle's ops (and
/// the 8-bit copies in panels, whose products take the activations as they are).
#[cfg(test)]
pub(crate) fn cached_model_with_tensors(name: &str) -> crate::llm::LocalLlm {
    crate::llm::LocalLlm::load_with_all_tensors(&cached_path(name)).expect("load")
}

/// [`cached_model`] with its 8-bit copies in the given layout.
#[cfg(test)]
pub(crate) fn cached_model_in(name: &str, layout: Layout) -> crate::llm::LocalLlm {
    crate::llm::LocalLlm::load_in_layout(&cached_path(name), layout).expect("load")
}

#[cfg(test)]
fn cached_path(name: &str) -> std::path::PathBuf {
    kura_models::Resolver::from_env()
        .resolve(name)
        .unwrap_or_else(|e| panic!("cannot resolve {name}: {e}"))
        .single_file()
        .expect("one GGUF file")
        .to_path_buf()
}

/// The host weights of a CPU model, for tests.
#[cfg(test)]
fn host_weights(model: &Model) -> &host::HostWeights {
    model
        .host
        .as_ref()
        .expect("a CPU model runs on host buffers")
}

/// How far apart two computations of the same logits may be in tests: one attends
/// over keys and values as computed, the other over the cache's rounded copies of
/// them (within 2⁻¹⁵ of each head's largest value; bfloat16 copies, a relative
/// 4e-3, moved logits of magnitude 10–30 by up to some 0.06), or summed in
/// different orders they round to neighbouring values.
#[cfg(test)]
const CLOSE_LOGITS: f32 = 0.1;

/// The largest difference between two rows of logits, for tests.
#[cfg(test)]
fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Two computations of the same logits agree: within [`CLOSE_LOGITS`], with the
/// same most likely token.
#[cfg(test)]
fn assert_close_logits(got: &[f32], want: &[f32], context: &str) {
    let difference = max_difference(got, want);
    assert!(difference < CLOSE_LOGITS, "{context}: {difference}");
    assert_eq!(argmax(got), argmax(want), "{context}");
}

/// The most likely token of a row of logits, for tests.
#[cfg(test)]
fn argmax(logits: &[f32]) -> u32 {
    (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap_or(0) as u32
}

/// Each token as a feed of its own.
fn one_each(tokens: &[u32]) -> Vec<&[u32]> {
    tokens.iter().map(std::slice::from_ref).collect()
}

fn repeat_kv(xs: Tensor, times: usize) -> candle_core::Result<Tensor> {
    if times == 1 {
        return Ok(xs);
    }
    let (batch, heads, len, dim) = xs.dims4()?;
    xs.unsqueeze(2)?
        .expand((batch, heads, times, len, dim))?
        .reshape((batch, heads * times, len, dim))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama 3.1's and 3.2's long-context RoPE, two ways: as Hugging Face computes
    /// its frequencies from the config, and through the `rope_freqs.weight` that
    /// llama.cpp's converter writes from the same config. The tables built from the
    /// tensor must turn each pair as Hugging Face's frequencies do.
    #[test]
    fn rope_factors_as_the_converter_writes_them_give_llama3s_frequencies() {
        let config = Config {
            architecture: Architecture::Llama,
            layers: 1,
            heads: 32,
            kv_heads: 8,
            head_dim: 64,
            rms_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_linear_factor: 1.0,
            context_length: 131_072,
            tokens: 128_256,
        };
        // Llama 3.2's rope_scaling.
        let (factor, low, high, old_context) = (32.0f64, 1.0f64, 4.0f64, 8192.0f64);
        let (low_wavelen, high_wavelen) = (old_context / low, old_context / high);
        let dim = config.head_dim as f64;
        let plain: Vec<f64> = (0..config.head_dim / 2)
            .map(|i| 1.0 / (config.rope_theta as f64).powf(2.0 * i as f64 / dim))
            .collect();
        let wavelength = |freq: f64| 2.0 * std::f64::consts::PI / freq;
        let smooth = |freq: f64| (old_context / wavelength(freq) - low) / (high - low);
        // convert_hf_to_gguf.py, LlamaModel: the factor each pair is slowed by.
        let written: Vec<f32> = plain
            .iter()
            .map(|&freq| match wavelength(freq) {
                w if w < high_wavelen => 1.0,
                w if w > low_wavelen => factor as f32,
                _ => (1.0 / ((1.0 - smooth(freq)) / factor + smooth(freq))) as f32,
            })
            .collect();
        // transformers, _compute_llama3_parameters: the frequencies themselves.
        let scaled: Vec<f64> = plain
            .iter()
            .map(|&freq| match wavelength(freq) {
                w if w < high_wavelen => freq,
                w if w > low_wavelen => freq / factor,
                _ => (1.0 - smooth(freq)) * freq / factor + smooth(freq) * freq,
            })
            .collect();
        assert!(written.contains(&1.0) && written.contains(&32.0));
        assert!(
            written.iter().any(|&f| f > 1.0 && f < 32.0),
            "some pairs are smoothed"
        );

        let positions = 6000;
        let (cos, sin) = rope_tables(&config, Some(&written), positions, &Device::Cpu).unwrap();
        let (cos, sin) = (cos.to_vec2::<f32>().unwrap(), sin.to_vec2::<f32>().unwrap());
        for position in [1usize, 97, 5999] {
            for (pair, &freq) in scaled.iter().enumerate() {
                let angle = position as f64 * freq;
                let (c, s) = (cos[position][pair] as f64, sin[position][pair] as f64);
                assert!(
                    (c - angle.cos()).abs() < 2e-3 && (s - angle.sin()).abs() < 2e-3,
                    "position {position}, pair {pair}: ({c}, {s}) against angle {angle}"
                );
            }
        }
        // Without the tensor the slowed pairs turn up to 32 times faster.
        let (plain_cos, _) = rope_tables(&config, None, positions, &Device::Cpu).unwrap();
        let plain_cos = plain_cos.to_vec2::<f32>().unwrap();
        let apart = (0..config.head_dim / 2)
            .map(|pair| (plain_cos[5999][pair] - cos[5999][pair]).abs())
            .fold(0.0, f32::max);
        assert!(apart > 0.5, "{apart}");

        // A linear scaling slows every pair by its factor, on top of the tensor's.
        let linear = Config {
            rope_linear_factor: 4.0,
            ..config.clone()
        };
        let (slow, _) = rope_tables(&linear, Some(&written), positions, &Device::Cpu).unwrap();
        let slow = slow.to_vec2::<f32>().unwrap();
        for (pair, &freq) in scaled.iter().enumerate() {
            let angle = 4000.0 * freq / 4.0;
            assert!(
                (slow[4000][pair] as f64 - angle.cos()).abs() < 2e-3,
                "pair {pair}"
            );
        }
    }
}
