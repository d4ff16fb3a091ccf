//! Opening an input file and cutting it into records.
//!
//! Three layouts exist in the wild: JSON Lines (one record per line), a JSON array
//! of records (Claude and ChatGPT exports, Kura arrays), and a single JSON object
//! (one conversation). The layout is read from the content, not the file name, and
//! gzip is recognised by its magic bytes, so a renamed or compressed file still loads.
//!
//! JSON Lines are streamed line by line so that a multi-gigabyte log never has to fit
//! in memory, and a broken line is an error of that line alone (skippable). A JSON
//! document is read whole and its array elements are handed out one at a time; a
//! syntax error there is fatal, because the boundaries of the records after it
//! cannot be trusted.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde_json::Value;

use crate::error::{Error, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// Whether the caller wants more records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// Where a record is: `location` is "line N" (1-based) for JSON Lines and
/// "record N" (0-based, as jq's `.[N]`) for JSON documents; `ordinal` is that N.
#[derive(Debug, Clone)]
pub(crate) struct RecordAt {
    pub location: String,
    pub ordinal: usize,
}

/// A record, or why its line could not be read as JSON (JSON Lines only: such an
/// error concerns one line and the caller may skip it).
pub(crate) type RecordResult = std::result::Result<Value, String>;

/// Calls `on_record` for every record of the file at `path`, in order.
pub(crate) fn for_each_record(
    path: &Path,
    mut on_record: impl FnMut(RecordAt, RecordResult) -> Result<Flow>,
) -> Result<()> {
    let mut reader = open(path)?;
    let mut line_number = 0usize;
    let mut first_line = Vec::new();
    loop {
        first_line.clear();
        line_number += 1;
        let read = reader
            .read_until(b'\n', &mut first_line)
            .map_err(|e| read_error(path, line_number, e))?;
        if read == 0 {
            return Err(Error::input(
                path,
                "file",
                "the file is empty: expected JSON Lines, a JSON array or a JSON object",
            ));
        }
        if line_number == 1 && first_line.starts_with(UTF8_BOM) {
            first_line.drain(..UTF8_BOM.len());
        }
        if !first_line.trim_ascii().is_empty() {
            break;
        }
    }
    let trimmed = first_line.trim_ascii();
    let is_document = match trimmed.first() {
        Some(b'[') => true,
        // A pretty-printed object does not end on its first line.
        Some(b'{') => serde_json::from_slice::<Value>(trimmed).is_err_and(|e| e.is_eof()),
        _ => false,
    };
    let seen = if is_document {
        let mut bytes = first_line;
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| read_error(path, line_number, e))?;
        for_each_document_record(path, &bytes, &mut on_record)?
    } else {
        for_each_line(path, reader, first_line, line_number, &mut on_record)?
    };
    if seen == 0 {
        return Err(Error::input(
            path,
            "file",
            "the file holds no records (an empty JSON array)",
        ));
    }
    Ok(())
}

/// Opens `path`, decompressing it when it is gzip.
fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).map_err(|e| {
        Error::input(
            path,
            "file",
            format!("cannot open the file: {e}; check the path"),
        )
    })?;
    let mut reader = BufReader::new(file);
    let head = reader
        .fill_buf()
        .map_err(|e| Error::input(path, "file", format!("cannot read the file: {e}")))?;
    if head.starts_with(&GZIP_MAGIC) {
        let decoder = flate2::bufread::MultiGzDecoder::new(reader);
        Ok(Box::new(BufReader::new(decoder)))
    } else {
        Ok(Box::new(reader))
    }
}

fn read_error(path: &Path, line_number: usize, error: std::io::Error) -> Error {
    Error::input(
        path,
        format!("line {line_number}"),
        format!("cannot read the file: {error} (a truncated or corrupt .gz file?)"),
    )
}

/// JSON Lines: `first` is line `first_number`, already read; blank lines are skipped.
fn for_each_line(
    path: &Path,
    mut reader: Box<dyn BufRead>,
    first: Vec<u8>,
    first_number: usize,
    on_record: &mut impl FnMut(RecordAt, RecordResult) -> Result<Flow>,
) -> Result<usize> {
    let mut seen = 0;
    let mut line = first;
    let mut line_number = first_number;
    loop {
        if !line.trim_ascii().is_empty() {
            seen += 1;
            let at = RecordAt {
                location: format!("line {line_number}"),
                ordinal: line_number,
            };
            if on_record(at, parse_line(&line))? == Flow::Stop {
                return Ok(seen);
            }
        }
        line.clear();
        line_number += 1;
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| read_error(path, line_number, e))?;
        if read == 0 {
            return Ok(seen);
        }
    }
}

fn parse_line(line: &[u8]) -> RecordResult {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "invalid UTF-8 at byte {} of the line: the file must be UTF-8 encoded",
            e.valid_up_to()
        )
    })?;
    serde_json::from_str(text.trim()).map_err(|e| {
        format!(
            "invalid JSON at column {}: {}",
            e.column(),
            bare_message(&e)
        )
    })
}

/// serde_json's message without its " at line L column C" suffix (we say where).
fn bare_message(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rsplit_once(" at line ") {
        Some((bare, _)) => bare.to_string(),
        None => message,
    }
}

/// A JSON document: an array hands out its elements, an object is one record.
fn for_each_document_record(
    path: &Path,
    bytes: &[u8],
    on_record: &mut impl FnMut(RecordAt, RecordResult) -> Result<Flow>,
) -> Result<usize> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let is_array = bytes.trim_ascii_start().first() == Some(&b'[');
    let mut visitor = ElementVisitor {
        on_record,
        index: 0,
        stopped: false,
        callback_error: None,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = if is_array {
        (&mut deserializer)
            .deserialize_seq(&mut visitor)
            .and_then(|()| deserializer.end())
    } else {
        serde_json::from_slice::<Value>(bytes).and_then(|record| {
            visitor.deliver(record).map_err(|()| {
                <serde_json::Error as serde::de::Error>::custom("stopped by the caller")
            })?;
            Ok(())
        })
    };
    if let Some(error) = visitor.callback_error {
        return Err(error);
    }
    let seen = visitor.index;
    match parsed {
        Ok(()) => Ok(seen),
        // Stopping early leaves the rest of the array unread, which serde reports.
        Err(_) if visitor.stopped => Ok(seen),
        Err(e) => Err(syntax_error(path, bytes, seen, &e)),
    }
}

fn syntax_error(path: &Path, bytes: &[u8], index: usize, error: &serde_json::Error) -> Error {
    let offset = byte_offset(bytes, error.line(), error.column());
    let location = format!("record {index}, byte {offset}");
    let message = match std::str::from_utf8(bytes) {
        Err(bad) if bad.valid_up_to() <= offset => format!(
            "invalid UTF-8 at byte {}: the file must be UTF-8 encoded",
            bad.valid_up_to()
        ),
        _ => format!(
            "invalid JSON at line {} column {}: {}",
            error.line(),
            error.column(),
            bare_message(error)
        ),
    };
    Error::input(path, location, message)
}

/// The byte offset of serde_json's 1-based (line, column) in `bytes`.
fn byte_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map_or(bytes.len(), |(i, _)| i + 1)
    };
    (line_start + column.saturating_sub(1)).min(bytes.len())
}

/// Hands the elements of a top-level array to the callback one at a time, so a large
/// export never exists as one `Value` tree.
struct ElementVisitor<'a, F> {
    on_record: &'a mut F,
    index: usize,
    stopped: bool,
    callback_error: Option<Error>,
}

impl<F: FnMut(RecordAt, RecordResult) -> Result<Flow>> ElementVisitor<'_, F> {
    /// Gives one record to the callback; `Err(())` means stop reading.
    fn deliver(&mut self, record: Value) -> std::result::Result<(), ()> {
        let at = RecordAt {
            location: format!("record {}", self.index),
            ordinal: self.index,
        };
        self.index += 1;
        match (self.on_record)(at, Ok(record)) {
            Ok(Flow::Continue) => Ok(()),
            Ok(Flow::Stop) => {
                self.stopped = true;
                Err(())
            }
            Err(error) => {
                self.callback_error = Some(error);
                Err(())
            }
        }
    }
}

impl<'de, F: FnMut(RecordAt, RecordResult) -> Result<Flow>> Visitor<'de>
    for &mut ElementVisitor<'_, F>
{
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(record) = seq.next_element::<Value>()? {
            if self.deliver(record).is_err() {
                return Err(serde::de::Error::custom("stopped by the caller"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_offsets_follow_lines_and_columns() {
        let text = b"ab\ncd\nef";
        assert_eq!(byte_offset(text, 1, 1), 0);
        assert_eq!(byte_offset(text, 2, 2), 4);
        assert_eq!(byte_offset(text, 3, 1), 6);
        assert_eq!(byte_offset(text, 9, 9), text.len());
    }
}
