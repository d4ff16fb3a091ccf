//! The records every stage exchanges. Field names *and order* follow the files Python
//! Kura writes (`conversations.jsonl`, `summaries.jsonl`, `clusters.jsonl`,
//! `meta_clusters.jsonl`, `dimensionality.jsonl`), so what we write opens in Kura's
//! tools and what Kura wrote opens in ours. Optional Kura fields stay `Option` so a
//! Kura file round-trips without inventing values.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Free-form metadata carried from the input to every output (source, model, label…).
pub type Metadata = Map<String, Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub created_at: String,
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub chat_id: String,
    pub created_at: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub metadata: Metadata,
}

/// How the `request` facet opens by convention (Kura's wording): the words before
/// what the user asked for. A summariser writes it; the pipeline strips it to name a
/// cluster after a request when its namer fails.
pub const REQUEST_OPENING: &str = "The user's overall request for the assistant is to";

/// Clio's facets of one conversation (Kura's `ConversationSummary`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub summary: String,
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub languages: Option<Vec<String>>,
    #[serde(default)]
    pub task: Option<String>,
    /// 1 (harmless) to 5 (clearly harmful).
    #[serde(default)]
    pub concerning_score: Option<u8>,
    /// 1 (content) to 5 (very frustrated).
    #[serde(default)]
    pub user_frustration: Option<u8>,
    #[serde(default)]
    pub assistant_errors: Option<Vec<String>>,
    pub chat_id: String,
    #[serde(default)]
    pub metadata: Metadata,
    /// Kura keeps this slot; we keep embeddings in `embeddings.npy` and write `null`.
    #[serde(default)]
    pub embedding: Option<Vec<f32>>,
}

/// A named group of conversations. Base clusters have `parent_id` set once the
/// hierarchy is built; the roots of the hierarchy have `parent_id: null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    pub name: String,
    pub description: String,
    pub slug: String,
    pub chat_ids: Vec<String>,
    pub parent_id: Option<String>,
    pub count: usize,
    /// Set when the namer failed and the name was borrowed instead: a base
    /// cluster's from its most central member, a parent's from its largest child.
    /// Such a name says what one member is about, not the group, so the tree and
    /// the explorer mark it. Kura's files have no such field: absent means false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub name_borrowed: bool,
}

impl Cluster {
    /// The id of the one base cluster that holds a clusterer's outliers when they
    /// are kept (see [`Outliers`]). Other ids are content hashes, so it cannot clash.
    pub const UNCLUSTERED_ID: &'static str = "unclustered";

    /// Whether this is the group of outliers rather than a cluster the clusterer
    /// found: it is never named by a model nor grouped under a parent.
    pub fn is_unclustered(&self) -> bool {
        self.id == Self::UNCLUSTERED_ID
    }
}

/// What the clusters stage does with the points a clusterer leaves as noise
/// (HDBSCAN's outliers; k-means leaves none).
///
/// Keeping them is the default because an outlier placed with its nearest cluster
/// blurs that cluster's name and counts; a user who wants every conversation in a
/// named group asks for `Assign`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outliers {
    /// One root-level "unclustered" group, outside the hierarchy.
    #[default]
    Keep,
    /// Each outlier joins the cluster whose centroid is nearest.
    Assign,
}

impl Outliers {
    pub fn as_str(self) -> &'static str {
        match self {
            Outliers::Keep => "keep",
            Outliers::Assign => "assign",
        }
    }
}

impl std::str::FromStr for Outliers {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "keep" => Ok(Outliers::Keep),
            "assign" => Ok(Outliers::Assign),
            other => Err(format!(
                "unknown outlier policy {other:?}: use keep or assign"
            )),
        }
    }
}

/// A cluster placed on the 2-D map (Kura's `ProjectedCluster`). `level` is 0 for the
/// roots and grows towards the base clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectedCluster {
    pub id: String,
    pub name: String,
    pub description: String,
    pub slug: String,
    pub chat_ids: Vec<String>,
    pub parent_id: Option<String>,
    pub x_coord: f64,
    pub y_coord: f64,
    pub level: usize,
    pub count: usize,
}

impl ProjectedCluster {
    pub fn new(cluster: &Cluster, x: f64, y: f64, level: usize) -> Self {
        ProjectedCluster {
            id: cluster.id.clone(),
            name: cluster.name.clone(),
            description: cluster.description.clone(),
            slug: cluster.slug.clone(),
            chat_ids: cluster.chat_ids.clone(),
            parent_id: cluster.parent_id.clone(),
            x_coord: x,
            y_coord: y,
            level,
            count: cluster.count,
        }
    }
}

/// One conversation on the 2-D map (our own file, `conversation_coords.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationPoint {
    pub chat_id: String,
    pub x: f32,
    pub y: f32,
    /// The base cluster the conversation belongs to.
    pub cluster_id: String,
}

/// An input record that was skipped under `--skip-invalid`, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedRecord {
    pub file: String,
    pub location: String,
    pub reason: String,
    /// The record itself, when it could be parsed at all (truncated for size).
    #[serde(default)]
    pub record: Option<String>,
}
