//! Errors of the core: every variant that comes from user input names where it was
//! found (file, line, field), because a user with a 2 GB export needs to find the
//! one bad record without reading the source.

use std::path::PathBuf;

/// An error from a plugin backend (a model, an algorithm), boxed so that core does
/// not need to know the backend's error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record that could not be read. `location` is "line N" for JSON Lines and
    /// "record N" (or a byte offset) for JSON documents.
    #[error("{path}: {location}: {message}")]
    Input {
        path: PathBuf,
        location: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{stage} failed: {source}")]
    Backend {
        stage: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn input(
        path: impl Into<PathBuf>,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Input {
            path: path.into(),
            location: location.into(),
            message: message.into(),
        }
    }

    pub fn backend(stage: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            stage,
            source: source.into(),
        }
    }
}
