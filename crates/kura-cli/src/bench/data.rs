//! What `kura bench` measures on: real texts and conversations from the shared data
//! set when it is there, else built-in synthetic texts (and the report says which).

use std::path::Path;

use anyhow::Result;
use kura_core::loaders::FALLBACK_TIMESTAMP;
use kura_core::{Conversation, Message, Role};

use crate::records;

/// Short texts: one-line customer questions (Banking77).
const SHORT: &str = "labeled/banking77.jsonl";
/// Long texts and conversations: Arena-Hard prompts with their answers.
const CONVERSATIONS: &str = "conversations/arena_hard_500.jsonl";
/// A long text has at least this many characters (about 250 tokens).
const LONG_CHARS: usize = 1000;

pub struct Texts {
    pub short: Vec<String>,
    pub long: Vec<String>,
    pub conversations: Vec<Conversation>,
    /// Where the texts came from, for the report.
    pub source: String,
}

/// Up to `short` short texts and `long` long texts, plus the conversations to
/// summarise; synthetic ones when `dir` does not hold the data set.
pub fn load(dir: &Path, short: usize, long: usize) -> Result<Texts> {
    if !dir.join(SHORT).is_file() || !dir.join(CONVERSATIONS).is_file() {
        return Ok(synthetic(short, long, dir));
    }
    let short_texts = read_field(&dir.join(SHORT), "text", short)?;
    let conversations = read_conversations(&dir.join(CONVERSATIONS))?;
    let long_texts = conversations
        .iter()
        .flat_map(|c| c.messages.iter().map(|m| m.content.clone()))
        .filter(|t| t.chars().count() >= LONG_CHARS)
        .take(long)
        .collect();
    Ok(Texts {
        short: short_texts,
        long: long_texts,
        conversations,
        source: format!("real texts from {}", dir.display()),
    })
}

/// The `field` strings of the first `limit` records that have one.
fn read_field(path: &Path, field: &str, limit: usize) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    records::for_each(path, Some(limit), |record| {
        texts.extend(record.and_then(|r| records::string_field(&r, field)));
        Ok(())
    })?;
    Ok(texts)
}

fn read_conversations(path: &Path) -> Result<Vec<Conversation>> {
    Ok(kura_core::store::read_jsonl(path)?)
}

/// Plausible texts of the right lengths, for machines without the data set.
fn synthetic(short: usize, long: usize, dir: &Path) -> Texts {
    let short_texts = (0..short)
        .map(|i| format!("How long does transfer number {i} to my savings account take?"))
        .collect();
    let paragraph = "The service keeps a ledger of every transfer, checks each one against \
        the account limits, and sends the customer a notice when a payment is held for review. ";
    let long_texts: Vec<String> = (0..long)
        .map(|i| format!("Report {i}. {}", paragraph.repeat(6)))
        .collect();
    let conversations = long_texts
        .iter()
        .enumerate()
        .map(|(i, text)| synthetic_conversation(i, text))
        .collect();
    Texts {
        short: short_texts,
        long: long_texts,
        conversations,
        source: format!("synthetic texts ({} not found)", dir.display()),
    }
}

fn synthetic_conversation(index: usize, answer: &str) -> Conversation {
    let message = |role, content: &str| Message {
        created_at: FALLBACK_TIMESTAMP.to_string(),
        role,
        content: content.to_string(),
    };
    Conversation {
        chat_id: format!("synthetic-{index}"),
        created_at: FALLBACK_TIMESTAMP.to_string(),
        messages: vec![
            message(Role::User, "Explain how held payments are reviewed."),
            message(Role::Assistant, answer),
        ],
        metadata: Default::default(),
    }
}
