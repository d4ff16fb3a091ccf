use std::path::{Path, PathBuf};

use serde_json::json;

use super::search;
use super::*;
use crate::matrix::Matrix;
use crate::types::{Message, ProjectedCluster, Role};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/kura_reference")
}

fn conversation(id: &str, text: &str, model: &str) -> Conversation {
    Conversation {
        chat_id: id.into(),
        created_at: "2025-01-01T00:00:00".into(),
        messages: vec![Message {
            created_at: "2025-01-01T00:00:00".into(),
            role: Role::User,
            content: text.into(),
        }],
        metadata: [("model".to_string(), json!(model))].into_iter().collect(),
    }
}

fn summary(id: &str, text: &str, languages: &[&str]) -> ConversationSummary {
    ConversationSummary {
        summary: text.into(),
        request: None,
        topic: None,
        languages: Some(languages.iter().map(|l| l.to_string()).collect()),
        task: None,
        concerning_score: Some(1),
        user_frustration: Some(2),
        assistant_errors: Some(vec![]),
        chat_id: id.into(),
        metadata: Default::default(),
        embedding: None,
    }
}

fn cluster(id: &str, parent: Option<&str>, members: &[&str]) -> Cluster {
    Cluster {
        id: id.into(),
        name: format!("{id} name"),
        description: format!("about {id}"),
        slug: id.into(),
        chat_ids: members.iter().map(|m| m.to_string()).collect(),
        parent_id: parent.map(Into::into),
        count: members.len(),
        name_borrowed: false,
    }
}

/// Three conversations in two base clusters under one root, as our run writes them.
fn our_run(dir: &Path) {
    let conversations = vec![
        conversation("a", "fix my rust borrow checker error", "m1"),
        conversation("b", "rust lifetimes again", "m2"),
        conversation("c", "bake sourdough bread", "m1"),
    ];
    let summaries = vec![
        summary(
            "a",
            "The user debugs a Rust borrow error.",
            &["English", "rust"],
        ),
        summary("b", "The user asks about Rust lifetimes.", &["english"]),
        summary("c", "The user wants a bread recipe.", &["french"]),
    ];
    let clusters = vec![
        cluster("root", None, &["a", "b", "c"]),
        cluster("code", Some("root"), &["a", "b"]),
        cluster("food", Some("root"), &["c"]),
    ];
    let projected: Vec<ProjectedCluster> = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| ProjectedCluster::new(c, i as f64, 0.0, usize::from(i > 0)))
        .collect();
    let points = vec![
        ConversationPoint {
            chat_id: "a".into(),
            x: 1.0,
            y: 0.5,
            cluster_id: "code".into(),
        },
        ConversationPoint {
            chat_id: "b".into(),
            x: 1.2,
            y: 0.4,
            cluster_id: "code".into(),
        },
        ConversationPoint {
            chat_id: "c".into(),
            x: 2.0,
            y: -1.0,
            cluster_id: "food".into(),
        },
    ];
    store::write_jsonl(&dir.join(CONVERSATIONS), &conversations).unwrap();
    store::write_jsonl(&dir.join(SUMMARIES), &summaries).unwrap();
    store::write_jsonl(&dir.join(CLUSTERS), &clusters[1..]).unwrap();
    store::write_jsonl(&dir.join(META_CLUSTERS), &clusters).unwrap();
    store::write_jsonl(&dir.join(DIMENSIONALITY), &projected).unwrap();
    store::write_jsonl(&dir.join(CONVERSATION_COORDS), &points).unwrap();
    let embeddings = Matrix::new(3, 2, vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0]);
    store::write_npy(&dir.join(EMBEDDINGS), &embeddings).unwrap();
    store::write_json(
        &dir.join(RUN_JSON),
        &json!({"models": {"embedder": {"name": "all-minilm-l6-v2"}}}),
    )
    .unwrap();
}

#[test]
fn opens_our_run_with_points_paths_and_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    our_run(dir.path());
    let view = RunView::open(dir.path()).unwrap();
    assert_eq!(view.kind, RunKind::Kura);
    assert_eq!(view.embedder.as_deref(), Some("all-minilm-l6-v2"));
    let a = view.conversation_index("a").unwrap();
    assert_eq!(view.points[a].x, 1.0);
    let path: Vec<&str> = view
        .conversation_path(a)
        .iter()
        .map(|&i| view.clusters[i].cluster.id.as_str())
        .collect();
    assert_eq!(path, ["root", "code"]);
    let root = view.cluster_index("root").unwrap();
    assert_eq!(view.clusters[root].children.len(), 2);
    assert_eq!(
        view.clusters[view.clusters[root].children[0]].cluster.id, "code",
        "largest child first"
    );
    assert_eq!(view.embeddings.as_ref().unwrap().matrix.rows(), 3);
}

#[test]
fn breakdowns_count_facets_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    our_run(dir.path());
    let view = RunView::open(dir.path()).unwrap();
    let all = [0, 1, 2];
    let languages = view.breakdown("languages", &all, 10);
    assert_eq!(
        languages.values[0],
        ("english".to_string(), 2),
        "languages are case-folded"
    );
    let models = view.breakdown("metadata.model", &all, 1);
    assert_eq!(models.values, vec![("m1".to_string(), 2)]);
    assert_eq!(models.other, 1);
    assert!(view.fields().contains(&"metadata.model".to_string()));
    let (labels, per_point) = view.categories("metadata.model", 1);
    assert_eq!(labels, ["m1", "other"]);
    assert_eq!(per_point, [Some(0), Some(1), Some(0)]);
    assert!(view.has_value(2, "languages", "french"));
}

#[test]
fn keyword_search_needs_every_word_and_ranks_summary_matches_first() {
    let dir = tempfile::tempdir().unwrap();
    our_run(dir.path());
    let view = RunView::open(dir.path()).unwrap();
    let hits = search::keyword(&view, "Rust", 10, |_| true);
    let ids: Vec<&str> = hits
        .iter()
        .map(|h| view.conversations[h.index].chat_id.as_str())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(search::keyword(&view, "rust bread", 10, |_| true).is_empty());
    let only_m2 = search::keyword(&view, "rust", 10, |i| {
        view.has_value(i, "metadata.model", "m2")
    });
    assert_eq!(only_m2.len(), 1);
    let clusters = search::keyword_clusters(&view, "food", 10);
    assert_eq!(view.clusters[clusters[0].index].cluster.id, "food");
}

#[test]
fn semantic_search_ranks_by_cosine() {
    let dir = tempfile::tempdir().unwrap();
    our_run(dir.path());
    let view = RunView::open(dir.path()).unwrap();
    let embeddings = view.embeddings.as_ref().unwrap();
    let hits = search::semantic(embeddings, &[0.0, 2.0], 2, |_| true);
    assert_eq!(view.conversations[hits[0].index].chat_id, "c");
    assert!((hits[0].score - 1.0).abs() < 1e-6);
    let clusters = search::semantic_clusters(&view, embeddings, &[1.0, 0.0], 3);
    assert_eq!(view.clusters[clusters[0].index].cluster.id, "code");
}

#[test]
fn a_point_for_an_unknown_conversation_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    our_run(dir.path());
    let bad = [ConversationPoint {
        chat_id: "zz".into(),
        x: 0.0,
        y: 0.0,
        cluster_id: "code".into(),
    }];
    store::write_jsonl(&dir.path().join(CONVERSATION_COORDS), &bad).unwrap();
    let err = RunView::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("conversation_coords.jsonl") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn opens_python_kura_checkpoint_with_stable_jittered_points() {
    let view = RunView::open(&reference()).unwrap();
    assert_eq!(view.kind, RunKind::PythonKura);
    assert_eq!(view.conversations.len(), 1000);
    assert!(view.embeddings.is_none());
    assert!(view.summaries.iter().all(Option::is_some));
    assert!(
        view.points.iter().all(|p| p.base.is_some()),
        "every conversation is in a base cluster"
    );
    let again = RunView::open(&reference()).unwrap();
    assert_eq!(
        view.points, again.points,
        "the map is the same on every open"
    );
    // Each point lies nearer its own base cluster than the map's whole extent.
    let distinct: std::collections::HashSet<(u32, u32)> = view
        .points
        .iter()
        .map(|p| (p.x.to_bits(), p.y.to_bits()))
        .collect();
    assert!(
        distinct.len() > 990,
        "jitter separates points: {}",
        distinct.len()
    );
    for (i, p) in view.points.iter().enumerate() {
        let base = &view.clusters[p.base.unwrap()];
        assert!(base.children.is_empty());
        assert!(base.members.contains(&i));
        assert!(((p.x as f64 - base.x).powi(2) + (p.y as f64 - base.y).powi(2)).sqrt() < 2.0);
    }
    let roots: usize = view.roots().map(|r| view.clusters[r].members.len()).sum();
    assert_eq!(roots, 1000);
    let hits = search::keyword(&view, "pregnancy", 5, |_| true);
    assert!(!hits.is_empty());
    let top = view.top_cluster(hits[0].index).unwrap();
    assert!(view.clusters[top]
        .cluster
        .name
        .to_lowercase()
        .contains("pregnancy"));
}
