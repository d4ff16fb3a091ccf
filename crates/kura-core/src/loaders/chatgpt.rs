//! ChatGPT data exports (`conversations.json`: an array of `{title, create_time,
//! mapping, current_node, conversation_id}`).
//!
//! `mapping` is a tree: editing a prompt or regenerating a reply adds a sibling
//! branch. We walk from `current_node` up the `parent` links and reverse, which is the
//! branch shown in ChatGPT, so abandoned branches are never mixed into the text.
//!
//! Nodes that the user never saw are dropped: nodes without a message, nodes marked
//! `is_visually_hidden_from_conversation`, system and tool messages, assistant
//! messages addressed to a tool (`recipient` other than "all": code, browsing
//! calls), and the model's private reasoning (`thoughts`, `reasoning_recap`), for
//! the same reason as Claude's thinking blocks. Multi-part content is joined with
//! newlines; a part that is not text (an image, a file) becomes a bracketed note
//! such as `[Image]` so the summary knows something was shown. `create_time` is Unix
//! seconds and is written as an ISO-8601 UTC string.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::fields::{
    as_object, expected, join, optional_str, unix_seconds_to_iso, FieldError, FieldResult,
    FALLBACK_TIMESTAMP,
};
use crate::types::{Conversation, Message, Metadata, Role};

pub(crate) fn conversation(record: &Value) -> FieldResult<Conversation> {
    let object = as_object(record, "(record)")?;
    let chat_id = match optional_str(object, "conversation_id", "")? {
        Some(id) => id,
        None => optional_str(object, "id", "")?
            .ok_or_else(|| super::fields::missing("conversation_id"))?,
    };
    let title = optional_str(object, "title", "")?;
    let mapping = match object.get("mapping") {
        Some(Value::Object(mapping)) => mapping,
        None | Some(Value::Null) => return Err(super::fields::missing("mapping")),
        Some(other) => return Err(expected("mapping", "an object", other)),
    };
    let conversation_time =
        unix_time(object, "create_time", "")?.unwrap_or_else(|| FALLBACK_TIMESTAMP.to_string());

    let mut messages = Vec::new();
    for node_id in current_branch(object, mapping)? {
        let path = format!("mapping[\"{node_id}\"]");
        let node = as_object(node_at(mapping, &node_id)?, &path)?;
        if let Some(message) = visible_message(node, &path, &conversation_time)? {
            messages.push(message);
        }
    }

    let mut metadata = Metadata::new();
    metadata.insert("source".into(), "chatgpt".into());
    metadata.insert("title".into(), title.unwrap_or_default().into());
    metadata.insert("conversation_id".into(), chat_id.into());
    if let Some(model) = optional_str(object, "default_model_slug", "")? {
        metadata.insert("model".into(), model.into());
    }
    Ok(Conversation {
        chat_id: chat_id.to_string(),
        created_at: conversation_time,
        messages,
        metadata,
    })
}

/// Node ids from the root to `current_node`.
fn current_branch(
    object: &Map<String, Value>,
    mapping: &Map<String, Value>,
) -> FieldResult<Vec<String>> {
    let current = match optional_str(object, "current_node", "")? {
        Some(current) => current.to_string(),
        None => last_leaf(mapping).ok_or_else(|| super::fields::missing("current_node"))?,
    };
    if !mapping.contains_key(&current) {
        return Err(FieldError(format!(
            "field \"current_node\": {current:?} is not a node of \"mapping\""
        )));
    }
    let mut branch = Vec::new();
    let mut visited = HashSet::new();
    let mut next = Some(current);
    while let Some(id) = next {
        if !visited.insert(id.clone()) {
            break; // a cycle in a corrupt export: stop rather than loop
        }
        let path = format!("mapping[\"{id}\"]");
        let node = as_object(node_at(mapping, &id)?, &path)?;
        next = optional_str(node, "parent", &path)?
            .filter(|parent| mapping.contains_key(*parent))
            .map(str::to_string);
        branch.push(id);
    }
    branch.reverse();
    Ok(branch)
}

fn node_at<'a>(mapping: &'a Map<String, Value>, id: &str) -> FieldResult<&'a Value> {
    mapping
        .get(id)
        .ok_or_else(|| FieldError(format!("field \"mapping\": no node {id:?}")))
}

/// For exports without `current_node`: the childless node created last.
fn last_leaf(mapping: &Map<String, Value>) -> Option<String> {
    mapping
        .iter()
        .filter(|(_, node)| {
            node.get("children")
                .and_then(Value::as_array)
                .is_none_or(|children| children.is_empty())
        })
        .max_by(|(_, a), (_, b)| node_time(a).total_cmp(&node_time(b)))
        .map(|(id, _)| id.clone())
}

fn node_time(node: &Value) -> f64 {
    node.pointer("/message/create_time")
        .and_then(Value::as_f64)
        .unwrap_or(f64::NEG_INFINITY)
}

/// The node's message as the user saw it, or `None` when they did not see it.
fn visible_message(
    node: &Map<String, Value>,
    path: &str,
    conversation_time: &str,
) -> FieldResult<Option<Message>> {
    let message_path = join(path, "message");
    let message = match node.get("message") {
        None | Some(Value::Null) => return Ok(None),
        Some(message) => as_object(message, &message_path)?,
    };
    let hidden = message
        .get("metadata")
        .and_then(|m| m.get("is_visually_hidden_from_conversation"))
        == Some(&Value::Bool(true));
    if hidden {
        return Ok(None);
    }
    let author_path = join(&message_path, "author");
    let author = match message.get("author") {
        Some(author) => as_object(author, &author_path)?,
        None => return Err(super::fields::missing(&author_path)),
    };
    let role = match super::fields::required_str(author, "role", &author_path)? {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "system" | "tool" | "critic" => return Ok(None),
        other => {
            return Err(expected(
                &join(&author_path, "role"),
                "\"user\", \"assistant\", \"system\" or \"tool\"",
                &Value::String(other.to_string()),
            ))
        }
    };
    let to_tool = optional_str(message, "recipient", &message_path)?.is_some_and(|r| r != "all");
    if role == Role::Assistant && to_tool {
        return Ok(None);
    }
    let Some(content) = content_text(message, &message_path)? else {
        return Ok(None);
    };
    let created_at = unix_time(message, "create_time", &message_path)?
        .unwrap_or_else(|| conversation_time.to_string());
    Ok(Some(Message {
        created_at,
        role,
        content,
    }))
}

/// The visible text of `message.content`, or `None` when there is none.
fn content_text(message: &Map<String, Value>, path: &str) -> FieldResult<Option<String>> {
    let content_path = join(path, "content");
    let content = match message.get("content") {
        None | Some(Value::Null) => return Ok(None),
        Some(content) => as_object(content, &content_path)?,
    };
    let kind = optional_str(content, "content_type", &content_path)?.unwrap_or("text");
    if matches!(
        kind,
        "thoughts" | "reasoning_recap" | "code" | "execution_output" | "user_editable_context"
    ) {
        return Ok(None);
    }
    let text = match content.get("parts") {
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(part_text)
            .collect::<Vec<_>>()
            .join("\n"),
        None | Some(Value::Null) => optional_str(content, "text", &content_path)?
            .unwrap_or_default()
            .to_string(),
        Some(other) => return Err(expected(&join(&content_path, "parts"), "an array", other)),
    };
    let text = text.trim();
    Ok((!text.is_empty()).then(|| text.to_string()))
}

fn part_text(part: &Value) -> Option<String> {
    match part {
        Value::String(text) => Some(text.clone()),
        Value::Object(object) => {
            if let Some(text) = object.get("text").and_then(Value::as_str) {
                return Some(text.to_string()); // e.g. audio transcriptions
            }
            let kind = object.get("content_type").and_then(Value::as_str);
            Some(match kind {
                Some(kind) if kind.contains("image") => "[Image]".to_string(),
                Some(kind) => format!("[{kind}]"),
                None => "[Attachment]".to_string(),
            })
        }
        _ => None,
    }
}

/// A Unix-seconds field (`create_time`) as ISO-8601; null or absent is `None`.
fn unix_time(object: &Map<String, Value>, key: &str, path: &str) -> FieldResult<Option<String>> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(unix_seconds_to_iso)
            .map(Some)
            .ok_or_else(|| {
                FieldError(format!(
                    "field \"{}\": {n} is not a valid Unix time",
                    join(path, key)
                ))
            }),
        Some(other) => Err(expected(&join(path, key), "Unix seconds (a number)", other)),
    }
}
