//! Errors of the embedder. A broken model directory is the common case, so those
//! variants name the file and say what is wrong with it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{path}: missing; a sentence-transformers model directory needs it (resolve the model again, or check the path)")]
    MissingFile { path: PathBuf },

    #[error("{path}: {message}")]
    InvalidFile { path: PathBuf, message: String },

    #[error("tokenizing text {index}: {message}")]
    Tokenize { index: usize, message: String },

    #[error("this build has no CUDA support; rebuild with `--features cuda` or run on the CPU")]
    NoCuda,

    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },
}

impl EmbedError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        EmbedError::InvalidFile {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn candle(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        move |source| EmbedError::Candle { context, source }
    }
}
