//! Shared by the integration tests: models come from the resolver (the manifest's
//! files in the local cache), conversations from the shared data set.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use kura_core::{Conversation, ConversationSummary};
use kura_llm::{LlmOptions, LocalLlm};

pub const SMOLLM2: &str = "smollm2-135m-instruct";
pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct";

pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

pub fn gguf(name: &str) -> PathBuf {
    let resolved = kura_models::Resolver::from_env()
        .resolve(name)
        .unwrap_or_else(|e| panic!("cannot resolve model {name}: {e}"));
    resolved
        .single_file()
        .unwrap_or_else(|| panic!("model {name} is not a single GGUF file"))
        .to_path_buf()
}

/// One loaded model per name per test binary: tests run on threads and share it.
pub fn llm(name: &str) -> Arc<LocalLlm> {
    static LOADED: OnceLock<Mutex<HashMap<String, Arc<LocalLlm>>>> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    loaded
        .entry(name.to_string())
        .or_insert_with(|| {
            let llm = LocalLlm::load(
                &gguf(name),
                &candle_core::Device::Cpu,
                LlmOptions::default(),
            )
            .unwrap_or_else(|e| panic!("cannot load {name}: {e}"));
            Arc::new(llm.with_model_id(name.to_string()))
        })
        .clone()
}

/// The conversations of a shared data file with these ids, in the order given.
pub fn conversations_by_id(file: &str, ids: &[&str]) -> Vec<Conversation> {
    let path = PathBuf::from(format!("{DATA}/conversations/{file}"));
    let loaded = kura_core::loaders::load_file(&path, &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ids.iter()
        .map(|id| {
            loaded
                .conversations
                .iter()
                .find(|c| c.chat_id == *id)
                .unwrap_or_else(|| panic!("{}: no conversation {id}", path.display()))
                .clone()
        })
        .collect()
}

pub fn arena_conversations(indices: &[usize]) -> Vec<Conversation> {
    let path = format!("{DATA}/conversations/arena_hard_500.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rows: Vec<&str> = text.lines().collect();
    indices
        .iter()
        .map(|&i| serde_json::from_str(rows[i]).unwrap_or_else(|e| panic!("{path} row {i}: {e}")))
        .collect()
}

const STOPWORDS: &[&str] = &[
    "the",
    "user",
    "users",
    "assistant",
    "asked",
    "asks",
    "asking",
    "wants",
    "want",
    "that",
    "this",
    "with",
    "about",
    "from",
    "which",
    "what",
    "provided",
    "provide",
    "provides",
    "request",
    "requested",
    "help",
    "helped",
    "their",
    "them",
    "they",
    "have",
    "into",
    "some",
    "write",
    "wrote",
    "explain",
    "explained",
    "for",
    "and",
    "how",
    "was",
    "were",
    "can",
    "you",
    "your",
];

fn content_words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() >= 3 && !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Every facet is present and in range, and the summary is about this conversation.
pub fn assert_valid_summary(conversation: &Conversation, summary: &ConversationSummary) {
    let context = format!("{}: {summary:?}", conversation.chat_id);
    assert_eq!(summary.chat_id, conversation.chat_id);
    assert!(!summary.summary.trim().is_empty(), "{context}");
    for score in [summary.concerning_score, summary.user_frustration] {
        assert!(matches!(score, Some(1..=5)), "{context}");
    }
    let languages = summary.languages.as_deref().unwrap_or_default();
    assert!(languages.iter().any(|l| l == "english"), "{context}");
    assert!(
        summary.request.as_deref().is_some_and(|r| !r.is_empty()),
        "{context}"
    );
    assert!(
        summary.task.as_deref().is_some_and(|t| !t.is_empty()),
        "{context}"
    );
    assert!(summary.assistant_errors.is_some(), "{context}");
    let conversation_words: HashSet<String> = conversation
        .messages
        .iter()
        .flat_map(|m| content_words(&m.content))
        .collect();
    let shared = content_words(&summary.summary)
        .intersection(&conversation_words)
        .count();
    assert!(
        shared > 0,
        "summary shares no content word with the conversation: {context}"
    );
}
