//! The explorer's HTTP interface as a plain function from a request line to a
//! response, so it is tested without a socket. Read-only by construction: it
//! holds the run in memory and no route touches the filesystem; a request path is
//! only ever compared with fixed routes, never joined to a directory.

use std::collections::HashMap;
use std::fmt::Write;

use kura_core::explore::search::{self, Hit};
use kura_core::explore::{RunView, FACETS};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::{json, Value};

use super::assets;
use crate::search::{cluster_record, conversation_record, Filter};
use crate::semantic::Semantic;

/// Conversations listed in a cluster panel.
const CLUSTER_LIST: usize = 500;
/// Values listed per breakdown.
const BREAKDOWN_TOP: usize = 8;
/// Categories a map colouring distinguishes.
const COLOURS: usize = 12;
const SEARCH_LIMIT: usize = 200;

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    fn json(value: &impl Serialize) -> Response {
        Response {
            status: 200,
            content_type: "application/json; charset=utf-8",
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    fn error(status: u16, message: &str) -> Response {
        Response {
            status,
            ..Response::json(&json!({ "error": message }))
        }
    }
}

/// A run opened for exploring, with the large, fixed answers computed once.
pub struct Explorer {
    view: RunView,
    semantic: Semantic,
    name: String,
    tree: Vec<u8>,
    points: Vec<u8>,
}

impl Explorer {
    pub fn new(view: RunView, semantic: Semantic) -> Explorer {
        let name = view
            .dir
            .canonicalize()
            .unwrap_or_else(|_| view.dir.clone())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".to_string());
        let frame = Frame::of(&view);
        let tree = serde_json::to_vec(&tree(&view, &frame)).unwrap_or_default();
        let points = points(&view, &frame).into_bytes();
        Explorer {
            view,
            semantic,
            name,
            tree,
            points,
        }
    }

    pub fn view(&self) -> &RunView {
        &self.view
    }

    /// Answers one request. `url` is the request target as received (path and
    /// query, percent-encoded).
    pub fn handle(&self, method: &str, url: &str) -> Response {
        if method != "GET" && method != "HEAD" {
            return Response::error(405, "this server is read-only");
        }
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let Some(segments) = segments(path) else {
            return Response::error(400, "bad path");
        };
        let query = parse_query(query);
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match segments.as_slice() {
            [] | ["index.html"] => asset("text/html; charset=utf-8", assets::INDEX_HTML),
            ["app.js"] => asset("text/javascript; charset=utf-8", assets::APP_JS),
            ["style.css"] => asset("text/css; charset=utf-8", assets::STYLE_CSS),
            ["api", "run"] => Response::json(&self.run_info()),
            ["api", "tree"] => raw_json(self.tree.clone()),
            ["api", "points"] => raw_json(self.points.clone()),
            ["api", "field"] => self.field(&query),
            ["api", "filter"] => self.filter(&query),
            ["api", "search"] => self.search(&query),
            ["api", "cluster", id] => self.cluster(id),
            ["api", "conversation", index] => self.conversation(index, false),
            ["api", "point", index] => self.conversation(index, true),
            _ => Response::error(404, "not found"),
        }
    }

    fn run_info(&self) -> Value {
        let v = &self.view;
        json!({
            "name": self.name,
            "kind": v.kind.as_str(),
            "conversations": v.conversations.len(),
            "clusters": v.clusters.len(),
            "embedder": self.semantic.embedder_name(),
            "fields": v.fields(),
        })
    }

    fn field(&self, query: &HashMap<String, String>) -> Response {
        let Some(name) = query.get("name") else {
            return Response::error(400, "missing name");
        };
        if !self.view.fields().contains(name) {
            return Response::error(404, "no such field");
        }
        let (labels, values) = self.view.categories(name, COLOURS);
        let values: Vec<i64> = values
            .into_iter()
            .map(|v| v.map_or(-1, |v| v as i64))
            .collect();
        Response::json(&json!({"field": name, "labels": labels, "values": values}))
    }

    fn filter(&self, query: &HashMap<String, String>) -> Response {
        let (Some(field), Some(value)) = (query.get("field"), query.get("value")) else {
            return Response::error(400, "missing field or value");
        };
        let indices: Vec<usize> = (0..self.view.conversations.len())
            .filter(|&i| self.view.has_value(i, field, value))
            .collect();
        Response::json(
            &json!({"field": field, "value": value, "count": indices.len(), "indices": indices}),
        )
    }

    fn search(&self, query: &HashMap<String, String>) -> Response {
        let text = query.get("q").map(String::as_str).unwrap_or("").trim();
        let semantic = query.get("mode").map(String::as_str) != Some("keyword");
        let limit = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(SEARCH_LIMIT)
            .min(SEARCH_LIMIT * 10);
        let filter = match (query.get("field"), query.get("value")) {
            (Some(field), Some(value)) if !field.is_empty() => Some(Filter {
                field: field.clone(),
                value: value.clone(),
            }),
            _ => None,
        };
        let view = &self.view;
        let keep = |i: usize| filter.as_ref().is_none_or(|f| f.keeps(view, i));
        if text.is_empty() {
            return Response::error(400, "empty query");
        }
        let (hits, clusters) = if semantic {
            match self.semantic.prepare(view, text) {
                Ok((q, embeddings)) => (
                    search::semantic(embeddings, &q, limit, keep),
                    search::semantic_clusters(view, embeddings, &q, 5),
                ),
                Err(e) => {
                    return Response::error(503, &format!("semantic search is unavailable: {e:#}"))
                }
            }
        } else {
            (
                search::keyword(view, text, limit, keep),
                search::keyword_clusters(view, text, 5),
            )
        };
        let records = |hits: &[Hit], f: fn(&RunView, &Hit) -> Value| -> Vec<Value> {
            hits.iter().map(|h| f(view, h)).collect()
        };
        Response::json(&json!({
            "query": text,
            "mode": if semantic { "semantic" } else { "keyword" },
            "hits": records(&hits, conversation_record),
            "clusters": records(&clusters, cluster_record),
        }))
    }

    fn cluster(&self, id: &str) -> Response {
        let view = &self.view;
        let Some(i) = view.cluster_index(id) else {
            return Response::error(404, "no such cluster");
        };
        let node = &view.clusters[i];
        let fields: Vec<String> = view.fields();
        let facets: Vec<_> = fields
            .iter()
            .map(|f| view.breakdown(f, &node.members, BREAKDOWN_TOP))
            .filter(|b| !b.values.is_empty())
            .collect();
        let parent_count = node.parent.map(|p| view.clusters[p].cluster.count);
        let brief = |c: usize| json!({"id": view.clusters[c].cluster.id, "name": view.clusters[c].cluster.name, "count": view.clusters[c].cluster.count});
        Response::json(&json!({
            "id": node.cluster.id,
            "name": node.cluster.name,
            "name_borrowed": node.cluster.name_borrowed,
            "description": node.cluster.description,
            "count": node.cluster.count,
            "share": parent_count.map(|p| node.cluster.count as f64 / p.max(1) as f64),
            "level": node.depth,
            "path": view.cluster_path(i).into_iter().map(brief).collect::<Vec<_>>(),
            "children": node.children.iter().map(|&c| brief(c)).collect::<Vec<_>>(),
            "facets": facets,
            "facet_names": FACETS,
            "members": node.members.len(),
            "conversations": node.members.iter().take(CLUSTER_LIST).map(|&m| json!({
                "index": m,
                "chat_id": view.conversations[m].chat_id,
                "summary": view.summaries[m].as_ref().map(|s| s.summary.as_str()),
            })).collect::<Vec<_>>(),
        }))
    }

    /// A whole conversation, or (`brief`) what a hover shows.
    fn conversation(&self, index: &str, brief: bool) -> Response {
        let view = &self.view;
        let Some(i) = index
            .parse::<usize>()
            .ok()
            .filter(|&i| i < view.conversations.len())
        else {
            return Response::error(404, "no such conversation");
        };
        let c = &view.conversations[i];
        let path: Vec<Value> = view
            .conversation_path(i)
            .into_iter()
            .map(|p| json!({"id": view.clusters[p].cluster.id, "name": view.clusters[p].cluster.name}))
            .collect();
        let summary = view.summaries[i].as_ref();
        if brief {
            return Response::json(&json!({
                "index": i,
                "chat_id": c.chat_id,
                "summary": summary.map(|s| kura_core::text::truncate_chars(&s.summary, 300)),
                "path": path,
            }));
        }
        Response::json(&json!({
            "index": i,
            "chat_id": c.chat_id,
            "created_at": c.created_at,
            "messages": c.messages,
            "metadata": c.metadata,
            "summary": summary,
            "path": path,
        }))
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    Response {
        status: 200,
        content_type,
        body: body.as_bytes().to_vec(),
    }
}

fn raw_json(body: Vec<u8>) -> Response {
    Response {
        status: 200,
        content_type: "application/json; charset=utf-8",
        body,
    }
}

/// The decoded, non-empty segments of a request path; `None` for anything that
/// could name a place outside the routes (`..`, `.`, an encoded slash or
/// backslash, a NUL, invalid UTF-8).
fn segments(path: &str) -> Option<Vec<String>> {
    if !path.starts_with('/') {
        return None;
    }
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|raw| {
            let s = percent_decode_str(raw).decode_utf8().ok()?.into_owned();
            let unsafe_segment =
                s == ".." || s == "." || s.contains(['/', '\\', '\0']) || s.is_empty();
            (!unsafe_segment).then_some(s)
        })
        .collect()
}

/// `a=1&b=two+words` into a map; later keys win.
fn parse_query(query: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Maps run coordinates into the unit square (keeping the aspect ratio), so the
/// page needs no knowledge of the reducer's scale and five decimals suffice.
struct Frame {
    min_x: f64,
    min_y: f64,
    scale: f64,
}

impl Frame {
    fn of(view: &RunView) -> Frame {
        let xs = view
            .points
            .iter()
            .map(|p| p.x as f64)
            .chain(view.clusters.iter().map(|c| c.x));
        let ys = view
            .points
            .iter()
            .map(|p| p.y as f64)
            .chain(view.clusters.iter().map(|c| c.y));
        let (min_x, max_x) = bounds(xs);
        let (min_y, max_y) = bounds(ys);
        let extent = (max_x - min_x).max(max_y - min_y);
        Frame {
            min_x,
            min_y,
            scale: if extent > 0.0 { 1.0 / extent } else { 1.0 },
        }
    }

    fn x(&self, x: f64) -> f64 {
        (x - self.min_x) * self.scale
    }

    fn y(&self, y: f64) -> f64 {
        (y - self.min_y) * self.scale
    }
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo <= hi {
        (lo, hi)
    } else {
        (0.0, 0.0)
    }
}

/// Every cluster, parents before children, with its place on the map.
fn tree(view: &RunView, frame: &Frame) -> Value {
    let clusters: Vec<Value> = view
        .clusters
        .iter()
        .map(|node| {
            let parent_count = node.parent.map_or(
                view.roots().map(|r| view.clusters[r].cluster.count).sum(),
                |p| view.clusters[p].cluster.count,
            );
            json!({
                "id": node.cluster.id,
                "name": node.cluster.name,
                "name_borrowed": node.cluster.name_borrowed,
                "description": node.cluster.description,
                "count": node.cluster.count,
                "share": node.cluster.count as f64 / parent_count.max(1) as f64,
                "parent": node.parent.map_or(-1, |p| p as i64),
                "children": node.children,
                "level": node.depth,
                "x": round(frame.x(node.x)),
                "y": round(frame.y(node.y)),
            })
        })
        .collect();
    json!({ "clusters": clusters })
}

/// The map as column arrays, written by hand: this is the one large response and
/// is sent as compactly as it can be.
fn points(view: &RunView, frame: &Frame) -> String {
    let n = view.points.len();
    let mut out = String::with_capacity(n * 40 + 64);
    let column = |out: &mut String, name: &str, values: &mut dyn Iterator<Item = String>| {
        let _ = write!(out, "\"{name}\":[");
        for (i, v) in values.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&v);
        }
        out.push(']');
    };
    out.push('{');
    column(
        &mut out,
        "x",
        &mut view.points.iter().map(|p| fmt5(frame.x(p.x as f64))),
    );
    out.push(',');
    column(
        &mut out,
        "y",
        &mut view.points.iter().map(|p| fmt5(frame.y(p.y as f64))),
    );
    out.push(',');
    column(
        &mut out,
        "base",
        &mut view
            .points
            .iter()
            .map(|p| p.base.map_or(-1, |b| b as i64).to_string()),
    );
    out.push(',');
    column(
        &mut out,
        "top",
        &mut (0..n).map(|i| view.top_cluster(i).map_or(-1, |t| t as i64).to_string()),
    );
    out.push('}');
    out
}

fn round(v: f64) -> f64 {
    (v * 1e5).round() / 1e5
}

fn fmt5(v: f64) -> String {
    let s = format!("{:.5}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_leave_the_routes_are_refused() {
        for bad in [
            "/../run.json",
            "/%2e%2e/conversations.jsonl",
            "/api/cluster/..%2F..%2Fetc%2Fpasswd",
            "/api/%2E%2E/%2e%2E/etc/passwd",
            "/api/cluster/a%5Cb",
            "/api/cluster/%00",
            "relative",
        ] {
            assert!(segments(bad).is_none(), "{bad}");
        }
        assert_eq!(
            segments("/api/cluster/a%20b").unwrap(),
            ["api", "cluster", "a b"]
        );
    }

    #[test]
    fn queries_decode_plus_and_percent() {
        let q = parse_query("q=rust+borrow%20checker&mode=keyword&x");
        assert_eq!(q["q"], "rust borrow checker");
        assert_eq!(q["mode"], "keyword");
        assert_eq!(q["x"], "");
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(fmt5(0.5), "0.5");
        assert_eq!(fmt5(1.0), "1");
        assert_eq!(fmt5(0.123456), "0.12346");
        assert_eq!(fmt5(0.0), "0");
    }
}
