//! The core of Kura for Rust: the types every stage exchanges, the plugin traits a
//! backend implements, the loaders that turn chat exports into [`Conversation`]s, the
//! checkpoint store of a run directory, and the pipeline that drives the stages.
//!
//! This crate knows no model and no algorithm. Summaries, embeddings, clusters, names
//! and maps all come from implementations of the traits in [`traits`], so a custom
//! backend is one crate that implements one trait and nothing else changes. The key
//! design decision is that the *files* are the interface between stages: each stage
//! reads what the previous one wrote to the run directory, in the shapes Python Kura
//! writes, and every file is keyed by a fingerprint of everything it was computed
//! from. That is what lets a killed run resume, lets one stage be re-run alone, and
//! makes a stale result impossible to reuse by accident.

pub mod error;
pub mod explore;
pub mod loaders;
pub mod matrix;
pub mod pipeline;
pub mod privacy;
pub mod store;
pub mod text;
pub mod traits;
pub mod tree;
pub mod types;
pub mod vector;

pub use error::{BoxError, Error, Result};
pub use loaders::{
    conversation_fingerprint, detect_format, load_file, load_files, FieldMapping, Format,
    LoadOptions, Loaded,
};
pub use matrix::Matrix;
pub use traits::{
    ChoiceRequest, ClusterName, ClusterNamer, Clusterer, Embedder, HierarchyBuilder, NamingRequest,
    ProposalRequest, Reducer, Summarizer,
};
pub use types::{
    Cluster, Conversation, ConversationSummary, Message, Outliers, ProjectedCluster, Role,
};
