//! Clio's hierarchy: base clusters are grouped into fewer, broader parents, round
//! after round, until at most `top_clusters` roots remain.
//!
//! Each round aims for about `1/ratio` as many clusters as the level below. When
//! the namer can, the round follows Clio (see [`crate::parents`]): candidate
//! parents proposed per neighbourhood, de-duplicated, and every cluster placed
//! under one of them by the model's choice from a list. When the namer declines,
//! or its grouping would not shrink the level, the round groups the clusters'
//! normalised mean vectors with k-means instead. Either way each parent is then
//! named from its actual children, shown the nearest clusters outside the group
//! for contrast. Every round shrinks the level, so the loop always ends with one
//! forest.

use std::collections::HashSet;

use kura_core::text::{slugify, LevelNames};
use kura_core::NamingRequest;
use kura_core::{BoxError, Cluster, ClusterName, ClusterNamer, Embedder, HierarchyBuilder, Matrix};
use sha2::{Digest, Sha256};

use crate::error::ClusterError;
use crate::kmeans::kmeans;
use crate::parents::{group_by_model, LevelView};
use crate::vector::{check_finite, nearest_rows, normalized_mean, normalized_rows};

/// Neighbouring clusters shown to the namer as contrast.
const CONTRAST: usize = 5;
/// Words kept in a slug.
const SLUG_WORDS: usize = 6;
/// k-means settings for grouping clusters (a few hundred points at most).
const RESTARTS: usize = 4;
const MAX_ITER: usize = 100;

/// Builds Clio's meta-clusters with k-means and a [`ClusterNamer`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClioHierarchy {
    /// The most roots the hierarchy may end with.
    pub top_clusters: usize,
    /// The most rounds of grouping; `None` goes on until `top_clusters` is reached.
    pub levels: Option<usize>,
    /// How many times fewer clusters each round aims for (must be above 1).
    pub ratio: f32,
}

impl Default for ClioHierarchy {
    fn default() -> Self {
        ClioHierarchy {
            top_clusters: 10,
            levels: None,
            ratio: 3.0,
        }
    }
}

impl HierarchyBuilder for ClioHierarchy {
    fn id(&self) -> String {
        let levels = self
            .levels
            .map_or_else(|| "auto".to_string(), |l| l.to_string());
        format!(
            "clio-hierarchy-v4(top={},levels={levels},ratio={},restarts={RESTARTS},max_iter={MAX_ITER})",
            self.top_clusters, self.ratio
        )
    }

    fn build(
        &self,
        base: Vec<Cluster>,
        base_vectors: &Matrix,
        namer: &dyn ClusterNamer,
        embedder: &dyn Embedder,
        seed: u64,
    ) -> Result<Vec<Cluster>, BoxError> {
        Ok(self.build_tree(base, base_vectors, namer, embedder, seed)?)
    }
}

/// The level being grouped: each cluster's index in the output, and one vector per
/// cluster in the same order.
struct Level {
    clusters: Vec<usize>,
    vectors: Matrix,
}

impl ClioHierarchy {
    fn validate(&self, base: &[Cluster], base_vectors: &Matrix) -> Result<(), ClusterError> {
        if self.top_clusters == 0 {
            return Err(ClusterError::invalid(
                "top_clusters",
                0,
                "must be at least 1",
            ));
        }
        if self.ratio.is_nan() || self.ratio <= 1.0 {
            return Err(ClusterError::invalid(
                "ratio",
                self.ratio,
                "must be a number above 1",
            ));
        }
        if base_vectors.rows() != base.len() {
            return Err(ClusterError::VectorCountMismatch {
                vectors: base_vectors.rows(),
                clusters: base.len(),
            });
        }
        check_finite(base_vectors)?;
        let mut seen = HashSet::new();
        for cluster in base {
            if !seen.insert(cluster.id.as_str()) {
                return Err(ClusterError::DuplicateClusterId(cluster.id.clone()));
            }
        }
        Ok(())
    }

    /// The whole tree: `base` with `parent_id` filled in, then every ancestor, level
    /// by level.
    pub fn build_tree(
        &self,
        base: Vec<Cluster>,
        base_vectors: &Matrix,
        namer: &dyn ClusterNamer,
        embedder: &dyn Embedder,
        seed: u64,
    ) -> Result<Vec<Cluster>, ClusterError> {
        self.validate(&base, base_vectors)?;
        let mut all: Vec<Cluster> = base;
        let mut level = Level {
            clusters: (0..all.len()).collect(),
            vectors: normalized_rows(base_vectors).into_owned(),
        };
        let mut round = 0;
        while level.clusters.len() > self.top_clusters && self.levels.is_none_or(|l| round < l) {
            round += 1;
            level = self.group_level(&mut all, &level, namer, embedder, seed, round)?;
        }
        Ok(all)
    }

    /// How many groups a level of `n` clusters is grouped into: `n / ratio`, but not
    /// below `top_clusters` and always fewer than `n` (callers ensure `n > 1`).
    fn target_groups(&self, n: usize) -> usize {
        let shrunk = (n as f64 / f64::from(self.ratio)).ceil() as usize;
        shrunk.max(self.top_clusters).min(n - 1).max(1)
    }

    /// The fewest parents a model's grouping of `n` clusters may make: a top level
    /// more than 30% under `top_clusters` is no longer the size that was asked for
    /// (small models tend to put everything under one or two broad candidates).
    fn fewest_groups(&self, n: usize) -> usize {
        let fewest = (0.7 * self.top_clusters as f64).ceil() as usize;
        fewest.min(n - 1).max(1)
    }

    /// One round: groups the level, appends a parent per group to `all`, and returns
    /// the parents as the next level.
    fn group_level(
        &self,
        all: &mut Vec<Cluster>,
        level: &Level,
        namer: &dyn ClusterNamer,
        embedder: &dyn Embedder,
        seed: u64,
        round: usize,
    ) -> Result<Level, ClusterError> {
        let n = level.clusters.len();
        let m = self.target_groups(n);
        let view = LevelView::new(all, &level.clusters, &level.vectors);
        let fewest = self.fewest_groups(n);
        let groups = match group_by_model(&view, m, namer, embedder, round_seed(seed, round)) {
            Ok((groups, report)) if groups.len() < n && groups.len() >= fewest => {
                tracing::info!(
                    "hierarchy round {round}: {n} clusters into {} by the model \
                     ({} candidates, {} after de-duplication ({} named by the model), \
                     {} placed by embeddings)",
                    groups.len(),
                    report.candidates,
                    report.after_dedup,
                    report.model_merges,
                    report.fallback_assignments
                );
                groups
            }
            Ok((groups, _)) if groups.len() >= n => {
                tracing::warn!(
                    "hierarchy round {round}: the model's {} parents would not shrink {n} \
                     clusters; grouping by embeddings",
                    groups.len()
                );
                self.group_by_embeddings(level, m, seed, round)?
            }
            Ok((groups, _)) => {
                tracing::warn!(
                    "hierarchy round {round}: the model merged {n} clusters into only {} \
                     parents, under the {fewest} that a top level of {} allows; grouping \
                     by embeddings",
                    groups.len(),
                    self.top_clusters
                );
                self.group_by_embeddings(level, m, seed, round)?
            }
            Err(e) => {
                tracing::info!("hierarchy round {round}: grouping by embeddings ({e})");
                self.group_by_embeddings(level, m, seed, round)?
            }
        };
        assert!(groups.len() < n, "a hierarchy round must shrink the level");

        let mut parents = Vec::with_capacity(groups.len());
        let mut vectors = Vec::with_capacity(groups.len());
        let mut names = LevelNames::default();
        for group in &groups {
            let vector = normalized_mean(&level.vectors, group);
            let (mut name, borrowed) =
                self.name_group(all, level, group, &vector, names.given(), namer);
            name.name = names.give(&name.name);
            let children: Vec<usize> = group.iter().map(|&g| level.clusters[g]).collect();
            let mut parent = make_parent(all, &children, name, round);
            parent.name_borrowed = borrowed;
            for &child in &children {
                all[child].parent_id = Some(parent.id.clone());
            }
            parents.push(all.len());
            all.push(parent);
            vectors.push(vector);
        }
        Ok(Level {
            clusters: parents,
            vectors: Matrix::from_rows(&vectors).unwrap_or_default(),
        })
    }

    /// k-means on the level's vectors into `m` groups (fewer than the level, since
    /// `m < n`), the fallback that always shrinks.
    fn group_by_embeddings(
        &self,
        level: &Level,
        m: usize,
        seed: u64,
        round: usize,
    ) -> Result<Vec<Vec<usize>>, ClusterError> {
        let fit = kmeans(
            &level.vectors,
            m,
            round_seed(seed, round),
            RESTARTS,
            MAX_ITER,
        )?;
        Ok(fit.groups())
    }

    /// The parent's name: a single child's own, otherwise the namer's; when the namer
    /// fails, the largest child's (so one bad answer never aborts the hierarchy).
    /// Also whether the name is borrowed (see [`Cluster::name_borrowed`]): a
    /// single child passes on its own mark.
    fn name_group(
        &self,
        all: &[Cluster],
        level: &Level,
        group: &[usize],
        vector: &[f32],
        taken: &[String],
        namer: &dyn ClusterNamer,
    ) -> (ClusterName, bool) {
        let child = |g: usize| &all[level.clusters[g]];
        let largest = group
            .iter()
            .copied()
            .max_by(|&a, &b| child(a).count.cmp(&child(b).count).then(b.cmp(&a)))
            .map(child);
        let fallback = || ClusterName {
            name: largest.map(|c| c.name.clone()).unwrap_or_default(),
            description: largest.map(|c| c.description.clone()).unwrap_or_default(),
        };
        if group.len() == 1 {
            return (fallback(), largest.is_some_and(|c| c.name_borrowed));
        }
        let members: HashSet<usize> = group.iter().copied().collect();
        let contrast = nearest_rows(&level.vectors, vector, |i| members.contains(&i), CONTRAST)
            .into_iter()
            .map(|g| child(g).name.clone())
            .collect();
        let request = NamingRequest {
            members: group
                .iter()
                .map(|&g| format!("{}: {}", child(g).name, child(g).description))
                .collect(),
            contrast,
            is_parent: true,
            taken: taken.to_vec(),
        };
        match namer.name(&request) {
            Ok(name) => (name, false),
            Err(e) => {
                tracing::warn!(
                    "naming a parent cluster failed ({e}); using its largest child's name"
                );
                (fallback(), true)
            }
        }
    }
}

/// A new parent of `children` (indices into `all`) at hierarchy level `round`.
fn make_parent(all: &[Cluster], children: &[usize], name: ClusterName, round: usize) -> Cluster {
    let mut chat_ids: Vec<String> = children
        .iter()
        .flat_map(|&c| all[c].chat_ids.iter().cloned())
        .collect();
    chat_ids.sort();
    chat_ids.dedup();
    let mut child_ids: Vec<&str> = children.iter().map(|&c| all[c].id.as_str()).collect();
    child_ids.sort_unstable();
    Cluster {
        id: parent_id(round, &child_ids, &chat_ids),
        slug: slugify(&name.name, SLUG_WORDS),
        name: name.name,
        description: name.description,
        count: chat_ids.len(),
        chat_ids,
        parent_id: None,
        name_borrowed: false,
    }
}

/// A stable id: the same children at the same level always give the same parent id,
/// so reruns and resumed runs agree. Child ids are hashed alongside the chat ids so
/// that two parents never collide, even over clusters without conversations.
fn parent_id(round: usize, child_ids: &[&str], chat_ids: &[String]) -> String {
    let mut hash = Sha256::new();
    hash.update(format!("level {round}\n"));
    for id in child_ids {
        hash.update(id.as_bytes());
        hash.update(b"\n");
    }
    hash.update(b"\n");
    for id in chat_ids {
        hash.update(id.as_bytes());
        hash.update(b"\n");
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A seed per round, so rounds do not reuse the same random stream.
fn round_seed(seed: u64, round: usize) -> u64 {
    // SplitMix64's finaliser: nearby inputs give unrelated outputs.
    let mut z = seed ^ (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
