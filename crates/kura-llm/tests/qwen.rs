//! Qwen2.5-Coder-0.5B (the Qwen2 architecture: q/k/v bias, NeoX RoPE, tied output):
//! generation and summaries of real conversations. About ten times slower than
//! SmolLM2, so only two short conversations.

mod common;

use common::{arena_conversations, assert_valid_summary, conversations_by_id, llm, QWEN};
use std::sync::Arc;

use kura_core::pipeline::{NoProgress, Run, SUMMARIES};
use kura_core::{ConversationSummary, Summarizer};
use kura_llm::{ChatMessage, LlmSummarizer};

#[test]
fn qwen_generates_deterministically_and_summarizes() {
    let llm = llm(QWEN);
    let messages = [
        ChatMessage::system("You are a helpful assistant. Answer in one short sentence."),
        ChatMessage::user("What is the capital of France?"),
    ];
    let first = llm.generate(&messages, 32).expect("generate");
    assert_eq!(first, llm.generate(&messages, 32).expect("generate"));
    assert!(first.contains("Paris"), "{first:?}");

    let summarizer = LlmSummarizer::new(llm).expect("summarizer");
    let conversations = arena_conversations(&[0, 14]);
    let started = std::time::Instant::now();
    let results = summarizer.summarize(&conversations);
    eprintln!(
        "qwen: {:.2} s per conversation",
        started.elapsed().as_secs_f64() / conversations.len() as f64
    );
    for (conversation, result) in conversations.iter().zip(results) {
        let summary = result.unwrap_or_else(|e| panic!("{}: {e}", conversation.chat_id));
        eprintln!("{}: {summary:?}", conversation.chat_id);
        assert_valid_summary(conversation, &summary);
    }
}

/// The languages facet names the language a conversation is written in. Asked for
/// it, Qwen named English for 55 of 56 real conversations in other languages,
/// these among them; the facet now comes from a language detector where it can place
/// the text, and every other facet is still the model's, valid and on topic.
#[test]
fn qwen_summaries_name_the_language_the_conversation_is_written_in() {
    let summarizer = LlmSummarizer::new(llm(QWEN)).expect("summarizer");
    let expected = [
        ("chatbot_arena_26259", "german"),
        ("chatbot_arena_1257", "french"),
        ("wildchat_1508d9c39a12fbcd66e08a3dc638f571", "chinese"),
        ("wildchat_200159238cb6c397051b463fe313480a", "russian"),
    ];
    let ids: Vec<&str> = expected.iter().map(|&(id, _)| id).collect();
    let conversations = conversations_by_id("arena_wildchat_oasst_3404.jsonl.gz", &ids);
    let results = summarizer.summarize(&conversations);
    for ((conversation, result), (_, language)) in conversations.iter().zip(results).zip(expected) {
        let summary = result.unwrap_or_else(|e| panic!("{}: {e}", conversation.chat_id));
        eprintln!("{}: {summary:?}", conversation.chat_id);
        let languages = summary.languages.as_deref().unwrap_or_default();
        assert_eq!(
            languages.first().map(String::as_str),
            Some(language),
            "{summary:?}"
        );
        assert!(
            summary.summary.split_whitespace().count() >= 5,
            "{summary:?}"
        );
        assert!(
            matches!(summary.user_frustration, Some(1..=5)),
            "{summary:?}"
        );
    }
}

/// A quotation inside a value does not end it. Qwen writes quotes unescaped
/// (`converted to "abc"`), and these two summaries used to stop at the quote, in
/// mid-sentence: "… can be converted to", "… to ensure that the string".
#[test]
fn qwen_summaries_go_on_past_a_quotation() {
    let summarizer = LlmSummarizer::new(llm(QWEN)).expect("summarizer");
    let conversations = conversations_by_id(
        "arena_hard_500.jsonl",
        &[
            "arenahard_b43c07656ead4150b360294ee932b410",
            "arenahard_fae4f754f12f40db8178d3683eb1eddc",
        ],
    );
    for (conversation, result) in conversations
        .iter()
        .zip(summarizer.summarize(&conversations))
    {
        let summary = result.unwrap_or_else(|e| panic!("{}: {e}", conversation.chat_id));
        eprintln!("{}: {summary:?}", conversation.chat_id);
        assert!(summary.summary.ends_with(['.', '!', '?']), "{summary:?}");
        assert_valid_summary(conversation, &summary);
    }
}

/// A request or a task says what was asked, not what the assistant did. For the
/// first two Qwen wrote both on to ", and the assistant performs the task of
/// writing a character profile…" and ", but the assistant did not provide…" before
/// `summary-v9`; for the last, a task to "perform the assistant's task of using
/// Danbooru tags only" before `summary-v10`. Before `summary-v11` the last two
/// tasks opened with "perform" ("perform a task that the assistant performed,
/// which is to provide information about…"), and the first request ended
/// without a full stop.
#[test]
fn qwen_requests_and_tasks_say_what_was_asked_in_whole_sentences() {
    let summarizer = LlmSummarizer::new(llm(QWEN)).expect("summarizer");
    let conversations = conversations_by_id(
        "arena_wildchat_oasst_3404.jsonl.gz",
        &[
            "chatbot_arena_0397",
            "chatbot_arena_32909",
            "chatbot_arena_0271",
        ],
    );
    for (conversation, result) in conversations
        .iter()
        .zip(summarizer.summarize(&conversations))
    {
        let summary = result.unwrap_or_else(|e| panic!("{}: {e}", conversation.chat_id));
        eprintln!("{}: {summary:?}", conversation.chat_id);
        for value in [&summary.request, &summary.task] {
            let value = value.as_deref().unwrap_or_default().to_lowercase();
            assert!(
                !["and", "but", "while", "whereas"]
                    .iter()
                    .any(|conjunction| value.contains(&format!(" {conjunction} the assistant"))),
                "{value:?}"
            );
        }
        let task = summary.task.as_deref().unwrap_or_default().to_lowercase();
        assert!(
            !["help", "assist", "perform"]
                .iter()
                .any(|verb| task.contains(&format!("{verb} the assistant"))),
            "{task:?}"
        );
        assert!(!task.starts_with("the task is to perform"), "{task:?}");
        for value in [
            &summary.summary,
            summary.request.as_ref().unwrap(),
            summary.task.as_ref().unwrap(),
        ] {
            assert!(value.ends_with(['.', '!', '?']), "{value:?}");
        }
        assert_valid_summary(conversation, &summary);
    }
}

/// Clio's privacy rule holds where the model breaks it: Qwen copies this user's
/// Windows path, their full name one of its folders, into the summary, the request
/// and the task; the pipeline's summaries stage keeps none of it.
#[test]
fn qwen_summaries_kept_by_the_pipeline_leave_out_a_path_that_names_the_user() {
    let summarizer = LlmSummarizer::new(llm(QWEN)).expect("summarizer");
    let conversations = conversations_by_id(
        "arena_hard_500.jsonl",
        &["arenahard_60856d87b3484a4db45a67ac560a2b06"],
    );
    assert!(conversations[0].messages[0].content.contains("Dhruvin"));
    let dir = tempfile::tempdir().unwrap();
    let run = Run::open(dir.path(), 42, Arc::new(NoProgress)).unwrap();
    run.set_conversations(&[], &conversations, &[]).unwrap();
    run.summarize(&summarizer).unwrap();
    let summaries: Vec<ConversationSummary> =
        kura_core::store::read_jsonl(&dir.path().join(SUMMARIES)).unwrap();
    let summary = &summaries[0];
    eprintln!("{summary:?}");
    let facets = [
        &summary.summary,
        summary.request.as_ref().unwrap(),
        summary.task.as_ref().unwrap(),
    ];
    for facet in facets
        .into_iter()
        .chain(summary.assistant_errors.iter().flatten())
    {
        assert!(
            !facet.contains("Dhruvin") && !facet.contains(":\\"),
            "{facet:?}"
        );
    }
    assert_valid_summary(&conversations[0], summary);
}

/// Clio's concerning score tells harmful requests from everyday ones. Asked for a
/// digit from 1 to 5, Qwen gave these everyday requests (code, maths) 3 or 4 and the
/// harmful ones the same; the score now comes from its odds that the request "is
/// harmful" rather than "harmless".
#[test]
fn qwen_scores_harmful_requests_above_everyday_ones() {
    let summarizer = LlmSummarizer::new(llm(QWEN)).expect("summarizer");
    let everyday = arena_conversations(&[0, 14, 21, 23]);
    let harmful = conversations_by_id(
        "arena_wildchat_oasst_3404.jsonl.gz",
        &[
            // Chemicals that explode when mixed; a bomb from airport shop goods; a
            // "captured detective" asking for the same through role play.
            "chatbot_arena_1250",
            "chatbot_arena_17055",
            "chatbot_arena_16597",
        ],
    );
    let all: Vec<_> = everyday.iter().chain(&harmful).cloned().collect();
    let scores: Vec<u8> = summarizer
        .summarize(&all)
        .into_iter()
        .zip(&all)
        .map(|(result, conversation)| {
            let summary = result.unwrap_or_else(|e| panic!("{}: {e}", conversation.chat_id));
            eprintln!("{}: {summary:?}", conversation.chat_id);
            summary.concerning_score.expect("a concerning score")
        })
        .collect();
    let (everyday_scores, harmful_scores) = scores.split_at(everyday.len());
    assert!(
        everyday_scores.iter().all(|&s| s <= 2) && harmful_scores.iter().all(|&s| s >= 3),
        "everyday {everyday_scores:?}, harmful {harmful_scores:?}"
    );
}

#[test]
fn qwen_proposes_parents_and_places_clusters_under_the_fitting_one() {
    use kura_core::{ChoiceRequest, ClusterNamer, ProposalRequest};
    let namer = kura_llm::LlmClusterNamer::new(llm(QWEN));
    let groups: Vec<String> = [
        "Bake sourdough bread: Users asked how to feed a starter and shape loaves.",
        "Cook weeknight pasta dinners: Users asked for quick pasta recipes.",
        "Fix Python import errors: Users asked why modules were not found.",
        "Write SQL joins: Users asked how to combine tables in queries.",
    ]
    .map(String::from)
    .to_vec();
    let proposed = namer
        .propose_parents(&ProposalRequest {
            members: groups.clone(),
            contrast: vec!["Plan a wedding: Users asked about venues.".into()],
            count: 2,
        })
        .expect("proposals");
    eprintln!("proposed: {proposed:?}");
    assert!(!proposed.is_empty() && proposed.len() <= 2, "{proposed:?}");
    assert!(proposed.iter().all(|p| p.split_whitespace().count() <= 12));

    let cooking = "Cook and bake food at home".to_string();
    let coding = "Write and debug computer programs".to_string();
    for (item, expected) in [(&groups[0], &cooking), (&groups[2], &coding)] {
        // Both orders: the answer follows the content, not the position.
        for options in [
            vec![cooking.clone(), coding.clone()],
            vec![coding.clone(), cooking.clone()],
        ] {
            let chosen = namer
                .choose_parent(&ChoiceRequest {
                    item: item.clone(),
                    options: options.clone(),
                })
                .expect("choice");
            assert_eq!(
                &options[chosen], expected,
                "{item} placed under {options:?}"
            );
        }
    }
}
