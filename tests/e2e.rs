//! End-to-end tests: the real `kura` binary, real files, real local models.
//!
//! The binary is the one `cargo test --release --workspace` builds beside this
//! test. Runs use SmolLM2 (the fast model) and a handful of conversations so the
//! whole suite stays within CI's budget; the default model runs the same code.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{kura, read_jsonl, repo, run_err, run_ok, shared, FAST};

/// Runs of the real models are CPU-bound and use every core: two at once only
/// slow each other down, so the tests that run them take turns.
static MODEL_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    MODEL_RUNS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Checks what every complete run directory must hold.
fn assert_complete_run(dir: &Path) {
    let conversations = read_jsonl(&dir.join("conversations.jsonl"));
    let summaries = read_jsonl(&dir.join("summaries.jsonl"));
    let ids: HashSet<&str> = conversations
        .iter()
        .map(|c| c["chat_id"].as_str().unwrap())
        .collect();
    let summarised: HashSet<&str> = summaries
        .iter()
        .map(|s| s["chat_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, summarised, "every conversation has a summary");
    for s in &summaries {
        assert!(!s["summary"].as_str().unwrap().trim().is_empty());
        for facet in ["concerning_score", "user_frustration"] {
            let v = s[facet].as_u64().unwrap();
            assert!((1..=5).contains(&v), "{facet} = {v}");
        }
    }
    let keys: Vec<&String> = summaries[0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "summary",
            "request",
            "topic",
            "languages",
            "task",
            "concerning_score",
            "user_frustration",
            "assistant_errors",
            "chat_id",
            "metadata",
            "embedding"
        ],
        "Kura's field order"
    );

    let base = read_jsonl(&dir.join("clusters.jsonl"));
    let mut in_base: Vec<&str> = base
        .iter()
        .flat_map(|c| c["chat_ids"].as_array().unwrap())
        .map(|v| v.as_str().unwrap())
        .collect();
    in_base.sort();
    let before = in_base.len();
    in_base.dedup();
    assert_eq!(
        before,
        in_base.len(),
        "no conversation is in two base clusters"
    );
    assert_eq!(
        in_base.into_iter().collect::<HashSet<_>>(),
        ids,
        "every conversation is in a base cluster"
    );

    let all = read_jsonl(&dir.join("meta_clusters.jsonl"));
    let by_id: HashMap<&str, &Value> = all.iter().map(|c| (c["id"].as_str().unwrap(), c)).collect();
    for c in &all {
        if let Some(p) = c["parent_id"].as_str() {
            assert!(by_id.contains_key(p), "orphan cluster {}", c["id"]);
        }
    }
    let roots: Vec<&Value> = all.iter().filter(|c| c["parent_id"].is_null()).collect();
    let covered: usize = roots
        .iter()
        .map(|r| r["count"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(
        covered,
        ids.len(),
        "the roots cover every conversation once"
    );

    let projected = read_jsonl(&dir.join("dimensionality.jsonl"));
    assert_eq!(projected.len(), all.len());
    assert!(projected
        .iter()
        .all(|p| p["x_coord"].as_f64().unwrap().is_finite() && p["level"].is_u64()));
    let level_of: HashMap<&str, u64> = projected
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["level"].as_u64().unwrap()))
        .collect();
    for c in &all {
        let level = level_of[c["id"].as_str().unwrap()];
        match c["parent_id"].as_str() {
            Some(parent) => assert_eq!(level, level_of[parent] + 1, "level of {}", c["id"]),
            None => assert_eq!(level, 0, "a root is at level 0: {}", c["id"]),
        }
        let children: Vec<&Value> = all.iter().filter(|k| k["parent_id"] == c["id"]).collect();
        if !children.is_empty() {
            let below: u64 = children.iter().map(|k| k["count"].as_u64().unwrap()).sum();
            assert_eq!(
                below,
                c["count"].as_u64().unwrap(),
                "counts add up under {}",
                c["id"]
            );
        }
    }
    // Clusters of one level never share a name (the real namer, as the run gave them).
    let mut names_by_level: HashMap<u64, Vec<&str>> = HashMap::new();
    for c in &all {
        let level = level_of[c["id"].as_str().unwrap()];
        let name = c["name"].as_str().unwrap();
        let names = names_by_level.entry(level).or_default();
        assert!(
            !names
                .iter()
                .any(|other| kura_core::text::same_name(other, name)),
            "two clusters of level {level} are named {name:?}: {names:?}"
        );
        names.push(name);
    }
    let points = read_jsonl(&dir.join("conversation_coords.jsonl"));
    assert_eq!(points.len(), ids.len());

    let npy = std::fs::read(dir.join("embeddings.npy")).unwrap();
    assert_eq!(&npy[..6], b"\x93NUMPY");
    let header = String::from_utf8_lossy(&npy[10..128]);
    assert!(
        header.contains(&format!("'shape': ({}, 384)", ids.len())),
        "{header}"
    );

    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    for stage in [
        "conversations",
        "summaries",
        "embeddings",
        "clusters",
        "hierarchy",
        "map",
    ] {
        assert!(
            run["stages"][stage]["complete"].as_bool().unwrap(),
            "stage {stage} complete"
        );
    }
    assert!(run["models"]["llm"]["fingerprint"].is_string());
}

#[test]
fn the_example_runs_end_to_end_with_real_models_and_prints_a_tree() {
    let _turn = one_at_a_time();
    let out = tempfile::tempdir().unwrap();
    // Four base clusters above a top level of two: one hierarchy round, in which the
    // real model proposes the parents (Clio's path, not the k-means fallback).
    let the_run = || {
        let mut command = kura();
        command
            .args(["run", "examples/conversations.jsonl", "--limit", "5"])
            .args(["--clusters", "4", "--out"])
            .arg(out.path())
            .args(FAST);
        command
    };
    let result = run_ok(&mut the_run());
    assert_complete_run(out.path());
    let tree = String::from_utf8_lossy(&result.stdout);
    assert!(tree.starts_with("Clusters (5 conversations)"), "{tree}");
    let decisions = read_jsonl(&out.path().join("cache/hierarchy.journal.jsonl"));
    assert!(
        decisions.iter().any(|d| d["value"].is_array()),
        "the model proposed parents: {decisions:?}"
    );

    // Again with the same command: everything is reused, nothing recomputed.
    let again = run_ok(the_run().arg("--json"));
    let events: Vec<Value> = String::from_utf8_lossy(&again.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let result = events
        .iter()
        .find(|e| e["event"] == "result")
        .expect("a result event");
    assert!(
        result["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["reused"] == true),
        "{result}"
    );

    let printed = run_ok(kura().arg("tree").arg(out.path()));
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.starts_with("Clusters (5 conversations)"),
        "{printed}"
    );
    assert!(printed.contains("╚══"), "{printed}");

    // The density clusterer on the same run directory: summaries and embeddings are
    // reused, the clusters and everything after them recomputed, and the run is
    // still complete, with every conversation in exactly one base cluster.
    let density = run_ok(the_run().args([
        "--clusterer",
        "hdbscan",
        "--min-cluster-size",
        "2",
        "--json",
    ]));
    let stages: HashMap<String, bool> = String::from_utf8_lossy(&density.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "result")
        .expect("a result event")["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["reused"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(stages.get("summaries"), Some(&true), "{stages:?}");
    assert_eq!(stages.get("clusters"), Some(&false), "{stages:?}");
    assert_complete_run(out.path());
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("run.json")).unwrap())
            .unwrap();
    assert_eq!(run["config"]["clusterer"], "hdbscan", "{run}");
    assert_eq!(run["config"]["outliers"], "keep", "{run}");

    // One stage alone, with another outlier policy: the clusters are recomputed,
    // and the tree, now older than them, is not printed as if it were current.
    let alone = run_ok(
        kura()
            .args(["stage", "clusters", "--out"])
            .arg(out.path())
            .args(FAST)
            .args(["--clusterer", "hdbscan", "--min-cluster-size", "2"])
            .args(["--outliers", "assign"]),
    );
    let printed = String::from_utf8_lossy(&alone.stdout);
    assert!(!printed.contains("Clusters ("), "{printed}");
    let said = String::from_utf8_lossy(&alone.stderr);
    assert!(said.contains("kura stage hierarchy"), "{said}");
    let base = read_jsonl(&out.path().join("clusters.jsonl"));
    assert!(base.iter().all(|c| c["id"] != "unclustered"), "{base:?}");
}

#[test]
fn a_killed_run_resumes_without_redoing_finished_summaries() {
    let _turn = one_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let journal = out.path().join("cache/summaries.journal.jsonl");
    let the_run = || {
        let mut command = kura();
        command
            .args(["run", "examples/conversations.jsonl", "--limit", "4"])
            .args(["--quiet", "--out"])
            .arg(out.path())
            .args(FAST);
        command
    };
    let mut child = the_run()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    while lines(&journal) < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no summaries after 5 minutes"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before_kill = lines(&journal);
    assert!(done_before_kill < 4, "killed too late to test resuming");
    assert!(
        !out.path().join("summaries.jsonl").exists(),
        "no partial results are published"
    );

    run_ok(&mut the_run());
    assert_complete_run(out.path());
    assert_eq!(
        lines(&journal),
        4,
        "each conversation was summarised once across the two runs"
    );
}

#[test]
fn every_export_format_runs_end_to_end() {
    let _turn = one_at_a_time();
    for (file, format) in [
        ("exports/claude_export_2024_snippet.json", "auto"),
        ("exports/claude_export_2026_demo.json", "claude"),
        ("exports/chatgpt_export_sanitized.json", "auto"),
    ] {
        let out = tempfile::tempdir().unwrap();
        run_ok(
            kura()
                .arg("run")
                .arg(shared(file))
                .args(["--format", format, "--limit", "2", "--quiet", "--out"])
                .arg(out.path())
                .args(FAST),
        );
        assert_complete_run(out.path());
    }
}

#[test]
fn a_single_conversation_gives_a_one_cluster_tree() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("one.jsonl");
    let line = std::fs::read_to_string(repo().join("examples/conversations.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&input, line + "\n").unwrap();
    let out = dir.path().join("run");
    run_ok(
        kura()
            .arg("run")
            .arg(&input)
            .arg("--quiet")
            .arg("--out")
            .arg(&out)
            .args(FAST),
    );
    assert_complete_run(&out);
    assert_eq!(read_jsonl(&out.join("clusters.jsonl")).len(), 1);
}

#[test]
fn bad_input_names_file_and_line_and_writes_no_results() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    let good = std::fs::read_to_string(repo().join("examples/conversations.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().take(3).collect();
    lines.insert(
        1,
        "{\"chat_id\": \"x\", \"created_at\": \"2026-01-01\", \"messages\": [{\"role\": 7",
    );
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.path().join("run");
    let stderr = run_err(
        kura()
            .arg("run")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .args(FAST),
    );
    assert!(
        stderr.contains("bad.jsonl") && stderr.contains("line 2"),
        "{stderr}"
    );
    assert!(!out.join("summaries.jsonl").exists() && !out.join("conversations.jsonl").exists());

    // With --skip-invalid the bad record is set aside with its reason.
    let result = kura()
        .arg("run")
        .arg(&input)
        .args(["--skip-invalid", "--limit", "1", "--quiet", "--out"])
        .arg(&out)
        .args(FAST)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let skipped = read_jsonl(&out.join("skipped.jsonl"));
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["location"].as_str().unwrap().contains("line 2"));
}

#[test]
fn an_empty_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.jsonl");
    std::fs::write(&input, "").unwrap();
    let stderr = run_err(
        kura()
            .arg("run")
            .arg(&input)
            .arg("--out")
            .arg(dir.path().join("run")),
    );
    assert!(stderr.contains("empty.jsonl"), "{stderr}");
}

/// A file that is not GGUF, given as the LLM: one line that names it and says
/// what is wrong, even with `RUST_BACKTRACE` set (candle's errors would otherwise
/// carry their backtrace into the message).
#[test]
fn a_broken_model_file_is_a_one_line_error_even_with_backtraces_on() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken.gguf");
    std::fs::write(&model, b"this is not a GGUF file at all").unwrap();
    let stderr = run_err(
        kura()
            .env("RUST_BACKTRACE", "1")
            .env_remove("RUST_LIB_BACKTRACE")
            .args(["run", "examples/conversations.jsonl", "--llm"])
            .arg(&model)
            .arg("--out")
            .arg(dir.path().join("run")),
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(error.contains("broken.gguf"), "{stderr}");
    assert!(error.contains("not a readable GGUF file"), "{stderr}");
    assert!(!stderr.contains("candle_core::"), "{stderr}");
}

#[test]
fn python_kura_checkpoints_open_in_kura_tree() {
    let out = run_ok(kura().arg("tree").arg(shared("kura_reference")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("Clusters (1000 conversations)"), "{text}");
    assert!(text.contains("╚══"));
}
