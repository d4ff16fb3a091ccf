//! Claude.ai data exports (`conversations.json`: an array of
//! `{uuid, name, created_at, chat_messages}`), in both the current format (messages
//! carry `content` blocks and `parent_message_uuid`) and the older one (messages carry
//! only `text` and `sender`).
//!
//! What becomes text, and why: the point of loading is to summarise what the user
//! asked and what they got, so the text is what the user saw.
//! - `text` blocks are the conversation itself.
//! - `thinking` blocks are left out: they are the model's private reasoning, often
//!   long, and a summary of the conversation should not be a summary of them.
//! - `tool_use` / `tool_result` become one short bracketed note each
//!   (`[Tool use: web_search: …]`), so a summary can say that a search or a file
//!   read happened without the tool's raw output drowning the conversation.
//! - attachments with extracted text are included after the message text, marked
//!   `[Attachment: name]`, because they are usually what the user asked about;
//!   attachments without text and `files` appear as `[File: name]` notes.
//!
//! Order: when messages link to each other through `parent_message_uuid`, the export
//! holds a tree (a regenerated reply is a sibling of the one it replaced), so we walk
//! from the current leaf (`current_leaf_message_uuid` when the export has it, else the
//! most recent leaf) up to the root: exactly the branch the user last saw. Without
//! links, messages are ordered by `created_at` (stable, so equal times keep file order).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::fields::{
    as_object, expected, index, join, optional_str, required_array, required_str, FieldResult,
    FALLBACK_TIMESTAMP,
};
use crate::text::truncate_chars;
use crate::types::{Conversation, Message, Metadata, Role};

/// Tool inputs and outputs are notes, not content: this many characters at most.
const TOOL_NOTE_CHARS: usize = 300;

pub(crate) fn conversation(record: &Value) -> FieldResult<Conversation> {
    let object = as_object(record, "(record)")?;
    let uuid = required_str(object, "uuid", "")?;
    let name = optional_str(object, "name", "")?;
    let created_at = optional_str(object, "created_at", "")?;
    let current_leaf = optional_str(object, "current_leaf_message_uuid", "")?;
    let parsed = required_array(object, "chat_messages", "")?
        .iter()
        .enumerate()
        .map(|(i, message)| ExportMessage::parse(message, &index("chat_messages", i), i))
        .collect::<FieldResult<Vec<_>>>()?;

    let conversation_time = created_at
        .or_else(|| parsed.iter().find_map(|m| m.created_at.as_deref()))
        .unwrap_or(FALLBACK_TIMESTAMP);
    let messages = current_branch(&parsed, current_leaf)
        .into_iter()
        .map(|i| &parsed[i])
        .filter(|m| !m.content.is_empty())
        .map(|m| Message {
            created_at: m
                .created_at
                .clone()
                .unwrap_or_else(|| conversation_time.to_string()),
            role: m.role,
            content: m.content.clone(),
        })
        .collect();

    let mut metadata = Metadata::new();
    metadata.insert("source".into(), "claude".into());
    metadata.insert("title".into(), name.unwrap_or_default().into());
    metadata.insert("uuid".into(), uuid.into());
    Ok(Conversation {
        chat_id: uuid.to_string(),
        created_at: conversation_time.to_string(),
        messages,
        metadata,
    })
}

/// One entry of `chat_messages`, with its content already rendered to text.
struct ExportMessage {
    uuid: Option<String>,
    parent: Option<String>,
    created_at: Option<String>,
    role: Role,
    content: String,
    position: usize,
}

impl ExportMessage {
    fn parse(value: &Value, path: &str, position: usize) -> FieldResult<Self> {
        let object = as_object(value, path)?;
        let role = match object.get("sender") {
            Some(Value::String(s)) if s == "human" => Role::User,
            Some(Value::String(s)) if s == "assistant" => Role::Assistant,
            None | Some(Value::Null) => return Err(super::fields::missing(&join(path, "sender"))),
            Some(other) => {
                return Err(expected(
                    &join(path, "sender"),
                    "\"human\" or \"assistant\"",
                    other,
                ))
            }
        };
        Ok(ExportMessage {
            uuid: optional_str(object, "uuid", path)?.map(str::to_string),
            parent: optional_str(object, "parent_message_uuid", path)?.map(str::to_string),
            created_at: optional_str(object, "created_at", path)?.map(str::to_string),
            role,
            content: render(object, path)?,
            position,
        })
    }
}

/// The message's text, then its attachments and files as marked notes.
fn render(object: &Map<String, Value>, path: &str) -> FieldResult<String> {
    let mut parts = match object.get("content") {
        Some(Value::Array(blocks)) if !blocks.is_empty() => blocks
            .iter()
            .enumerate()
            .map(|(i, block)| render_block(block, &index(&join(path, "content"), i)))
            .collect::<FieldResult<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect(),
        None | Some(Value::Null) | Some(Value::Array(_)) => optional_str(object, "text", path)?
            .map(|text| vec![text.trim().to_string()])
            .unwrap_or_default(),
        Some(other) => return Err(expected(&join(path, "content"), "an array", other)),
    };
    parts.extend(attachments(object, path)?);
    parts.extend(files(object, path)?);
    parts.retain(|part| !part.is_empty());
    Ok(parts.join("\n\n"))
}

/// One content block as text, or `None` for blocks the reader never sees.
fn render_block(block: &Value, path: &str) -> FieldResult<Option<String>> {
    let object = as_object(block, path)?;
    let kind = required_str(object, "type", path)?;
    let text = match kind {
        "text" => optional_str(object, "text", path)?.map(|t| t.trim().to_string()),
        "thinking" | "redacted_thinking" => None,
        "tool_use" => Some(tool_use_note(object, path)?),
        "tool_result" => Some(tool_result_note(object, path)?),
        "local_resource" => {
            optional_str(object, "file_path", path)?.map(|file| format!("[Local file: {file}]"))
        }
        "image" => Some("[Image]".to_string()),
        // Block types added after this was written: keep their text if they have any.
        _ => optional_str(object, "text", path)?.map(|t| t.trim().to_string()),
    };
    Ok(text)
}

fn tool_use_note(object: &Map<String, Value>, path: &str) -> FieldResult<String> {
    let name = optional_str(object, "name", path)?.unwrap_or("tool");
    let detail = match optional_str(object, "message", path)? {
        Some(message) => message.to_string(),
        None => object
            .get("input")
            .filter(|input| !input.is_null())
            .map(Value::to_string)
            .unwrap_or_default(),
    };
    Ok(if detail.is_empty() {
        format!("[Tool use: {name}]")
    } else {
        format!(
            "[Tool use: {name}: {}]",
            truncate_chars(&detail, TOOL_NOTE_CHARS)
        )
    })
}

fn tool_result_note(object: &Map<String, Value>, path: &str) -> FieldResult<String> {
    let label = if object.get("is_error") == Some(&Value::Bool(true)) {
        "Tool error"
    } else {
        "Tool result"
    };
    let detail = match optional_str(object, "display_content", path)? {
        Some(display) => display.to_string(),
        None => match object.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(blocks)) => blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        },
    };
    let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok(if detail.is_empty() {
        format!("[{label}]")
    } else {
        format!("[{label}: {}]", truncate_chars(&detail, TOOL_NOTE_CHARS))
    })
}

fn attachments(object: &Map<String, Value>, path: &str) -> FieldResult<Vec<String>> {
    let Some(items) = optional_array(object, "attachments", path)? else {
        return Ok(Vec::new());
    };
    let prefix = join(path, "attachments");
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let item_path = index(&prefix, i);
            let attachment = as_object(item, &item_path)?;
            let name = optional_str(attachment, "file_name", &item_path)?.unwrap_or("unnamed");
            Ok(
                match optional_str(attachment, "extracted_content", &item_path)? {
                    Some(text) if !text.trim().is_empty() => {
                        format!("[Attachment: {name}]\n{}", text.trim())
                    }
                    _ => format!("[File: {name}]"),
                },
            )
        })
        .collect()
}

fn files(object: &Map<String, Value>, path: &str) -> FieldResult<Vec<String>> {
    let Some(items) = optional_array(object, "files", path)? else {
        return Ok(Vec::new());
    };
    let prefix = join(path, "files");
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let item_path = index(&prefix, i);
            let file = as_object(item, &item_path)?;
            let name = optional_str(file, "file_name", &item_path)?.unwrap_or("unnamed");
            Ok(format!("[File: {name}]"))
        })
        .collect()
}

fn optional_array<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> FieldResult<Option<&'a Vec<Value>>> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(other) => Err(expected(&join(path, key), "an array", other)),
    }
}

/// Indices of the messages on the branch the user last saw, oldest first.
fn current_branch(messages: &[ExportMessage], current_leaf: Option<&str>) -> Vec<usize> {
    let by_uuid: HashMap<&str, usize> = messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.uuid.as_deref().map(|uuid| (uuid, i)))
        .collect();
    let parent_of = |m: &ExportMessage| {
        m.parent
            .as_deref()
            .and_then(|parent| by_uuid.get(parent).copied())
    };
    let linked = messages.iter().any(|m| parent_of(m).is_some());
    if !linked {
        return by_time(messages);
    }
    let parents: HashSet<usize> = messages.iter().filter_map(parent_of).collect();
    let leaf = current_leaf
        .and_then(|uuid| by_uuid.get(uuid).copied())
        .or_else(|| {
            messages
                .iter()
                .filter(|m| !parents.contains(&m.position))
                .max_by(|a, b| {
                    (a.created_at.as_deref(), a.position)
                        .cmp(&(b.created_at.as_deref(), b.position))
                })
                .map(|m| m.position)
        });
    let mut branch = Vec::new();
    let mut visited = HashSet::new();
    let mut next = leaf;
    while let Some(i) = next {
        if !visited.insert(i) {
            break; // a cycle in a corrupt export: stop rather than loop
        }
        branch.push(i);
        next = parent_of(&messages[i]);
    }
    branch.reverse();
    branch
}

/// File order, sorted by `created_at` when every message has one.
fn by_time(messages: &[ExportMessage]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..messages.len()).collect();
    if messages.iter().all(|m| m.created_at.is_some()) {
        order.sort_by(|&a, &b| messages[a].created_at.cmp(&messages[b].created_at));
    }
    order
}
