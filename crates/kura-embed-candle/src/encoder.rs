//! Our own CPU forward pass for BERT encoders, used instead of candle-transformers'
//! `BertModel` when the device is the CPU.
//!
//! Candle runs one op at a time: its matrix products use every core, but the GELU
//! (a scalar erf), layer norms, softmax inputs, transposes and copies between them
//! run on one, and every batch pays for padding to its longest text. Here a batch
//! is *packed* instead: the real tokens of all its texts are stacked into one
//! `tokens × hidden` matrix, so
//!
//! - every linear layer (fused QKV, attention output, FFN up and down) is a single
//!   product over all of the batch's tokens, with weights converted once at load
//!   (to f32, transposed to `inputs × outputs`, Q, K and V side by side), biases
//!   and residuals folded into the product's accumulator. The product is `gemm`'s,
//!   or in bfloat16 with f32 sums (`kura_simd::bf16`) where the CPU has a unit
//!   for it: AMX's tiles on the Xeon embedded 10,000 Banking77 questions 1.7 to
//!   3.1 times as fast, every vector within 0.99997 cosine of the f32 one, and
//!   AVX-512 BF16 on AMD's Zen 5 multiplies 1.9 times what its f32 FMAs do. On
//!   CPUs whose widest unit is AVX2 (Zen 3) it is in 16-bit integers with 32-bit
//!   sums (`kura_simd::int16`): 1.3 times as fast over whole texts there, the
//!   worst reference text at 0.999994 cosine against sentence-transformers (f32:
//!   0.9999998). Intel's cores with AVX-512 VNNI but no AMX take the same
//!   integers, whose `vpdpwssd` multiplies twice what an f32 FMA does, where
//!   `vdpbf16ps` multiplies half;
//! - attention runs per (text, head) on that text's own tokens only, in parallel,
//!   so there is nothing to pad and nothing to mask, and a text's vector cannot
//!   depend on which texts share its batch;
//! - the work between products (bias + GELU, residual + bias + LayerNorm, softmax)
//!   is fused into one pass per op, vectorised (see `kernels`) and split over rows
//!   across the cores.
//!
//! Every op is row-wise or per text, and `gemm` splits rows and columns but never
//! the reduction, so results do not depend on the thread count either.

use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device};
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct};
use gemm::Parallelism;
use kura_simd::bf16::{self, Bf16Weights};
use kura_simd::int16::{self, Int16Weights};
use kura_simd::{MatRef, SharedMut, Threads};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use tokenizers::Encoding;

use crate::error::EmbedError;
use crate::kernels::{self, Activation};

/// A linear layer: its weight and bias.
struct Linear {
    weight: Weight,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

/// A linear layer's weight, held once, in the form its product reads.
enum Weight {
    /// Transposed to `inputs × outputs`, row-major, for `gemm`.
    F32(Vec<f32>),
    /// In bfloat16, for AMX's tiles or AVX-512 BF16.
    Bf16(Bf16Weights),
    /// In 16-bit integers, for AVX2's `vpmaddwd` or AVX-512 VNNI's `vpdpwssd`.
    Int16(Int16Weights),
}

impl Weight {
    /// `weight` (`inputs × outputs`, row-major) in bfloat16 where the CPU has a
    /// unit that multiplies it faster than f32 (unless `KURA_BF16=0`), else in
    /// 16-bit integers on AMD's cores whose widest unit is AVX2 (Zen 3) and on
    /// Intel's with AVX-512 VNNI but no AMX (unless `KURA_INT16=0`), when the
    /// shape fills the narrow layout's tiles; otherwise
    /// kept in f32.
    fn for_this_cpu(weight: Vec<f32>, inputs: usize, outputs: usize) -> Self {
        if bf16::unit().is_some() {
            if let Some(narrow) = Bf16Weights::new(&weight, inputs, outputs) {
                return Weight::Bf16(narrow);
            }
        } else if int16::faster_than_f32() {
            if let Some(narrow) = Int16Weights::new(&weight, inputs, outputs) {
                return Weight::Int16(narrow);
            }
        }
        Weight::F32(weight)
    }

    /// How a product by this weight is multiplied, in words.
    fn products(&self) -> &'static str {
        match self {
            Weight::F32(_) => "f32 (gemm)",
            Weight::Bf16(_) if bf16::unit() == Some(bf16::Unit::Tiles) => "bfloat16 on AMX tiles",
            Weight::Bf16(_) => "bfloat16 on AVX-512 BF16",
            Weight::Int16(_) if int16::Kernel::detect() == Some(int16::Kernel::Vnni) => {
                "16-bit integers on AVX-512 VNNI"
            }
            Weight::Int16(_) => "16-bit integers on AVX2",
        }
    }
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Layer {
    /// Query, key and value side by side: one product instead of three.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    up: Linear,
    down: Linear,
    output_norm: Norm,
}

/// A BERT encoder's weights in the layout of our forward pass.
pub(crate) struct Encoder {
    hidden: usize,
    heads: usize,
    eps: f32,
    activation: Activation,
    vocab: usize,
    max_positions: usize,
    token_types: usize,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_embeddings: Vec<f32>,
    embedding_norm: Norm,
    /// The embedding sum has no bias of its own; the fused bias + LayerNorm kernel
    /// gets these zeros instead.
    zeros: Vec<f32>,
    layers: Vec<Layer>,
}

/// The last hidden state of a packed batch: the tokens of text `i` are rows
/// `offsets[i]..offsets[i + 1]` of the `tokens × hidden` matrix `hidden`.
pub(crate) struct Packed<'w> {
    pub hidden: &'w [f32],
    pub offsets: Vec<usize>,
}

/// Activation buffers, kept across the batches of one call so that each batch
/// does not fault in fresh pages for them (about 1% of the time otherwise).
#[derive(Default)]
pub(crate) struct Workspace {
    hidden: Vec<f32>,
    /// Query/key/value and attention context during attention, the FFN's inner
    /// activations after it: the two are never alive at once, so they share.
    scratch: Vec<f32>,
}

/// `&mut buffer[..len]`, growing `buffer` if it is shorter. Stale values may
/// remain: every buffer is fully written before it is read.
fn prefix(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// A token the model cannot take, at `position` within the batch given to
/// [`Encoder::forward`].
#[derive(Debug)]
pub(crate) struct BadToken {
    pub position: usize,
    pub message: String,
}

impl Encoder {
    /// Reads the weights `config` describes from a safetensors file (f32, f16 or
    /// bf16), under the tensor names of Hugging Face / sentence-transformers BERT
    /// checkpoints, with or without a `bert.` (or `{model_type}.`) prefix, as
    /// candle-transformers' loader accepts them. Every `hidden_act` that candle's
    /// config accepts (exact GELU, tanh GELU, ReLU) is implemented, so no model
    /// needs a fallback; shapes that differ from `config.json` are errors.
    pub(crate) fn load(path: &Path, config: &BertConfig) -> Result<Self, EmbedError> {
        let activation = match config.hidden_act {
            HiddenAct::Gelu => Activation::Gelu,
            HiddenAct::GeluApproximate => Activation::GeluTanh,
            HiddenAct::Relu => Activation::Relu,
        };
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        let bytes = std::fs::read(path).map_err(|e| EmbedError::invalid(path, e))?;
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| EmbedError::invalid(path, format!("not a valid safetensors file: {e}")))?;
        let weights = Weights::new(&tensors, path, config)?;
        let intermediate = config.intermediate_size;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let at = |name: &str| format!("encoder.layer.{i}.{name}");
                Ok(Layer {
                    qkv: weights.linear_fused(
                        &[
                            &at("attention.self.query"),
                            &at("attention.self.key"),
                            &at("attention.self.value"),
                        ],
                        hidden,
                        hidden,
                    )?,
                    attention_out: weights.linear(&at("attention.output.dense"), hidden, hidden)?,
                    attention_norm: weights.norm(&at("attention.output.LayerNorm"), hidden)?,
                    up: weights.linear(&at("intermediate.dense"), hidden, intermediate)?,
                    down: weights.linear(&at("output.dense"), intermediate, hidden)?,
                    output_norm: weights.norm(&at("output.LayerNorm"), hidden)?,
                })
            })
            .collect::<Result<Vec<_>, EmbedError>>()?;
        Ok(Encoder {
            hidden,
            heads,
            eps: config.layer_norm_eps as f32,
            activation,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            token_types: config.type_vocab_size,
            word_embeddings: weights.get(
                "embeddings.word_embeddings.weight",
                &[config.vocab_size, hidden],
            )?,
            position_embeddings: weights.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, hidden],
            )?,
            token_type_embeddings: weights.get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, hidden],
            )?,
            embedding_norm: weights.norm("embeddings.LayerNorm", hidden)?,
            zeros: vec![0.0; hidden],
            layers,
        })
    }

    /// How the linear layers are multiplied, in words, read from the weights as
    /// they were laid out: a layer whose shape does not fill the narrow type's
    /// tiles stays in f32 even where the CPU has the unit, and a report must not
    /// say otherwise. Kinds that differ between layers are listed.
    pub(crate) fn products(&self) -> String {
        let mut kinds: Vec<&str> = self
            .layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.attention_out, &l.up, &l.down])
            .map(|linear| linear.weight.products())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds.join(" and ")
    }

    pub(crate) fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The last hidden state of every text in `batch`, packed. Tokens the tokenizer
    /// marks as padding (attention mask 0) are left out, as attention would ignore
    /// them; the others keep their positions.
    pub(crate) fn forward<'w>(
        &self,
        batch: &[&Encoding],
        work: &'w mut Workspace,
    ) -> Result<Packed<'w>, BadToken> {
        let (tokens, offsets) = self.pack(batch)?;
        let rows = tokens.len();
        let h = self.hidden;
        let intermediate = self.layers.first().map_or(0, |l| l.up.outputs);
        let x = prefix(&mut work.hidden, rows * h);
        let scratch = prefix(&mut work.scratch, rows * (4 * h).max(intermediate));
        self.embed(&tokens, x);
        for layer in &self.layers {
            let (qkv, rest) = scratch.split_at_mut(rows * 3 * h);
            let context = &mut rest[..rows * h];
            for_rows(qkv, 3 * h, |rows| {
                for row in rows.chunks_exact_mut(3 * h) {
                    row.copy_from_slice(&layer.qkv.bias);
                }
            });
            matmul(x, &layer.qkv, qkv, true);
            self.attention(qkv, context, &offsets);
            // x += context · W, then x = LayerNorm(x + b): the residual is the
            // product's accumulator, so it is never copied.
            matmul(context, &layer.attention_out, x, true);
            self.bias_layer_norm(x, &layer.attention_out.bias, &layer.attention_norm);
            let up = &mut scratch[..rows * intermediate];
            matmul(x, &layer.up, up, false);
            for_rows(up, intermediate, |rows| {
                kernels::bias_activation(rows, &layer.up.bias, self.activation)
            });
            matmul(up, &layer.down, x, true);
            self.bias_layer_norm(x, &layer.down.bias, &layer.output_norm);
        }
        Ok(Packed { hidden: x, offsets })
    }

    /// The real tokens of `batch` as (id, token type, position), and where each
    /// text's tokens start.
    fn pack(&self, batch: &[&Encoding]) -> Result<(Vec<[usize; 3]>, Vec<usize>), BadToken> {
        let mut tokens = Vec::with_capacity(batch.iter().map(|e| e.len()).sum());
        let mut offsets = Vec::with_capacity(batch.len() + 1);
        offsets.push(0);
        for (position, encoding) in batch.iter().enumerate() {
            let real = encoding
                .get_ids()
                .iter()
                .zip(encoding.get_type_ids())
                .zip(encoding.get_attention_mask())
                .enumerate()
                .filter(|(_, (_, &mask))| mask != 0);
            for (index, ((&id, &kind), _)) in real {
                let (id, kind) = (id as usize, kind as usize);
                let bad = |message: String| BadToken { position, message };
                if id >= self.vocab {
                    return Err(bad(format!(
                        "token id {id} is outside the model's vocabulary of {} (tokenizer.json does not match the model)",
                        self.vocab
                    )));
                }
                if kind >= self.token_types {
                    return Err(bad(format!(
                        "token type {kind} is outside the model's {} token types",
                        self.token_types
                    )));
                }
                if index >= self.max_positions {
                    return Err(bad(format!(
                        "{} tokens exceed the model's {} positions",
                        encoding.len(),
                        self.max_positions
                    )));
                }
                tokens.push([id, kind, index]);
            }
            offsets.push(tokens.len());
        }
        Ok((tokens, offsets))
    }

    /// Word + position + token type embeddings, then LayerNorm.
    fn embed(&self, tokens: &[[usize; 3]], x: &mut [f32]) {
        let h = self.hidden;
        let rows_per_chunk = chunk_rows(h);
        x.par_chunks_mut(rows_per_chunk * h)
            .zip(tokens.par_chunks(rows_per_chunk))
            .for_each(|(rows, tokens)| {
                for (row, &[id, kind, position]) in rows.chunks_exact_mut(h).zip(tokens) {
                    let word = &self.word_embeddings[id * h..(id + 1) * h];
                    let place = &self.position_embeddings[position * h..(position + 1) * h];
                    let kind = &self.token_type_embeddings[kind * h..(kind + 1) * h];
                    for (((v, w), p), k) in row.iter_mut().zip(word).zip(place).zip(kind) {
                        *v = w + p + k;
                    }
                }
                let norm = &self.embedding_norm;
                kernels::bias_layer_norm(rows, &self.zeros, &norm.weight, &norm.bias, self.eps);
            });
    }

    fn bias_layer_norm(&self, x: &mut [f32], bias: &[f32], norm: &Norm) {
        for_rows(x, self.hidden, |rows| {
            kernels::bias_layer_norm(rows, bias, &norm.weight, &norm.bias, self.eps)
        });
    }

    /// Scaled dot-product attention of every text's tokens over its own tokens, one
    /// task per (text, head); `qkv` rows hold a token's query, key and value.
    fn attention(&self, qkv: &[f32], context: &mut [f32], offsets: &[usize]) {
        let h = self.hidden;
        let head_dim = h / self.heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let out = SharedMut(context.as_mut_ptr());
        let texts: Vec<(usize, usize)> = offsets
            .windows(2)
            .filter(|w| w[1] > w[0])
            .map(|w| (w[0], w[1] - w[0]))
            .collect();
        let jobs: Vec<(usize, usize, usize)> = texts
            .iter()
            .flat_map(|&(start, len)| (0..self.heads).map(move |head| (start, len, head)))
            .collect();
        // Scores in the thread's scratch, not zeroed: the product writes them all.
        jobs.par_iter().for_each(|&(start, len, head)| {
            kura_simd::with_scratch(len * len, |scores: &mut [f32]| {
                let column = head * head_dim;
                let q = &qkv[start * 3 * h + column..];
                let k = &qkv[start * 3 * h + h + column..];
                let v = &qkv[start * 3 * h + 2 * h + column..];
                let stride = 3 * h;
                let keys = MatRef::new(k, len, head_dim, stride, 1).t();
                let queries = MatRef::new(q, len, head_dim, stride, 1);
                kura_simd::matmul(scores, queries, keys, scale, false, Threads::One);
                kernels::softmax_rows(scores, len);
                assert!(v.len() > (len - 1) * stride + head_dim - 1);
                // SAFETY: the product reads `len` rows of `head_dim` columns at row
                // stride `3h` from `v` (checked above) and `scores`, `len × len`. It
                // writes rows `start..start + len`, columns `column..column +
                // head_dim` of `context` (`tokens × h`), which no other task
                // touches: tasks differ in text (rows) or head (columns).
                unsafe {
                    gemm::gemm(
                        len,
                        head_dim,
                        len,
                        out.at(start * h + column),
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        v.as_ptr(),
                        1,
                        stride as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            })
        });
    }
}

/// `out = input · W (+ out, when accumulate)`, over all rows of `input`.
fn matmul(input: &[f32], linear: &Linear, out: &mut [f32], accumulate: bool) {
    let rows = input.len() / linear.inputs;
    assert!(
        input.len() == rows * linear.inputs && out.len() == rows * linear.outputs,
        "matmul shapes: {} inputs for {} columns, {} outputs for {} columns",
        input.len(),
        linear.inputs,
        out.len(),
        linear.outputs
    );
    match &linear.weight {
        Weight::Bf16(weights) => bf16::matmul_bf16(out, input, weights, accumulate),
        Weight::Int16(weights) => int16::matmul_int16(out, input, weights, accumulate),
        Weight::F32(weight) => {
            let input = MatRef::row_major(input, rows, linear.inputs);
            let weight = MatRef::row_major(weight, linear.inputs, linear.outputs);
            kura_simd::matmul(out, input, weight, 1.0, accumulate, Threads::All);
        }
    }
}

/// Rows per parallel chunk of the row-wise kernels: enough work per task (about
/// 16K values) that rayon's scheduling stays negligible.
fn chunk_rows(width: usize) -> usize {
    (16 * 1024 / width.max(1)).max(1)
}

/// Runs `f` on chunks of whole rows of `data`, in parallel.
fn for_rows(data: &mut [f32], width: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    data.par_chunks_mut(chunk_rows(width) * width.max(1))
        .for_each(f);
}

/// Tensors of a checkpoint under one name prefix, checked against `config.json`.
struct Weights<'a> {
    tensors: &'a SafeTensors<'a>,
    prefix: String,
    path: &'a Path,
}

impl<'a> Weights<'a> {
    fn new(
        tensors: &'a SafeTensors<'a>,
        path: &'a Path,
        config: &BertConfig,
    ) -> Result<Self, EmbedError> {
        let mut prefixes = vec![String::new(), "bert.".to_string()];
        prefixes.extend(config.model_type.as_ref().map(|t| format!("{t}.")));
        let prefix = prefixes
            .iter()
            .find(|p| {
                tensors
                    .tensor(&format!("{p}embeddings.word_embeddings.weight"))
                    .is_ok()
            })
            .cloned()
            .ok_or_else(|| {
                EmbedError::invalid(
                    path,
                    format!(
                        "does not hold a BERT model: no `embeddings.word_embeddings.weight` under any of the prefixes {prefixes:?}"
                    ),
                )
            })?;
        Ok(Weights {
            tensors,
            prefix,
            path,
        })
    }

    /// The tensor `name` as f32, checked to have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let full = format!("{}{name}", self.prefix);
        let invalid = |message: String| EmbedError::invalid(self.path, message);
        let view = self
            .tensors
            .tensor(&full)
            .map_err(|e| invalid(format!("no tensor `{full}`: {e}")))?;
        if view.shape() != shape {
            return Err(invalid(format!(
                "tensor `{full}` has shape {:?}, but config.json describes {shape:?}",
                view.shape()
            )));
        }
        if view.dtype() == Dtype::F32 {
            return Ok(view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect());
        }
        view.load(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| invalid(format!("tensor `{full}`: {e}")))
    }

    fn norm(&self, name: &str, size: usize) -> Result<Norm, EmbedError> {
        Ok(Norm {
            weight: self.get(&format!("{name}.weight"), &[size])?,
            bias: self.get(&format!("{name}.bias"), &[size])?,
        })
    }

    fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<Linear, EmbedError> {
        self.linear_fused(&[name], inputs, outputs)
    }

    /// Linear layers over the same input, their outputs side by side.
    fn linear_fused(
        &self,
        names: &[&str],
        inputs: usize,
        outputs_each: usize,
    ) -> Result<Linear, EmbedError> {
        let outputs = outputs_each * names.len();
        let mut weight = vec![0f32; inputs * outputs];
        let mut bias = Vec::with_capacity(outputs);
        for (part, name) in names.iter().enumerate() {
            // Stored as outputs × inputs (PyTorch's layout); we want the transpose.
            let w = self.get(&format!("{name}.weight"), &[outputs_each, inputs])?;
            for (o, row) in w.chunks_exact(inputs).enumerate() {
                for (i, &value) in row.iter().enumerate() {
                    weight[i * outputs + part * outputs_each + o] = value;
                }
            }
            bias.extend(self.get(&format!("{name}.bias"), &[outputs_each])?);
        }
        Ok(Linear {
            weight: Weight::for_this_cpu(weight, inputs, outputs),
            bias,
            inputs,
            outputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Tensor;
    use candle_nn::VarBuilder;
    use candle_transformers::models::bert::BertModel;
    use tokenizers::{PaddingDirection, Token};

    use super::*;

    const CONFIG: &str = r#"{
        "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 24, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "max_position_embeddings": 20,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "model_type": "bert"
    }"#;

    /// Deterministic values in [-scale, scale) around `center`.
    fn values(seed: &mut u64, n: usize, center: f32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                center + scale * (((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    }

    /// A random BERT of `config`'s shape, its tensors named as in a Hugging Face
    /// checkpoint under `prefix`, stored as `dtype`.
    fn write_model(path: &Path, config: &BertConfig, prefix: &str, dtype: DType) {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        // (name, shape, center, scale) of every tensor.
        let mut specs: Vec<(String, Vec<usize>, f32, f32)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![config.vocab_size, h],
                0.0,
                1.0,
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![config.max_position_embeddings, h],
                0.0,
                0.5,
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![config.type_vocab_size, h],
                0.0,
                0.5,
            ),
        ];
        let mut norms = vec!["embeddings.LayerNorm".to_string()];
        for layer in 0..config.num_hidden_layers {
            let at = |name: &str| format!("encoder.layer.{layer}.{name}");
            for (name, inputs, outputs) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", h, i),
                ("output.dense", i, h),
            ] {
                let scale = 1.5 / (inputs as f32).sqrt();
                specs.push((
                    at(&format!("{name}.weight")),
                    vec![outputs, inputs],
                    0.0,
                    scale,
                ));
                specs.push((at(&format!("{name}.bias")), vec![outputs], 0.0, 0.2));
            }
            norms.push(at("attention.output.LayerNorm"));
            norms.push(at("output.LayerNorm"));
        }
        for name in norms {
            specs.push((format!("{name}.weight"), vec![h], 1.0, 0.2));
            specs.push((format!("{name}.bias"), vec![h], 0.0, 0.2));
        }
        let mut seed = 7;
        let tensors: HashMap<String, Tensor> = specs
            .into_iter()
            .map(|(name, shape, center, scale)| {
                let n = shape.iter().product();
                let data = values(&mut seed, n, center, scale);
                let tensor = Tensor::from_vec(data, shape, &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap();
                (format!("{prefix}{name}"), tensor)
            })
            .collect();
        candle_core::safetensors::save(&tensors, path).unwrap();
    }

    fn encoding(first: &[u32], second: &[u32]) -> Encoding {
        let tokens = |ids: &[u32]| {
            ids.iter()
                .map(|&id| Token::new(id, String::new(), (0, 0)))
                .collect::<Vec<_>>()
        };
        let mut encoding = Encoding::from_tokens(tokens(first), 0);
        if !second.is_empty() {
            encoding.merge_with(Encoding::from_tokens(tokens(second), 1), false);
        }
        encoding
    }

    /// candle-transformers' output for one text alone (nothing padded).
    fn candle_reference(model: &BertModel, encoding: &Encoding) -> Vec<f32> {
        let n = encoding.get_ids().len();
        let tensor = |v: &[u32]| Tensor::from_vec(v.to_vec(), (1, n), &Device::Cpu).unwrap();
        let ids = tensor(encoding.get_ids());
        let types = tensor(encoding.get_type_ids());
        let mask = tensor(encoding.get_attention_mask());
        let out = model.forward(&ids, &types, Some(&mask)).unwrap();
        out.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn matches_candle(prefix: &str, dtype: DType) {
        let config: BertConfig = serde_json::from_str(CONFIG).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_model(&path, &config, prefix, dtype);
        let ours = Encoder::load(&path, &config).unwrap();
        // 16 wide: no narrow type's tiles fit, whatever units the CPU has.
        assert_eq!(ours.products(), "f32 (gemm)");
        let bytes = std::fs::read(&path).unwrap();
        let weights =
            VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
        let theirs = BertModel::load(weights, &config).unwrap();

        // Texts of different lengths, one with a second segment (token type 1) and
        // one that a tokenizer padded: its padding must change nothing.
        let mut padded = encoding(&[2, 9, 17, 3], &[]);
        padded.pad(9, 0, 0, "[PAD]", PaddingDirection::Right);
        let texts = [
            encoding(&[2, 5, 6, 7, 8, 3], &[11, 12, 13, 3]),
            encoding(&[2, 3], &[]),
            padded.clone(),
            encoding(
                &(0..20).map(|i| (i * 7 % 40) as u32).collect::<Vec<_>>(),
                &[],
            ),
        ];
        let batch: Vec<&Encoding> = texts.iter().collect();
        let mut work = Workspace::default();
        let packed = ours.forward(&batch, &mut work).unwrap();
        let mut unpadded = encoding(&[2, 9, 17, 3], &[]);
        unpadded.pad(4, 0, 0, "[PAD]", PaddingDirection::Right);
        let expected: Vec<Vec<f32>> = [&texts[0], &texts[1], &unpadded, &texts[3]]
            .iter()
            .map(|e| candle_reference(&theirs, e))
            .collect();
        assert_eq!(packed.offsets, [0, 10, 12, 16, 36]);
        for (i, expected) in expected.iter().enumerate() {
            let rows = &packed.hidden[packed.offsets[i] * 16..packed.offsets[i + 1] * 16];
            assert_eq!(rows.len(), expected.len());
            let worst = rows
                .iter()
                .zip(expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "text {i}: differs from candle by {worst}");
        }
    }

    #[test]
    fn packed_forward_matches_candle_text_by_text() {
        matches_candle("", DType::F32);
    }

    #[test]
    fn prefixed_half_precision_checkpoints_load() {
        matches_candle("bert.", DType::F16);
    }

    #[test]
    fn tokens_the_model_cannot_take_are_errors_not_panics() {
        let config: BertConfig = serde_json::from_str(CONFIG).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_model(&path, &config, "", DType::F32);
        let ours = Encoder::load(&path, &config).unwrap();
        let mut work = Workspace::default();
        let fine = encoding(&[2, 3], &[]);
        let unknown = encoding(&[2, 40, 3], &[]);
        let too_long = encoding(&[5; 21], &[]);
        for (bad, what) in [(&unknown, "vocabulary"), (&too_long, "positions")] {
            let err = ours.forward(&[&fine, bad], &mut work).err().unwrap();
            assert_eq!(err.position, 1);
            assert!(err.message.contains(what), "{}", err.message);
        }
        let empty = Encoding::default();
        let packed = ours.forward(&[&empty, &fine], &mut work).unwrap();
        assert_eq!(packed.offsets, [0, 0, 2]);
    }
}
