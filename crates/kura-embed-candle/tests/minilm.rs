//! Behaviour of the embedder on the real all-MiniLM-L6-v2, against vectors made by
//! sentence-transformers itself.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kura_core::Embedder;
use kura_embed_candle::{device, CandleEmbedder, EmbedError, EmbedderOptions};

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/reference/minilm_embeddings.jsonl"
);

fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let model = kura_models::Resolver::from_env()
            .resolve("all-minilm-l6-v2")
            .unwrap_or_else(|e| panic!("{e}"));
        model.dir
    })
    .clone()
}

fn embedder() -> &'static CandleEmbedder {
    static EMBEDDER: OnceLock<CandleEmbedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| load(&model_dir(), EmbedderOptions::default()).unwrap())
}

fn load(dir: &Path, options: EmbedderOptions) -> Result<CandleEmbedder, EmbedError> {
    CandleEmbedder::from_dir(dir, &device(false).unwrap(), options)
}

fn reference() -> Vec<(String, Vec<f32>)> {
    let text = std::fs::read_to_string(REFERENCE).unwrap();
    text.lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let embedding = row["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            (row["text"].as_str().unwrap().to_string(), embedding)
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn matches_sentence_transformers_on_every_reference_text() {
    let rows = reference();
    let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    let embedder = embedder();
    assert_eq!(embedder.dim(), rows[0].1.len());
    let ours = embedder.embed(&texts).unwrap();
    assert_eq!(ours.rows(), rows.len());
    let worst = (0..rows.len())
        .map(|i| cosine(ours.row(i), &rows[i].1))
        .fold(f32::INFINITY, f32::min);
    eprintln!("worst cosine over {} reference texts: {worst}", rows.len());
    for (i, (text, expected)) in rows.iter().enumerate() {
        let similarity = cosine(ours.row(i), expected);
        assert!(
            similarity >= 0.9999,
            "row {i} ({:?}): cosine {similarity}",
            text.chars().take(60).collect::<String>()
        );
        let norm = ours.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "row {i}: the model normalises, norm {norm}"
        );
    }
}

#[test]
fn vectors_do_not_depend_on_batch_composition_or_order() {
    let rows = reference();
    // Short texts of varied lengths plus one long one, so every batch pads; kept
    // small because each text is also embedded on its own.
    let mut texts: Vec<&str> = rows
        .iter()
        .map(|(t, _)| t.as_str())
        .filter(|t| t.len() < 300)
        .take(15)
        .collect();
    let long = rows
        .iter()
        .map(|(t, _)| t.as_str())
        .filter(|t| t.len() < 1500)
        .max_by_key(|t| t.len());
    texts.push(long.unwrap());
    let together = embedder().embed(&texts).unwrap();

    let mut reversed = texts.clone();
    reversed.reverse();
    let backwards = embedder().embed(&reversed).unwrap();
    let one_by_one = load(
        &model_dir(),
        EmbedderOptions {
            batch_size: 1,
            max_length: None,
        },
    )
    .unwrap();
    let small_batches = load(
        &model_dir(),
        EmbedderOptions {
            batch_size: 5,
            max_length: None,
        },
    )
    .unwrap();
    let small = small_batches.embed(&texts).unwrap();

    for (i, text) in texts.iter().enumerate() {
        let alone = one_by_one.embed(&[text]).unwrap();
        for (what, row) in [
            ("reversed", backwards.row(texts.len() - 1 - i)),
            ("alone", alone.row(0)),
            ("batches of 5", small.row(i)),
        ] {
            let similarity = cosine(together.row(i), row);
            assert!(similarity > 0.99999, "text {i} {what}: cosine {similarity}");
        }
    }
}

#[test]
fn vectors_do_not_depend_on_the_thread_count() {
    let rows = reference();
    let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).take(24).collect();
    let default = embedder().embed(&texts).unwrap();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let other = pool.install(|| embedder().embed(&texts).unwrap());
        for i in 0..texts.len() {
            let similarity = cosine(default.row(i), other.row(i));
            assert!(
                similarity > 0.99999,
                "text {i}, {threads} threads: cosine {similarity}"
            );
        }
    }
}

#[test]
fn odd_text_is_embedded_not_rejected() {
    let long = "word ".repeat(5000);
    let texts = [
        "",
        "\u{0}\u{1}\u{7f}",
        "\u{FFFD}\u{FFFD}",
        "\u{202E}reversed\u{202C} \u{200B}\u{200D}\u{FEFF}",
        "\u{10FFFF}\u{E000}",
        "e\u{301}\u{301}\u{301}\u{301}",
        "日本語のテキスト",
        long.as_str(),
    ];
    let out = embedder().embed(&texts).unwrap();
    assert_eq!(out.rows(), texts.len());
    for (i, row) in out.iter_rows().enumerate() {
        assert!(
            row.iter().all(|x| x.is_finite()),
            "text {i} gave a non-finite value"
        );
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i}: norm {norm}");
    }
    assert_eq!(embedder().embed(&[]).unwrap().rows(), 0);
}

#[test]
fn truncation_follows_the_model_and_can_be_overridden() {
    assert_eq!(embedder().max_length(), 256);
    let short = load(
        &model_dir(),
        EmbedderOptions {
            batch_size: 8,
            max_length: Some(16),
        },
    )
    .unwrap();
    assert_ne!(short.id(), embedder().id());
    let text = format!(
        "{} and then something else entirely",
        "the cat sat on the mat ".repeat(3)
    );
    let prefix_only = short.embed(&[text.as_str()]).unwrap();
    let full = embedder().embed(&[text.as_str()]).unwrap();
    assert!(cosine(prefix_only.row(0), full.row(0)) < 0.9999);
}

#[test]
fn the_model_id_names_the_model() {
    let named = load(&model_dir(), EmbedderOptions::default())
        .unwrap()
        .with_model_id("all-minilm-l6-v2@0123abcd".to_string());
    assert!(
        named.id().contains("all-minilm-l6-v2@0123abcd"),
        "{}",
        named.id()
    );
}

/// A copy of the model directory in which `damage` has been done.
fn damaged_copy(damage: impl FnOnce(&Path)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let source = model_dir();
    for rel in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
    ] {
        std::fs::copy(source.join(rel), tmp.path().join(rel)).unwrap();
    }
    std::fs::create_dir(tmp.path().join("1_Pooling")).unwrap();
    std::fs::copy(
        source.join("1_Pooling/config.json"),
        tmp.path().join("1_Pooling/config.json"),
    )
    .unwrap();
    damage(tmp.path());
    tmp
}

fn load_error(damage: impl FnOnce(&Path)) -> String {
    let dir = damaged_copy(damage);
    load(dir.path(), EmbedderOptions::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn missing_or_corrupt_files_are_named() {
    let err = load_error(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    assert!(
        err.contains("model.safetensors") && err.contains("missing"),
        "{err}"
    );

    let err = load_error(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    assert!(
        err.contains("tokenizer.json") && err.contains("missing"),
        "{err}"
    );

    let err = load_error(|d| std::fs::write(d.join("config.json"), "{\"hidden_size\": ").unwrap());
    assert!(
        err.contains("config.json") && err.contains("invalid JSON"),
        "{err}"
    );

    let err = load_error(|d| {
        let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(err.contains("model.safetensors"), "{err}");

    let err = load_error(|d| std::fs::write(d.join("tokenizer.json"), "[]").unwrap());
    assert!(err.contains("tokenizer.json"), "{err}");

    // Weights of another shape than config.json declares.
    let err = load_error(|d| {
        let config = std::fs::read_to_string(d.join("config.json")).unwrap();
        std::fs::write(
            d.join("config.json"),
            config.replace("\"hidden_size\": 384", "\"hidden_size\": 768"),
        )
        .unwrap();
    });
    assert!(err.contains("model.safetensors"), "{err}");

    // Settings that would load and then embed wrongly: NaN vectors for a
    // negative epsilon, the embedding table alone for no layers, one vector for
    // every text in a window of [CLS] and [SEP].
    for (file, from, to, words) in [
        (
            "config.json",
            "\"layer_norm_eps\": 1e-12",
            "\"layer_norm_eps\": -1",
            "layer_norm_eps",
        ),
        (
            "config.json",
            "\"num_hidden_layers\": 6",
            "\"num_hidden_layers\": 0",
            "num_hidden_layers",
        ),
        (
            "config.json",
            "\"num_attention_heads\": 12",
            "\"num_attention_heads\": 7",
            "num_attention_heads 7",
        ),
        (
            "sentence_bert_config.json",
            "\"max_seq_length\": 256",
            "\"max_seq_length\": 2",
            "max_seq_length is 2",
        ),
    ] {
        let err = load_error(|d| {
            let text = std::fs::read_to_string(d.join(file)).unwrap();
            assert!(text.contains(from), "{file} holds {from}");
            std::fs::write(d.join(file), text.replace(from, to)).unwrap();
        });
        assert!(err.contains(file) && err.contains(words), "{err}");
    }
}
