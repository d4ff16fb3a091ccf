//! End-to-end tests of exploring a run: `kura serve` (its API, its refusal of
//! paths outside the routes and of writes, and the page in real headless
//! Chromium), `kura search` and `kura export`, on runs made by our pipeline with
//! the real models and on Python Kura's reference checkpoint.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Value};

mod support;
use support::{kura, read_jsonl, repo, run_ok, shared, FAST};

/// `kura serve` on a free port, stopped when dropped.
struct Served {
    child: Child,
    address: String,
}

impl Served {
    fn start(dir: &Path) -> Served {
        let mut child = kura()
            .args(["serve", "--port", "0"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kura serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the serve banner");
        let address = line
            .split("http://")
            .nth(1)
            .map(|a| a.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Served { child, address }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// One raw HTTP/1.0 request (so the body is not chunked); the target is sent
    /// exactly as given.
    fn request(&self, method: &str, target: &str, host: &str) -> (u16, String) {
        let response = self.raw(method, target, host);
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad response: {response}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The whole response, status line and headers included.
    fn raw(&self, method: &str, target: &str, host: &str) -> String {
        let mut stream = TcpStream::connect(&self.address).expect("connect");
        write!(
            stream,
            "{method} {target} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        String::from_utf8_lossy(&response).into_owned()
    }

    fn get(&self, target: &str) -> (u16, String) {
        self.request("GET", target, &self.address)
    }

    fn json(&self, target: &str) -> Value {
        let (status, body) = self.get(target);
        assert_eq!(status, 200, "GET {target}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {target}: {e}: {body}"))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reference() -> PathBuf {
    shared("kura_reference")
}

/// Conversations that carry markup and script in every place the page shows:
/// messages, ids and metadata. Made into a run by the real pipeline once per
/// test binary.
fn hostile_run() -> PathBuf {
    static RUN: OnceLock<tempfile::TempDir> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("hostile.jsonl");
        let payloads = [
            ("<script>window.__xss = 1; alert(1)</script>", "How do I bake sourdough bread? Give me a cooking recipe with flour and water."),
            ("<img src=x onerror=\"window.__xss = 2; alert(2)\">", "What is a good recipe for tomato soup for dinner?"),
            ("<a href=\"javascript:window.__xss = 3\">click me</a>", "Fix this Rust borrow checker error in my function."),
            ("<svg onload=\"window.__xss = 4\"></svg><iframe src=\"javascript:alert(4)\">", "Explain Python list comprehensions with an example."),
            ("\"><b onmouseover=\"window.__xss = 5\">hover</b>", "Write a SQL query that joins two tables."),
            ("<style>body{display:none}</style><script src=\"http://127.0.0.1:9/x.js\"></script>", "Suggest a vegetarian pasta recipe for four people."),
        ];
        let mut lines = String::new();
        for (i, (payload, question)) in payloads.iter().enumerate() {
            let record = json!({
                "chat_id": format!("c{i}-{payload}"),
                "created_at": "2025-01-01T00:00:00",
                "messages": [
                    {"created_at": "2025-01-01T00:00:00", "role": "user", "content": format!("{question} {payload}")},
                    {"created_at": "2025-01-01T00:00:01", "role": "assistant", "content": format!("Here you go. {payload} Ask me more.")},
                ],
                "metadata": {"source": payload, "team": if i % 2 == 0 { "a" } else { "b" }},
            });
            lines.push_str(&record.to_string());
            lines.push('\n');
        }
        std::fs::write(&input, lines).unwrap();
        run_ok(
            kura()
                .args(["run", "--quiet", "--out"])
                .arg(dir.path().join("run"))
                .arg(&input)
                .args(FAST),
        );
        dir
    })
    .path()
    .join("run")
}

/// The one top cluster of [`large_run`] whose name the namer did not write.
const BORROWED_TOP: usize = 3;

/// A 10,000-conversation run written directly as run files (no model is needed
/// to time the page): 8 top clusters of 5 base clusters each.
fn large_run(dir: &Path, n: usize) {
    let mut conversations = String::new();
    let mut summaries = String::new();
    let mut coords = String::new();
    let (tops, per_top) = (8, 5);
    let mut members: Vec<Vec<String>> = vec![Vec::new(); tops * per_top];
    for i in 0..n {
        let id = format!("conv-{i}");
        let base = i % (tops * per_top);
        members[base].push(id.clone());
        let (top, sub) = (base / per_top, base % per_top);
        let angle = top as f64 / tops as f64 * std::f64::consts::TAU;
        let jitter = ((i * 7919) % 1000) as f64 / 1000.0;
        let x = angle.cos() * 10.0 + sub as f64 + jitter;
        let y = angle.sin() * 10.0 + (i % 13) as f64 / 13.0;
        conversations.push_str(&json!({"chat_id": id, "created_at": "2025-01-01T00:00:00", "messages": [{"created_at": "2025-01-01T00:00:00", "role": "user", "content": format!("question {i} about topic {top}")}], "metadata": {"shard": (i % 4).to_string()}}).to_string());
        conversations.push('\n');
        summaries.push_str(&json!({"summary": format!("The user asks question {i} about topic {top}."), "request": null, "topic": null, "languages": ["english"], "task": null, "concerning_score": 1 + i % 5, "user_frustration": 1 + i % 3, "assistant_errors": [], "chat_id": id, "metadata": {}, "embedding": null}).to_string());
        summaries.push('\n');
        coords.push_str(
            &json!({"chat_id": id, "x": x, "y": y, "cluster_id": format!("base-{base}")})
                .to_string(),
        );
        coords.push('\n');
    }
    let mut clusters = String::new();
    let mut projected = String::new();
    for top in 0..tops {
        let ids: Vec<String> = (0..per_top)
            .flat_map(|s| members[top * per_top + s].clone())
            .collect();
        let angle = top as f64 / tops as f64 * std::f64::consts::TAU;
        let mut record = json!({"id": format!("top-{top}"), "name": format!("Topic {top}"), "description": "A top cluster", "slug": "t", "chat_ids": ids, "parent_id": null, "count": ids.len()});
        if top == BORROWED_TOP {
            record["name_borrowed"] = json!(true);
        }
        clusters.push_str(&format!("{record}\n"));
        let mut p = record.clone();
        p["x_coord"] = json!(angle.cos() * 10.0 + 2.5);
        p["y_coord"] = json!(angle.sin() * 10.0 + 0.5);
        p["level"] = json!(0);
        projected.push_str(&format!("{p}\n"));
        for sub in 0..per_top {
            let ids = &members[top * per_top + sub];
            let record = json!({"id": format!("base-{}", top * per_top + sub), "name": format!("Topic {top} part {sub}"), "description": "A base cluster", "slug": "b", "chat_ids": ids, "parent_id": format!("top-{top}"), "count": ids.len()});
            clusters.push_str(&format!("{record}\n"));
            let mut p = record.clone();
            p["x_coord"] = json!(angle.cos() * 10.0 + sub as f64 + 0.5);
            p["y_coord"] = json!(angle.sin() * 10.0 + 0.5);
            p["level"] = json!(1);
            projected.push_str(&format!("{p}\n"));
        }
    }
    for (file, text) in [
        ("conversations.jsonl", &conversations),
        ("summaries.jsonl", &summaries),
        ("conversation_coords.jsonl", &coords),
        ("meta_clusters.jsonl", &clusters),
        ("dimensionality.jsonl", &projected),
    ] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    std::fs::write(
        dir.join("run.json"),
        r#"{"models": {"embedder": {"name": "all-minilm-l6-v2"}}}"#,
    )
    .unwrap();
}

/// Runs the browser script, or says exactly what is missing to run it.
fn browser(mode: &str, url: &str, screenshot: &Path, extra: &[&str]) -> Value {
    let dir = repo().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "the browser tests need Playwright: run `npm ci` in {}",
        dir.display()
    );
    let chromium = std::env::var("KURA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the browser tests need Chromium at {chromium}: `apt-get install -y chromium` (or set KURA_CHROMIUM)"
    );
    let out = std::process::Command::new("node")
        .current_dir(&dir)
        .arg("explore.mjs")
        .args([mode, url])
        .arg(screenshot)
        .args(extra)
        .env("KURA_CHROMIUM", &chromium)
        .output()
        .expect("the browser tests need Node.js (`node` on PATH)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn screenshots() -> PathBuf {
    let dir = repo().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_api_serves_a_python_kura_checkpoint() {
    let served = Served::start(&reference());
    let run = served.json("/api/run");
    assert_eq!(run["kind"], "python-kura");
    assert_eq!(run["conversations"], 1000);
    assert!(run["fields"]
        .as_array()
        .unwrap()
        .contains(&json!("metadata.model")));

    let tree = served.json("/api/tree");
    let clusters = tree["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 19);
    let roots: Vec<&Value> = clusters.iter().filter(|c| c["parent"] == -1).collect();
    let total: u64 = roots.iter().map(|c| c["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 1000);
    let shares: f64 = roots.iter().map(|c| c["share"].as_f64().unwrap()).sum();
    assert!(
        (shares - 1.0).abs() < 1e-9,
        "root shares add up to the whole: {shares}"
    );
    for c in clusters {
        if let Some(p) = c["parent"].as_i64().filter(|&p| p >= 0) {
            let parent = &clusters[p as usize];
            assert!(parent["children"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k.as_i64() == Some(clusters.iter().position(|x| x == c).unwrap() as i64)));
        }
    }

    let points = served.json("/api/points");
    for column in ["x", "y", "base", "top"] {
        assert_eq!(points[column].as_array().unwrap().len(), 1000, "{column}");
    }
    assert!(points["x"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())));
    assert!(points["top"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| clusters[t.as_u64().unwrap() as usize]["parent"] == -1));

    let pregnancy = clusters
        .iter()
        .find(|c| c["name"].as_str().unwrap().contains("pregnancy") && c["parent"] != -1)
        .unwrap();
    let cluster = served.json(&format!(
        "/api/cluster/{}",
        pregnancy["id"].as_str().unwrap()
    ));
    assert_eq!(cluster["count"], 12);
    assert_eq!(cluster["conversations"].as_array().unwrap().len(), 12);
    assert_eq!(cluster["path"].as_array().unwrap().len(), 2);
    let facets: Vec<&str> = cluster["facets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    for f in [
        "languages",
        "concerning_score",
        "user_frustration",
        "metadata.model",
    ] {
        assert!(facets.contains(&f), "{f} in {facets:?}");
    }

    let first = cluster["conversations"][0]["index"].as_u64().unwrap();
    let conversation = served.json(&format!("/api/conversation/{first}"));
    assert!(!conversation["messages"].as_array().unwrap().is_empty());
    assert_eq!(conversation["path"][1]["id"], pregnancy["id"]);
    assert!(conversation["summary"]["summary"].as_str().unwrap().len() > 10);

    let hits = served.json("/api/search?q=pregnancy+pain&mode=keyword");
    let hits = hits["hits"].as_array().unwrap();
    assert!(!hits.is_empty());
    assert!(hits[0]["cluster_ids"]
        .as_array()
        .unwrap()
        .contains(&pregnancy["id"]));
    let filtered = served
        .json("/api/search?q=the&mode=keyword&field=metadata.model&value=claude-v1&limit=2000");
    for hit in filtered["hits"].as_array().unwrap() {
        let c = served.json(&format!("/api/conversation/{}", hit["index"]));
        assert_eq!(c["metadata"]["model"], "claude-v1");
    }
    let only = served.json("/api/filter?field=metadata.model&value=claude-v1");
    assert_eq!(
        only["count"].as_u64().unwrap() as usize,
        only["indices"].as_array().unwrap().len()
    );
    assert!(only["count"].as_u64().unwrap() > 0);

    let colours = served.json("/api/field?name=languages");
    assert_eq!(colours["values"].as_array().unwrap().len(), 1000);
    assert_eq!(served.get("/api/field?name=nope").0, 404);
    assert_eq!(served.get("/api/conversation/1000").0, 404);
    assert_eq!(served.get("/api/cluster/nope").0, 404);
}

#[test]
fn the_server_refuses_paths_outside_its_routes_writes_and_foreign_hosts() {
    let served = Served::start(&reference());
    for target in [
        "/../conversations.jsonl",
        "/%2e%2e/conversations.jsonl",
        "/..%2fconversations.jsonl",
        "/api/cluster/..%2F..%2Fconversations.jsonl",
        "/api/conversation/..%2f..%2f..%2fetc%2fpasswd",
        "/%2e%2e%2f%2e%2e%2fetc/passwd",
        "/conversations.jsonl",
        "/summaries.jsonl",
        "//etc/passwd",
        "/api/..%5c..%5cconversations.jsonl",
    ] {
        let (status, body) = served.get(target);
        assert!(status == 400 || status == 404, "{target}: {status}");
        assert!(
            !body.contains("chat_id") && !body.contains("root:"),
            "{target} leaked {body}"
        );
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let (status, _) = served.request(method, "/api/run", &served.address);
        assert_eq!(status, 405, "{method}");
    }
    let (status, _) = served.request("GET", "/api/run", "evil.example");
    assert_eq!(status, 403, "a page on another site cannot read the run");
    let (status, body) = served.get("/");
    assert_eq!(status, 200);
    assert!(body.contains("<script src=\"/app.js\">"));

    // HEAD answers with GET's headers, its length included, and no body.
    for target in ["/", "/api/run"] {
        let (_, body) = served.get(target);
        let head = served.raw("HEAD", target, &served.address);
        let (headers, rest) = head.split_once("\r\n\r\n").expect("headers");
        assert!(headers.starts_with("HTTP/1.") && headers.contains(" 200 "));
        let length = headers
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or_else(|| panic!("HEAD {target} has no Content-Length: {headers}"));
        assert_eq!(length, body.len(), "HEAD {target}");
        assert!(rest.is_empty(), "HEAD {target} sent a body");
    }
}

#[test]
fn search_and_export_work_on_python_kura_checkpoints() {
    let dir = reference();
    let out = run_ok(kura().args(["search"]).arg(&dir).args([
        "pregnancy abdominal pain treatment",
        "--json",
        "--limit",
        "5",
    ]));
    let hits: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0]["mode"], "semantic");
    for hit in &hits {
        let path: Vec<&str> = hit["result"]["cluster_path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            path.iter().any(|p| p.to_lowercase().contains("pregnan")),
            "{path:?}"
        );
    }
    let scores: Vec<f64> = hits
        .iter()
        .map(|h| h["result"]["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );

    let out = run_ok(kura().args(["search"]).arg(&dir).args([
        "pregnancy",
        "--clusters",
        "--mode",
        "keyword",
        "--json",
    ]));
    let first: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert!(first["result"]["name"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("pregnancy"));

    let out = run_ok(kura().args(["search"]).arg(&dir).args([
        "travel blog",
        "--mode",
        "keyword",
        "--filter",
        "metadata.model=alpaca-13b",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1. "), "{text}");
    assert!(
        text.lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .all(|l| l.contains("alpaca-13b")),
        "{text}"
    );

    assert_eq!(assert_exports(&dir, 1000), 0, "Kura's files mark no name");
}

#[test]
fn search_export_and_api_work_on_our_runs() {
    let dir = &hostile_run();
    let out =
        run_ok(
            kura()
                .args(["search"])
                .arg(dir)
                .args(["cooking recipe", "--json", "--limit", "2"]),
        );
    let hits: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 2);
    let conversations = read_jsonl(&dir.join("conversations.jsonl"));
    let recipe_ids: Vec<&str> = conversations
        .iter()
        .filter(|c| {
            c["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("recipe")
        })
        .map(|c| c["chat_id"].as_str().unwrap())
        .collect();
    let top = hits[0]["result"]["chat_id"].as_str().unwrap();
    assert!(
        recipe_ids.contains(&top),
        "a recipe conversation ranks first, got {top}"
    );

    // Terminal output never carries raw control characters from the run.
    let out = run_ok(
        kura()
            .args(["search"])
            .arg(dir)
            .args(["recipe", "--mode", "keyword"]),
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\x1b'));

    assert_exports(dir, conversations.len());
    // The same run with its first cluster's name marked as borrowed from a member.
    let marked = tempfile::tempdir().unwrap();
    copy_marking_a_name_borrowed(dir, marked.path());
    assert!(assert_exports(marked.path(), conversations.len()) > 0);

    let served = Served::start(dir);
    let run = served.json("/api/run");
    assert_eq!(run["kind"], "kura-rs");
    assert_eq!(run["embedder"], "all-minilm-l6-v2");
    let semantic = served.json("/api/search?q=cooking%20recipe&mode=semantic&limit=1");
    assert!(recipe_ids.contains(&semantic["hits"][0]["chat_id"].as_str().unwrap()));
    let conversation = served.json("/api/conversation/0");
    assert!(
        conversation["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("<script>"),
        "text is served as it is, for the page to show as text"
    );
}

/// The files of run `from` (not its cache) into `to`, the first cluster of
/// `meta_clusters.jsonl` marked there and in `clusters.jsonl` as named after a
/// member.
fn copy_marking_a_name_borrowed(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    let first = read_jsonl(&to.join("meta_clusters.jsonl"))[0]["id"].clone();
    for file in ["clusters.jsonl", "meta_clusters.jsonl"] {
        let marked: String = read_jsonl(&to.join(file))
            .into_iter()
            .map(|mut cluster| {
                if cluster["id"] == first {
                    cluster["name_borrowed"] = json!(true);
                }
                format!("{cluster}\n")
            })
            .collect();
        std::fs::write(to.join(file), marked).unwrap();
    }
}

/// Every export format has one row per conversation with the cluster path,
/// facets, coordinates and metadata; Parquet is read back with the parquet crate.
/// Returns how many rows have a cluster named after a member in their path.
fn assert_exports(dir: &Path, rows: usize) -> usize {
    let out = tempfile::tempdir().unwrap();
    for format in ["csv", "json", "parquet"] {
        run_ok(
            kura()
                .args(["export"])
                .arg(dir)
                .args(["--format", format, "--out"])
                .arg(out.path().join(format!("x.{format}"))),
        );
    }
    let names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "no temp files are left: {names:?}");

    let mut csv = csv_rows(&out.path().join("x.csv"));
    let header = csv.remove(0);
    assert_eq!(csv.len(), rows);
    for column in [
        "chat_id",
        "cluster_path",
        "x",
        "y",
        "summary",
        "languages",
        "concerning_score",
        "user_frustration",
        "assistant_errors",
    ] {
        assert!(
            header.contains(&column.to_string()),
            "{column} in {header:?}"
        );
    }
    assert!(header.iter().any(|h| h.starts_with("metadata.")));
    let path_col = header.iter().position(|h| h == "cluster_path").unwrap();
    assert!(
        csv.iter().all(|r| !r[path_col].is_empty()),
        "every conversation has a cluster path"
    );

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("x.json")).unwrap()).unwrap();
    let json = json.as_array().unwrap();
    assert_eq!(json.len(), rows);
    assert!(json
        .iter()
        .all(|r| !r["cluster_path"].as_array().unwrap().is_empty()));

    // A name borrowed from a member is marked as the run's clusters say (Kura's
    // files have no such field: never borrowed), in every cluster of a path, and
    // the flat formats carry the top and base clusters' marks.
    let borrowed: HashMap<String, bool> = ["clusters.jsonl", "meta_clusters.jsonl"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|f| f.exists())
        .flat_map(|f| read_jsonl(&f))
        .map(|c| {
            let mark = c["name_borrowed"].as_bool().unwrap_or(false);
            (c["id"].as_str().unwrap().to_string(), mark)
        })
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (top_mark, base_mark) = (
        column("top_cluster_name_borrowed"),
        column("base_cluster_name_borrowed"),
    );
    for (row, csv_row) in json.iter().zip(&csv) {
        let ids = row["cluster_ids"].as_array().unwrap();
        let marks = row["cluster_names_borrowed"].as_array().unwrap();
        assert_eq!(marks.len(), ids.len(), "a mark for each cluster of {row}");
        for (id, mark) in ids.iter().zip(marks) {
            let want = borrowed.get(id.as_str().unwrap()).copied().unwrap_or(false);
            assert_eq!(mark.as_bool(), Some(want), "cluster {id}");
        }
        let text = |mark: &Value| mark.as_bool().unwrap().to_string();
        assert_eq!(csv_row[top_mark], text(&marks[0]));
        assert_eq!(csv_row[base_mark], text(&marks[marks.len() - 1]));
    }
    let marked_rows = json
        .iter()
        .filter(|r| {
            r["cluster_names_borrowed"]
                .as_array()
                .unwrap()
                .contains(&json!(true))
        })
        .count();
    assert!(json[0]["metadata"].is_object() && json[0]["x"].is_number());

    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(out.path().join("x.parquet")).unwrap();
    let reader = SerializedFileReader::new(file).unwrap();
    let meta = reader.metadata();
    assert_eq!(meta.file_metadata().num_rows() as usize, rows);
    let fields: Vec<String> = meta
        .file_metadata()
        .schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    assert_eq!(fields, header, "Parquet has the CSV's columns");
    let first = reader.get_row_iter(None).unwrap().next().unwrap().unwrap();
    let first_id = first
        .get_column_iter()
        .next()
        .map(|(_, v)| v.to_string())
        .unwrap();
    assert!(first_id.contains(&csv[0][0]), "{first_id} vs {}", csv[0][0]);
    marked_rows
}

/// CSV parsed by hand (quoted fields with commas, quotes and newlines), so the
/// test reads the file the way any CSV reader must.
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (c, _) => field.push(c),
        }
    }
    rows
}

#[test]
fn the_page_explores_a_run_and_runs_nothing_from_its_data() {
    let served = Served::start(&hostile_run());
    let shot = screenshots().join("explore.png");
    let result = browser("explore", &served.url(), &shot, &[]);
    println!("browser: {result}");
    assert!(result["conversations"].as_u64().unwrap() > 0);
    assert!(result["literal"].as_u64().unwrap() > 0);
    assert!(result["semanticHits"].as_u64().unwrap() > 0);
    assert_eq!(
        result["tooltip"], true,
        "hovering a point shows its summary"
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot was saved"
    );
}

#[test]
fn the_page_loads_ten_thousand_conversations() {
    let dir = tempfile::tempdir().unwrap();
    large_run(dir.path(), 10_000);
    let served = Served::start(dir.path());
    let shot = screenshots().join("load-10k.png");
    let result = browser("load", &served.url(), &shot, &["10000"]);
    println!(
        "page load with 10000 conversations: {} ms (zoom frame {} ms)",
        result["load_ms"], result["zoom_frame_ms"]
    );
    assert!(result["load_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        result["borrowed"], 1,
        "only the borrowed name is marked in the tree"
    );
    assert_eq!(
        result["borrowed_note"], true,
        "the cluster panel says the name was borrowed"
    );
}
