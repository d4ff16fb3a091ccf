//! Loader tests on the real export samples in the shared data directory and on small
//! synthetic fixtures for what the samples do not contain (regenerated branches,
//! broken records).

use std::io::Write;
use std::path::{Path, PathBuf};

use kura_core::loaders::{
    conversation_fingerprint, detect_format, load_file, load_files, read_conversations_jsonl,
    write_conversations_jsonl, FieldMapping, Format, LoadOptions, Loaded,
};
use kura_core::{Conversation, Error, Role};
use serde_json::Value;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn shared(relative: &str) -> PathBuf {
    Path::new(SHARED).join(relative)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn load(path: &Path) -> Loaded {
    load_file(path, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{} should load: {e}", path.display()))
}

fn load_skipping(path: &Path) -> Loaded {
    let options = LoadOptions {
        skip_invalid: true,
        ..LoadOptions::default()
    };
    load_file(path, &options).unwrap_or_else(|e| panic!("{} should load: {e}", path.display()))
}

/// The (path, location, message) of an input error; panics on any other outcome.
fn input_error(result: kura_core::Result<Loaded>) -> (PathBuf, String, String) {
    match result {
        Err(Error::Input {
            path,
            location,
            message,
        }) => (path, location, message),
        Err(other) => panic!("expected an input error, got {other}"),
        Ok(loaded) => panic!(
            "expected an input error, loaded {} conversations",
            loaded.conversations.len()
        ),
    }
}

fn roles(conversation: &Conversation) -> String {
    conversation
        .messages
        .iter()
        .map(|m| match m.role {
            Role::User => 'u',
            Role::Assistant => 'a',
        })
        .collect()
}

fn by_id<'a>(loaded: &'a Loaded, chat_id: &str) -> &'a Conversation {
    loaded
        .conversations
        .iter()
        .find(|c| c.chat_id == chat_id)
        .unwrap_or_else(|| panic!("no conversation {chat_id}"))
}

// ---------------------------------------------------------------- real samples

#[test]
fn detects_the_format_of_every_real_sample() {
    let cases = [
        ("exports/chatgpt_export_sanitized.json", Format::ChatGpt),
        ("exports/claude_export_2026_demo.json", Format::Claude),
        ("exports/claude_export_2024_snippet.json", Format::Claude),
        ("kura_reference/conversations.jsonl", Format::Kura),
        ("conversations/mtbench_1000.jsonl", Format::Kura),
        (
            "conversations/arena_wildchat_oasst_3404.jsonl.gz",
            Format::Kura,
        ),
        ("labeled/banking77.jsonl", Format::Generic),
    ];
    for (file, format) in cases {
        assert_eq!(detect_format(&shared(file)).unwrap(), format, "{file}");
    }
    assert_eq!(
        detect_format(&fixture("sharegpt_rows.jsonl")).unwrap(),
        Format::Generic
    );
    assert_eq!(
        detect_format(&fixture("single_conversation.json")).unwrap(),
        Format::Kura
    );
    assert_eq!(detect_format(&fixture("checkpoint")).unwrap(), Format::Kura);
}

#[test]
fn chatgpt_export_follows_the_current_branch_and_drops_hidden_nodes() {
    let loaded = load(&shared("exports/chatgpt_export_sanitized.json"));
    assert_eq!(loaded.conversations.len(), 3);
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    // Visible user/assistant nodes on the current_node path of each sample.
    let expected = [
        (
            "683cda50-6d38-8009-ad96-01bbdadff1c7",
            "Sample Conversation 1",
            "uaa",
        ),
        (
            "6836550b-8a9c-8009-ab41-abc4f9df9531",
            "Sample Conversation 2",
            "uaauauauauauauauauauauaua",
        ),
        (
            "682f304b-1444-8009-9a72-69f7b5e8b533",
            "Sample Conversation 3",
            "uaauauaua",
        ),
    ];
    for (id, title, turn_roles) in expected {
        let conversation = by_id(&loaded, id);
        assert_eq!(conversation.metadata["title"], title);
        assert_eq!(conversation.metadata["source"], "chatgpt");
        assert_eq!(roles(conversation), turn_roles, "{id}");
        for message in &conversation.messages {
            assert!(
                !message.content.contains("system message"),
                "{}",
                message.content
            );
            assert!(
                message.created_at.starts_with("2025-05-")
                    || message.created_at.starts_with("2025-06-")
            );
            assert!(message.created_at.ends_with('Z'));
        }
    }
    // create_time 1748818512.682483 of the first conversation.
    assert_eq!(
        by_id(&loaded, "683cda50-6d38-8009-ad96-01bbdadff1c7").created_at,
        "2025-06-01T22:55:12.682483Z"
    );
}

#[test]
fn chatgpt_regenerated_branch_is_excluded() {
    let loaded = load(&fixture("chatgpt_branches.json"));
    let conversation = by_id(&loaded, "conv-branching");
    let texts: Vec<&str> = conversation
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "What is the capital of Australia?",
            "The capital of Australia is Canberra.",
            "Show me a photo of it.\n[Image]",
            "Here is a description of Parliament House in Canberra.\nIt sits on Capital Hill.",
        ]
    );
    assert_eq!(roles(conversation), "uaua");
    assert_eq!(
        conversation.messages[0].created_at,
        "2023-11-14T22:13:20.500000Z"
    );
    // The last message has no create_time: it takes the conversation's.
    assert_eq!(
        conversation.messages[3].created_at,
        "2023-11-14T22:13:20.250000Z"
    );
    assert_eq!(conversation.metadata["model"], "gpt-4o");
}

#[test]
fn claude_current_export_orders_by_parent_and_keeps_the_latest_branch() {
    let path = shared("exports/claude_export_2026_demo.json");
    let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let loaded = load(&path);
    assert_eq!(
        loaded.conversations.len() + loaded.skipped.len(),
        raw.as_array().unwrap().len()
    );
    assert!(loaded
        .skipped
        .iter()
        .all(|s| s.reason == "empty conversation"));

    for conversation in &loaded.conversations {
        assert_eq!(conversation.metadata["source"], "claude");
        assert_eq!(
            conversation.messages[0].role,
            Role::User,
            "{}",
            conversation.chat_id
        );
        // Following the parent links gives non-decreasing times in this export.
        let times: Vec<&str> = conversation
            .messages
            .iter()
            .map(|m| m.created_at.as_str())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert!(conversation
            .messages
            .iter()
            .all(|m| !m.content.trim().is_empty()));
    }

    // Conversation …1000 has a regenerated reply (…6006, a sibling of …6005); the
    // branch continues from …6005, so …6006 must not appear.
    let record = raw
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["uuid"] == "10000000-0000-4000-8000-000000001000")
        .unwrap();
    let text_of = |uuid: &str| -> String {
        let message = record["chat_messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["uuid"].as_str().unwrap().ends_with(uuid))
            .unwrap();
        message["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "text")
            .map(|b| b["text"].as_str().unwrap().trim().to_string())
            .next()
            .unwrap()
    };
    let conversation = by_id(&loaded, "10000000-0000-4000-8000-000000001000");
    let joined: String = conversation
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert!(joined.contains(&text_of("6005")));
    assert!(!joined.contains(&text_of("6006")));
    assert_eq!(conversation.metadata["title"], record["name"]);

    // No thinking text survives anywhere.
    for c in raw.as_array().unwrap() {
        for m in c["chat_messages"].as_array().unwrap() {
            for block in m["content"].as_array().unwrap() {
                if block["type"] == "thinking" {
                    let thinking = block["thinking"].as_str().unwrap();
                    if thinking.chars().count() > 10 {
                        let owner = by_id(&loaded, c["uuid"].as_str().unwrap());
                        assert!(owner
                            .messages
                            .iter()
                            .all(|msg| !msg.content.contains(thinking)));
                    }
                }
            }
        }
    }
}

#[test]
fn claude_blocks_become_text_notes_and_branches_are_cut() {
    let loaded = load(&fixture("claude_linked.json"));
    assert_eq!(loaded.conversations.len(), 1);
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].reason, "empty conversation");
    assert_eq!(loaded.skipped[0].location, "record 1");

    let conversation = &loaded.conversations[0];
    assert_eq!(conversation.chat_id, "claude-linked");
    assert_eq!(conversation.metadata["title"], "Quarterly report review");
    // Array order is m3, m1, m2, m4-old, m4, m5; parent links give m1 m2 m3 m4 (m5 is
    // thinking only, so it has no text; m4-old is a replaced reply).
    assert_eq!(roles(conversation), "uaua");
    let texts: Vec<&str> = conversation
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(
        texts[0],
        "Please review the attached report.\n\n[Attachment: report.txt]\nQ3 revenue: North +4%, South +11%.\n\n[File: chart.png]"
    );
    assert!(texts[1].starts_with("[Tool use: read_file: {\"path\":\"report.txt\"}]"));
    assert!(texts[1].contains("[Tool result: Q3 revenue: North +4%, South +11%.]"));
    assert!(texts[1].ends_with("The report shows revenue growth in both regions."));
    assert_eq!(texts[3], "South grew fastest, at 11%.");
    assert!(texts
        .iter()
        .all(|t| !t.contains("PRIVATE-REASONING") && !t.contains("ABANDONED-BRANCH")));
}

#[test]
fn claude_older_export_uses_text_and_sender() {
    let loaded = load(&shared("exports/claude_export_2024_snippet.json"));
    assert_eq!(loaded.conversations.len(), 2);
    for conversation in &loaded.conversations {
        assert_eq!(roles(conversation), "ua");
        assert_eq!(conversation.metadata["source"], "claude");
        for message in &conversation.messages {
            assert_eq!(message.content, message.content.trim());
            assert!(message.created_at.starts_with("2024-09-03T"));
        }
    }
    let first = by_id(&loaded, "0835511b-3064-44fe-a32f-1c8ff1df1086");
    assert_eq!(first.metadata["title"], "Accessing Conversation Logs");
    assert!(first.messages[0]
        .content
        .starts_with("Hi, I am interested in exporting"));
}

#[test]
fn kura_reference_round_trips_field_for_field() {
    let path = shared("kura_reference/conversations.jsonl");
    let original = std::fs::read_to_string(&path).unwrap();
    let loaded = load(&path);
    assert_eq!(loaded.conversations.len(), 1000);
    assert!(loaded.skipped.is_empty());

    let mut written = Vec::new();
    write_conversations_jsonl(&mut written, &loaded.conversations).unwrap();
    let written = String::from_utf8(written).unwrap();
    let original_lines: Vec<&str> = original.lines().collect();
    let written_lines: Vec<&str> = written.lines().collect();
    assert_eq!(original_lines.len(), written_lines.len());
    for (line, (ours, theirs)) in written_lines.iter().zip(&original_lines).enumerate() {
        let ours: Value = serde_json::from_str(ours).unwrap();
        let theirs: Value = serde_json::from_str(theirs).unwrap();
        assert_eq!(ours, theirs, "line {}", line + 1);
        assert_same_key_order(&ours, &theirs, &format!("line {}", line + 1));
    }
    // Python Kura writes compact JSON too, so even the bytes agree.
    assert_eq!(written.trim_end(), original.trim_end());
}

fn assert_same_key_order(ours: &Value, theirs: &Value, at: &str) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let a_keys: Vec<&String> = a.keys().collect();
            let b_keys: Vec<&String> = b.keys().collect();
            assert_eq!(a_keys, b_keys, "{at}");
            for key in a.keys() {
                assert_same_key_order(&a[key], &b[key], &format!("{at}.{key}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same_key_order(x, y, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

#[test]
fn mtbench_conversations_alternate_user_and_assistant() {
    let loaded = load(&shared("conversations/mtbench_1000.jsonl"));
    assert_eq!(loaded.conversations.len(), 1000);
    assert!(loaded.conversations.iter().all(|c| roles(c) == "uaua"));
}

#[test]
fn gzip_input_is_read_transparently() {
    let loaded = load(&shared("conversations/arena_wildchat_oasst_3404.jsonl.gz"));
    assert_eq!(loaded.conversations.len(), 3404);
    assert!(loaded.skipped.is_empty());
    let from = |source: &str| {
        loaded
            .conversations
            .iter()
            .filter(|c| c.metadata.get("source").and_then(Value::as_str) == Some(source))
            .count()
    };
    assert_eq!(from("chatbot_arena"), 2680);
    assert_eq!(from("wildchat"), 588);
    assert_eq!(from("oasst"), 50);
    // Every turn is kept, with its role (10,771 user and 11,168 assistant turns).
    let count = |role: Role| {
        loaded
            .conversations
            .iter()
            .flat_map(|c| &c.messages)
            .filter(|m| m.role == role)
            .count()
    };
    assert_eq!(
        (count(Role::User), count(Role::Assistant)),
        (10_771, 11_168)
    );
}

#[test]
fn text_column_rows_become_single_user_messages() {
    let path = shared("labeled/banking77.jsonl");
    let loaded = load(&path);
    assert_eq!(loaded.conversations.len(), 13_083);
    let first_line: Value = serde_json::from_str(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let first = &loaded.conversations[0];
    assert_eq!(first.chat_id, "banking77:1");
    assert_eq!(first.messages.len(), 1);
    assert_eq!(first.messages[0].role, Role::User);
    assert_eq!(first.messages[0].content, first_line["text"]);
    assert_eq!(first.metadata["label"], first_line["label"]);
    assert!(!first.metadata.contains_key("text"));
    assert_eq!(first.messages[0].created_at, "1970-01-01T00:00:00");

    // An explicit mapping gives the same text and takes ids from a column.
    let options = LoadOptions {
        format: Format::Generic,
        mapping: FieldMapping {
            text: Some("text".into()),
            id: Some("label".into()),
            ..FieldMapping::default()
        },
        skip_invalid: true,
    };
    let by_label = load_file(&path, &options).unwrap();
    // Labels repeat, and different rows under one id are conflicting duplicates.
    assert_eq!(by_label.conversations.len(), 77);
    assert!(by_label
        .skipped
        .iter()
        .all(|s| s.reason.contains("already used")));
}

// ---------------------------------------------------------------- generic rows

#[test]
fn sharegpt_rows_map_from_and_value_and_skip_system_turns() {
    let options = LoadOptions {
        mapping: FieldMapping {
            id: Some("id".into()),
            ..FieldMapping::default()
        },
        ..LoadOptions::default()
    };
    let loaded = load_file(&fixture("sharegpt_rows.jsonl"), &options).unwrap();
    assert_eq!(loaded.conversations.len(), 2);
    let first = by_id(&loaded, "sg-1");
    assert_eq!(roles(first), "ua");
    assert_eq!(first.messages[0].content, "Write a haiku about rain.");
    assert_eq!(first.metadata["lang"], "en");
    assert!(!first.metadata.contains_key("conversations"));
    assert_eq!(roles(by_id(&loaded, "sg-2")), "uaua");
}

#[test]
fn lmsys_rows_take_ids_timestamps_and_content_parts() {
    let options = LoadOptions {
        mapping: FieldMapping {
            id: Some("conversation_id".into()),
            created_at: Some("tstamp".into()),
            ..FieldMapping::default()
        },
        ..LoadOptions::default()
    };
    let loaded = load_file(&fixture("lmsys_rows.jsonl"), &options).unwrap();
    let first = by_id(&loaded, "lm-1");
    assert_eq!(first.created_at, "2023-11-14T22:13:20Z");
    assert_eq!(first.messages[1].created_at, "2023-11-14T22:13:20Z");
    assert_eq!(first.metadata["model"], "vicuna-13b");
    // A nested metadata object is merged flat.
    assert_eq!(first.metadata["language"], "English");
    let second = by_id(&loaded, "lm-2");
    assert_eq!(second.created_at, "2024-02-03T04:05:06");
    assert_eq!(second.messages[0].content, "Part one.\nPart two.");
    assert_eq!(roles(second), "ua");
    // Without an id mapping, ids are "<file stem>:<line>".
    let default_ids = load(&fixture("lmsys_rows.jsonl"));
    let ids: Vec<&str> = default_ids
        .conversations
        .iter()
        .map(|c| c.chat_id.as_str())
        .collect();
    assert_eq!(ids, ["lmsys_rows:1", "lmsys_rows:2"]);
}

// ---------------------------------------------------------------- other layouts

#[test]
fn kura_arrays_single_objects_and_checkpoints_load() {
    let array = load(&fixture("kura_array.json"));
    let ids: Vec<&str> = array
        .conversations
        .iter()
        .map(|c| c.chat_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let single = load(&fixture("single_conversation.json"));
    assert_eq!(single.conversations.len(), 1);
    assert_eq!(single.conversations[0], array.conversations[1]);
    let checkpoint = read_conversations_jsonl(&fixture("checkpoint")).unwrap();
    assert_eq!(checkpoint, vec![array.conversations[0].clone()]);
}

#[test]
fn several_files_load_together_with_auto_detection() {
    let paths = [
        shared("exports/claude_export_2024_snippet.json"),
        shared("exports/chatgpt_export_sanitized.json"),
        fixture("kura_array.json"),
    ];
    let loaded = load_files(&paths, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.conversations.len(), 2 + 3 + 2);
    let sources: Vec<Option<&str>> = loaded
        .conversations
        .iter()
        .map(|c| c.metadata.get("source").and_then(Value::as_str))
        .collect();
    assert_eq!(
        &sources[..5],
        [
            Some("claude"),
            Some("claude"),
            Some("chatgpt"),
            Some("chatgpt"),
            Some("chatgpt")
        ]
    );
}

#[test]
fn fingerprints_follow_ids_and_text_but_not_timestamps() {
    let loaded = load(&fixture("kura_array.json"));
    let a = &loaded.conversations[0];
    let fingerprint = conversation_fingerprint(a);
    assert_eq!(fingerprint.len(), 64);
    assert!(fingerprint.chars().all(|c| c.is_ascii_hexdigit()));

    let mut restamped = a.clone();
    restamped.created_at = "2030-01-01T00:00:00".into();
    restamped.messages[0].created_at = "2030-01-01T00:00:00".into();
    restamped.metadata.insert("note".into(), "x".into());
    assert_eq!(conversation_fingerprint(&restamped), fingerprint);

    let mut edited = a.clone();
    edited.messages[1].content.push('!');
    assert_ne!(conversation_fingerprint(&edited), fingerprint);
    let mut renamed = a.clone();
    renamed.chat_id.push('2');
    assert_ne!(conversation_fingerprint(&renamed), fingerprint);
    let mut swapped = a.clone();
    swapped.messages[0].role = Role::Assistant;
    assert_ne!(conversation_fingerprint(&swapped), fingerprint);
    // Moving text across a message boundary changes the fingerprint.
    let mut moved = a.clone();
    moved.messages[0].content.push_str("hi");
    moved.messages[1].content = moved.messages[1].content.replacen("hi", "", 1);
    assert_ne!(conversation_fingerprint(&moved), fingerprint);
}

// ---------------------------------------------------------------- bad input

#[test]
fn malformed_json_line_names_the_line() {
    let path = fixture("bad_json_line.jsonl");
    let (error_path, location, message) = input_error(load_file(&path, &LoadOptions::default()));
    assert_eq!(error_path, path);
    assert_eq!(location, "line 3");
    assert!(message.starts_with("invalid JSON"), "{message}");

    let loaded = load_skipping(&path);
    let ids: Vec<&str> = loaded
        .conversations
        .iter()
        .map(|c| c.chat_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b", "d"]);
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].location, "line 3");
    assert_eq!(loaded.skipped[0].file, path.display().to_string());
    assert!(loaded.skipped[0].reason.starts_with("invalid JSON"));
}

#[test]
fn unknown_role_names_the_field_and_value() {
    let (_, location, message) = input_error(load_file(
        &fixture("bad_role.jsonl"),
        &LoadOptions::default(),
    ));
    assert_eq!(location, "line 2");
    assert_eq!(
        message,
        "field \"messages[2].role\": expected \"user\" or \"assistant\", found \"robot\""
    );
    let loaded = load_skipping(&fixture("bad_role.jsonl"));
    assert_eq!(loaded.conversations.len(), 1);
    assert_eq!(loaded.skipped[0].reason, message);
    assert!(loaded.skipped[0]
        .record
        .as_deref()
        .unwrap()
        .contains("bad-role"));

    let (_, location, message) = input_error(load_file(
        &fixture("generic_bad_role.jsonl"),
        &LoadOptions::default(),
    ));
    assert_eq!(location, "line 2");
    assert_eq!(
        message,
        "field \"conversation[1].role\": expected \"user\" or \"assistant\", found \"robot\""
    );
}

/// A file with `chat_id`s is detected as Kura's strict format; OpenAI-style logs
/// with ids hold system turns and content parts it refuses. The error says how
/// to read them, and that way reads them.
#[test]
fn openai_style_logs_with_ids_are_pointed_to_the_generic_reader() {
    let path = fixture("openai_with_ids.jsonl");
    let (_, location, message) = input_error(load_file(&path, &LoadOptions::default()));
    assert_eq!(location, "line 1");
    assert!(
        message.starts_with(
            "field \"messages[0].role\": expected \"user\" or \"assistant\", found \"system\""
        ) && message.contains("`--format generic`"),
        "{message}"
    );
    let loaded = load_skipping(&path);
    assert_eq!(loaded.skipped.len(), 2);
    assert!(
        loaded.skipped[1]
            .reason
            .starts_with("field \"messages[0].content\": expected a string")
            && loaded.skipped[1].reason.contains("`--format generic`"),
        "{}",
        loaded.skipped[1].reason
    );

    let generic = LoadOptions {
        format: Format::Generic,
        ..LoadOptions::default()
    };
    let loaded = load_file(&path, &generic).expect("the generic reader takes them");
    let turns: Vec<(Role, &str)> = loaded
        .conversations
        .iter()
        .flat_map(|c| c.messages.iter().map(|m| (m.role, m.content.as_str())))
        .collect();
    assert_eq!(
        turns,
        [
            (Role::User, "How long should bread dough rise?"),
            (Role::Assistant, "About an hour, until it doubles."),
            (Role::User, "What is in this picture?"),
            (Role::Assistant, "A cat on a sofa."),
        ]
    );
}

#[test]
fn missing_field_and_wrong_type_are_named() {
    let (_, location, message) = input_error(load_file(
        &fixture("missing_field.jsonl"),
        &LoadOptions::default(),
    ));
    // Line 3 is blank; the broken record is on line 4.
    assert_eq!(location, "line 4");
    assert_eq!(message, "field \"messages\" is missing");

    let (_, location, message) = input_error(load_file(
        &fixture("wrong_type.jsonl"),
        &LoadOptions::default(),
    ));
    assert_eq!(location, "line 2");
    assert_eq!(
        message,
        "field \"messages[0].content\": expected a string, found a number"
    );
}

#[test]
fn bad_record_in_a_json_array_names_its_index() {
    let path = fixture("claude_bad_sender.json");
    let (_, location, message) = input_error(load_file(&path, &LoadOptions::default()));
    assert_eq!(location, "record 1");
    assert_eq!(
        message,
        "field \"chat_messages[1].sender\": expected \"human\" or \"assistant\", found \"robot\""
    );
    let loaded = load_skipping(&path);
    assert_eq!(loaded.conversations.len(), 1);
    assert_eq!(loaded.skipped[0].location, "record 1");
}

#[test]
fn syntax_error_in_a_json_array_gives_record_and_byte_offset() {
    let path = fixture("truncated_array.json");
    let bytes = std::fs::read(&path).unwrap();
    for options in [
        LoadOptions::default(),
        LoadOptions {
            skip_invalid: true,
            ..LoadOptions::default()
        },
    ] {
        // Record boundaries after a syntax error cannot be trusted: fatal even when skipping.
        let (_, location, message) = input_error(load_file(&path, &options));
        // The offset is that of the last byte read: the end of the file here.
        assert_eq!(
            location,
            format!("record 1, byte {}", bytes.len() - 1),
            "{message}"
        );
        assert!(message.contains("EOF while parsing"), "{message}");
    }
}

#[test]
fn invalid_utf8_is_reported_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("latin1.jsonl");
    let mut file = std::fs::File::create(&lines).unwrap();
    writeln!(
        file,
        r#"{{"chat_id":"a","created_at":"t","messages":[{{"role":"user","content":"ok"}}]}}"#
    )
    .unwrap();
    file.write_all(
        b"{\"chat_id\":\"b\",\"messages\":[{\"role\":\"user\",\"content\":\"caf\xe9\"}]}\n",
    )
    .unwrap();
    drop(file);
    let (_, location, message) = input_error(load_file(&lines, &LoadOptions::default()));
    assert_eq!(location, "line 2");
    assert!(
        message.starts_with("invalid UTF-8 at byte 56 of the line"),
        "{message}"
    );
    assert_eq!(load_skipping(&lines).conversations.len(), 1);

    let array = dir.path().join("latin1.json");
    std::fs::write(
        &array,
        b"[{\"chat_id\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"caf\xe9\"}]}]",
    )
    .unwrap();
    let (_, location, message) = input_error(load_file(&array, &LoadOptions::default()));
    assert!(location.starts_with("record 0, byte "), "{location}");
    assert!(
        message.starts_with("invalid UTF-8 at byte 57:"),
        "{message}"
    );
}

#[test]
fn empty_and_missing_files_are_errors_even_when_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n  \n").unwrap();
    let empty_array = dir.path().join("empty.json");
    std::fs::write(&empty_array, "[ ]").unwrap();
    let missing = dir.path().join("missing.jsonl");
    let skip = LoadOptions {
        skip_invalid: true,
        ..LoadOptions::default()
    };
    for options in [LoadOptions::default(), skip] {
        let (path, location, message) = input_error(load_file(&empty, &options));
        assert_eq!((path, location.as_str()), (empty.clone(), "file"));
        assert!(message.contains("empty"), "{message}");
        let (_, _, message) = input_error(load_file(&empty_array, &options));
        assert!(message.contains("no records"), "{message}");
        let (path, location, message) = input_error(load_file(&missing, &options));
        assert_eq!((path, location.as_str()), (missing.clone(), "file"));
        assert!(message.contains("cannot open"), "{message}");
    }
    let (path, location, _) = input_error(load_file(dir.path(), &LoadOptions::default()));
    assert_eq!(
        (path.as_path(), location.as_str()),
        (dir.path(), "directory")
    );
    assert!(matches!(detect_format(&missing), Err(Error::Input { .. })));
}

#[test]
fn empty_conversations_and_exact_duplicates_are_skipped_and_recorded() {
    let path = fixture("duplicates.jsonl");
    let loaded = load(&path);
    let ids: Vec<&str> = loaded
        .conversations
        .iter()
        .map(|c| c.chat_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let reasons: Vec<(&str, &str)> = loaded
        .skipped
        .iter()
        .map(|s| (s.location.as_str(), s.reason.as_str()))
        .collect();
    let first_a = format!("duplicate of {}: line 1", path.display());
    assert_eq!(
        reasons,
        [
            ("line 4", "empty conversation"),
            ("line 5", "empty conversation"),
            ("line 3", first_a.as_str()),
        ]
    );
}

#[test]
fn conflicting_duplicates_name_both_places() {
    let path = fixture("conflict.jsonl");
    let (error_path, location, message) = input_error(load_file(&path, &LoadOptions::default()));
    assert_eq!(error_path, path);
    assert_eq!(location, "line 3");
    assert!(
        message.contains(&format!("{}: line 1", path.display())),
        "{message}"
    );
    assert!(message.contains("\"a\""), "{message}");

    let loaded = load_skipping(&path);
    let ids: Vec<&str> = loaded
        .conversations
        .iter()
        .map(|c| c.chat_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "c"]);
    assert_eq!(loaded.conversations[0].messages[1].content, "hi there");
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].location, "line 3");

    // Across files: the same conversation in two files is a duplicate, not an error.
    let both = load_files(
        &[
            fixture("kura_array.json"),
            fixture("single_conversation.json"),
        ],
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(both.conversations.len(), 2);
    assert_eq!(both.skipped.len(), 1);
    assert!(both.skipped[0].reason.contains("kura_array.json: record 1"));
}

#[test]
fn explicit_format_mismatch_is_a_clear_error() {
    let options = LoadOptions {
        format: Format::ChatGpt,
        ..LoadOptions::default()
    };
    let (_, location, message) = input_error(load_file(&fixture("kura_array.json"), &options));
    assert_eq!(location, "record 0");
    assert_eq!(message, "field \"conversation_id\" is missing");
}

#[test]
fn format_names_parse() {
    for format in [
        Format::Auto,
        Format::Kura,
        Format::Claude,
        Format::ChatGpt,
        Format::Generic,
    ] {
        assert_eq!(format.as_str().parse::<Format>().unwrap(), format);
    }
    assert!(matches!("csv".parse::<Format>(), Err(Error::Invalid(_))));
}
