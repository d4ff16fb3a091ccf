//! Errors of model resolution. Each says which model and file it concerns and,
//! where the user can act, what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model `{name}`; known models: {known}; or pass the path of a local file or directory")]
    UnknownModel { name: String, known: String },

    #[error("{path}: no such file or directory (known models: {known})")]
    NoSuchPath { path: PathBuf, known: String },

    #[error("the model manifest is invalid: {0}")]
    Manifest(String),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{file}: checksum mismatch: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },

    #[error("{file}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        file: String,
        expected: u64,
        actual: u64,
    },

    #[error("model `{name}` is not in the cache ({dir}); run `kura models pull {name}`")]
    NotCached { name: String, dir: PathBuf },

    #[error("model `{name}` could not be obtained from any source:\n{attempts}\n{hint}")]
    Unavailable {
        name: String,
        /// One line per source tried, saying what it answered.
        attempts: String,
        hint: String,
    },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
