//! Rows of any data set, read through a [`FieldMapping`]: chat logs with a list of
//! `{role, content}` turns (LMSYS-Chat, WildChat: `conversation`; OpenAI style:
//! `messages`; ShareGPT: `conversations` of `{from, value}`), or a single text column
//! (query logs, intent data sets) that becomes one user message per row.
//!
//! The defaults cover those public layouts without flags; the mapping names other
//! fields. Role names differ between data sets, so the common ones are mapped
//! (human/prompter → user; gpt/bot/model/chatgpt → assistant) and system and tool
//! turns are skipped, as they are not what a user said or saw. Every field of the
//! row that is not part of the conversation is kept in `metadata` (labels, model
//! names, languages), so it can be used when exploring the clusters.

use serde_json::{Map, Value};

use super::fields::{
    as_object, expected, index, join, missing, optional_timestamp, FieldError, FieldResult,
    FALLBACK_TIMESTAMP,
};
use super::FieldMapping;
use crate::types::{Conversation, Message, Metadata, Role};

/// Fields tried, in order, for the list of turns when the mapping names none.
const MESSAGE_FIELDS: [&str; 3] = ["conversation", "messages", "conversations"];
const DEFAULT_ROLE: &str = "role";
const ROLE_FALLBACKS: [&str; 2] = ["from", "sender"];
const DEFAULT_CONTENT: &str = "content";
const CONTENT_FALLBACKS: [&str; 2] = ["value", "text"];
const MESSAGE_TIME_FIELDS: [&str; 2] = ["created_at", "timestamp"];

pub(crate) fn conversation(
    record: &Value,
    mapping: &FieldMapping,
    default_id: &str,
) -> FieldResult<Conversation> {
    let row = as_object(record, "(record)")?;
    let mut used: Vec<&str> = Vec::new();

    let chat_id = match mapping.id.as_deref() {
        Some(field) => {
            used.push(field);
            id_value(row, field)?
        }
        None => default_id.to_string(),
    };
    let created_at = match mapping.created_at.as_deref() {
        Some(field) => {
            used.push(field);
            optional_timestamp(row, field, "")?
        }
        None => None,
    };
    let conversation_time = created_at.unwrap_or_else(|| FALLBACK_TIMESTAMP.to_string());

    let messages = match turns_source(row, mapping)? {
        Turns::Text(field) => {
            used.push(field);
            vec![Message {
                created_at: conversation_time.clone(),
                role: Role::User,
                content: text_value(row, field)?,
            }]
        }
        Turns::List(field) => {
            used.push(field);
            turns(row, field, mapping, &conversation_time)?
        }
    };

    Ok(Conversation {
        chat_id,
        created_at: conversation_time,
        messages,
        metadata: remaining_fields(row, &used),
    })
}

enum Turns<'a> {
    Text(&'a str),
    List(&'a str),
}

/// Which field holds the conversation: the mapping's, else the first known one.
fn turns_source<'a>(
    row: &'a Map<String, Value>,
    mapping: &'a FieldMapping,
) -> FieldResult<Turns<'a>> {
    if let Some(field) = mapping.text.as_deref() {
        return Ok(Turns::Text(field));
    }
    if let Some(field) = mapping.messages.as_deref() {
        return Ok(Turns::List(field));
    }
    if let Some(field) = MESSAGE_FIELDS
        .into_iter()
        .find(|field| row.get(*field).is_some_and(|v| !v.is_null()))
    {
        return Ok(Turns::List(field));
    }
    if row.get("text").is_some_and(Value::is_string) {
        return Ok(Turns::Text("text"));
    }
    Err(FieldError(
        "no conversation found: expected a field \"conversation\" or \"messages\" holding \
         [{role, content}] turns, or a \"text\" column; name the fields of this data set \
         in the field mapping"
            .to_string(),
    ))
}

fn id_value(row: &Map<String, Value>, field: &str) -> FieldResult<String> {
    match row.get(field) {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        Some(Value::Number(id)) => Ok(id.to_string()),
        None | Some(Value::Null) => Err(missing(field)),
        Some(other) => Err(expected(field, "a non-empty string or a number", other)),
    }
}

fn text_value(row: &Map<String, Value>, field: &str) -> FieldResult<String> {
    match row.get(field) {
        Some(Value::String(text)) => Ok(text.clone()),
        None | Some(Value::Null) => Err(missing(field)),
        Some(other) => Err(expected(field, "a string", other)),
    }
}

fn turns(
    row: &Map<String, Value>,
    field: &str,
    mapping: &FieldMapping,
    conversation_time: &str,
) -> FieldResult<Vec<Message>> {
    let items = match row.get(field) {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return Err(missing(field)),
        Some(other) => return Err(expected(field, "an array of turns", other)),
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = index(field, i);
        let turn = as_object(item, &path)?;
        let Some(role) = role(turn, &path, &mapping.role)? else {
            continue;
        };
        let created_at = MESSAGE_TIME_FIELDS
            .iter()
            .map(|key| optional_timestamp(turn, key, &path))
            .find_map(|time| time.transpose())
            .transpose()?
            .unwrap_or_else(|| conversation_time.to_string());
        messages.push(Message {
            created_at,
            role,
            content: content(turn, &path, &mapping.content)?,
        });
    }
    Ok(messages)
}

/// The turn's role; `None` for system and tool turns, which are skipped.
fn role(turn: &Map<String, Value>, path: &str, field: &str) -> FieldResult<Option<Role>> {
    let fallbacks: &[&str] = if field == DEFAULT_ROLE {
        &ROLE_FALLBACKS
    } else {
        &[]
    };
    let (key, value) =
        first_present(turn, field, fallbacks).ok_or_else(|| missing(&join(path, field)))?;
    let role_path = join(path, key);
    let Value::String(name) = value else {
        return Err(expected(&role_path, "\"user\" or \"assistant\"", value));
    };
    role_named(name).ok_or_else(|| expected(&role_path, "\"user\" or \"assistant\"", value))
}

/// The role a turn named `name` plays, as the chat logs we know spell it:
/// `Some(None)` for system and tool turns, which are skipped; `None` for a name
/// we do not know.
pub(super) fn role_named(name: &str) -> Option<Option<Role>> {
    match name.trim().to_ascii_lowercase().as_str() {
        "user" | "human" | "prompter" | "customer" => Some(Some(Role::User)),
        "assistant" | "gpt" | "bot" | "model" | "chatgpt" | "ai" | "claude" => {
            Some(Some(Role::Assistant))
        }
        "system" | "tool" | "function" | "ipython" | "developer" => Some(None),
        _ => None,
    }
}

fn content(turn: &Map<String, Value>, path: &str, field: &str) -> FieldResult<String> {
    let fallbacks: &[&str] = if field == DEFAULT_CONTENT {
        &CONTENT_FALLBACKS
    } else {
        &[]
    };
    let (key, value) =
        first_present(turn, field, fallbacks).ok_or_else(|| missing(&join(path, field)))?;
    match value {
        Value::String(text) => Ok(text.clone()),
        // OpenAI-style content parts: [{"type": "text", "text": "…"}, …]
        Value::Array(parts) => Ok(parts
            .iter()
            .filter_map(|part| match part {
                Value::String(text) => Some(text.as_str()),
                other => other.get("text").and_then(Value::as_str),
            })
            .collect::<Vec<_>>()
            .join("\n")),
        other => Err(expected(&join(path, key), "a string", other)),
    }
}

/// The first of `field`, then `fallbacks`, that the object has (and is not null).
fn first_present<'a>(
    object: &'a Map<String, Value>,
    field: &'a str,
    fallbacks: &[&'a str],
) -> Option<(&'a str, &'a Value)> {
    std::iter::once(field)
        .chain(fallbacks.iter().copied())
        .find_map(|key| object.get(key).filter(|v| !v.is_null()).map(|v| (key, v)))
}

/// The row's other fields; a nested `metadata` object is merged in flat.
fn remaining_fields(row: &Map<String, Value>, used: &[&str]) -> Metadata {
    let mut metadata = Metadata::new();
    for (key, value) in row {
        if used.contains(&key.as_str()) {
            continue;
        }
        match (key.as_str(), value) {
            ("metadata", Value::Object(nested)) => {
                for (nested_key, nested_value) in nested {
                    metadata.insert(nested_key.clone(), nested_value.clone());
                }
            }
            _ => {
                metadata.insert(key.clone(), value.clone());
            }
        }
    }
    metadata
}
