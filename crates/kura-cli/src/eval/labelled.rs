//! Reading a labelled data set: JSON Lines with one text and one label per row.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::records;

/// Texts with their known classes; `labels[i]` indexes `label_names`.
#[derive(Debug)]
pub struct Labelled {
    pub texts: Vec<String>,
    pub labels: Vec<usize>,
    pub label_names: Vec<String>,
}

/// Reads at most `limit` rows of `path`, skipping blank lines. A row without the
/// text or label field, or with one of the wrong type, is an error naming the file,
/// line and field; labels may be strings or numbers.
pub fn read(
    path: &Path,
    text_field: &str,
    label_field: &str,
    limit: Option<usize>,
) -> Result<Labelled> {
    let mut set = Labelled {
        texts: Vec::new(),
        labels: Vec::new(),
        label_names: Vec::new(),
    };
    let mut index: HashMap<String, usize> = HashMap::new();
    records::for_each(path, limit, |row| {
        let row = row?;
        let text = records::string_field(&row, text_field).map_err(|message| {
            format!("field {text_field:?}: {message} (choose the text field with --text-field)")
        })?;
        let label = match row.get(label_field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(format!(
                    "field {label_field:?} must be a string or a number"
                ))
            }
            None => {
                return Err(format!(
                    "no field {label_field:?} (choose the label field with --label-field)"
                ))
            }
        };
        let next = index.len();
        let id = *index.entry(label.clone()).or_insert(next);
        if id == set.label_names.len() {
            set.label_names.push(label);
        }
        set.texts.push(text);
        set.labels.push(id);
        Ok(())
    })?;
    if set.texts.is_empty() {
        bail!("{}: no labelled rows", path.display());
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(content: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set.jsonl");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_texts_and_numbers_labels_in_order_of_appearance() {
        let (_dir, path) = write(
            "{\"q\": \"a\", \"y\": \"x\"}\n\n{\"q\": \"b\", \"y\": 3}\n{\"q\": \"c\", \"y\": \"x\"}\n",
        );
        let set = read(&path, "q", "y", None).unwrap();
        assert_eq!(set.texts, ["a", "b", "c"]);
        assert_eq!(set.labels, [0, 1, 0]);
        assert_eq!(set.label_names, ["x", "3"]);
        assert_eq!(read(&path, "q", "y", Some(2)).unwrap().texts, ["a", "b"]);
    }

    #[test]
    fn a_missing_or_mistyped_field_names_file_line_and_field() {
        let (_dir, path) = write("{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\"}\n");
        let err = format!("{:#}", read(&path, "text", "label", None).unwrap_err());
        assert!(
            err.contains("set.jsonl: line 2") && err.contains("\"label\""),
            "{err}"
        );
        let (_dir, path) = write("{\"text\": 5, \"label\": \"x\"}\n");
        let err = format!("{:#}", read(&path, "text", "label", None).unwrap_err());
        assert!(err.contains("line 1") && err.contains("\"text\""), "{err}");
        let (_dir, path) = write("{\"text\": \"a\",\n");
        let err = format!("{:#}", read(&path, "text", "label", None).unwrap_err());
        assert!(
            err.contains("line 1") && err.contains("invalid JSON"),
            "{err}"
        );
    }
}
