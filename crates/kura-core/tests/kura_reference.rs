//! Python Kura's own output files load into our types and serialise back with the
//! same field names, types and order, so files flow both ways between the tools.

use std::path::PathBuf;

use kura_core::{Cluster, ConversationSummary, ProjectedCluster};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn reference(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/kura_reference")
        .join(file)
}

fn assert_round_trips<T: Serialize + DeserializeOwned>(file: &str) {
    let text = std::fs::read_to_string(reference(file)).unwrap();
    let mut n = 0;
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let original: Value = serde_json::from_str(line).unwrap();
        let ours: T =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{file} line {}: {e}", i + 1));
        let written = serde_json::to_value(&ours).unwrap();
        assert_eq!(written, original, "{file} line {}", i + 1);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(&written),
            keys(&original),
            "{file} line {}: field order",
            i + 1
        );
        n += 1;
    }
    assert!(n > 0, "{file} is empty");
}

#[test]
fn summaries_round_trip() {
    assert_round_trips::<ConversationSummary>("summaries.jsonl");
}

#[test]
fn clusters_round_trip() {
    assert_round_trips::<Cluster>("clusters.jsonl");
}

#[test]
fn meta_clusters_round_trip() {
    assert_round_trips::<Cluster>("meta_clusters.jsonl");
}

#[test]
fn dimensionality_round_trips() {
    assert_round_trips::<ProjectedCluster>("dimensionality.jsonl");
}
