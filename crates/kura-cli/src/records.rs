//! JSON Lines records for the commands that read a field or two of each (`kura
//! embed`, `kura eval`, `kura bench`): one reader, so every one of them skips blank
//! lines the same way and names the file, the line and the field in its errors.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

/// A record, or why its line is not one.
pub type Record = Result<Value, String>;

/// Calls `on_record` with each of the first `limit` records of `path` (all without a
/// limit), skipping blank lines. What `on_record` refuses ends the reading with an
/// error that names the file and the line.
pub fn for_each(
    path: &Path,
    limit: Option<usize>,
    mut on_record: impl FnMut(Record) -> Result<(), String>,
) -> Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut seen = 0;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        if limit.is_some_and(|l| seen >= l) {
            break;
        }
        let at = || format!("{}: line {}", path.display(), index + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        seen += 1;
        let record = serde_json::from_str(&line).map_err(|e| format!("invalid JSON ({e})"));
        on_record(record).map_err(|message| anyhow!("{}: {message}", at()))?;
    }
    Ok(())
}

/// The string at `field` of `record`, or why there is none.
pub fn string_field(record: &Value, field: &str) -> Result<String, String> {
    let object = record
        .as_object()
        .ok_or("the record is not a JSON object")?;
    match object.get(field) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(format!("expected a string, found {}", json_kind(other))),
        None => Err("missing".to_string()),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
