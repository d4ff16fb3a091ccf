//! Loaders: chat exports and data sets in, [`Conversation`]s out.
//!
//! Supported inputs: Kura's own `Conversation` records (JSON Lines, a JSON array, or a
//! Kura checkpoint directory holding `conversations.jsonl`), Claude.ai exports, ChatGPT
//! exports, and JSON Lines rows of any data set read through a [`FieldMapping`]. Any
//! of them may be gzip-compressed. With [`Format::Auto`] the format of each file is
//! read from its first record, so a directory of mixed exports loads in one call.
//!
//! Bad input is never a panic and never silently dropped: every problem is an
//! [`Error::Input`] naming the file, the record ("line N" or "record N") and the field,
//! or, with [`LoadOptions::skip_invalid`], a [`SkippedRecord`] with the same
//! information. Conversations with nothing to summarise (no message with text) are
//! always skipped and recorded, as are exact duplicates; two different conversations
//! under one `chat_id` are an error, because every later stage keys on that id.
//!
//! Timestamps: each message keeps its own; without one it takes its conversation's;
//! without that, the fixed [`FALLBACK_TIMESTAMP`] (1970-01-01T00:00:00), never the
//! current time, so loading a file twice gives identical conversations.

mod chatgpt;
mod claude;
mod fields;
mod generic;
mod kura;
mod source;

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use fields::FALLBACK_TIMESTAMP;

use crate::error::{Error, Result};
use crate::types::{Conversation, SkippedRecord};
use fields::FieldError;
use source::{Flow, RecordAt};

/// How much of a skipped record is kept in its [`SkippedRecord`].
const SKIPPED_RECORD_CHARS: usize = 500;

/// The file name a Kura checkpoint directory keeps its conversations in.
const CHECKPOINT_CONVERSATIONS: &str = "conversations.jsonl";

/// The format of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Read the format from the first record of each file.
    #[default]
    Auto,
    Kura,
    Claude,
    ChatGpt,
    Generic,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Kura => "kura",
            Format::Claude => "claude",
            Format::ChatGpt => "chatgpt",
            Format::Generic => "generic",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Format::Auto),
            "kura" => Ok(Format::Kura),
            "claude" => Ok(Format::Claude),
            "chatgpt" => Ok(Format::ChatGpt),
            "generic" => Ok(Format::Generic),
            _ => Err(Error::Invalid(format!(
                "unknown input format {s:?}: expected auto, kura, claude, chatgpt or generic"
            ))),
        }
    }
}

/// Where the conversation is in the rows of a [`Format::Generic`] file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMapping {
    /// Field holding the conversation id; `None` makes ids `<file stem>:<line>`.
    pub id: Option<String>,
    /// Field holding the `[{role, content}]` turns; `None` tries "conversation",
    /// "messages", then "conversations" (ShareGPT).
    pub messages: Option<String>,
    /// Field of a turn holding its role ("from" and "sender" are tried when the
    /// default "role" is absent).
    pub role: String,
    /// Field of a turn holding its text ("value" and "text" are tried when the
    /// default "content" is absent).
    pub content: String,
    /// A single text column (query logs): each row becomes one user message.
    pub text: Option<String>,
    /// Field with the conversation's timestamp (ISO-8601 string or Unix seconds).
    pub created_at: Option<String>,
}

impl Default for FieldMapping {
    fn default() -> Self {
        FieldMapping {
            id: None,
            messages: None,
            role: "role".to_string(),
            content: "content".to_string(),
            text: None,
            created_at: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub format: Format,
    pub mapping: FieldMapping,
    /// Skip records that cannot be read (and conflicting duplicates), returning
    /// them in [`Loaded::skipped`], instead of failing on the first one. A file that
    /// cannot be opened, is empty, or is not JSON at all is still an error.
    pub skip_invalid: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub conversations: Vec<Conversation>,
    /// Records not loaded, with the reason: invalid (under `skip_invalid`), empty
    /// conversations and duplicates.
    pub skipped: Vec<SkippedRecord>,
}

/// Loads every file, in order. `chat_id`s must be unique across all of them.
pub fn load_files(paths: &[PathBuf], options: &LoadOptions) -> Result<Loaded> {
    let mut located = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        load_into(path, options, &mut located, &mut skipped)?;
    }
    let conversations = drop_duplicates(located, options, &mut skipped)?;
    Ok(Loaded {
        conversations,
        skipped,
    })
}

pub fn load_file(path: &Path, options: &LoadOptions) -> Result<Loaded> {
    load_files(&[path.to_path_buf()], options)
}

/// The format of a file, read from its first record.
pub fn detect_format(path: &Path) -> Result<Format> {
    let path = resolve_input(path)?;
    let mut detected = Format::Generic;
    source::for_each_record(&path, |at, record| match record {
        Ok(record) => {
            detected = classify(&record);
            Ok(Flow::Stop)
        }
        Err(message) => Err(Error::input(&path, at.location, message)),
    })?;
    Ok(detected)
}

/// A content fingerprint of a conversation: sha256 (hex) of its `chat_id` and its
/// messages' roles and texts. Timestamps and metadata are left out on purpose: they
/// do not change what a summary says, so a re-export that only re-stamps times
/// keeps every cached result.
pub fn conversation_fingerprint(conversation: &Conversation) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"kura-conversation-v1\0");
    // Each field is length-prefixed, so no two different conversations serialise
    // to the same bytes.
    let mut put = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    put(conversation.chat_id.as_bytes());
    put(&(conversation.messages.len() as u64).to_le_bytes());
    for message in &conversation.messages {
        put(message.role.as_str().as_bytes());
        put(message.content.as_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// Writes conversations as Kura's `conversations.jsonl` (one compact JSON object per
/// line, fields in Kura's order), which Python Kura reads back.
pub fn write_conversations_jsonl<W: Write>(
    mut writer: W,
    conversations: &[Conversation],
) -> std::io::Result<()> {
    for conversation in conversations {
        serde_json::to_writer(&mut writer, conversation)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()
}

/// Reads a Kura `conversations.jsonl` (or checkpoint directory) strictly.
pub fn read_conversations_jsonl(path: &Path) -> Result<Vec<Conversation>> {
    let options = LoadOptions {
        format: Format::Kura,
        ..LoadOptions::default()
    };
    Ok(load_file(path, &options)?.conversations)
}

/// A loaded conversation and where it came from (for duplicate reports).
struct Located {
    conversation: Conversation,
    file: PathBuf,
    location: String,
}

impl Located {
    fn origin(&self) -> String {
        format!("{}: {}", self.file.display(), self.location)
    }
}

fn load_into(
    path: &Path,
    options: &LoadOptions,
    located: &mut Vec<Located>,
    skipped: &mut Vec<SkippedRecord>,
) -> Result<()> {
    let path = resolve_input(path)?;
    let stem = record_stem(&path);
    let mut format = (options.format != Format::Auto).then_some(options.format);
    source::for_each_record(&path, |at, record| {
        let record = match record {
            Ok(record) => record,
            Err(message) => {
                skip_or_fail(options, &path, &at, message, None, skipped)?;
                return Ok(Flow::Continue);
            }
        };
        let format = *format.get_or_insert_with(|| classify(&record));
        let default_id = format!("{stem}:{}", at.ordinal);
        match convert(format, &record, &options.mapping, &default_id) {
            Ok(conversation) if is_empty(&conversation) => {
                skipped.push(skipped_record(
                    &path,
                    &at,
                    "empty conversation",
                    Some(&record),
                ));
            }
            Ok(conversation) => located.push(Located {
                conversation,
                file: path.clone(),
                location: at.location.clone(),
            }),
            Err(FieldError(message)) => {
                skip_or_fail(options, &path, &at, message, Some(&record), skipped)?;
            }
        }
        Ok(Flow::Continue)
    })
}

/// A Kura checkpoint directory stands for its `conversations.jsonl`.
fn resolve_input(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let conversations = path.join(CHECKPOINT_CONVERSATIONS);
    if conversations.is_file() {
        Ok(conversations)
    } else {
        Err(Error::input(
            path,
            "directory",
            format!(
                "a directory is read as a Kura checkpoint, but it has no {CHECKPOINT_CONVERSATIONS}; \
                 pass the export file itself"
            ),
        ))
    }
}

/// The file name without `.gz`, `.jsonl`, `.ndjson` or `.json`, for default ids.
fn record_stem(path: &Path) -> String {
    let mut stem = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    for extension in [".gz", ".jsonl", ".ndjson", ".json"] {
        if let Some(stripped) = stem.strip_suffix(extension) {
            stem = stripped.to_string();
        }
    }
    stem
}

/// The format a record looks like: each export has one field no other has.
fn classify(record: &Value) -> Format {
    let Some(object) = record.as_object() else {
        return Format::Generic;
    };
    if object.contains_key("mapping") {
        Format::ChatGpt
    } else if object.contains_key("chat_messages") {
        Format::Claude
    } else if object.contains_key("chat_id") && object.contains_key("messages") {
        Format::Kura
    } else {
        Format::Generic
    }
}

fn convert(
    format: Format,
    record: &Value,
    mapping: &FieldMapping,
    default_id: &str,
) -> std::result::Result<Conversation, FieldError> {
    match format {
        Format::Kura => kura::conversation(record),
        Format::Claude => claude::conversation(record),
        Format::ChatGpt => chatgpt::conversation(record),
        Format::Generic | Format::Auto => generic::conversation(record, mapping, default_id),
    }
}

fn is_empty(conversation: &Conversation) -> bool {
    conversation
        .messages
        .iter()
        .all(|message| message.content.trim().is_empty())
}

fn skip_or_fail(
    options: &LoadOptions,
    path: &Path,
    at: &RecordAt,
    message: String,
    record: Option<&Value>,
    skipped: &mut Vec<SkippedRecord>,
) -> Result<()> {
    if !options.skip_invalid {
        return Err(Error::input(path, at.location.clone(), message));
    }
    tracing::debug!("skipping {}: {}: {message}", path.display(), at.location);
    skipped.push(skipped_record(path, at, message, record));
    Ok(())
}

fn skipped_record(
    path: &Path,
    at: &RecordAt,
    reason: impl Into<String>,
    record: Option<&Value>,
) -> SkippedRecord {
    SkippedRecord {
        file: path.display().to_string(),
        location: at.location.clone(),
        reason: reason.into(),
        record: record.map(|r| crate::text::truncate_chars(&r.to_string(), SKIPPED_RECORD_CHARS)),
    }
}

/// Keeps the first conversation of each `chat_id`. A later identical one is
/// recorded as a duplicate; a later different one is an error (or skipped).
fn drop_duplicates(
    located: Vec<Located>,
    options: &LoadOptions,
    skipped: &mut Vec<SkippedRecord>,
) -> Result<Vec<Conversation>> {
    let mut first_seen: HashMap<String, (String, String)> = HashMap::new();
    let mut conversations = Vec::with_capacity(located.len());
    for item in located {
        let fingerprint = conversation_fingerprint(&item.conversation);
        let Some((seen_fingerprint, seen_origin)) = first_seen.get(&item.conversation.chat_id)
        else {
            first_seen.insert(
                item.conversation.chat_id.clone(),
                (fingerprint, item.origin()),
            );
            conversations.push(item.conversation);
            continue;
        };
        let file = item.file.display().to_string();
        if *seen_fingerprint == fingerprint {
            skipped.push(SkippedRecord {
                file,
                location: item.location,
                reason: format!("duplicate of {seen_origin}"),
                record: None,
            });
            continue;
        }
        let message = format!(
            "chat_id {:?} is already used by a different conversation at {seen_origin}; \
             chat ids must be unique (rename one, or drop one of the files)",
            item.conversation.chat_id
        );
        if !options.skip_invalid {
            return Err(Error::input(item.file, item.location, message));
        }
        skipped.push(SkippedRecord {
            file,
            location: item.location,
            reason: message,
            record: None,
        });
    }
    Ok(conversations)
}
