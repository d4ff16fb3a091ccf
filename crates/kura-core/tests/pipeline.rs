//! The pipeline's logic driven by scripted backends: resume, cache reuse and stale
//! cache invalidation. (The real models run the same stages in the end-to-end tests.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kura_core::pipeline::{NoProgress, Run, CLUSTERS, DIMENSIONALITY, META_CLUSTERS, SUMMARIES};
use kura_core::{
    store, BoxError, Cluster, ClusterName, ClusterNamer, Clusterer, Conversation,
    ConversationSummary, Embedder, HierarchyBuilder, Matrix, Message, NamingRequest, Outliers,
    ProjectedCluster, Reducer, Role, Summarizer,
};

/// Summarises by copying the first user message; counts calls; fails on request.
struct ScriptedSummarizer {
    version: &'static str,
    calls: AtomicUsize,
    fail_on: Option<&'static str>,
}

impl ScriptedSummarizer {
    fn new(version: &'static str) -> Self {
        ScriptedSummarizer {
            version,
            calls: AtomicUsize::new(0),
            fail_on: None,
        }
    }
}

impl Summarizer for ScriptedSummarizer {
    fn id(&self) -> String {
        format!("scripted-{}", self.version)
    }
    fn summarize(
        &self,
        conversations: &[Conversation],
    ) -> Vec<Result<ConversationSummary, BoxError>> {
        conversations
            .iter()
            .map(|c| {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if Some(c.chat_id.as_str()) == self.fail_on {
                    return Err("scripted failure".into());
                }
                Ok(ConversationSummary {
                    summary: format!("{} {}", self.version, c.messages[0].content),
                    request: None,
                    topic: None,
                    languages: Some(vec!["english".into()]),
                    task: None,
                    concerning_score: Some(1),
                    user_frustration: Some(1),
                    assistant_errors: Some(vec![]),
                    chat_id: String::new(),
                    metadata: Default::default(),
                    embedding: None,
                })
            })
            .collect()
    }
}

/// Embeds by topic word: texts mentioning the same topic land on the same axis.
struct TopicEmbedder;
const TOPICS: [&str; 3] = ["rust", "cooking", "travel"];

impl Embedder for TopicEmbedder {
    fn id(&self) -> String {
        "topic-embedder".into()
    }
    fn dim(&self) -> usize {
        TOPICS.len()
    }
    fn embed(&self, texts: &[&str]) -> Result<Matrix, BoxError> {
        let rows: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| {
                TOPICS
                    .iter()
                    .map(|w| if t.contains(w) { 1.0 } else { 0.0 })
                    .collect()
            })
            .collect();
        Ok(Matrix::from_rows(&rows).unwrap())
    }
}

/// Clusters by the axis of the largest value; a point on no axis is noise.
struct ArgmaxClusterer {
    param: usize,
}

impl Clusterer for ArgmaxClusterer {
    fn id(&self) -> String {
        format!("argmax-{}", self.param)
    }
    fn cluster(&self, points: &Matrix, _seed: u64) -> Result<Vec<Option<usize>>, BoxError> {
        Ok(points
            .iter_rows()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .filter(|(_, v)| **v > 0.0)
                    .map(|(i, _)| i)
            })
            .collect())
    }
}

struct CountingNamer {
    calls: AtomicUsize,
}

impl CountingNamer {
    fn new() -> Self {
        CountingNamer {
            calls: AtomicUsize::new(0),
        }
    }
}

impl ClusterNamer for CountingNamer {
    fn id(&self) -> String {
        "counting-namer".into()
    }
    fn name(&self, request: &NamingRequest) -> Result<ClusterName, BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let topic = TOPICS
            .iter()
            .find(|t| request.members.iter().any(|m| m.contains(*t)))
            .unwrap_or(&"misc");
        Ok(ClusterName {
            name: format!("Discuss {topic}"),
            description: format!("About {topic}."),
        })
    }
}

/// One root above all base clusters.
struct OneRoot;

impl HierarchyBuilder for OneRoot {
    fn id(&self) -> String {
        "one-root".into()
    }
    fn build(
        &self,
        mut base: Vec<Cluster>,
        _: &Matrix,
        namer: &dyn ClusterNamer,
        _: &dyn Embedder,
        _: u64,
    ) -> Result<Vec<Cluster>, BoxError> {
        let name = namer.name(&NamingRequest {
            members: base.iter().map(|c| c.name.clone()).collect(),
            contrast: vec![],
            is_parent: true,
            taken: vec![],
        })?;
        let chat_ids: Vec<String> = base.iter().flat_map(|c| c.chat_ids.clone()).collect();
        for c in &mut base {
            c.parent_id = Some("root".into());
        }
        base.push(Cluster {
            id: "root".into(),
            name: name.name,
            description: name.description,
            slug: "root".into(),
            count: chat_ids.len(),
            chat_ids,
            parent_id: None,
            name_borrowed: false,
        });
        Ok(base)
    }
}

struct FirstTwo;

impl Reducer for FirstTwo {
    fn id(&self) -> String {
        "first-two".into()
    }
    fn reduce(&self, points: &Matrix, _: u64) -> Result<Matrix, BoxError> {
        let rows: Vec<[f32; 2]> = points.iter_rows().map(|r| [r[0], r[1]]).collect();
        Ok(Matrix::from_rows(&rows).unwrap())
    }
}

fn conversation(id: &str, text: &str) -> Conversation {
    Conversation {
        chat_id: id.into(),
        created_at: "2026-01-01T00:00:00".into(),
        messages: vec![
            Message {
                created_at: "2026-01-01T00:00:00".into(),
                role: Role::User,
                content: text.into(),
            },
            Message {
                created_at: "2026-01-01T00:00:01".into(),
                role: Role::Assistant,
                content: "ok".into(),
            },
        ],
        metadata: Default::default(),
    }
}

fn corpus(n: usize) -> Vec<Conversation> {
    (0..n)
        .map(|i| {
            conversation(
                &format!("c{i}"),
                &format!("question {i} about {}", TOPICS[i % 3]),
            )
        })
        .collect()
}

/// A run in `dir` of `conversations`, summarised and embedded by the scripted
/// backends: where the tests of clustering start.
fn summarized_and_embedded(dir: &std::path::Path, conversations: &[Conversation]) -> Run {
    let run = Run::open(dir, 7, Arc::new(NoProgress)).unwrap();
    run.set_conversations(&[], conversations, &[]).unwrap();
    run.summarize(&ScriptedSummarizer::new("v1")).unwrap();
    run.embed(&TopicEmbedder).unwrap();
    run
}

fn full_run(
    dir: &std::path::Path,
    convs: &[Conversation],
    s: &ScriptedSummarizer,
    namer: &CountingNamer,
    cluster_param: usize,
) -> Vec<bool> {
    let run = Run::open(dir, 7, Arc::new(NoProgress)).unwrap();
    vec![
        run.set_conversations(&[], convs, &[]).unwrap().reused,
        run.summarize(s).unwrap().reused,
        run.embed(&TopicEmbedder).unwrap().reused,
        run.cluster(
            &ArgmaxClusterer {
                param: cluster_param,
            },
            namer,
            Outliers::Keep,
        )
        .unwrap()
        .reused,
        run.build_hierarchy(&OneRoot, namer, &TopicEmbedder)
            .unwrap()
            .reused,
        run.project(&FirstTwo).unwrap().reused,
    ]
}

#[test]
fn a_complete_run_writes_kura_files_with_every_conversation_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = ScriptedSummarizer::new("v1");
    let namer = CountingNamer::new();
    full_run(dir.path(), &corpus(9), &s, &namer, 1);

    let summaries: Vec<ConversationSummary> =
        store::read_jsonl(&dir.path().join(SUMMARIES)).unwrap();
    assert_eq!(summaries.len(), 9);
    assert_eq!(summaries[0].metadata["conversation_turns"], 2);
    let base: Vec<Cluster> = store::read_jsonl(&dir.path().join(CLUSTERS)).unwrap();
    assert_eq!(base.len(), 3);
    let mut seen: Vec<String> = base.iter().flat_map(|c| c.chat_ids.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        9,
        "every conversation is in exactly one base cluster"
    );
    assert!(base
        .iter()
        .any(|c| c.name == "Discuss cooking" && c.count == 3));
    let all: Vec<Cluster> = store::read_jsonl(&dir.path().join(META_CLUSTERS)).unwrap();
    assert_eq!(all.iter().filter(|c| c.parent_id.is_none()).count(), 1);
    let projected: Vec<ProjectedCluster> =
        store::read_jsonl(&dir.path().join(DIMENSIONALITY)).unwrap();
    let levels: HashMap<&str, usize> = projected.iter().map(|p| (p.id.as_str(), p.level)).collect();
    assert_eq!(levels["root"], 0);
    assert!(base.iter().all(|c| levels[c.id.as_str()] == 1));
    let embeddings = store::read_npy(&dir.path().join("embeddings.npy")).unwrap();
    assert_eq!((embeddings.rows(), embeddings.cols()), (9, 3));
}

#[test]
fn a_second_run_reuses_everything_and_asks_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let s = ScriptedSummarizer::new("v1");
    let namer = CountingNamer::new();
    assert!(full_run(dir.path(), &corpus(9), &s, &namer, 1)
        .iter()
        .skip(1)
        .all(|r| !r));
    let (summaries, names) = (
        s.calls.load(Ordering::SeqCst),
        namer.calls.load(Ordering::SeqCst),
    );
    assert!(full_run(dir.path(), &corpus(9), &s, &namer, 1)
        .iter()
        .all(|r| *r));
    assert_eq!(s.calls.load(Ordering::SeqCst), summaries);
    assert_eq!(namer.calls.load(Ordering::SeqCst), names);
}

#[test]
fn a_changed_parameter_recomputes_that_stage_and_after_but_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let s = ScriptedSummarizer::new("v1");
    let namer = CountingNamer::new();
    full_run(dir.path(), &corpus(9), &s, &namer, 1);
    let reused = full_run(dir.path(), &corpus(9), &s, &namer, 2);
    assert_eq!(reused, vec![true, true, true, false, false, false]);
}

/// A stage whose file is gone is computed again under the same key, and may come
/// out otherwise (a name the namer failed to give is asked again): the stages
/// after it follow rather than keep what they made from the old file.
#[test]
fn a_stage_recomputed_under_the_same_key_recomputes_the_stages_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = ScriptedSummarizer::new("v1");
    let namer = CountingNamer::new();
    full_run(dir.path(), &corpus(9), &s, &namer, 1);
    std::fs::remove_file(dir.path().join(CLUSTERS)).unwrap();
    let reused = full_run(dir.path(), &corpus(9), &s, &namer, 1);
    assert_eq!(reused, vec![true, true, true, false, false, false]);
    assert!(full_run(dir.path(), &corpus(9), &s, &namer, 1)
        .iter()
        .all(|r| *r));
}

#[test]
fn stages_after_a_recomputed_one_are_out_of_date_until_they_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let namer = CountingNamer::new();
    full_run(
        dir.path(),
        &corpus(9),
        &ScriptedSummarizer::new("v1"),
        &namer,
        1,
    );
    let run = Run::open(dir.path(), 7, Arc::new(NoProgress)).unwrap();
    assert!(["summaries", "clusters", "hierarchy", "map"]
        .iter()
        .all(|s| run.is_current(s)));

    run.cluster(&ArgmaxClusterer { param: 2 }, &namer, Outliers::Keep)
        .unwrap();
    assert!(run.is_current("clusters"));
    assert!(!run.is_current("hierarchy"), "built from the old clusters");
    assert!(!run.is_current("map"), "two stages behind");

    run.build_hierarchy(&OneRoot, &namer, &TopicEmbedder)
        .unwrap();
    assert!(run.is_current("hierarchy"));
    assert!(!run.is_current("map"));
    run.project(&FirstTwo).unwrap();
    assert!(run.is_current("map"));
}

#[test]
fn a_changed_summariser_recomputes_summaries_instead_of_reusing_stale_ones() {
    let dir = tempfile::tempdir().unwrap();
    let namer = CountingNamer::new();
    full_run(
        dir.path(),
        &corpus(6),
        &ScriptedSummarizer::new("v1"),
        &namer,
        1,
    );
    let v2 = ScriptedSummarizer::new("v2");
    let reused = full_run(dir.path(), &corpus(6), &v2, &namer, 1);
    assert_eq!(reused, vec![true, false, false, false, false, false]);
    assert_eq!(v2.calls.load(Ordering::SeqCst), 6);
    let summaries: Vec<ConversationSummary> =
        store::read_jsonl(&dir.path().join(SUMMARIES)).unwrap();
    assert!(summaries.iter().all(|s| s.summary.starts_with("v2 ")));
}

/// Clio's privacy rule holds whatever summariser wrote the facets: the scripted one
/// copies the message, address and path included, and the pipeline keeps neither.
#[test]
fn every_summarisers_facets_lose_addresses_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let text = "mail jane.doe@example.com the file E:\\Jane Doe\\Reports\\q3.docx today";
    let run = Run::open(dir.path(), 7, Arc::new(NoProgress)).unwrap();
    run.set_conversations(&[], &[conversation("c0", text)], &[])
        .unwrap();
    run.summarize(&ScriptedSummarizer::new("v1")).unwrap();
    let summaries: Vec<ConversationSummary> =
        store::read_jsonl(&dir.path().join(SUMMARIES)).unwrap();
    assert_eq!(
        summaries[0].summary,
        "v1 mail an email address the file a file path today"
    );
}

#[test]
fn a_grown_input_summarises_only_the_new_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let namer = CountingNamer::new();
    let s = ScriptedSummarizer::new("v1");
    full_run(dir.path(), &corpus(6), &s, &namer, 1);
    let s2 = ScriptedSummarizer::new("v1");
    full_run(dir.path(), &corpus(9), &s2, &namer, 1);
    assert_eq!(s2.calls.load(Ordering::SeqCst), 3);
    let summaries: Vec<ConversationSummary> =
        store::read_jsonl(&dir.path().join(SUMMARIES)).unwrap();
    assert_eq!(summaries.len(), 9);
}

#[test]
fn a_failed_summary_is_recorded_and_retried_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::open(dir.path(), 7, Arc::new(NoProgress)).unwrap();
    run.set_conversations(&[], &corpus(4), &[]).unwrap();
    let mut s = ScriptedSummarizer::new("v1");
    s.fail_on = Some("c2");
    let outcome = run.summarize(&s).unwrap();
    assert_eq!((outcome.count, outcome.failed), (3, 1));
    let failed: Vec<serde_json::Value> =
        store::read_jsonl(&dir.path().join("failed.jsonl")).unwrap();
    assert_eq!(failed[0]["chat_id"], "c2");
    assert!(failed[0]["reason"]
        .as_str()
        .unwrap()
        .contains("scripted failure"));

    let retry = ScriptedSummarizer::new("v1");
    let outcome = run.summarize(&retry).unwrap();
    assert_eq!(
        (outcome.count, outcome.failed, outcome.reused),
        (4, 0, false)
    );
    assert_eq!(
        retry.calls.load(Ordering::SeqCst),
        1,
        "only the failed conversation is retried"
    );
    assert!(!dir.path().join("failed.jsonl").exists());
}

/// Answers through `summarize_each` in reverse order, as a batching backend may, and
/// drops the conversation `lose` without an answer.
struct StreamingSummarizer {
    inner: ScriptedSummarizer,
    lose: Option<&'static str>,
}

impl Summarizer for StreamingSummarizer {
    fn id(&self) -> String {
        self.inner.id()
    }
    fn summarize(
        &self,
        conversations: &[Conversation],
    ) -> Vec<Result<ConversationSummary, BoxError>> {
        self.inner.summarize(conversations)
    }
    fn summarize_each(
        &self,
        conversations: &[Conversation],
        done: &mut dyn FnMut(usize, Result<ConversationSummary, BoxError>),
    ) {
        let results = self.inner.summarize(conversations);
        for (i, result) in results.into_iter().enumerate().rev() {
            if Some(conversations[i].chat_id.as_str()) != self.lose {
                done(i, result);
            }
        }
    }
}

#[test]
fn results_streamed_out_of_order_are_kept_and_a_missing_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::open(dir.path(), 7, Arc::new(NoProgress)).unwrap();
    run.set_conversations(&[], &corpus(5), &[]).unwrap();
    let losing = StreamingSummarizer {
        inner: ScriptedSummarizer::new("v1"),
        lose: Some("c3"),
    };
    let error = run.summarize(&losing).unwrap_err().to_string();
    assert!(error.contains("no result for 1 of 5"), "{error}");
    assert!(!dir.path().join(SUMMARIES).exists());

    // The four answers were journaled as they came: only c3 is asked again.
    let whole = StreamingSummarizer {
        inner: ScriptedSummarizer::new("v1"),
        lose: None,
    };
    let outcome = run.summarize(&whole).unwrap();
    assert_eq!((outcome.count, outcome.failed), (5, 0));
    assert_eq!(whole.inner.calls.load(Ordering::SeqCst), 1);
    let summaries: Vec<ConversationSummary> =
        store::read_jsonl(&dir.path().join(SUMMARIES)).unwrap();
    let ids: Vec<&str> = summaries.iter().map(|s| s.chat_id.as_str()).collect();
    assert_eq!(
        ids,
        ["c0", "c1", "c2", "c3", "c4"],
        "rows keep the input order"
    );
}

#[test]
fn a_stage_without_its_inputs_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::open(dir.path(), 7, Arc::new(NoProgress)).unwrap();
    let err = run.embed(&TopicEmbedder).unwrap_err().to_string();
    assert!(err.contains("needs the summaries stage"), "{err}");
}

#[test]
fn an_empty_input_is_an_error_not_an_empty_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::open(dir.path(), 7, Arc::new(NoProgress)).unwrap();
    assert!(run.set_conversations(&[], &[], &[]).is_err());
}

#[test]
fn a_single_conversation_makes_a_one_cluster_tree() {
    let dir = tempfile::tempdir().unwrap();
    let namer = CountingNamer::new();
    full_run(
        dir.path(),
        &corpus(1),
        &ScriptedSummarizer::new("v1"),
        &namer,
        1,
    );
    let all: Vec<Cluster> = store::read_jsonl(&dir.path().join(META_CLUSTERS)).unwrap();
    assert_eq!(all.iter().filter(|c| c.parent_id.is_none()).count(), 1);
    assert!(all.iter().all(|c| c.count == 1));
}

/// A namer that never produces a valid name, as a weak model sometimes does.
struct FailingNamer;

impl ClusterNamer for FailingNamer {
    fn id(&self) -> String {
        "failing-namer".into()
    }
    fn name(&self, _: &NamingRequest) -> Result<ClusterName, BoxError> {
        Err("no valid cluster name after 3 attempts".into())
    }
}

#[test]
fn a_failing_namer_names_clusters_after_a_central_summary_instead_of_failing_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = summarized_and_embedded(dir.path(), &corpus(9));
    run.cluster(&ArgmaxClusterer { param: 1 }, &FailingNamer, Outliers::Keep)
        .unwrap();

    let base: Vec<Cluster> = store::read_jsonl(&dir.path().join(CLUSTERS)).unwrap();
    assert_eq!(base.len(), 3);
    for cluster in &base {
        let topic = TOPICS
            .iter()
            .find(|t| cluster.name.contains(*t))
            .unwrap_or_else(|| panic!("fallback name {:?} names no topic", cluster.name));
        assert!(cluster.description.contains("namer failed"));
        assert!(cluster.description.contains(topic));
        assert!(cluster.name_borrowed, "{:?} is not marked", cluster.name);
    }
}

/// The scripted summaries with the request facet in its conventional wording,
/// `.1` after the conversation's first message.
struct RequestSummarizer(ScriptedSummarizer, &'static str);

impl Summarizer for RequestSummarizer {
    fn id(&self) -> String {
        format!("{}-with-requests", self.0.id())
    }
    fn summarize(
        &self,
        conversations: &[Conversation],
    ) -> Vec<Result<ConversationSummary, BoxError>> {
        let summaries = self.0.summarize(conversations);
        summaries
            .into_iter()
            .zip(conversations)
            .map(|(summary, c)| {
                let mut summary = summary?;
                summary.request = Some(format!(
                    "The user's overall request for the assistant is to answer a {}{}.",
                    c.messages[0].content, self.1
                ));
                Ok(summary)
            })
            .collect()
    }
}

/// The base clusters of a run whose summaries have requests (`tail` after each
/// conversation's first message) and whose namer fails.
fn clusters_named_after_requests(tail: &'static str) -> Vec<Cluster> {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::open(dir.path(), 7, Arc::new(NoProgress)).unwrap();
    run.set_conversations(&[], &corpus(9), &[]).unwrap();
    run.summarize(&RequestSummarizer(ScriptedSummarizer::new("v1"), tail))
        .unwrap();
    run.embed(&TopicEmbedder).unwrap();
    run.cluster(&ArgmaxClusterer { param: 1 }, &FailingNamer, Outliers::Keep)
        .unwrap();
    let base: Vec<Cluster> = store::read_jsonl(&dir.path().join(CLUSTERS)).unwrap();
    assert_eq!(base.len(), 3);
    base
}

#[test]
fn a_failing_namer_names_clusters_after_a_central_request_as_an_imperative() {
    for cluster in &clusters_named_after_requests("") {
        assert!(
            cluster.name.starts_with("Answer a question ") && !cluster.name.ends_with('.'),
            "{:?}",
            cluster.name
        );
        assert!(
            TOPICS.iter().any(|t| cluster.name.ends_with(t)),
            "{:?}",
            cluster.name
        );
        assert!(cluster.description.contains("namer failed"));
    }
}

/// A long request is cut as a namer's long name is, before a phrase that narrows
/// it, rather than at ten words with "…".
#[test]
fn a_failing_namer_cuts_a_long_central_request_before_a_narrowing_phrase() {
    let tail = " for a family dinner with friends and neighbours on a sunny afternoon";
    for cluster in &clusters_named_after_requests(tail) {
        let topic = TOPICS.iter().find(|t| cluster.name.contains(*t)).unwrap();
        assert!(
            cluster.name.starts_with("Answer a question ")
                && cluster
                    .name
                    .ends_with(&format!("{topic} for a family dinner")),
            "{:?}",
            cluster.name
        );
        assert!(cluster.name_borrowed);
    }
}

/// A namer that gives every cluster one name, and records the names it was told
/// were taken.
struct OneNameNamer {
    taken_seen: std::sync::Mutex<Vec<Vec<String>>>,
}

impl ClusterNamer for OneNameNamer {
    fn id(&self) -> String {
        "one-name".into()
    }
    fn name(&self, request: &NamingRequest) -> Result<ClusterName, BoxError> {
        self.taken_seen.lock().unwrap().push(request.taken.clone());
        Ok(ClusterName {
            name: "Ask questions".into(),
            description: "Users asked questions.".into(),
        })
    }
}

#[test]
fn clusters_of_one_level_never_share_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = summarized_and_embedded(dir.path(), &corpus(9));
    let namer = OneNameNamer {
        taken_seen: Default::default(),
    };
    run.cluster(&ArgmaxClusterer { param: 1 }, &namer, Outliers::Keep)
        .unwrap();

    let base: Vec<Cluster> = store::read_jsonl(&dir.path().join(CLUSTERS)).unwrap();
    let names: Vec<&str> = base.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["Ask questions", "Ask questions (2)", "Ask questions (3)"]
    );
    // Each request named the clusters before it, so a namer can avoid them.
    let seen = namer.taken_seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for (i, taken) in seen.iter().enumerate() {
        assert_eq!(taken.as_slice(), &names[..i]);
    }
}

#[test]
fn outliers_are_kept_as_one_unnamed_root_or_placed_with_their_nearest_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut convs = corpus(9);
    convs.push(conversation("odd1", "something unrelated"));
    convs.push(conversation("odd2", "another stray question"));
    let run = summarized_and_embedded(dir.path(), &convs);
    let namer = CountingNamer::new();

    run.cluster(&ArgmaxClusterer { param: 1 }, &namer, Outliers::Keep)
        .unwrap();
    let base: Vec<Cluster> = store::read_jsonl(&dir.path().join(CLUSTERS)).unwrap();
    assert_eq!(base.len(), 4);
    let kept: Vec<&Cluster> = base.iter().filter(|c| c.is_unclustered()).collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].chat_ids, ["odd1", "odd2"]);
    assert_eq!(kept[0].count, 2);
    assert_eq!(
        namer.calls.load(Ordering::SeqCst),
        3,
        "the outliers' group is not named by the model"
    );

    run.build_hierarchy(&OneRoot, &namer, &TopicEmbedder)
        .unwrap();
    let all: Vec<Cluster> = store::read_jsonl(&dir.path().join(META_CLUSTERS)).unwrap();
    let roots: Vec<&Cluster> = all.iter().filter(|c| c.parent_id.is_none()).collect();
    assert_eq!(roots.len(), 2, "{roots:?}");
    let root = roots.iter().find(|c| c.id == "root").unwrap();
    assert_eq!(root.count, 9, "the builder never sees the outliers");
    assert!(roots.iter().any(|c| c.is_unclustered()));
    run.project(&FirstTwo).unwrap();

    let outcome = run
        .cluster(&ArgmaxClusterer { param: 1 }, &namer, Outliers::Assign)
        .unwrap();
    assert!(!outcome.reused, "a changed policy recomputes the clusters");
    let base: Vec<Cluster> = store::read_jsonl(&dir.path().join(CLUSTERS)).unwrap();
    assert_eq!(base.len(), 3);
    assert!(base.iter().all(|c| !c.is_unclustered()));
    assert_eq!(base.iter().map(|c| c.count).sum::<usize>(), 11);
}
