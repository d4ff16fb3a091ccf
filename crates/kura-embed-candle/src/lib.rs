//! Sentence embeddings on Candle for BERT-family encoders (all-MiniLM-L6-v2 and
//! other sentence-transformers models).
//!
//! The model directory is read the way sentence-transformers reads it: pooling
//! from `1_Pooling/config.json`, normalisation from a `Normalize` entry in
//! `modules.json`, truncation from `sentence_bert_config.json`. That keeps our
//! vectors interchangeable with the Python library's (cosine ≥ 0.9999).
//!
//! The key design decision is that on the CPU we run our own forward pass over
//! *packed* batches (see `encoder`) rather than candle-transformers' `BertModel`
//! over padded ones: a batch's real tokens are stacked into one matrix, every
//! linear layer is one matrix product over all of them, attention runs per text
//! and head on that text's tokens only, and the work between products is fused
//! and spread over the cores. No token is padded, so batches need no sorting by
//! length: texts are taken in input order, and a text's vector does not depend on
//! which texts share its batch. On CUDA, candle's `BertModel` still runs, on
//! length-sorted batches so that padding stays small.

mod config;
mod encoder;
mod error;
mod kernels;
mod pooling;

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use kura_core::{BoxError, Embedder, Matrix};
use rayon::prelude::*;
use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use config::{read_bert_config, read_sentence_config, PoolingMode};
use encoder::{Encoder, Workspace};
pub use error::EmbedError;

/// How texts are batched and truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedderOptions {
    /// Texts per forward pass. Larger batches use more memory for little gain on CPU.
    pub batch_size: usize,
    /// Tokens kept per text (special tokens included); `None` means the model's own
    /// `max_seq_length`, or else its position limit.
    pub max_length: Option<usize>,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            batch_size: 32,
            max_length: None,
        }
    }
}

/// The CPU, or the first CUDA device when `cuda` is set and this build supports it.
pub fn device(cuda: bool) -> Result<Device, EmbedError> {
    if !cuda {
        return Ok(Device::Cpu);
    }
    if cfg!(feature = "cuda") {
        Device::new_cuda(0).map_err(EmbedError::candle("opening CUDA device 0"))
    } else {
        Err(EmbedError::NoCuda)
    }
}

/// Which forward pass runs the model.
enum Model {
    /// Ours, over packed batches: the CPU.
    Packed(Encoder),
    /// candle-transformers', over padded batches: any other device (CUDA).
    Candle(BertModel, Device),
}

/// A sentence-transformers encoder on Candle.
pub struct CandleEmbedder {
    model: Model,
    tokenizer: Tokenizer,
    pooling: Vec<PoolingMode>,
    normalize: bool,
    max_length: usize,
    dim: usize,
    batch_size: usize,
    pad_id: u32,
    model_id: String,
}

impl std::fmt::Debug for CandleEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleEmbedder")
            .field("model_id", &self.model_id)
            .field("dim", &self.dim)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_length", &self.max_length)
            .finish_non_exhaustive()
    }
}

impl CandleEmbedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`,
    /// with the optional sentence-transformers files beside them.
    pub fn from_dir(
        dir: &Path,
        device: &Device,
        options: EmbedderOptions,
    ) -> Result<Self, EmbedError> {
        let config_path = dir.join("config.json");
        let config = read_bert_config(&config_path)?;
        let sentence = read_sentence_config(dir)?;
        let max_length = options
            .max_length
            .or(sentence.max_seq_length)
            .unwrap_or(config.max_position_embeddings)
            .clamp(2, config.max_position_embeddings.max(2));
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), max_length)?;
        let weights = dir.join("model.safetensors");
        require(&weights)?;
        let model = if device.is_cpu() {
            Model::Packed(Encoder::load(&weights, &config)?)
        } else {
            Model::Candle(load_model(&weights, &config, device)?, device.clone())
        };
        Ok(CandleEmbedder {
            model,
            tokenizer,
            dim: config.hidden_size * sentence.pooling.len(),
            pooling: sentence.pooling,
            normalize: sentence.normalize,
            max_length,
            batch_size: options.batch_size.max(1),
            pad_id: u32::try_from(config.pad_token_id).unwrap_or(0),
            model_id: default_model_id(dir),
        })
    }

    /// Names the model in [`Embedder::id`]; pass `name@fingerprint` so that cached
    /// embeddings are recomputed when the weights change.
    pub fn with_model_id(mut self, id: String) -> Self {
        self.model_id = id;
        self
    }

    /// How the encoder's linear layers are multiplied on this machine, for reports
    /// that compare machines.
    pub fn products(&self) -> String {
        match &self.model {
            Model::Packed(encoder) => encoder.products(),
            Model::Candle(..) => "candle on the GPU, f32".to_string(),
        }
    }

    /// Tokens kept per text, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Embeds `texts`, one row each, in input order.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Matrix, EmbedError> {
        let encodings = self.tokenize(texts)?;
        let mut out = vec![0f32; texts.len() * self.dim];
        match &self.model {
            Model::Packed(encoder) => {
                kura_simd::on_a_worker(|| self.embed_packed(encoder, &encodings, &mut out))?
            }
            Model::Candle(model, device) => {
                let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
                for batch in length_batches(&lengths, self.batch_size) {
                    let batch_encodings = batch.iter().map(|&i| &encodings[i]);
                    let rows = self.embed_padded(model, device, batch_encodings)?;
                    for (&i, row) in batch.iter().zip(rows) {
                        out[i * self.dim..(i + 1) * self.dim].copy_from_slice(&row);
                    }
                }
            }
        }
        Ok(Matrix::new(texts.len(), self.dim, out))
    }

    /// Runs our encoder on batches of consecutive texts and pools each text's rows
    /// of the packed output into its row of `out`.
    fn embed_packed(
        &self,
        encoder: &Encoder,
        encodings: &[Encoding],
        out: &mut [f32],
    ) -> Result<(), EmbedError> {
        let hidden = encoder.hidden_size();
        let lengths: Vec<usize> = encodings.iter().map(Encoding::len).collect();
        let mut work = Workspace::default();
        for range in packed_batches(&lengths, self.batch_size) {
            let batch: Vec<&Encoding> = encodings[range.clone()].iter().collect();
            let packed =
                encoder
                    .forward(&batch, &mut work)
                    .map_err(|bad| EmbedError::Tokenize {
                        index: range.start + bad.position,
                        message: bad.message,
                    })?;
            out[range.start * self.dim..range.end * self.dim]
                .par_chunks_mut(self.dim)
                .zip(packed.offsets.par_windows(2))
                .for_each(|(row, span)| {
                    let rows = &packed.hidden[span[0] * hidden..span[1] * hidden];
                    pooling::pool_rows(rows, hidden, &self.pooling, row);
                    if self.normalize {
                        pooling::normalize_row(row);
                    }
                });
        }
        Ok(())
    }

    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoding>, EmbedError> {
        texts
            .par_iter()
            .enumerate()
            .map(|(index, text)| {
                self.tokenizer
                    .encode(*text, true)
                    .map_err(|e| EmbedError::Tokenize {
                        index,
                        message: e.to_string(),
                    })
            })
            .collect()
    }

    /// One pass of candle's `BertModel` over encodings padded to the longest of them.
    fn embed_padded<'a>(
        &self,
        model: &BertModel,
        device: &Device,
        encodings: impl ExactSizeIterator<Item = &'a Encoding>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings: Vec<&Encoding> = encodings.collect();
        let width = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let rows = encodings.len();
        let mut ids = vec![self.pad_id; rows * width];
        let mut type_ids = vec![0u32; rows * width];
        let mut mask = vec![0u32; rows * width];
        for (r, encoding) in encodings.iter().enumerate() {
            let n = encoding.get_ids().len();
            ids[r * width..r * width + n].copy_from_slice(encoding.get_ids());
            type_ids[r * width..r * width + n].copy_from_slice(encoding.get_type_ids());
            mask[r * width..r * width + n].copy_from_slice(encoding.get_attention_mask());
        }
        self.forward_padded(model, device, ids, type_ids, mask, (rows, width))
            .map_err(EmbedError::candle("running the encoder"))
    }

    fn forward_padded(
        &self,
        model: &BertModel,
        device: &Device,
        ids: Vec<u32>,
        type_ids: Vec<u32>,
        mask: Vec<u32>,
        shape: (usize, usize),
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let ids = Tensor::from_vec(ids, shape, device)?;
        let type_ids = Tensor::from_vec(type_ids, shape, device)?;
        let mask = Tensor::from_vec(mask, shape, device)?;
        let hidden = model.forward(&ids, &type_ids, Some(&mask))?;
        let pooled = pooling::pool(&hidden, &mask, &self.pooling)?;
        let pooled = if self.normalize {
            pooling::normalize(&pooled)?
        } else {
            pooled.to_dtype(DType::F32)?
        };
        pooled.to_vec2::<f32>()
    }
}

impl Embedder for CandleEmbedder {
    /// The model id plus the truncation length, which also changes the vectors.
    fn id(&self) -> String {
        format!(
            "candle-bert:{}:max_length={}",
            self.model_id, self.max_length
        )
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Matrix, BoxError> {
        Ok(self.embed_texts(texts)?)
    }
}

/// Tokens per packed batch at most. The encoder's activations take
/// `hidden + max(4·hidden, intermediate)` floats per token (7.5 KiB for MiniLM), so
/// this bounds a batch's memory (15 MiB for MiniLM) whatever the texts' lengths.
/// Products over a few hundred rows already run near the kernel's peak, and 8192
/// tokens measured no faster, so larger batches would only cost memory.
const MAX_PACKED_TOKENS: usize = 2048;

/// Splits texts, in input order, into batches of at most `batch_size` texts and
/// [`MAX_PACKED_TOKENS`] tokens (a longer text still gets a batch of its own).
/// Packing wastes nothing on short texts beside long ones, so there is no sorting.
fn packed_batches(lengths: &[usize], batch_size: usize) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, &length) in lengths.iter().enumerate() {
        if i > start && (i - start == batch_size || tokens + length > MAX_PACKED_TOKENS) {
            batches.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens += length;
    }
    if start < lengths.len() {
        batches.push(start..lengths.len());
    }
    batches
}

/// Below this many tokens a padded batch is cheap whatever its padding, so it is
/// not split.
const SPLIT_ABOVE_TOKENS: usize = 32;

/// Padded tokens per batch at most, for candle's padded forward pass. Attention
/// holds `heads × width²` scores per text, so a batch of long texts is capped by
/// tokens, not only by count.
const MAX_BATCH_TOKENS: usize = 4096;

/// Groups text indices into padded batches of similar token length, longest first. A
/// batch pads to its first (longest) text, so it closes when full (by count or
/// by [`MAX_BATCH_TOKENS`]) or when the next text is under half that length:
/// padding then never costs more than the real tokens, whatever the mix of short
/// and long texts.
fn length_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut width = 0;
    for i in order {
        let fits = batches.last().is_some_and(|b| {
            b.len() < batch_size
                && (b.len() + 1) * width <= MAX_BATCH_TOKENS
                && (width <= SPLIT_ABOVE_TOKENS || lengths[i] * 2 >= width)
        });
        match batches.last_mut() {
            Some(batch) if fits => batch.push(i),
            _ => {
                width = lengths[i];
                batches.push(vec![i]);
            }
        }
    }
    batches
}

/// Loads the tokenizer with our truncation and without its own padding: padding is
/// per batch, to the batch's longest text.
fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer, EmbedError> {
    require(path)?;
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| EmbedError::invalid(path, e))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| EmbedError::invalid(path, e))?;
    Ok(tokenizer)
}

fn load_model(path: &Path, config: &BertConfig, device: &Device) -> Result<BertModel, EmbedError> {
    let bytes = std::fs::read(path).map_err(|e| EmbedError::invalid(path, e))?;
    let weights = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
        .map_err(|e| EmbedError::invalid(path, format!("not a valid safetensors file: {e}")))?;
    BertModel::load(weights, config).map_err(|e| {
        EmbedError::invalid(
            path,
            format!("does not hold the BERT model config.json describes: {e}"),
        )
    })
}

fn require(path: &Path) -> Result<(), EmbedError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(EmbedError::MissingFile {
            path: path.to_path_buf(),
        })
    }
}

fn default_model_id(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| PathBuf::from(dir).display().to_string())
}

#[cfg(test)]
mod tests {
    use super::{length_batches, packed_batches, MAX_PACKED_TOKENS};

    #[test]
    fn packed_batches_keep_input_order_within_both_limits() {
        let lengths = [3, 256, 10, 200, 120, 5, 40, 250, 8, 7];
        let batches = packed_batches(&lengths, 4);
        assert_eq!(batches, [0..4, 4..8, 8..10]);
        assert!(packed_batches(&[], 4).is_empty());
        // 2048 / 512 = 4 texts of 512 tokens per batch, whatever the count limit.
        let long = packed_batches(&[512; 10], 32);
        assert_eq!(long, [0..4, 4..8, 8..10]);
        // A text over the token limit still gets a batch, alone.
        let huge = packed_batches(&[10, MAX_PACKED_TOKENS + 1, 10], 32);
        assert_eq!(huge, [0..1, 1..2, 2..3]);
    }

    #[test]
    fn batches_cover_every_text_once_and_group_similar_lengths() {
        let lengths = [3, 256, 10, 200, 120, 5, 40, 250, 8, 7];
        let batches = length_batches(&lengths, 3);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for batch in &batches {
            assert!(batch.len() <= 3);
            let width = lengths[batch[0]];
            assert!(batch.iter().all(|&i| lengths[i] <= width));
            assert!(batch.len() == 1 || batch.len() * width <= super::MAX_BATCH_TOKENS);
            assert!(
                width <= 32 || batch.iter().all(|&i| lengths[i] * 2 >= width),
                "{batch:?}"
            );
        }
        assert_eq!(batches[0], vec![1, 7, 3]);
        assert!(length_batches(&[], 4).is_empty());
        // Long texts are capped by tokens before count: 4096 / 512 = 8 per batch.
        let long = length_batches(&[512; 20], 32);
        assert_eq!(long.iter().map(Vec::len).collect::<Vec<_>>(), [8, 8, 4]);
    }
}
