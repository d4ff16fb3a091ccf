//! One in-memory view of a finished run, whoever wrote it: our run directories and
//! Python Kura's checkpoint directories open into the same [`RunView`], so the web
//! explorer, `kura search` and `kura export` share one reader and never learn the
//! difference between the two layouts.
//!
//! A Python Kura checkpoint has no per-conversation coordinates and no embeddings.
//! Its conversations are placed around their base cluster's point with a small
//! jitter derived from the conversation id (so the map is the same on every open),
//! and semantic search has to embed its summaries on the fly.

mod fields;
mod layout;
pub mod search;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::pipeline::{
    CLUSTERS, CONVERSATIONS, CONVERSATION_COORDS, DIMENSIONALITY, EMBEDDINGS, META_CLUSTERS,
    RUN_JSON, SUMMARIES,
};
use crate::store;
use crate::tree::Tree;
use crate::types::{Cluster, Conversation, ConversationPoint, ConversationSummary};

pub use fields::{Breakdown, FACETS};

/// Who wrote the run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `kura run`: has `run.json`, `embeddings.npy` and `conversation_coords.jsonl`.
    Kura,
    /// Python Kura's checkpoint directory: the five Kura files only.
    PythonKura,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Kura => "kura-rs",
            RunKind::PythonKura => "python-kura",
        }
    }
}

/// A cluster of the hierarchy with its place in it.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub cluster: Cluster,
    /// Index of the parent in [`RunView::clusters`].
    pub parent: Option<usize>,
    /// Indices of the children, largest first.
    pub children: Vec<usize>,
    /// 0 for the roots.
    pub depth: usize,
    pub x: f64,
    pub y: f64,
    /// Indices (into [`RunView::conversations`]) of the conversations under it.
    pub members: Vec<usize>,
}

/// One conversation on the map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f32,
    pub y: f32,
    /// Index of its base cluster, if it is in one.
    pub base: Option<usize>,
}

/// Everything the explorer shows, indexed by position.
#[derive(Debug)]
pub struct RunView {
    pub dir: PathBuf,
    pub kind: RunKind,
    pub conversations: Vec<Conversation>,
    /// Aligned with `conversations`; `None` where the summariser failed.
    pub summaries: Vec<Option<ConversationSummary>>,
    /// Aligned with `conversations`.
    pub points: Vec<Point>,
    /// Parents before children, siblings largest first.
    pub clusters: Vec<ClusterNode>,
    /// The embedding of each summary, with the conversation each row belongs to
    /// (rows follow `summaries.jsonl`). `None` for Python Kura checkpoints.
    pub embeddings: Option<Embeddings>,
    /// The embedder named in `run.json`, the one a query must be embedded with.
    pub embedder: Option<String>,
    by_chat_id: HashMap<String, usize>,
    by_cluster_id: HashMap<String, usize>,
}

/// Embedding rows and the conversation each row belongs to.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub matrix: Matrix,
    pub conversation_of_row: Vec<usize>,
}

impl RunView {
    /// Opens a run directory of either kind. Every file is read in full and
    /// cross-checked; an error names the file that does not fit.
    pub fn open(dir: &Path) -> Result<RunView> {
        let conversations_path = dir.join(CONVERSATIONS);
        if !conversations_path.exists() {
            return Err(Error::Invalid(format!(
                "{}: no {CONVERSATIONS} (is this a run directory?)",
                dir.display()
            )));
        }
        let kind = if dir.join(CONVERSATION_COORDS).exists() {
            RunKind::Kura
        } else {
            RunKind::PythonKura
        };
        let conversations: Vec<Conversation> = store::read_jsonl(&conversations_path)?;
        let by_chat_id: HashMap<String, usize> = conversations
            .iter()
            .enumerate()
            .map(|(i, c)| (c.chat_id.clone(), i))
            .collect();

        let summary_rows = read_optional::<ConversationSummary>(&dir.join(SUMMARIES))?;
        let mut summaries = vec![None; conversations.len()];
        let mut conversation_of_row = Vec::with_capacity(summary_rows.len());
        for (line, s) in summary_rows.into_iter().enumerate() {
            let i = *by_chat_id.get(&s.chat_id).ok_or_else(|| {
                Error::input(
                    dir.join(SUMMARIES),
                    format!("line {}", line + 1),
                    format!("chat_id {} is not in {CONVERSATIONS}", s.chat_id),
                )
            })?;
            conversation_of_row.push(i);
            summaries[i] = Some(s);
        }

        let clusters = read_hierarchy(dir, &by_chat_id)?;
        let by_cluster_id = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.cluster.id.clone(), i))
            .collect();
        let mut view = RunView {
            dir: dir.to_path_buf(),
            kind,
            points: Vec::new(),
            summaries,
            clusters,
            embeddings: None,
            embedder: None,
            by_chat_id,
            by_cluster_id,
            conversations,
        };
        view.points = match kind {
            RunKind::Kura => view.read_points()?,
            RunKind::PythonKura => layout::jittered_points(&view),
        };
        if kind == RunKind::Kura {
            view.embedder = read_embedder_name(&dir.join(RUN_JSON))?;
            view.embeddings = view.read_embeddings(conversation_of_row)?;
        }
        Ok(view)
    }

    pub fn conversation_index(&self, chat_id: &str) -> Option<usize> {
        self.by_chat_id.get(chat_id).copied()
    }

    pub fn cluster_index(&self, cluster_id: &str) -> Option<usize> {
        self.by_cluster_id.get(cluster_id).copied()
    }

    pub fn roots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.clusters.len()).filter(|&i| self.clusters[i].parent.is_none())
    }

    /// The clusters from the root down to `cluster` (inclusive).
    pub fn cluster_path(&self, cluster: usize) -> Vec<usize> {
        let mut path = vec![cluster];
        while let Some(parent) = self.clusters[path[path.len() - 1]].parent {
            path.push(parent);
        }
        path.reverse();
        path
    }

    /// The cluster path of a conversation, root first; empty if it is in no cluster.
    pub fn conversation_path(&self, conversation: usize) -> Vec<usize> {
        self.points[conversation]
            .base
            .map(|b| self.cluster_path(b))
            .unwrap_or_default()
    }

    /// The root cluster a conversation falls under.
    pub fn top_cluster(&self, conversation: usize) -> Option<usize> {
        self.conversation_path(conversation).first().copied()
    }

    /// Our runs carry their coordinates; every conversation must have a point.
    fn read_points(&self) -> Result<Vec<Point>> {
        let path = self.dir.join(CONVERSATION_COORDS);
        let rows: Vec<ConversationPoint> = store::read_jsonl(&path)?;
        let mut points = vec![None; self.conversations.len()];
        for (line, p) in rows.iter().enumerate() {
            let i = self.conversation_index(&p.chat_id).ok_or_else(|| {
                Error::input(
                    &path,
                    format!("line {}", line + 1),
                    format!("chat_id {} is not in {CONVERSATIONS}", p.chat_id),
                )
            })?;
            points[i] = Some(Point {
                x: p.x,
                y: p.y,
                base: self.cluster_index(&p.cluster_id),
            });
        }
        // Conversations the summariser failed on are not on the map; they sit at
        // their cluster's point if they have one, else at the origin.
        let base_of = layout::base_clusters(self);
        Ok(points
            .into_iter()
            .zip(base_of)
            .map(|(p, base)| p.unwrap_or_else(|| layout::fallback_point(self, base)))
            .collect())
    }

    fn read_embeddings(&self, conversation_of_row: Vec<usize>) -> Result<Option<Embeddings>> {
        let path = self.dir.join(EMBEDDINGS);
        if !path.exists() {
            return Ok(None);
        }
        let matrix = store::read_npy(&path)?;
        if matrix.rows() != conversation_of_row.len() {
            return Err(Error::input(
                &path,
                "shape",
                format!(
                    "{} rows, but {SUMMARIES} has {} summaries",
                    matrix.rows(),
                    conversation_of_row.len()
                ),
            ));
        }
        Ok(Some(Embeddings {
            matrix,
            conversation_of_row,
        }))
    }
}

fn read_optional<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if path.exists() {
        store::read_jsonl(path)
    } else {
        Ok(Vec::new())
    }
}

/// The hierarchy (or, without one, the base clusters) with map coordinates and
/// members, parents before children.
fn read_hierarchy(dir: &Path, by_chat_id: &HashMap<String, usize>) -> Result<Vec<ClusterNode>> {
    let meta = dir.join(META_CLUSTERS);
    let path = if meta.exists() {
        meta
    } else {
        dir.join(CLUSTERS)
    };
    let clusters: Vec<Cluster> = read_optional(&path)?;
    let tree = Tree::new(&clusters).map_err(|e| Error::input(&path, "parent_id", e.to_string()))?;
    let coords: HashMap<String, (f64, f64)> =
        read_optional::<crate::types::ProjectedCluster>(&dir.join(DIMENSIONALITY))?
            .into_iter()
            .map(|p| (p.id, (p.x_coord, p.y_coord)))
            .collect();
    let order: Vec<(&Cluster, usize)> = tree.walk().collect();
    let index: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (c, _))| (c.id.as_str(), i))
        .collect();
    let mut nodes: Vec<ClusterNode> = order
        .iter()
        .map(|(c, depth)| {
            let (x, y) = coords.get(&c.id).copied().unwrap_or((0.0, 0.0));
            ClusterNode {
                cluster: (*c).clone(),
                parent: c.parent_id.as_deref().and_then(|p| index.get(p).copied()),
                children: tree
                    .children(&c.id)
                    .filter_map(|k| index.get(k.id.as_str()).copied())
                    .collect(),
                depth: *depth,
                x,
                y,
                members: c
                    .chat_ids
                    .iter()
                    .filter_map(|id| by_chat_id.get(id).copied())
                    .collect(),
            }
        })
        .collect();
    for node in &mut nodes {
        node.children.sort_unstable();
    }
    Ok(nodes)
}

/// `run.json`'s `models.embedder.name`, if the run recorded one.
fn read_embedder_name(path: &Path) -> Result<Option<String>> {
    if !path.exists() {
        return Ok(None);
    }
    let manifest: Value = store::read_json(path)?;
    Ok(manifest
        .pointer("/models/embedder/name")
        .and_then(Value::as_str)
        .map(str::to_string))
}

#[cfg(test)]
mod tests;
