//! `kura embed` and `kura bench` on the real binary with the real local models.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{run_ok as succeed, shared};

/// `kura SUBCOMMAND --quiet` on the real binary.
fn kura(subcommand: &str) -> Command {
    let mut cmd = support::kura();
    cmd.args([subcommand, "--quiet"]);
    cmd
}

fn norm(row: &[f32]) -> f32 {
    row.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))
}

#[test]
fn embed_writes_one_row_per_record_in_input_order_matching_sentence_transformers() {
    let reference = shared("reference/minilm_embeddings.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vectors.npy");
    succeed(
        kura("embed")
            .args(["--embedder", "all-minilm-l6-v2", "--field", "text"])
            .arg(&reference)
            .arg("--out")
            .arg(&out),
    );
    let ours = kura_core::store::read_npy(&out).unwrap();
    let expected: Vec<Vec<f32>> = std::fs::read_to_string(&reference)
        .unwrap()
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            serde_json::from_value(row["embedding"].clone()).unwrap()
        })
        .collect();
    assert_eq!(ours.rows(), expected.len());
    assert_eq!(ours.cols(), 384);
    for (i, row) in expected.iter().enumerate() {
        let similarity = cosine(ours.row(i), row);
        assert!(similarity >= 0.9999, "row {i}: cosine {similarity}");
    }
}

#[test]
fn embed_handles_empty_exotic_and_overlong_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.txt");
    let overlong = "the quick brown fox jumps over the lazy dog ".repeat(3000);
    // Past the model's 256-token window both texts are the same tokens.
    let window = "the quick brown fox jumps over the lazy dog ".repeat(40);
    let lines = [
        "",
        "Ünïcødé façade — naïve café, 東京, 🦀🔥, e\u{301}, \u{200b}zero width\u{feff}",
        "\u{202e}right to left override and a NUL \u{0} in the middle",
        overlong.as_str(),
        window.as_str(),
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("texts.npy");
    succeed(kura("embed").arg(&input).arg("--out").arg(&out));
    let matrix = kura_core::store::read_npy(&out).unwrap();
    assert_eq!(matrix.rows(), lines.len());
    for (i, row) in matrix.iter_rows().enumerate() {
        assert!(row.iter().all(|x| x.is_finite()), "row {i} is not finite");
        assert!(
            (norm(row) - 1.0).abs() < 1e-4,
            "row {i}: norm {}",
            norm(row)
        );
    }
    // An overlong text is truncated to the model's window, not refused.
    let similarity = cosine(matrix.row(3), matrix.row(4));
    assert!(similarity > 0.9999, "{similarity}");
}

#[test]
fn embed_errors_name_file_line_and_field_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.npy");
    let check = |name: &str, content: &[u8], field: Option<&str>, expected: &str| {
        let input = dir.path().join(name);
        std::fs::write(&input, content).unwrap();
        let mut cmd = kura("embed");
        cmd.arg(&input).arg("--out").arg(&out);
        if let Some(field) = field {
            cmd.args(["--field", field]);
        }
        let result = cmd.output().expect("run kura");
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{name} should fail");
        assert!(
            stderr.contains(name) && stderr.contains(expected),
            "{name}: {stderr}"
        );
        assert!(!out.exists(), "{name}: an output was written");
    };
    check(
        "records.jsonl",
        b"{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n",
        Some("text"),
        "line 2: field `text`: missing",
    );
    check(
        "numbers.jsonl",
        b"{\"text\": 7}\n",
        Some("text"),
        "line 1: field `text`: expected a string, found a number",
    );
    check(
        "bytes.txt",
        b"ok\n\xc3\x28 broken\n",
        None,
        "line 2: not valid UTF-8",
    );
    check("empty.txt", b"", None, "no texts to embed");
}

#[test]
fn bench_quick_measures_every_figure_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let output = succeed(
        kura("bench")
            .args(["--quick", "--llm", "smollm2-135m-instruct"])
            .args(["--conversations", "3"])
            .args(["--embedder", "all-minilm-l6-v2", "--data"])
            .arg(shared(""))
            .arg("--out")
            .arg(&out),
    );
    let table = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(report["data"].as_str().unwrap().starts_with("real texts"));
    let figures = report["figures"].as_array().unwrap();
    let keys: Vec<&str> = figures.iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "embed_short",
            "embed_long",
            "llm_prefill",
            "llm_decode",
            "llm_decode_batched",
            "summaries"
        ]
    );
    for figure in figures {
        let value = figure["value"].as_f64().unwrap();
        assert!(value > 0.0, "{figure}");
        assert!(table.contains(figure["name"].as_str().unwrap()), "{table}");
    }
    // `--conversations` sets how many the summariser writes (two with --quick alone).
    let summaries = figures.iter().find(|f| f["key"] == "summaries").unwrap();
    assert!(
        summaries["name"]
            .as_str()
            .unwrap()
            .contains(" 3 conversations"),
        "{summaries}"
    );
    for key in ["embed_short", "llm_prefill", "llm_decode"] {
        let figure = figures.iter().find(|f| f["key"] == key).unwrap();
        assert!(figure["reference"]["value"].as_f64().unwrap() > 0.0);
    }
    let memory = report["memory"].as_array().unwrap();
    assert_eq!(memory.len(), 2);
    assert!(memory
        .iter()
        .all(|m| m["peak_rss_mib"].as_f64().unwrap() > 10.0));
    assert!(report["machine"]["threads"].as_u64().unwrap() >= 1);
    // Which kind's references, and which kernels ran, are in both the JSON and the table.
    let kind = report["machine"]["kind"].as_str().unwrap();
    assert!(table.contains(&format!("references of {kind}")), "{table}");
    for model in ["embedder", "llm"] {
        let products = report["products"][model].as_str().unwrap();
        assert!(!products.is_empty() && table.contains(products), "{table}");
    }
}

#[test]
fn bench_falls_back_to_synthetic_texts_without_the_data_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    // More conversations asked for than the eight synthetic ones (none of them ~500
    // tokens long): the figure is over the eight, and a warning (not `--quiet`) says so.
    let output = succeed(
        support::kura()
            .args([
                "bench",
                "--quick",
                "--llm",
                "smollm2-135m-instruct",
                "--data",
            ])
            .arg(dir.path().join("absent"))
            .args(["--conversations", "12", "--out"])
            .arg(&out),
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(report["data"].as_str().unwrap().starts_with("synthetic"));
    let figures = report["figures"].as_array().unwrap();
    assert!(figures.iter().all(|f| f["value"].as_f64().unwrap() > 0.0));
    let summaries = figures.iter().find(|f| f["key"] == "summaries").unwrap();
    assert_eq!(
        summaries["name"],
        "summariser, 8 conversations (none of ~500 tokens)"
    );
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("warning: the data holds 8 conversations (none of ~500 tokens)")
            && said.contains("not on the 12 asked for"),
        "{said}"
    );
    // Each figure is said as soon as it is measured, before the table on stdout.
    for figure in figures {
        let name = figure["name"].as_str().unwrap();
        assert!(
            said.contains(name),
            "{name} not said as it was measured: {said}"
        );
    }
}
