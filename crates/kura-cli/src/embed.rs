//! `kura embed`: any text file to a float32 `.npy`, one row per text in input order,
//! with the configured sentence encoder. Useful on its own (semantic search, other
//! clustering tools) and to time the encoder on real data.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use kura_core::{store, Embedder};

use crate::records;

/// Reads the texts of `path`: every line as it is, or with `field` the string field
/// of every JSON Lines record (blank lines are skipped there).
/// Errors name the file, the line and the field.
pub fn read_texts(path: &Path, field: Option<&str>) -> Result<Vec<String>> {
    let texts = match field {
        Some(field) => field_texts(path, field)?,
        None => plain_lines(path)?,
    };
    if texts.is_empty() {
        bail!("{}: no texts to embed", path.display());
    }
    Ok(texts)
}

fn field_texts(path: &Path, field: &str) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    records::for_each(path, None, |record| {
        let text = record
            .and_then(|record| records::string_field(&record, field))
            .map_err(|message| format!("field `{field}`: {message}"))?;
        texts.push(text);
        Ok(())
    })?;
    Ok(texts)
}

fn plain_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    // A final newline ends the last line; it does not start an empty one.
    let content = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    content
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(index, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            std::str::from_utf8(line).map(str::to_string).map_err(|e| {
                anyhow!(
                    "{}: line {}: not valid UTF-8 (byte {})",
                    path.display(),
                    index + 1,
                    e.valid_up_to() + 1
                )
            })
        })
        .collect()
}

/// What one `kura embed` call did, for the closing message.
pub struct Embedded {
    pub rows: usize,
    pub dim: usize,
    pub seconds: f64,
}

/// Embeds the texts of `input` and writes them to `out` (atomically).
pub fn embed_file(
    embedder: &dyn Embedder,
    input: &Path,
    field: Option<&str>,
    out: &Path,
) -> Result<Embedded> {
    let texts = read_texts(input, field)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let start = Instant::now();
    let matrix = embedder
        .embed(&refs)
        .map_err(|e| anyhow!("embedding {}: {e}", input.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    store::write_npy(out, &matrix)?;
    Ok(Embedded {
        rows: matrix.rows(),
        dim: matrix.cols(),
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn write(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn plain_lines_keep_empty_lines_as_rows() {
        let (_dir, path) = write(b"one\n\nthree\r\n");
        assert_eq!(read_texts(&path, None).unwrap(), ["one", "", "three"]);
    }

    #[test]
    fn json_lines_read_the_field_and_skip_blank_lines() {
        let (_dir, path) = write(b"{\"text\": \"a\"}\n\n{\"text\": \"b\", \"x\": 1}\n");
        assert_eq!(read_texts(&path, Some("text")).unwrap(), ["a", "b"]);
    }

    #[test]
    fn bad_records_name_file_line_and_field() {
        let (_dir, path) = write(b"{\"text\": \"a\"}\n{\"text\": 3}\n");
        let err = read_texts(&path, Some("text")).unwrap_err().to_string();
        assert!(
            err.contains("in.txt: line 2: field `text`: expected a string, found a number"),
            "{err}"
        );
        let (_dir, path) = write(b"{\"body\": \"a\"}\n");
        let err = read_texts(&path, Some("text")).unwrap_err().to_string();
        assert!(err.contains("line 1: field `text`: missing"), "{err}");
        let (_dir, path) = write(b"{\"text\": \"a\"\n");
        let err = read_texts(&path, Some("text")).unwrap_err().to_string();
        assert!(err.contains("line 1: field `text`: invalid JSON"), "{err}");
    }

    #[test]
    fn invalid_utf8_and_empty_files_are_errors() {
        let (_dir, path) = write(b"fine\nbad \xff byte\n");
        let err = read_texts(&path, None).unwrap_err().to_string();
        assert!(err.contains("line 2: not valid UTF-8 (byte 5)"), "{err}");
        let (_dir, path) = write(b"");
        let err = read_texts(&path, None).unwrap_err().to_string();
        assert!(err.contains("no texts to embed"), "{err}");
    }
}
