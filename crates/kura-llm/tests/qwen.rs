//! Qwen2.5-Coder-0.5B (the Qwen2 architecture: q/k/v bias, NeoX RoPE, tied output):
//! generation and summaries of real conversations. About ten times slower than
//! SmolLM2, so only two short conversations.

mod common;

use common::{arena_conversations, assert_valid_summary, llm, QWEN};
use kura_core::Summarizer;
use kura_llm::{ChatMessage, LlmSummarizer};

#[test]
fn qwen_generates_deterministically_and_summarizes() {
    let llm = llm(QWEN);
    let messages = [
        ChatMessage::system("You are a helpful assistant. Answer in one short sentence."),
        ChatMessage::user("What is the capital of France?"),
    ];
    let first = llm.generate(&messages, 32).expect("generate");
    assert_eq!(first, llm.generate(&messages, 32).expect("generate"));
    assert!(first.contains("Paris"), "{first:?}");

    let summarizer = LlmSummarizer::new(llm);
    let conversations = arena_conversations(&[0, 14]);
    let started = std::time::Instant::now();
    let results = summarizer.summarize(&conversations);
    eprintln!(
        "qwen: {:.2} s per conversation",
        started.elapsed().as_secs_f64() / conversations.len() as f64
    );
    for (conversation, result) in conversations.iter().zip(results) {
        let summary = result.unwrap_or_else(|e| panic!("{}: {e}", conversation.chat_id));
        eprintln!("{}: {summary:?}", conversation.chat_id);
        assert_valid_summary(conversation, &summary);
    }
}
