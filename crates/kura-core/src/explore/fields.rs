//! Fields of a conversation the explorer can count, colour and filter by: Clio's
//! facets from the summary and every key of the conversation's metadata, each
//! read as a list of short text values so that one code path serves all of them.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use super::RunView;
use crate::text::truncate_chars;

/// The summary facets that make sense as categories.
pub const FACETS: [&str; 4] = [
    "languages",
    "concerning_score",
    "user_frustration",
    "assistant_errors",
];

const METADATA_PREFIX: &str = "metadata.";

/// How the values of one field are spread over a set of conversations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breakdown {
    pub field: String,
    /// The most frequent values with their counts, most frequent first.
    pub values: Vec<(String, usize)>,
    /// Conversations whose value is not among `values`.
    pub other: usize,
    /// Conversations without a value.
    pub missing: usize,
}

impl RunView {
    /// Every field: the facets, then `metadata.KEY` for each metadata key seen.
    pub fn fields(&self) -> Vec<String> {
        let keys: BTreeSet<&str> = self
            .conversations
            .iter()
            .flat_map(|c| c.metadata.keys())
            .chain(
                self.summaries
                    .iter()
                    .flatten()
                    .flat_map(|s| s.metadata.keys()),
            )
            .map(String::as_str)
            .collect();
        FACETS
            .iter()
            .map(|f| f.to_string())
            .chain(keys.into_iter().map(|k| format!("{METADATA_PREFIX}{k}")))
            .collect()
    }

    /// The values of `field` for one conversation (several for list fields such as
    /// languages; none when it has no value).
    pub fn values(&self, conversation: usize, field: &str) -> Vec<String> {
        if let Some(key) = field.strip_prefix(METADATA_PREFIX) {
            return self
                .metadata(conversation, key)
                .map(json_values)
                .unwrap_or_default();
        }
        let Some(s) = &self.summaries[conversation] else {
            return Vec::new();
        };
        match field {
            "languages" => s
                .languages
                .iter()
                .flatten()
                .map(|l| l.to_lowercase())
                .collect(),
            "concerning_score" => s
                .concerning_score
                .map(|v| v.to_string())
                .into_iter()
                .collect(),
            "user_frustration" => s
                .user_frustration
                .map(|v| v.to_string())
                .into_iter()
                .collect(),
            "assistant_errors" => s
                .assistant_errors
                .as_ref()
                .map(|e| error_count(e.len()))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A metadata value of a conversation: its own, else its summary's (Python
    /// Kura copies some metadata, such as turn counts, only to the summary).
    pub fn metadata(&self, conversation: usize, key: &str) -> Option<&Value> {
        self.conversations[conversation]
            .metadata
            .get(key)
            .or_else(|| {
                self.summaries[conversation]
                    .as_ref()
                    .and_then(|s| s.metadata.get(key))
            })
    }

    /// Whether a conversation has `value` among its values of `field`.
    pub fn has_value(&self, conversation: usize, field: &str, value: &str) -> bool {
        self.values(conversation, field).iter().any(|v| v == value)
    }

    /// The `top` most frequent values of `field` among `members`.
    pub fn breakdown(&self, field: &str, members: &[usize], top: usize) -> Breakdown {
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut missing = 0;
        for &m in members {
            let values = self.values(m, field);
            if values.is_empty() {
                missing += 1;
            }
            for v in values {
                *counts.entry(v).or_default() += 1;
            }
        }
        let mut values: Vec<(String, usize)> = counts.into_iter().collect();
        values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let other = values.iter().skip(top).map(|(_, n)| n).sum();
        values.truncate(top);
        Breakdown {
            field: field.to_string(),
            values,
            other,
            missing,
        }
    }

    /// Each conversation's category for colouring by `field`: an index into the
    /// returned labels (the `top` most frequent values, then "other"), or `None`.
    /// A conversation with several values takes its first.
    pub fn categories(&self, field: &str, top: usize) -> (Vec<String>, Vec<Option<usize>>) {
        let all: Vec<usize> = (0..self.conversations.len()).collect();
        let mut labels: Vec<String> = self
            .breakdown(field, &all, top)
            .values
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        let index: HashMap<String, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i))
            .collect();
        let other = labels.len();
        let mut used_other = false;
        let per_point = all
            .iter()
            .map(|&i| {
                let first = self.values(i, field).into_iter().next()?;
                Some(index.get(&first).copied().unwrap_or_else(|| {
                    used_other = true;
                    other
                }))
            })
            .collect();
        if used_other {
            labels.push("other".to_string());
        }
        (labels, per_point)
    }
}

/// Buckets for the number of errors the summariser noted.
fn error_count(n: usize) -> String {
    match n {
        0 => "none".to_string(),
        1 => "1".to_string(),
        2 => "2".to_string(),
        _ => "3+".to_string(),
    }
}

/// A JSON value as short text values: scalars as themselves, arrays element by
/// element, objects as compact JSON.
fn json_values(value: &Value) -> Vec<String> {
    match value {
        Value::Null => Vec::new(),
        Value::String(s) => vec![truncate_chars(s, 80)],
        Value::Array(items) => items.iter().flat_map(json_values).collect(),
        other => vec![truncate_chars(&other.to_string(), 80)],
    }
}
