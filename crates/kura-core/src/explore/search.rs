//! Ranking conversations and clusters against a query, by keyword or by meaning.
//! Semantic ranking takes the query already embedded: core knows no model, the
//! caller embeds the query with the same embedder as the run's summaries.

use std::collections::HashMap;

use serde::Serialize;

use super::{Embeddings, RunView};
use crate::vector::{cosine_to_unit, dot, normalize_in_place, normalized_mean};

/// A conversation or cluster (by index) and how well it matches; higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hit {
    pub index: usize,
    pub score: f32,
}

/// The words of a query, lower-cased, each once.
pub fn terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for word in query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let word = word.to_lowercase();
        if !terms.contains(&word) {
            terms.push(word);
        }
    }
    terms
}

/// Conversations holding every word of the query, in their summary, facets or
/// messages. Words in the summary weigh more than words deep in a message, and
/// repeats count with diminishing returns.
pub fn keyword(
    view: &RunView,
    query: &str,
    limit: usize,
    keep: impl Fn(usize) -> bool,
) -> Vec<Hit> {
    let terms = terms(query);
    if terms.is_empty() {
        return Vec::new();
    }
    let scored = (0..view.conversations.len())
        .filter(|&i| keep(i))
        .filter_map(|i| {
            let mut fields: Vec<(String, f32)> = Vec::new();
            if let Some(s) = &view.summaries[i] {
                fields.push((s.summary.to_lowercase(), 3.0));
                for facet in [&s.request, &s.task, &s.topic].into_iter().flatten() {
                    fields.push((facet.to_lowercase(), 2.0));
                }
            }
            for m in &view.conversations[i].messages {
                fields.push((m.content.to_lowercase(), 1.0));
            }
            score_fields(&terms, &fields).map(|score| Hit { index: i, score })
        });
    top(scored, limit)
}

/// Clusters whose name or description holds every word of the query.
pub fn keyword_clusters(view: &RunView, query: &str, limit: usize) -> Vec<Hit> {
    let terms = terms(query);
    if terms.is_empty() {
        return Vec::new();
    }
    let scored = view.clusters.iter().enumerate().filter_map(|(i, node)| {
        let fields = [
            (node.cluster.name.to_lowercase(), 3.0),
            (node.cluster.description.to_lowercase(), 1.0),
        ];
        score_fields(&terms, &fields).map(|score| Hit { index: i, score })
    });
    top(scored, limit)
}

/// Conversations by cosine similarity of their summary's embedding to the query's.
pub fn semantic(
    embeddings: &Embeddings,
    query: &[f32],
    limit: usize,
    keep: impl Fn(usize) -> bool,
) -> Vec<Hit> {
    let query = unit(query);
    let scored = embeddings
        .matrix
        .iter_rows()
        .zip(&embeddings.conversation_of_row)
        .filter(|(_, &c)| keep(c))
        .map(|(row, &c)| Hit {
            index: c,
            score: cosine_to_unit(row, &query),
        });
    top(scored, limit)
}

/// Clusters by cosine similarity of the query to the mean direction of their
/// members' embeddings.
pub fn semantic_clusters(
    view: &RunView,
    embeddings: &Embeddings,
    query: &[f32],
    limit: usize,
) -> Vec<Hit> {
    let query = unit(query);
    let row_of: HashMap<usize, usize> = embeddings
        .conversation_of_row
        .iter()
        .enumerate()
        .map(|(row, &c)| (c, row))
        .collect();
    let scored = view.clusters.iter().enumerate().filter_map(|(i, node)| {
        let rows: Vec<usize> = node
            .members
            .iter()
            .filter_map(|m| row_of.get(m).copied())
            .collect();
        (!rows.is_empty()).then(|| Hit {
            index: i,
            score: dot(&normalized_mean(&embeddings.matrix, &rows), &query),
        })
    });
    top(scored, limit)
}

/// `None` unless every term occurs in some field.
fn score_fields(terms: &[String], fields: &[(String, f32)]) -> Option<f32> {
    let mut score = 0.0;
    for term in terms {
        let weighted: f32 = fields
            .iter()
            .map(|(text, weight)| weight * (1.0 + text.matches(term.as_str()).count() as f32).ln())
            .sum();
        if weighted == 0.0 {
            return None;
        }
        score += weighted;
    }
    Some(score)
}

/// The best `limit` hits, best first; ties keep index order so results are stable.
fn top(hits: impl Iterator<Item = Hit>, limit: usize) -> Vec<Hit> {
    let mut hits: Vec<Hit> = hits.collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    hits.truncate(limit);
    hits
}

impl RunView {
    /// The summaries to embed for semantic search when the run has no embeddings,
    /// with the conversation each belongs to.
    pub fn summary_texts(&self) -> (Vec<&str>, Vec<usize>) {
        self.summaries
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (s.summary.as_str(), i)))
            .unzip()
    }
}

/// `v` scaled to unit length (zero stays zero).
fn unit(v: &[f32]) -> Vec<f32> {
    let mut unit = v.to_vec();
    normalize_in_place(&mut unit);
    unit
}
