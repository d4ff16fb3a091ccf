//! Builds a `tokenizers::Tokenizer` from the vocabulary stored in a GGUF file, so a model
//! is one file and the tokenizer can never disagree with the weights.
//!
//! Only the GPT-2 style byte-level BPE (`tokenizer.ggml.model = gpt2`) is supported; the
//! pre-tokenizer follows `tokenizer.ggml.pre` the way the Hugging Face tokenizer.json of
//! each model family does.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::LlmError;
use crate::gguf::Metadata;

/// Qwen2's split regex (tokenizer.json of Qwen2/Qwen2.5): like GPT-4's, but digits one by one.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: u32 = 3;
const TOKEN_TYPE_USER_DEFINED: u32 = 4;

pub(crate) fn from_gguf(meta: &Metadata<'_>) -> Result<Tokenizer, LlmError> {
    let kind = meta.string("tokenizer.ggml.model")?;
    if kind != "gpt2" {
        return Err(meta.error(format!(
            "tokenizer.ggml.model is `{kind}`; only byte-level BPE (`gpt2`) models are supported"
        )));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|merge| match merge.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(meta.error(format!("tokenizer.ggml.merges: invalid entry `{merge}`"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(LlmError::tokenizer)?;

    let mut tokenizer = Tokenizer::new(bpe);
    let pre = if meta.has("tokenizer.ggml.pre") {
        meta.string("tokenizer.ggml.pre")?
    } else {
        "gpt2"
    };
    configure_pre_tokenizer(&mut tokenizer, pre)?;
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    add_special_tokens(&mut tokenizer, meta, &tokens)?;
    Ok(tokenizer)
}

fn configure_pre_tokenizer(tokenizer: &mut Tokenizer, pre: &str) -> Result<(), LlmError> {
    let byte_level = ByteLevel::new(false, false, false);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "qwen2" => {
            tokenizer.with_normalizer(Some(NFC));
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(LlmError::tokenizer)?;
            Sequence::new(vec![split.into(), byte_level.into()]).into()
        }
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        _ => ByteLevel::new(false, true, true).into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    Ok(())
}

/// Control tokens (`<|im_start|>`…) become special tokens so that they are matched whole
/// in text and skipped when decoding; user-defined tokens are matched whole but kept.
fn add_special_tokens(
    tokenizer: &mut Tokenizer,
    meta: &Metadata<'_>,
    tokens: &[String],
) -> Result<(), LlmError> {
    if !meta.has("tokenizer.ggml.token_type") {
        return Ok(());
    }
    let types = meta.u32s("tokenizer.ggml.token_type")?;
    let mut special = Vec::new();
    let mut user_defined = Vec::new();
    for (token, kind) in tokens.iter().zip(types) {
        match kind {
            TOKEN_TYPE_CONTROL => special.push(AddedToken::from(token.clone(), true)),
            TOKEN_TYPE_USER_DEFINED => {
                user_defined.push(AddedToken::from(token.clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&user_defined);
    Ok(())
}
