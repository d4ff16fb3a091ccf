//! Helpers shared by the end-to-end test binaries: the real `kura` binary, the
//! repository and the shared data beside it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Options that make a model run fast: the small LLM and a two-cluster top level.
pub const FAST: [&str; 4] = ["--llm", "smollm2-135m-instruct", "--top-clusters", "2"];

pub fn kura() -> Command {
    // target/release/deps/e2e-HASH -> target/release/kura
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("kura{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not built: run `cargo test --release --workspace`",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.current_dir(repo());
    cmd
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn shared(rel: &str) -> PathBuf {
    repo().join("../shared/data").join(rel)
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run kura");
    assert!(
        out.status.success(),
        "kura failed: {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail and returns what it printed to stderr.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run kura");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "kura should have failed; stderr:\n{stderr}"
    );
    stderr
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
