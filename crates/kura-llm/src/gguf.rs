//! Typed access to GGUF metadata, with errors that name the file and the key.

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
