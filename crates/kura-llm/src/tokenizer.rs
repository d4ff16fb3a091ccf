//! Builds a `tokenizers::Tokenizer` from the vocabulary stored in a GGUF file, so a model
//! is one file and the tokenizer can never disagree with the weights.
//!
//! Only the GPT-2 style byte-level BPE (`tokenizer.ggml.model = gpt2`) is supported; the
//! pre-tokenizer follows `tokenizer.ggml.pre` the way the Hugging Face tokenizer.json of
//! each model family does. A `pre` we do not know is an error rather than GPT-2's
//! rules: a wrong split still gives valid ids, so the model would run on text cut
//! where it never saw text cut, and nothing would say so.

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

/// Llama 3's split regex (tokenizer.json of Llama 3.x): Qwen2's, but digits in runs
/// of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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
    let pre = meta
        .optional("tokenizer.ggml.pre", Metadata::string)?
        .unwrap_or("gpt2");
    configure_pre_tokenizer(&mut tokenizer, pre, meta)?;
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    add_special_tokens(&mut tokenizer, meta, &tokens)?;
    Ok(tokenizer)
}

fn configure_pre_tokenizer(
    tokenizer: &mut Tokenizer,
    pre: &str,
    meta: &Metadata<'_>,
) -> Result<(), LlmError> {
    let split_then_bytes = |regex: &str| -> Result<PreTokenizerWrapper, LlmError> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(LlmError::tokenizer)?;
        let byte_level = ByteLevel::new(false, false, false);
        Ok(Sequence::new(vec![split.into(), byte_level.into()]).into())
    };
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "qwen2" => {
            tokenizer.with_normalizer(Some(NFC));
            split_then_bytes(QWEN2_SPLIT)?
        }
        // llama.cpp's names for Llama 3's pre-tokenizer.
        "llama-bpe" | "llama3" | "llama-v3" => split_then_bytes(LLAMA3_SPLIT)?,
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
        other => {
            return Err(meta.error(format!(
                "tokenizer.ggml.pre is `{other}`, a pre-tokenizer this build does not know \
                 (known: qwen2, llama-bpe, smollm, gpt2)"
            )))
        }
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
    let Some(types) = meta.optional("tokenizer.ggml.token_type", Metadata::u32s)? else {
        return Ok(());
    };
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

/// Llama 3.2's own tokenizer, and GGUF metadata holding its vocabulary as llama.cpp's
/// converter writes it, for the tests here and of the chat template.
#[cfg(test)]
pub(crate) mod reference {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
    use tokenizers::Tokenizer;

    /// Llama 3.2's tokenizer.json, fetched through the model sources and checked
    /// against its pinned checksum (see `testdata/reference-tokenizers.toml`); once
    /// for all the tests that run at the same time.
    pub(crate) fn llama3_json() -> PathBuf {
        static FETCHED: OnceLock<PathBuf> = OnceLock::new();
        FETCHED
            .get_or_init(|| {
                let manifest = include_str!("../testdata/reference-tokenizers.toml");
                let specs = kura_models::parse(manifest).expect("reference manifest");
                let spec = specs
                    .iter()
                    .find(|s| s.name == "llama-3.2-tokenizer")
                    .expect("llama-3.2-tokenizer in the reference manifest");
                kura_models::Resolver::from_env()
                    .resolve_spec(spec)
                    .unwrap_or_else(|e| panic!("cannot fetch Llama 3.2's tokenizer: {e}"))
                    .file("tokenizer.json")
            })
            .clone()
    }

    /// Llama 3.2's own tokenizer, read once for all the tests.
    pub(crate) fn llama3() -> Tokenizer {
        static READ: OnceLock<Tokenizer> = OnceLock::new();
        READ.get_or_init(|| {
            Tokenizer::from_file(llama3_json()).expect("Llama 3.2's tokenizer.json")
        })
        .clone()
    }

    /// The tokenizer metadata of a GGUF converted from Llama 3.2's tokenizer.json,
    /// with `pre` as its pre-tokenizer: every token by id, control tokens typed 3,
    /// the merges as "a b". The 9 MB file is read once for all the tests.
    pub(crate) fn gguf_content(pre: &str) -> Content {
        static VOCABULARY: OnceLock<HashMap<String, Value>> = OnceLock::new();
        let mut metadata = VOCABULARY.get_or_init(vocabulary).clone();
        metadata.insert("tokenizer.ggml.pre".to_string(), Value::String(pre.into()));
        Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn vocabulary() -> HashMap<String, Value> {
        let text = std::fs::read_to_string(llama3_json()).expect("tokenizer.json");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let mut tokens: Vec<(u32, String, i32)> = parsed["model"]["vocab"]
            .as_object()
            .expect("vocab")
            .iter()
            .map(|(token, id)| (id.as_u64().expect("id") as u32, token.clone(), 1))
            .collect();
        for added in parsed["added_tokens"].as_array().expect("added_tokens") {
            let kind = if added["special"].as_bool() == Some(true) {
                3
            } else {
                4
            };
            let id = added["id"].as_u64().expect("id") as u32;
            let content = added["content"].as_str().expect("content").to_string();
            tokens.push((id, content, kind));
        }
        tokens.sort_by_key(|&(id, _, _)| id);
        assert!(
            tokens.iter().enumerate().all(|(i, t)| t.0 as usize == i),
            "ids 0..n"
        );
        let merges = parsed["model"]["merges"]
            .as_array()
            .expect("merges")
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Value::String(s.clone()),
                pair => Value::String(format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                )),
            })
            .collect();
        HashMap::from([
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(tokens.iter().map(|t| Value::String(t.1.clone())).collect()),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(tokens.iter().map(|t| Value::I32(t.2)).collect()),
            ),
            ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

    /// Texts that split differently under each family's rules: digit runs, cased
    /// contractions, runs of spaces and line breaks, scripts and emoji.
    const EDGES: &[&str] = &[
        "",
        " ",
        "1234567 and 3.14159, 1,000,000",
        "I'LL say it's THEY'RE and we'Ve",
        "  two spaces,   three,\n\n\nthree breaks\r\n\r\nand CRLF",
        "\ttabs\tand trailing spaces   ",
        "日本語のテキスト、中文文本，한국어 텍스트",
        "Emoji 👩‍💻🚀 and accents: café naïve Straße ΔΣΩ",
        "fn main() { println!(\"{}\", x[0] + 42); }",
        "<|eot_id|> and <|start_header_id|> as text",
    ];

    fn texts() -> Vec<String> {
        let mut texts: Vec<String> = EDGES.iter().map(|s| s.to_string()).collect();
        let reference = format!("{DATA}/reference/tokenizer_qwen25.jsonl");
        let rows =
            std::fs::read_to_string(&reference).unwrap_or_else(|e| panic!("{reference}: {e}"));
        for line in rows.lines() {
            let row: serde_json::Value = serde_json::from_str(line).expect(&reference);
            texts.push(row["text"].as_str().expect("text").to_string());
        }
        // Real chats in many languages, with code and tables.
        let path = format!("{DATA}/conversations/arena_wildchat_oasst_3404.jsonl.gz");
        let loaded = kura_core::loaders::load_file(Path::new(&path), &Default::default())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        for conversation in loaded.conversations.iter().take(300) {
            texts.extend(conversation.messages.iter().map(|m| m.content.clone()));
        }
        texts
    }

    /// The tokenizer we build from a Llama 3 GGUF's metadata gives the ids of
    /// Llama 3.2's own tokenizer.json, text for text (control tokens written in the
    /// text encoded as text by both).
    #[test]
    fn llama3_tokenizer_from_gguf_matches_its_tokenizer_json() {
        let content = reference::gguf_content("llama-bpe");
        let mut ours = from_gguf(&Metadata::new(&content, Path::new("llama3.gguf"))).expect("ours");
        let mut theirs = reference::llama3();
        theirs.set_encode_special_tokens(true);
        ours.set_encode_special_tokens(true);
        let texts = texts();
        assert!(texts.len() > 1000, "{} texts", texts.len());
        for text in &texts {
            let want = theirs.encode(text.as_str(), false).expect("theirs");
            let got = ours.encode(text.as_str(), false).expect("ours");
            assert_eq!(got.get_ids(), want.get_ids(), "{text:?}");
        }
        // And the other way: the ids read back to the text.
        let text = EDGES[7];
        let ids = ours.encode(text, false).expect("ours").get_ids().to_vec();
        assert_eq!(ours.decode(&ids, false).expect("decode"), text);
    }

    /// GPT-2's rules would give valid ids for Llama 3's vocabulary, split wrongly
    /// (digit runs of any length): this is why an unknown `pre` is refused.
    #[test]
    fn an_unknown_pre_tokenizer_is_refused_by_name() {
        let content = reference::gguf_content("tekken");
        let error = from_gguf(&Metadata::new(&content, Path::new("m.gguf")))
            .expect_err("unknown pre-tokenizer");
        let message = error.to_string();
        assert!(
            message.contains("m.gguf") && message.contains("`tekken`"),
            "{message}"
        );

        let content = reference::gguf_content("gpt2");
        let gpt2 = from_gguf(&Metadata::new(&content, Path::new("m.gguf"))).expect("gpt2");
        let llama3 = reference::llama3();
        let digits = "1234567";
        assert_ne!(
            gpt2.encode(digits, false).unwrap().get_ids(),
            llama3.encode(digits, false).unwrap().get_ids(),
            "the rules differ where the test says they do"
        );
    }
}
