//! The pipeline: the stages of a run, each reading what the previous one wrote to
//! the run directory and recording a fingerprint of everything it was computed from.
//!
//! A stage's key chains the key of the stage before it with its own backend's `id()`
//! and parameters. A stage whose recorded key matches and whose files exist is
//! reused; any other is recomputed, and with it every stage after it, because their
//! keys chain through it. Slow per-item work (summaries, cluster names) also goes to
//! journals keyed by the item's own fingerprint, so a killed run, or a run on an input
//! that grew by a few conversations, redoes only what is missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{BoxError, Error, Result};
use crate::loaders::conversation_fingerprint;
use crate::matrix::Matrix;
use crate::privacy::{redact_summary, REDACTION_VERSION};
use crate::store::{self, fingerprint, Journal};
use crate::text::{capitalized, shorten_name, slugify, truncate_chars, LevelNames};
use crate::traits::{
    ChoiceRequest, ClusterName, ClusterNamer, Clusterer, Embedder, HierarchyBuilder, NamingRequest,
    ProposalRequest, Reducer, Summarizer,
};
use crate::tree::Tree;
use crate::types::{
    Cluster, Conversation, ConversationPoint, ConversationSummary, Outliers, ProjectedCluster,
    SkippedRecord, REQUEST_OPENING,
};
use crate::vector::{dot, nearest_rows, normalized_mean};

pub const CONVERSATIONS: &str = "conversations.jsonl";
pub const SUMMARIES: &str = "summaries.jsonl";
pub const CLUSTERS: &str = "clusters.jsonl";
pub const META_CLUSTERS: &str = "meta_clusters.jsonl";
pub const DIMENSIONALITY: &str = "dimensionality.jsonl";
pub const EMBEDDINGS: &str = "embeddings.npy";
pub const CONVERSATION_COORDS: &str = "conversation_coords.jsonl";
pub const SKIPPED: &str = "skipped.jsonl";
pub const FAILED: &str = "failed.jsonl";
pub const RUN_JSON: &str = "run.json";

/// The stages in order, by the name they have in `run.json` and on the command line.
pub const STAGES: [&str; 6] = [
    "conversations",
    "summaries",
    "embeddings",
    "clusters",
    "hierarchy",
    "map",
];

/// Reports progress of long stages (the CLI draws bars; `--json` prints events).
pub trait Progress: Send + Sync {
    fn begin(&self, stage: &str, total: u64);
    fn advance(&self, n: u64);
    fn end(&self, stage: &str, message: &str);
    fn warn(&self, message: &str);
}

/// Progress that goes nowhere, for libraries and tests.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self, _: &str, _: &str) {}
    fn warn(&self, _: &str) {}
}

/// `run.json`: what a run was made from and how each stage went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunManifest {
    pub kura_version: String,
    pub updated_at_unix: u64,
    /// The configuration the run was started with (set by the caller).
    #[serde(default)]
    pub config: Value,
    /// Model names, sources and checksums (set by the caller).
    #[serde(default)]
    pub models: Value,
    #[serde(default)]
    pub input: InputRecord,
    #[serde(default)]
    pub stages: BTreeMap<String, StageRecord>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InputRecord {
    pub files: Vec<String>,
    pub hash: String,
    pub conversations: usize,
    pub skipped: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    /// The key of the stage before it when it was computed (empty for the first
    /// stage, and in manifests written before this was recorded): a stage whose
    /// upstream has been recomputed since is out of date.
    #[serde(default)]
    pub upstream: String,
    /// The backend that computed it (its `id()`).
    pub backend: String,
    /// False when some items failed: the next run retries them.
    pub complete: bool,
    pub count: usize,
    pub failed: usize,
    pub seconds: f64,
}

/// How a stage went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageOutcome {
    pub stage: &'static str,
    pub reused: bool,
    pub count: usize,
    pub failed: usize,
}

/// A conversation the summariser could not summarise, with the reason (`failed.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub chat_id: String,
    pub stage: String,
    pub reason: String,
}

/// A run directory and the stages that fill it.
pub struct Run {
    dir: PathBuf,
    seed: u64,
    progress: Arc<dyn Progress>,
    manifest: Mutex<RunManifest>,
}

impl Run {
    /// Opens (or creates) a run directory, reading `run.json` if there is one.
    pub fn open(dir: &Path, seed: u64, progress: Arc<dyn Progress>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let manifest_path = dir.join(RUN_JSON);
        let manifest = if manifest_path.exists() {
            store::read_json(&manifest_path)?
        } else {
            RunManifest::default()
        };
        Ok(Run {
            dir: dir.to_path_buf(),
            seed,
            progress,
            manifest: Mutex::new(manifest),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn manifest(&self) -> RunManifest {
        self.manifest.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Whether `stage` is complete and was computed from what the stages before it
    /// hold now: false once an earlier stage has been recomputed without it (as
    /// `kura stage clusters` leaves the hierarchy and the map).
    pub fn is_current(&self, stage: &str) -> bool {
        let Ok(manifest) = self.manifest.lock() else {
            return false;
        };
        manifest.stages.get(stage).is_some_and(|r| r.complete)
            && derived_from_current_upstream(&manifest, stage)
    }

    /// Records the caller's configuration and model details in `run.json`.
    pub fn set_config(&self, config: Value, models: Value) -> Result<()> {
        self.update_manifest(|m| {
            m.config = config;
            m.models = models;
        })
    }

    /// Stage 0: the input, normalised to Kura's `Conversation` shape.
    pub fn set_conversations(
        &self,
        files: &[PathBuf],
        conversations: &[Conversation],
        skipped: &[SkippedRecord],
    ) -> Result<StageOutcome> {
        if conversations.is_empty() {
            return Err(Error::Invalid(
                "no conversations to process: the input is empty or every record was skipped"
                    .into(),
            ));
        }
        let keys: Vec<String> = conversations.iter().map(conversation_fingerprint).collect();
        let key = fingerprint(&keys);
        let reused = self.is_fresh("conversations", &key, &[CONVERSATIONS]);
        if !reused {
            store::write_jsonl(&self.path(CONVERSATIONS), conversations)?;
        }
        if skipped.is_empty() {
            remove_if_exists(&self.path(SKIPPED))?;
        } else {
            store::write_jsonl(&self.path(SKIPPED), skipped)?;
        }
        self.update_manifest(|m| {
            m.input = InputRecord {
                files: files.iter().map(|f| f.display().to_string()).collect(),
                hash: key.clone(),
                conversations: conversations.len(),
                skipped: skipped.len(),
            };
            record_stage(
                m,
                "conversations",
                &key,
                "loader",
                conversations.len(),
                0,
                0.0,
            );
        })?;
        Ok(StageOutcome {
            stage: "conversations",
            reused,
            count: conversations.len(),
            failed: 0,
        })
    }

    /// Stage 1: Clio's facets for every conversation, journaled one by one.
    pub fn summarize(&self, summarizer: &dyn Summarizer) -> Result<StageOutcome> {
        let upstream = self.upstream_key("conversations", "summaries")?;
        let key = fingerprint(&[upstream.as_str(), &summarizer.id(), REDACTION_VERSION]);
        if self.is_fresh("summaries", &key, &[SUMMARIES]) {
            return self.reused("summaries");
        }
        let started = Instant::now();
        let conversations: Vec<Conversation> = store::read_jsonl(&self.path(CONVERSATIONS))?;
        let journal: Journal<ConversationSummary> =
            Journal::open(&self.path("cache/summaries.journal.jsonl"))?;
        let item_key = |c: &Conversation| {
            let id = summarizer.id();
            fingerprint(&[id.as_str(), REDACTION_VERSION, &conversation_fingerprint(c)])
        };
        let todo: Vec<&Conversation> = conversations
            .iter()
            .filter(|c| journal.get(&item_key(c)).is_none())
            .collect();

        self.progress.begin("summaries", conversations.len() as u64);
        self.progress
            .advance((conversations.len() - todo.len()) as u64);
        let todo: Vec<Conversation> = todo.into_iter().cloned().collect();
        let mut failures = Vec::new();
        let mut answered = vec![false; todo.len()];
        let mut journal_error = None;
        summarizer.summarize_each(&todo, &mut |index, result| {
            let Some(conversation) = todo.get(index) else {
                return;
            };
            if std::mem::replace(&mut answered[index], true) {
                return;
            }
            match result {
                Ok(summary) => {
                    let written = journal.append(
                        &item_key(conversation),
                        &with_provenance(redact_summary(summary), conversation),
                    );
                    if let Err(e) = written {
                        journal_error.get_or_insert(e);
                    }
                }
                Err(e) => {
                    self.progress.warn(&format!(
                        "could not summarise {}: {e}",
                        conversation.chat_id
                    ));
                    failures.push(Failure {
                        chat_id: conversation.chat_id.clone(),
                        stage: "summaries".into(),
                        reason: e.to_string(),
                    });
                }
            }
            self.progress.advance(1);
        });
        if let Some(e) = journal_error {
            return Err(e);
        }
        let unanswered = answered.iter().filter(|a| !**a).count();
        if unanswered > 0 {
            return Err(Error::backend(
                "summaries",
                format!(
                    "the summariser returned no result for {unanswered} of {} conversations",
                    todo.len()
                ),
            ));
        }
        let summaries: Vec<ConversationSummary> = conversations
            .iter()
            .filter_map(|c| journal.get(&item_key(c)))
            .collect();
        store::write_jsonl(&self.path(SUMMARIES), &summaries)?;
        if failures.is_empty() {
            remove_if_exists(&self.path(FAILED))?;
        } else {
            store::write_jsonl(&self.path(FAILED), &failures)?;
        }
        self.progress.end(
            "summaries",
            &format!("{} summaries, {} failed", summaries.len(), failures.len()),
        );
        if summaries.is_empty() {
            return Err(Error::backend(
                "summaries",
                "no conversation could be summarised (see failed.jsonl)",
            ));
        }
        self.finish(
            "summaries",
            &key,
            &summarizer.id(),
            summaries.len(),
            failures.len(),
            started,
        )
    }

    /// Stage 2: one embedding per summary, rows in `summaries.jsonl` order.
    pub fn embed(&self, embedder: &dyn Embedder) -> Result<StageOutcome> {
        let upstream = self.upstream_key("summaries", "embeddings")?;
        let key = fingerprint(&[upstream.as_str(), &embedder.id()]);
        if self.is_fresh("embeddings", &key, &[EMBEDDINGS]) {
            return self.reused("embeddings");
        }
        let started = Instant::now();
        let summaries: Vec<ConversationSummary> = store::read_jsonl(&self.path(SUMMARIES))?;
        self.progress.begin("embeddings", summaries.len() as u64);
        let mut data = Vec::with_capacity(summaries.len() * embedder.dim());
        for chunk in summaries.chunks(256) {
            let texts: Vec<&str> = chunk.iter().map(|s| s.summary.as_str()).collect();
            let rows = embedder
                .embed(&texts)
                .map_err(|e| Error::backend("embeddings", e))?;
            if rows.rows() != texts.len() {
                return Err(Error::backend(
                    "embeddings",
                    "embedder returned the wrong number of rows",
                ));
            }
            data.extend_from_slice(rows.as_slice());
            self.progress.advance(chunk.len() as u64);
        }
        let cols = data.len().checked_div(summaries.len()).unwrap_or(0);
        let matrix = Matrix::new(summaries.len(), cols, data);
        store::write_npy(&self.path(EMBEDDINGS), &matrix)?;
        self.progress.end(
            "embeddings",
            &format!("{} × {}", matrix.rows(), matrix.cols()),
        );
        self.finish(
            "embeddings",
            &key,
            &embedder.id(),
            matrix.rows(),
            0,
            started,
        )
    }

    /// Stage 3: base clusters, each named from its members with the nearest
    /// summaries outside it as contrast.
    /// The points the clusterer leaves as noise are kept together as one
    /// unnamed "unclustered" cluster or placed with their nearest cluster, as
    /// `outliers` says.
    pub fn cluster(
        &self,
        clusterer: &dyn Clusterer,
        namer: &dyn ClusterNamer,
        outliers: Outliers,
    ) -> Result<StageOutcome> {
        let upstream = self.upstream_key("embeddings", "clusters")?;
        let key = fingerprint(&[
            upstream.as_str(),
            &clusterer.id(),
            &namer.id(),
            &self.seed.to_string(),
            outliers.as_str(),
        ]);
        if self.is_fresh("clusters", &key, &[CLUSTERS]) {
            return self.reused("clusters");
        }
        let started = Instant::now();
        let summaries: Vec<ConversationSummary> = store::read_jsonl(&self.path(SUMMARIES))?;
        let embeddings = self.embeddings(summaries.len())?;
        let labels = clusterer
            .cluster(&embeddings, self.seed)
            .map_err(|e| Error::backend("clusters", e))?;
        let (mut groups, noise) = group_by_label(&labels, embeddings.rows())?;
        let noise_count = noise.len();
        let unclustered = match outliers {
            Outliers::Keep => noise,
            Outliers::Assign => {
                assign_to_nearest_group(&embeddings, &mut groups, noise);
                Vec::new()
            }
        };

        let namer = self.journaled_namer(namer)?;
        self.progress.begin("clusters", groups.len() as u64);
        let mut clusters = Vec::with_capacity(groups.len());
        let mut names = LevelNames::default();
        for members in &groups {
            let centroid = normalized_mean(&embeddings, members);
            let central = nearest_rows(
                &embeddings,
                &centroid,
                |i| !members.contains(&i),
                NAMING_MEMBERS,
            );
            let request = NamingRequest {
                members: central
                    .iter()
                    .map(|&i| summaries[i].summary.clone())
                    .collect(),
                contrast: nearest_rows(
                    &embeddings,
                    &centroid,
                    |i| members.contains(&i),
                    NAMING_CONTRAST,
                )
                .into_iter()
                .map(|i| summaries[i].summary.clone())
                .collect(),
                is_parent: false,
                taken: names.given().to_vec(),
            };
            let central = central.first().map(|&i| &summaries[i]);
            let (mut name, borrowed) = match namer.name(&request) {
                Ok(name) => (name, false),
                Err(e) => (name_from_central_member(central, &e), true),
            };
            name.name = names.give(&name.name);
            let chat_ids: Vec<String> = members
                .iter()
                .map(|&i| summaries[i].chat_id.clone())
                .collect();
            let mut cluster = new_cluster(name, chat_ids);
            cluster.name_borrowed = borrowed;
            clusters.push(cluster);
            self.progress.advance(1);
        }
        let named = clusters.len();
        if !unclustered.is_empty() {
            let chat_ids = unclustered
                .iter()
                .map(|&i| summaries[i].chat_id.clone())
                .collect();
            clusters.push(unclustered_cluster(chat_ids));
        }
        store::write_jsonl(&self.path(CLUSTERS), &clusters)?;
        let outcome = match (noise_count, outliers) {
            (0, _) => format!("{named} clusters"),
            (n, Outliers::Keep) => format!("{named} clusters and {n} unclustered outliers"),
            (n, Outliers::Assign) => {
                format!("{named} clusters ({n} outliers placed with their nearest cluster)")
            }
        };
        self.progress.end("clusters", &outcome);
        self.finish(
            "clusters",
            &key,
            &clusterer.id(),
            clusters.len(),
            0,
            started,
        )
    }

    /// Stage 4: the hierarchy above the base clusters (`meta_clusters.jsonl`).
    pub fn build_hierarchy(
        &self,
        builder: &dyn HierarchyBuilder,
        namer: &dyn ClusterNamer,
        embedder: &dyn Embedder,
    ) -> Result<StageOutcome> {
        let upstream = self.upstream_key("clusters", "hierarchy")?;
        let key = fingerprint(&[
            upstream.as_str(),
            &builder.id(),
            &namer.id(),
            &self.seed.to_string(),
        ]);
        if self.is_fresh("hierarchy", &key, &[META_CLUSTERS]) {
            return self.reused("hierarchy");
        }
        let started = Instant::now();
        let summaries: Vec<ConversationSummary> = store::read_jsonl(&self.path(SUMMARIES))?;
        let embeddings = self.embeddings(summaries.len())?;
        let base: Vec<Cluster> = store::read_jsonl(&self.path(CLUSTERS))?;
        // Outliers stay out of the grouping: a parent named after them would name
        // nothing in common. They come back as a root of their own.
        let (unclustered, clustered): (Vec<Cluster>, Vec<Cluster>) =
            base.iter().cloned().partition(Cluster::is_unclustered);
        let row_of: HashMap<&str, usize> = summaries
            .iter()
            .enumerate()
            .map(|(i, s)| (s.chat_id.as_str(), i))
            .collect();
        let vectors: Vec<Vec<f32>> = clustered
            .iter()
            .map(|c| {
                let rows: Vec<usize> = c
                    .chat_ids
                    .iter()
                    .filter_map(|id| row_of.get(id.as_str()).copied())
                    .collect();
                normalized_mean(&embeddings, &rows)
            })
            .collect();
        let vectors = Matrix::from_rows(&vectors)
            .ok_or_else(|| Error::Invalid("ragged cluster vectors".into()))?;

        let namer = self.journaled_namer(namer)?;
        self.progress.begin("hierarchy", 0);
        let mut all = if clustered.is_empty() {
            Vec::new()
        } else {
            builder
                .build(clustered, &vectors, &namer, embedder, self.seed)
                .map_err(|e| Error::backend("hierarchy", e))?
        };
        all.extend(unclustered);
        check_hierarchy(&base, &all)?;
        store::write_jsonl(&self.path(META_CLUSTERS), &all)?;
        let roots = all.iter().filter(|c| c.parent_id.is_none()).count();
        self.progress.end(
            "hierarchy",
            &format!("{} clusters, {} at the top", all.len(), roots),
        );
        self.finish("hierarchy", &key, &builder.id(), all.len(), 0, started)
    }

    /// Stage 5: the 2-D map of every conversation and every cluster.
    pub fn project(&self, reducer: &dyn Reducer) -> Result<StageOutcome> {
        let upstream = self.upstream_key("hierarchy", "map")?;
        let key = fingerprint(&[upstream.as_str(), &reducer.id(), &self.seed.to_string()]);
        if self.is_fresh("map", &key, &[DIMENSIONALITY, CONVERSATION_COORDS]) {
            return self.reused("map");
        }
        let started = Instant::now();
        let summaries: Vec<ConversationSummary> = store::read_jsonl(&self.path(SUMMARIES))?;
        let embeddings = self.embeddings(summaries.len())?;
        let clusters: Vec<Cluster> = store::read_jsonl(&self.path(META_CLUSTERS))?;
        self.progress.begin("map", 0);
        let coords = reducer
            .reduce(&embeddings, self.seed)
            .map_err(|e| Error::backend("map", e))?;
        if coords.rows() != summaries.len() || coords.cols() != 2 {
            return Err(Error::backend(
                "map",
                "reducer must return one row of two per point",
            ));
        }
        let tree = Tree::new(&clusters)?;
        let levels = tree.levels();
        let base_of: HashMap<&str, &str> = clusters
            .iter()
            .filter(|c| tree.is_leaf(&c.id))
            .flat_map(|c| {
                c.chat_ids
                    .iter()
                    .map(move |id| (id.as_str(), c.id.as_str()))
            })
            .collect();
        let points: Vec<ConversationPoint> = summaries
            .iter()
            .zip(coords.iter_rows())
            .map(|(s, xy)| ConversationPoint {
                chat_id: s.chat_id.clone(),
                x: xy[0],
                y: xy[1],
                cluster_id: base_of
                    .get(s.chat_id.as_str())
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
            })
            .collect();
        let point_of: HashMap<&str, usize> = summaries
            .iter()
            .enumerate()
            .map(|(i, s)| (s.chat_id.as_str(), i))
            .collect();
        let projected: Vec<ProjectedCluster> = clusters
            .iter()
            .map(|c| {
                let rows: Vec<usize> = c
                    .chat_ids
                    .iter()
                    .filter_map(|id| point_of.get(id.as_str()).copied())
                    .collect();
                let n = rows.len().max(1) as f64;
                let x = rows.iter().map(|&i| coords.row(i)[0] as f64).sum::<f64>() / n;
                let y = rows.iter().map(|&i| coords.row(i)[1] as f64).sum::<f64>() / n;
                ProjectedCluster::new(c, x, y, levels.get(c.id.as_str()).copied().unwrap_or(0))
            })
            .collect();
        store::write_jsonl(&self.path(CONVERSATION_COORDS), &points)?;
        store::write_jsonl(&self.path(DIMENSIONALITY), &projected)?;
        self.progress.end(
            "map",
            &format!("{} points, {} clusters", points.len(), projected.len()),
        );
        self.finish("map", &key, &reducer.id(), points.len(), 0, started)
    }

    fn embeddings(&self, expected_rows: usize) -> Result<Matrix> {
        let path = self.path(EMBEDDINGS);
        let m = store::read_npy(&path)?;
        if m.rows() != expected_rows {
            return Err(Error::input(
                &path,
                "shape",
                format!("{} rows for {} summaries", m.rows(), expected_rows),
            ));
        }
        Ok(m)
    }

    fn journaled_namer<'a>(&self, inner: &'a dyn ClusterNamer) -> Result<JournaledNamer<'a>> {
        Ok(JournaledNamer {
            inner,
            journal: Journal::open(&self.path("cache/names.journal.jsonl"))?,
            decisions: Journal::open(&self.path("cache/hierarchy.journal.jsonl"))?,
        })
    }

    fn upstream_key(&self, upstream: &str, stage: &str) -> Result<String> {
        let manifest = self
            .manifest
            .lock()
            .map_err(|_| Error::Invalid("run state poisoned".into()))?;
        match manifest.stages.get(upstream) {
            Some(r) if r.complete || upstream == "summaries" => Ok(r.key.clone()),
            _ => Err(Error::Invalid(format!(
                "{}: the {stage} stage needs the {upstream} stage first (run `kura run`, or `kura {upstream}`)",
                self.dir.display()
            ))),
        }
    }

    fn is_fresh(&self, stage: &str, key: &str, files: &[&str]) -> bool {
        let Ok(manifest) = self.manifest.lock() else {
            return false;
        };
        manifest
            .stages
            .get(stage)
            .is_some_and(|r| r.key == key && r.complete)
            && files.iter().all(|f| self.path(f).exists())
    }

    fn reused(&self, stage: &'static str) -> Result<StageOutcome> {
        let record = self
            .manifest()
            .stages
            .get(stage)
            .cloned()
            .unwrap_or_default();
        self.progress.end(stage, "up to date");
        Ok(StageOutcome {
            stage,
            reused: true,
            count: record.count,
            failed: record.failed,
        })
    }

    fn finish(
        &self,
        stage: &'static str,
        key: &str,
        backend: &str,
        count: usize,
        failed: usize,
        started: Instant,
    ) -> Result<StageOutcome> {
        let seconds = started.elapsed().as_secs_f64();
        // One write: a run killed between recording the stage and forgetting
        // the stages after it would keep them beside output they were not made
        // from.
        self.update_manifest(|m| {
            record_stage(m, stage, key, backend, count, failed, seconds);
            forget_stages_after(m, stage);
        })?;
        Ok(StageOutcome {
            stage,
            reused: false,
            count,
            failed,
        })
    }

    fn update_manifest(&self, change: impl FnOnce(&mut RunManifest)) -> Result<()> {
        let mut manifest = self
            .manifest
            .lock()
            .map_err(|_| Error::Invalid("run state poisoned".into()))?;
        change(&mut manifest);
        manifest.kura_version = env!("CARGO_PKG_VERSION").to_string();
        manifest.updated_at_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        store::write_json(&self.path(RUN_JSON), &*manifest)
    }
}

/// Records `stage` as computed under `key`, from the upstream stage's current key.
fn record_stage(
    m: &mut RunManifest,
    stage: &str,
    key: &str,
    backend: &str,
    count: usize,
    failed: usize,
    seconds: f64,
) {
    let upstream = upstream_of(stage)
        .and_then(|up| m.stages.get(up))
        .map(|r| r.key.clone())
        .unwrap_or_default();
    m.stages.insert(
        stage.to_string(),
        StageRecord {
            key: key.to_string(),
            upstream,
            backend: backend.to_string(),
            complete: failed == 0,
            count,
            failed,
            seconds,
        },
    );
}

/// Forgets the stages after `stage`, which has just been computed: they were
/// made from its output before, and that can differ under the same key (a name
/// the namer failed to give is asked again; a deleted file is remade). Where the
/// key changed, theirs would have too; where it did not, they would otherwise be
/// reused as they were.
fn forget_stages_after(m: &mut RunManifest, stage: &str) {
    if let Some(at) = STAGES.iter().position(|s| *s == stage) {
        for later in &STAGES[at + 1..] {
            m.stages.remove(*later);
        }
    }
}

/// A namer that fails (a small model that keeps writing an invalid name) must not
/// lose the run's summaries and embeddings: the cluster is named after its most
/// central member instead, and the reason is logged so the user can rerun
/// `kura stage clusters` with a stronger model. Names are not journaled on
/// failure, so that rerun asks again.
///
/// The name is the member's request where its summary has one, as an imperative
/// like the namer's ("Explain the difference between…" from "The user's overall
/// request for the assistant is to explain the difference between…"), and its
/// summary otherwise: a summary reads as a report ("The user asked for…"), not as
/// the name of a group. A long one is cut as a namer's long name is (see
/// [`shorten_name`]), and only where no cut reads as a name is it ended with "…".
fn name_from_central_member(
    central: Option<&ConversationSummary>,
    error: &BoxError,
) -> ClusterName {
    tracing::warn!("naming a cluster failed ({error}); using its most central member");
    let summary = central.map_or("", |c| c.summary.as_str());
    let request = central
        .and_then(|c| c.request.as_deref())
        .map(as_imperative)
        .filter(|r| !r.is_empty());
    let named_after = request.as_deref().unwrap_or(summary).trim();
    let named_after = named_after.trim_end_matches('.');
    let name = if named_after.is_empty() {
        "Unnamed conversations".to_string()
    } else {
        shorten_name(named_after, NAME_FALLBACK_WORDS).unwrap_or_else(|| {
            let first: Vec<&str> = named_after
                .split_whitespace()
                .take(NAME_FALLBACK_WORDS)
                .collect();
            format!("{}…", first.join(" "))
        })
    };
    ClusterName {
        name,
        description: format!(
            "Named after its most central member because the namer failed: {}",
            truncate_chars(summary, 400)
        ),
    }
}

/// A request facet as an imperative: without [`REQUEST_OPENING`] (in any case),
/// its first letter capitalised.
fn as_imperative(request: &str) -> String {
    let request = request.trim();
    let rest = match request.get(..REQUEST_OPENING.len()) {
        Some(opening) if opening.eq_ignore_ascii_case(REQUEST_OPENING) => {
            request[REQUEST_OPENING.len()..].trim_start()
        }
        _ => request,
    };
    capitalized(rest)
}

const NAME_FALLBACK_WORDS: usize = 10;

/// How many members and outside neighbours a namer is shown.
const NAMING_MEMBERS: usize = 10;
const NAMING_CONTRAST: usize = 5;

/// The summariser owns the facets; the pipeline owns where they came from, so the
/// id and metadata always match the conversation (as Kura's files do).
fn with_provenance(
    mut summary: ConversationSummary,
    conversation: &Conversation,
) -> ConversationSummary {
    summary.chat_id = conversation.chat_id.clone();
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        "conversation_turns".into(),
        Value::from(conversation.messages.len()),
    );
    for (k, v) in &conversation.metadata {
        metadata.insert(k.clone(), v.clone());
    }
    summary.metadata = metadata;
    summary.embedding = None;
    summary
}

fn new_cluster(name: ClusterName, mut chat_ids: Vec<String>) -> Cluster {
    chat_ids.sort();
    let id = fingerprint(&chat_ids);
    Cluster {
        id,
        slug: slugify(&name.name, 6),
        name: name.name,
        description: name.description,
        count: chat_ids.len(),
        chat_ids,
        parent_id: None,
        name_borrowed: false,
    }
}

fn upstream_of(stage: &str) -> Option<&'static str> {
    let at = STAGES.iter().position(|s| *s == stage)?;
    at.checked_sub(1).map(|up| STAGES[up])
}

/// Whether every link from `stage` back to the first stage still holds: each
/// recorded upstream key is the upstream's key now. An empty record (an older
/// manifest) is taken on trust.
fn derived_from_current_upstream(manifest: &RunManifest, stage: &str) -> bool {
    let Some(up) = upstream_of(stage) else {
        return true;
    };
    let (Some(record), Some(above)) = (manifest.stages.get(stage), manifest.stages.get(up)) else {
        return false;
    };
    (record.upstream.is_empty() || record.upstream == above.key)
        && derived_from_current_upstream(manifest, up)
}

/// The cluster that holds the outliers a clusterer left, kept apart; it is not
/// named by the model because its members share nothing but being far from the rest.
fn unclustered_cluster(mut chat_ids: Vec<String>) -> Cluster {
    chat_ids.sort();
    Cluster {
        id: Cluster::UNCLUSTERED_ID.to_string(),
        name: "Unclustered conversations".into(),
        description: format!(
            "{} conversations the clusterer left as outliers, near no cluster's core.",
            chat_ids.len()
        ),
        slug: Cluster::UNCLUSTERED_ID.to_string(),
        count: chat_ids.len(),
        chat_ids,
        parent_id: None,
        name_borrowed: false,
    }
}

/// Row indices grouped by label, and the noise (`None`) apart. Groups are ordered
/// by their first member, which keeps the output stable for a seed.
fn group_by_label(labels: &[Option<usize>], rows: usize) -> Result<(Vec<Vec<usize>>, Vec<usize>)> {
    if labels.len() != rows {
        return Err(Error::backend(
            "clusters",
            "clusterer returned the wrong number of labels",
        ));
    }
    let mut by_label: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut noise = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        match l {
            Some(l) => by_label.entry(*l).or_default().push(i),
            None => noise.push(i),
        }
    }
    let mut groups: Vec<Vec<usize>> = by_label.into_values().collect();
    groups.sort_by_key(|g| g[0]);
    Ok((groups, noise))
}

/// Places each noise row with the group whose normalised mean is nearest, so every
/// conversation is in exactly one named cluster; noise alone becomes one group.
/// Groups stay in the order of their first member.
fn assign_to_nearest_group(points: &Matrix, groups: &mut Vec<Vec<usize>>, noise: Vec<usize>) {
    if noise.is_empty() {
        return;
    }
    if groups.is_empty() {
        groups.push(noise);
        return;
    }
    let centroids: Vec<Vec<f32>> = groups.iter().map(|g| normalized_mean(points, g)).collect();
    for i in noise {
        let best = (0..groups.len())
            .max_by(|&a, &b| {
                dot(points.row(i), &centroids[a]).total_cmp(&dot(points.row(i), &centroids[b]))
            })
            .unwrap_or(0);
        groups[best].push(i);
    }
    groups.sort_by_key(|g| g.iter().copied().min().unwrap_or(usize::MAX));
}

/// Checks what a hierarchy builder returned: one forest with no orphans, every base
/// cluster kept, and every parent's conversations exactly its children's.
fn check_hierarchy(base: &[Cluster], all: &[Cluster]) -> Result<()> {
    let tree = Tree::new(all)?;
    let ids: HashSet<&str> = all.iter().map(|c| c.id.as_str()).collect();
    if let Some(lost) = base.iter().find(|b| !ids.contains(b.id.as_str())) {
        return Err(Error::backend(
            "hierarchy",
            format!("base cluster {} was dropped", lost.id),
        ));
    }
    for c in all {
        let mut children: Vec<&String> = tree.children(&c.id).flat_map(|k| &k.chat_ids).collect();
        if children.is_empty() {
            continue;
        }
        children.sort();
        let mut own: Vec<&String> = c.chat_ids.iter().collect();
        own.sort();
        if children != own || c.count != own.len() {
            return Err(Error::backend(
                "hierarchy",
                format!(
                    "cluster {} does not hold exactly its children's conversations",
                    c.id
                ),
            ));
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// Wraps a namer with the run's journal of names, so a resumed run (or one whose
/// clusters did not change) asks the LLM nothing it has answered before.
struct JournaledNamer<'a> {
    inner: &'a dyn ClusterNamer,
    journal: Journal<(String, String)>,
    /// Parent proposals (lists of names) and choices (indices).
    decisions: Journal<Value>,
}

impl JournaledNamer<'_> {
    fn key(&self, kind: &str, lists: &[&[String]]) -> String {
        let mut parts = vec![self.inner.id(), kind.to_string()];
        for list in lists {
            parts.push("\u{0}".into());
            parts.extend(list.iter().cloned());
        }
        fingerprint(&parts)
    }
}

impl ClusterNamer for JournaledNamer<'_> {
    fn id(&self) -> String {
        self.inner.id()
    }

    fn name(&self, request: &NamingRequest) -> std::result::Result<ClusterName, BoxError> {
        let mut parts = vec![self.inner.id(), request.is_parent.to_string()];
        parts.extend(request.members.iter().cloned());
        parts.push("\u{0}contrast".into());
        parts.extend(request.contrast.iter().cloned());
        parts.push("\u{0}taken".into());
        parts.extend(request.taken.iter().cloned());
        let key = fingerprint(&parts);
        if let Some((name, description)) = self.journal.get(&key) {
            return Ok(ClusterName { name, description });
        }
        let named = self.inner.name(request)?;
        self.journal
            .append(&key, &(named.name.clone(), named.description.clone()))?;
        Ok(named)
    }

    fn propose_parents(
        &self,
        request: &ProposalRequest,
    ) -> std::result::Result<Vec<String>, BoxError> {
        let count = [request.count.to_string()];
        let key = self.key("propose", &[&request.members, &request.contrast, &count]);
        if let Some(names) = self
            .decisions
            .get(&key)
            .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
        {
            return Ok(names);
        }
        let names = self.inner.propose_parents(request)?;
        self.decisions.append(&key, &Value::from(names.clone()))?;
        Ok(names)
    }

    fn choose_parent(&self, request: &ChoiceRequest) -> std::result::Result<usize, BoxError> {
        let key = self.key(
            "choose",
            &[std::slice::from_ref(&request.item), &request.options],
        );
        if let Some(index) = self.decisions.get(&key).and_then(|v| v.as_u64()) {
            return Ok(index as usize);
        }
        let index = self.inner.choose_parent(request)?;
        self.decisions.append(&key, &Value::from(index))?;
        Ok(index)
    }
}
