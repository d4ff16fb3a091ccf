//! The tokenizer built from GGUF metadata must match the Hugging Face tokenizer id for
//! id on every reference row (made by transformers' GGUF converter, no special tokens
//! added), including text that names control tokens.

mod common;

use common::{gguf, DATA, QWEN, SMOLLM2};

#[derive(serde::Deserialize)]
struct Row {
    text: String,
    ids: Vec<u32>,
}

fn assert_parity(model: &str, reference: &str) {
    let tokenizer = kura_llm::load_tokenizer(&gguf(model)).expect("tokenizer from GGUF");
    let path = format!("{DATA}/reference/{reference}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut rows = 0;
    for (line, json) in text.lines().enumerate() {
        let row: Row = serde_json::from_str(json).unwrap_or_else(|e| panic!("{path}:{line}: {e}"));
        let ids = tokenizer
            .encode(row.text.as_str(), false)
            .expect("encode")
            .get_ids()
            .to_vec();
        assert_eq!(
            ids,
            row.ids,
            "{model}, {path} line {}: {:?}",
            line + 1,
            row.text
        );
        rows += 1;
    }
    assert!(rows > 0, "{path} has no rows");
}

#[test]
fn smollm2_tokenizer_matches_reference() {
    assert_parity(SMOLLM2, "tokenizer_smollm2.jsonl");
}

#[test]
fn qwen25_tokenizer_matches_reference() {
    assert_parity(QWEN, "tokenizer_qwen25.jsonl");
}
