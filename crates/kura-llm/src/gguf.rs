//! Typed access to GGUF metadata, with errors that name the file and the key.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::LlmError;

pub(crate) struct Metadata<'a> {
    content: &'a Content,
    path: PathBuf,
}

impl<'a> Metadata<'a> {
    pub(crate) fn new(content: &'a Content, path: &Path) -> Self {
        Metadata {
            content,
            path: path.to_path_buf(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn error(&self, message: impl Into<String>) -> LlmError {
        LlmError::model(&self.path, message)
    }

    fn value(&self, key: &str) -> Result<&'a Value, LlmError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.error(format!("missing GGUF metadata key `{key}`")))
    }

    fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    /// `key` read by `read` (`Metadata::u32`, `Metadata::string`…), `None` when
    /// the file does not have it; a value of the wrong type is still an error.
    pub(crate) fn optional<T>(
        &self,
        key: &str,
        read: impl Fn(&Self, &str) -> Result<T, LlmError>,
    ) -> Result<Option<T>, LlmError> {
        match self.has(key) {
            true => read(self, key).map(Some),
            false => Ok(None),
        }
    }

    pub(crate) fn string(&self, key: &str) -> Result<&'a str, LlmError> {
        self.value(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|_| self.error(format!("GGUF metadata `{key}` is not a string")))
    }

    pub(crate) fn u32(&self, key: &str) -> Result<u32, LlmError> {
        value_to_u32(self.value(key)?)
            .ok_or_else(|| self.error(format!("GGUF metadata `{key}` is not an integer")))
    }

    pub(crate) fn f32(&self, key: &str) -> Result<f32, LlmError> {
        match self.value(key)? {
            Value::F32(v) => Ok(*v),
            Value::F64(v) => Ok(*v as f32),
            other => value_to_u32(other)
                .map(|v| v as f32)
                .ok_or_else(|| self.error(format!("GGUF metadata `{key}` is not a number"))),
        }
    }

    pub(crate) fn strings(&self, key: &str) -> Result<Vec<String>, LlmError> {
        let array = self.array(key)?;
        array
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|_| self.error(format!("GGUF metadata `{key}` holds a non-string")))
            })
            .collect()
    }

    pub(crate) fn u32s(&self, key: &str) -> Result<Vec<u32>, LlmError> {
        let array = self.array(key)?;
        array
            .iter()
            .map(|v| {
                value_to_u32(v)
                    .ok_or_else(|| self.error(format!("GGUF metadata `{key}` holds a non-integer")))
            })
            .collect()
    }

    /// How many values the array `key` holds, without copying them.
    pub(crate) fn array_len(&self, key: &str) -> Result<usize, LlmError> {
        Ok(self.array(key)?.len())
    }

    fn array(&self, key: &str) -> Result<&'a Vec<Value>, LlmError> {
        self.value(key)?
            .to_vec()
            .map_err(|_| self.error(format!("GGUF metadata `{key}` is not an array")))
    }
}

fn value_to_u32(value: &Value) -> Option<u32> {
    let wide: i64 = match value {
        Value::U8(v) => (*v).into(),
        Value::I8(v) => (*v).into(),
        Value::U16(v) => (*v).into(),
        Value::I16(v) => (*v).into(),
        Value::U32(v) => (*v).into(),
        Value::I32(v) => (*v).into(),
        Value::U64(v) => i64::try_from(*v).ok()?,
        Value::I64(v) => *v,
        _ => return None,
    };
    u32::try_from(wide).ok()
}

/// The header of the GGUF file at `path`: its metadata and where its tensors lie.
pub(crate) fn read_content(path: &Path) -> Result<Content, LlmError> {
    let io = |source| LlmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let unreadable =
        |why: String| LlmError::model(path, format!("not a readable GGUF file: {why}"));
    let mut file = File::open(path).map_err(io)?;
    // Buffered: the skim steps over every token and merge of the vocabulary, a
    // read or two each, which unbuffered were hundreds of thousands of system calls.
    if declared_alignment(&mut BufReader::new(&mut file)) == Some(0) {
        return Err(unreadable("`general.alignment` is 0".to_string()));
    }
    file.rewind().map_err(io)?;
    Content::read(&mut file).map_err(|e| unreadable(e.to_string()))
}

/// `general.alignment` as the header of the GGUF file in `reader` sets it, read
/// before candle parses the file: candle divides by it, so a zero there (a corrupt
/// file) would panic inside candle rather than fail. `None` when the key is absent
/// or the header cannot be read this far; candle then reports what is wrong.
fn declared_alignment(reader: &mut impl Read) -> Option<u64> {
    if &read_le::<4>(reader)? != b"GGUF" {
        return None;
    }
    // Version 1 wrote lengths and counts in 32 bits, later versions in 64.
    let wide = u32::from_le_bytes(read_le::<4>(reader)?) > 1;
    let _tensors = read_length(reader, wide)?;
    let entries = read_length(reader, wide)?;
    for _ in 0..entries {
        let key = read_key(reader, wide)?;
        let kind = u32::from_le_bytes(read_le::<4>(reader)?);
        if key == b"general.alignment" {
            // An integer of 1 to 8 bytes; its low bytes first.
            let size = scalar_size(kind)? as usize;
            let mut bytes = [0u8; 8];
            reader.read_exact(&mut bytes[..size]).ok()?;
            return Some(u64::from_le_bytes(bytes));
        }
        skip_value(reader, kind, wide)?;
    }
    None
}

fn read_le<const N: usize>(reader: &mut impl Read) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    reader.read_exact(&mut bytes).ok()?;
    Some(bytes)
}

fn read_length(reader: &mut impl Read, wide: bool) -> Option<u64> {
    match wide {
        true => read_le::<8>(reader).map(u64::from_le_bytes),
        false => read_le::<4>(reader).map(|b| u32::from_le_bytes(b).into()),
    }
}

/// A metadata key: keys are short, and a length past 64 KiB means a corrupt header.
fn read_key(reader: &mut impl Read, wide: bool) -> Option<Vec<u8>> {
    let length = read_length(reader, wide)?;
    if length > 1 << 16 {
        return None;
    }
    let mut bytes = vec![0u8; length as usize];
    reader.read_exact(&mut bytes).ok()?;
    Some(bytes)
}

/// The bytes of a value of GGUF type `kind`, for the fixed-size types.
fn scalar_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Moves past one value of GGUF type `kind`.
fn skip_value(reader: &mut impl Read, kind: u32, wide: bool) -> Option<()> {
    let size = match kind {
        8 => read_length(reader, wide)?,
        9 => {
            let element = u32::from_le_bytes(read_le::<4>(reader)?);
            let count = read_length(reader, wide)?;
            match scalar_size(element) {
                Some(one) => count.checked_mul(one)?,
                None => {
                    for _ in 0..count {
                        skip_value(reader, element, wide)?;
                    }
                    0
                }
            }
        }
        _ => scalar_size(kind)?,
    };
    let skipped = std::io::copy(&mut reader.take(size), &mut std::io::sink()).ok()?;
    (skipped == size).then_some(())
}
