//! The plugin traits. Each is the whole contract of one stage; the pipeline never
//! looks behind it. Every trait has an `id()`: a string that changes whenever the
//! backend would compute something different (model checksum, prompt version,
//! parameters). The checkpoint store folds it into each file's fingerprint, which
//! is how a change of model recomputes exactly the stages it affects.

use crate::error::BoxError;
use crate::matrix::Matrix;
use crate::types::{Cluster, Conversation, ConversationSummary};

/// Writes Clio's facets for conversations.
///
/// Takes a batch so a backend can share work across conversations (a shared prompt
/// prefix, batched decoding); returns one result per input, in order, so that one
/// conversation that fails never costs the others.
pub trait Summarizer: Send + Sync {
    fn id(&self) -> String;
    /// How many conversations the backend wants per call.
    fn batch_size(&self) -> usize {
        1
    }
    fn summarize(
        &self,
        conversations: &[Conversation],
    ) -> Vec<Result<ConversationSummary, BoxError>>;

    /// Summarises `conversations`, handing each result to `done` with its index as
    /// soon as it is ready, in any order, each index once. The pipeline journals
    /// results here, so a backend that keeps many conversations in flight (batched
    /// decoding) loses only those when a run is killed. The default runs
    /// [`Summarizer::summarize`] on chunks of [`Summarizer::batch_size`].
    fn summarize_each(
        &self,
        conversations: &[Conversation],
        done: &mut dyn FnMut(usize, Result<ConversationSummary, BoxError>),
    ) {
        let size = self.batch_size().max(1);
        for (chunk, batch) in conversations.chunks(size).enumerate() {
            for (i, result) in self.summarize(batch).into_iter().enumerate() {
                done(chunk * size + i, result);
            }
        }
    }
}

/// Turns texts into fixed-size vectors (one row per text, in input order).
pub trait Embedder: Send + Sync {
    fn id(&self) -> String;
    fn dim(&self) -> usize;
    fn embed(&self, texts: &[&str]) -> Result<Matrix, BoxError>;
}

/// Groups points. `None` marks noise: a point the clusterer would not place.
pub trait Clusterer: Send + Sync {
    fn id(&self) -> String;
    fn cluster(&self, points: &Matrix, seed: u64) -> Result<Vec<Option<usize>>, BoxError>;
}

/// Projects points to two dimensions for the map (one row of two per input row).
pub trait Reducer: Send + Sync {
    fn id(&self) -> String;
    fn reduce(&self, points: &Matrix, seed: u64) -> Result<Matrix, BoxError>;
}

/// What a cluster namer is shown.
#[derive(Debug, Clone, PartialEq)]
pub struct NamingRequest {
    /// Descriptions of the members: conversation summaries for a base cluster,
    /// "name: description" of the children for a parent cluster.
    pub members: Vec<String>,
    /// The nearest descriptions *outside* the cluster, so the name says what sets
    /// this cluster apart rather than what all conversations share.
    pub contrast: Vec<String>,
    /// True when naming a parent from its children.
    pub is_parent: bool,
    /// The names already given to the other clusters of this level. The answer
    /// must read differently from each (see [`crate::text::same_name`]): two
    /// clusters with one name cannot be told apart in the tree. A namer may show
    /// them to its model or only check its answers against them; a name that still
    /// collides gets a number from the caller (see [`crate::text::LevelNames`]).
    /// Named one after another, each cluster's request holds the names before it.
    pub taken: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterName {
    /// An imperative sentence of at most ten words ("Debug Rust borrow errors").
    pub name: String,
    /// Two sentences that say what the members share.
    pub description: String,
}

/// What a namer is shown to propose parents for a neighbourhood of clusters.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposalRequest {
    /// "name: description" of each cluster in the neighbourhood.
    pub members: Vec<String>,
    /// Names of the nearest clusters outside the neighbourhood.
    pub contrast: Vec<String>,
    /// How many candidate parent names are wanted.
    pub count: usize,
}

/// What a namer is shown to place one cluster under one of several parents.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceRequest {
    /// "name: description" of the cluster being placed.
    pub item: String,
    /// The candidate parent names, already shuffled by the caller (so the order
    /// carries no hint).
    pub options: Vec<String>,
}

/// Names clusters (base and parent) with an LLM or anything else.
///
/// `propose_parents` and `choose_parent` are Clio's other two hierarchy steps.
/// They are optional: a namer that only names (a rule-based one, or a model too
/// weak to choose) keeps the defaults, which decline, and the hierarchy then
/// groups clusters by their embeddings alone. That is also what happens when a
/// model answers but its answer would not shrink the level.
pub trait ClusterNamer: Send + Sync {
    fn id(&self) -> String;
    fn name(&self, request: &NamingRequest) -> Result<ClusterName, BoxError>;

    /// Up to `request.count` distinct candidate names for parents of the
    /// neighbourhood's clusters.
    fn propose_parents(&self, _request: &ProposalRequest) -> Result<Vec<String>, BoxError> {
        Err("this namer does not propose parent clusters".into())
    }

    /// The index in `request.options` of the best parent for `request.item`.
    /// Must be in range; the hierarchy treats an out-of-range answer as a failure.
    fn choose_parent(&self, _request: &ChoiceRequest) -> Result<usize, BoxError> {
        Err("this namer does not assign clusters to parents".into())
    }
}

/// Builds the hierarchy above the base clusters (Clio's meta-clusters).
pub trait HierarchyBuilder: Send + Sync {
    fn id(&self) -> String;
    /// `base` are the named base clusters (`parent_id: None`), `base_vectors` one row
    /// per base cluster (the normalised mean of its members' embeddings). Returns
    /// every cluster of every level — the base clusters with `parent_id` filled in,
    /// then their ancestors — forming one forest whose roots have `parent_id: None`.
    /// `embedder` is the one that embedded the summaries, so names it embeds (such
    /// as candidate parents) share the space of `base_vectors`.
    fn build(
        &self,
        base: Vec<Cluster>,
        base_vectors: &Matrix,
        namer: &dyn ClusterNamer,
        embedder: &dyn Embedder,
        seed: u64,
    ) -> Result<Vec<Cluster>, BoxError>;
}
