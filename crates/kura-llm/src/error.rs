//! Errors of local inference. Every variant says which file or which field went wrong,
//! because "model output invalid" alone cannot be acted on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The GGUF file lacks something we need or holds something we cannot run.
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("inference: {0}")]
    Candle(#[from] candle_core::Error),
    /// The model's answer did not have the required shape even after the retries.
    #[error("invalid model output: {0}")]
    InvalidOutput(String),
    #[error("{0}")]
    Device(String),
    /// The instructions and the answer's room fill the whole context.
    #[error(
        "a context of {max_context} tokens leaves no room for the conversation: the \
         instructions, the answer and the least of a conversation need {needed}; \
         raise --max-context (or max_context in kura.toml) to at least {needed}"
    )]
    ContextTooSmall { max_context: usize, needed: usize },
}

impl LlmError {
    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LlmError::Model {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tokenizer(error: impl std::fmt::Display) -> Self {
        LlmError::Tokenizer(error.to_string())
    }
}
