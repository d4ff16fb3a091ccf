//! Kura's own `Conversation` records, as Python Kura writes them
//! (`{chat_id, created_at, messages: [{created_at, role, content}], metadata}`).
//!
//! This is the format we write back, so it is read strictly: roles must be exactly
//! "user" or "assistant" and nothing is rewritten, which is what lets a Kura file
//! round-trip byte for byte. Two leniencies only: a missing timestamp falls back
//! (message → conversation → [`FALLBACK_TIMESTAMP`]), and unknown top-level fields are
//! kept in `metadata` rather than dropped.

use serde_json::Value;

use super::fields::{
    as_object, expected, index, join, optional_str, required_array, required_str, FieldError,
    FieldResult, FALLBACK_TIMESTAMP,
};
use crate::types::{Conversation, Message, Metadata, Role};

const KNOWN_FIELDS: [&str; 4] = ["chat_id", "created_at", "messages", "metadata"];

pub(crate) fn conversation(record: &Value) -> FieldResult<Conversation> {
    let object = as_object(record, "(record)")?;
    let chat_id = required_str(object, "chat_id", "")?.to_string();
    let created_at = optional_str(object, "created_at", "")?;
    let conversation_time = created_at.unwrap_or(FALLBACK_TIMESTAMP);
    let messages = required_array(object, "messages", "")?
        .iter()
        .enumerate()
        .map(|(i, message)| self::message(message, &index("messages", i), conversation_time))
        .collect::<FieldResult<Vec<_>>>()?;
    let created_at = match created_at {
        Some(time) => time.to_string(),
        None => messages
            .first()
            .map_or(FALLBACK_TIMESTAMP.to_string(), |m| m.created_at.clone()),
    };
    let mut metadata = match object.get("metadata") {
        None | Some(Value::Null) => Metadata::new(),
        Some(Value::Object(metadata)) => metadata.clone(),
        Some(other) => return Err(expected("metadata", "an object", other)),
    };
    for (key, value) in object {
        if !KNOWN_FIELDS.contains(&key.as_str()) && !metadata.contains_key(key) {
            metadata.insert(key.clone(), value.clone());
        }
    }
    Ok(Conversation {
        chat_id,
        created_at,
        messages,
        metadata,
    })
}

fn message(value: &Value, path: &str, conversation_time: &str) -> FieldResult<Message> {
    let object = as_object(value, path)?;
    let role = match object.get("role") {
        Some(Value::String(role)) if role == "user" => Role::User,
        Some(Value::String(role)) if role == "assistant" => Role::Assistant,
        None | Some(Value::Null) => return Err(super::fields::missing(&join(path, "role"))),
        Some(other) => {
            let error = expected(&join(path, "role"), "\"user\" or \"assistant\"", other);
            return Err(match other.as_str().and_then(super::generic::role_named) {
                Some(_) => with_generic_hint(error),
                None => error,
            });
        }
    };
    let content = match object.get("content") {
        Some(parts @ Value::Array(_)) => {
            let error = expected(&join(path, "content"), "a string", parts);
            return Err(with_generic_hint(error));
        }
        _ => required_str(object, "content", path)?,
    };
    Ok(Message {
        created_at: optional_str(object, "created_at", path)?
            .unwrap_or(conversation_time)
            .to_string(),
        role,
        content: content.to_string(),
    })
}

/// Points a file that looks like Kura's but holds what only the generic reader
/// takes (system or tool turns, content parts: OpenAI-style logs with a `chat_id`)
/// to that reader, since the format was most likely detected, not chosen.
fn with_generic_hint(error: FieldError) -> FieldError {
    FieldError(format!(
        "{}; Kura's format holds user and assistant turns of plain text only: \
         `--format generic` reads such logs, skipping system and tool turns and joining content parts",
        error.0
    ))
}
