//! Clio's way of grouping one level of the hierarchy with a language model:
//! propose candidate parents per neighbourhood of clusters, de-duplicate the
//! candidates across neighbourhoods, then place every cluster under one of them.
//!
//! The model only ever picks from a list (the namer's `choose_parent` answers with
//! an index), so an invalid assignment cannot happen; a cluster whose choice fails
//! goes to its nearest candidate in embedding space instead. Whether the resulting
//! grouping shrinks the level is the caller's check.

use kura_core::ProposalRequest;
use kura_core::{BoxError, ChoiceRequest, Cluster, ClusterNamer, Embedder, Matrix};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::kmeans::kmeans;
use crate::vector::{nearest_rows, normalized_mean, normalized_rows, seeded_rng};

/// Clusters per neighbourhood: what a small model can read in one prompt.
const NEIGHBOURHOOD: usize = 20;
/// Outside clusters shown beside a neighbourhood.
const CONTRAST: usize = 5;
/// Candidate parents offered for one cluster (its nearest ones): a list a small
/// model can still read, and single digits for its answer.
const OPTIONS: usize = 8;
/// Candidate names this similar are the same parent said twice.
const DUPLICATE_COSINE: f32 = 0.9;
const RESTARTS: usize = 4;
const MAX_ITER: usize = 100;
/// Random streams of this module, apart from the hierarchy's own.
const NEIGHBOURHOOD_STREAM: u64 = 0x6e65_6967;
const DEDUP_STREAM: u64 = 0x6465_6475;
const SHUFFLE_STREAM: u64 = 0x7368_7566;

/// One level being grouped: the clusters (as "name: description") and their
/// normalised vectors, row for row.
pub(crate) struct LevelView<'a> {
    pub(crate) described: Vec<String>,
    pub(crate) vectors: &'a Matrix,
}

impl<'a> LevelView<'a> {
    pub(crate) fn new(all: &[Cluster], clusters: &[usize], vectors: &'a Matrix) -> Self {
        LevelView {
            described: clusters
                .iter()
                .map(|&c| format!("{}: {}", all[c].name, all[c].description))
                .collect(),
            vectors,
        }
    }
}

/// What a round of grouping by the model produced, for the log.
#[derive(Debug, Default)]
pub(crate) struct GroupingReport {
    pub(crate) candidates: usize,
    pub(crate) after_dedup: usize,
    /// Groups of near-duplicate candidates whose name the model picked.
    pub(crate) model_merges: usize,
    pub(crate) fallback_assignments: usize,
}

/// Groups the level into at most about `target` parents; each group lists row
/// indices of `level`. Fails when the namer declines to propose.
pub(crate) fn group_by_model(
    level: &LevelView<'_>,
    target: usize,
    namer: &dyn ClusterNamer,
    embedder: &dyn Embedder,
    seed: u64,
) -> Result<(Vec<Vec<usize>>, GroupingReport), BoxError> {
    let mut report = GroupingReport::default();
    let candidates = propose(level, target, namer, seed)?;
    report.candidates = candidates.len();
    let (names, vectors) = deduplicate(candidates, embedder, target, namer, seed, &mut report)?;
    report.after_dedup = names.len();

    let mut groups = vec![Vec::new(); names.len()];
    for row in 0..level.described.len() {
        let chosen = assign(level, row, &names, &vectors, namer, seed, &mut report);
        groups[chosen].push(row);
    }
    groups.retain(|g| !g.is_empty());
    Ok((groups, report))
}

/// Candidate parent names from every neighbourhood, each asked for its share of
/// `target`.
fn propose(
    level: &LevelView<'_>,
    target: usize,
    namer: &dyn ClusterNamer,
    seed: u64,
) -> Result<Vec<String>, BoxError> {
    let n = level.described.len();
    let mut candidates = Vec::new();
    for hood in neighbourhoods(level.vectors, seed)? {
        let centre = normalized_mean(level.vectors, &hood);
        let contrast = nearest_rows(level.vectors, &centre, |i| hood.contains(&i), CONTRAST)
            .into_iter()
            .map(|i| level.described[i].clone())
            .collect();
        let count = (target * hood.len()).div_ceil(n).max(1);
        let request = ProposalRequest {
            members: hood.iter().map(|&i| level.described[i].clone()).collect(),
            contrast,
            count,
        };
        let proposed = namer.propose_parents(&request)?;
        candidates.extend(
            proposed
                .into_iter()
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty())
                .take(count),
        );
    }
    if candidates.is_empty() {
        return Err("the namer proposed no parent names".into());
    }
    Ok(candidates)
}

/// Neighbourhoods of about [`NEIGHBOURHOOD`] clusters, by k-means on their vectors.
fn neighbourhoods(vectors: &Matrix, seed: u64) -> Result<Vec<Vec<usize>>, BoxError> {
    let n = vectors.rows();
    let k = n.div_ceil(NEIGHBOURHOOD);
    if k <= 1 {
        return Ok(vec![(0..n).collect()]);
    }
    let fit = kmeans(vectors, k, seed ^ NEIGHBOURHOOD_STREAM, RESTARTS, MAX_ITER)?;
    Ok(fit.groups())
}

/// Drops candidates that say the same as an earlier one (the same text, or names
/// whose embeddings are nearly parallel), then, if more than `target` remain,
/// groups them into `target` groups by k-means on those embeddings and keeps one
/// name per group: the one the model picks as naming the whole group (Clio
/// de-duplicates with the model too), or the most central one if it declines.
fn deduplicate(
    candidates: Vec<String>,
    embedder: &dyn Embedder,
    target: usize,
    namer: &dyn ClusterNamer,
    seed: u64,
    report: &mut GroupingReport,
) -> Result<(Vec<String>, Matrix), BoxError> {
    let texts: Vec<&str> = candidates.iter().map(String::as_str).collect();
    let embedded = embedder.embed(&texts)?;
    let embedded = normalized_rows(&embedded).into_owned();

    let mut kept: Vec<usize> = Vec::new();
    for (i, name) in candidates.iter().enumerate() {
        let same_text = kept
            .iter()
            .any(|&k| candidates[k].eq_ignore_ascii_case(name));
        let same_meaning = kept
            .iter()
            .any(|&k| crate::vector::dot(embedded.row(k), embedded.row(i)) >= DUPLICATE_COSINE);
        if !same_text && !same_meaning {
            kept.push(i);
        }
    }
    if kept.len() > target && target > 0 {
        let vectors = embedded.select(&kept);
        let fit = kmeans(&vectors, target, seed ^ DEDUP_STREAM, RESTARTS, MAX_ITER)?;
        kept = fit
            .groups()
            .into_iter()
            .enumerate()
            .filter(|(_, group)| !group.is_empty())
            .map(|(g, group)| {
                let centre = normalized_mean(&vectors, &group);
                let by_centrality =
                    nearest_rows(&vectors, &centre, |i| !group.contains(&i), OPTIONS);
                let names: Vec<&str> = by_centrality
                    .iter()
                    .map(|&i| candidates[kept[i]].as_str())
                    .collect();
                let picked = pick_group_name(&names, namer, seed, g as u64, report);
                kept[by_centrality[picked]]
            })
            .collect();
        kept.sort_unstable();
    }
    let names = kept.iter().map(|&i| candidates[i].clone()).collect();
    Ok((names, embedded.select(&kept)))
}

/// Which of a group of near-duplicate candidate names (most central first) stands
/// for the group: the model's choice of the name that best covers them all, offered
/// shuffled; the most central one when the model declines or fails.
fn pick_group_name(
    names: &[&str],
    namer: &dyn ClusterNamer,
    seed: u64,
    group: u64,
    report: &mut GroupingReport,
) -> usize {
    if names.len() < 2 {
        return 0;
    }
    // Listed alphabetically: the order of centrality would hint at an answer.
    let mut listed = names.to_vec();
    listed.sort_unstable();
    let item = format!(
        "Candidate categories proposed for neighbouring groups: {}",
        listed.join("; ")
    );
    let everyone: Vec<usize> = (0..names.len()).collect();
    let shuffle = seeded_rng(seed ^ DEDUP_STREAM, group);
    match model_choice(namer, item, &everyone, |i| names[i], shuffle) {
        Ok(picked) => {
            report.model_merges += 1;
            picked
        }
        Err(_) => 0,
    }
}

/// The candidate `row` goes under: the model's choice among its nearest candidates
/// (shuffled, so position carries no hint), or the nearest one if the model fails.
fn assign(
    level: &LevelView<'_>,
    row: usize,
    names: &[String],
    vectors: &Matrix,
    namer: &dyn ClusterNamer,
    seed: u64,
    report: &mut GroupingReport,
) -> usize {
    let nearest = nearest_rows(vectors, level.vectors.row(row), |_| false, OPTIONS);
    let Some(&closest) = nearest.first() else {
        return 0;
    };
    if nearest.len() == 1 {
        return closest;
    }
    let shuffle = seeded_rng(seed ^ SHUFFLE_STREAM, row as u64);
    let item = level.described[row].clone();
    match model_choice(namer, item, &nearest, |c| names[c].as_str(), shuffle) {
        Ok(chosen) => chosen,
        Err(e) => {
            tracing::warn!("placing a cluster failed ({e}); using the nearest parent");
            report.fallback_assignments += 1;
            closest
        }
    }
}

/// The model's choice for `item` among `options` (indices, named by `name`),
/// offered in an order shuffled by `shuffle` so that position carries no hint. An
/// answer outside the list counts as a failure: the callers' fallbacks decide.
fn model_choice<'a>(
    namer: &dyn ClusterNamer,
    item: String,
    options: &[usize],
    name: impl Fn(usize) -> &'a str,
    mut shuffle: impl Rng,
) -> Result<usize, BoxError> {
    let mut order = options.to_vec();
    order.shuffle(&mut shuffle);
    let request = ChoiceRequest {
        item,
        options: order.iter().map(|&o| name(o).to_string()).collect(),
    };
    match namer.choose_parent(&request)? {
        index if index < order.len() => Ok(order[index]),
        index => Err(format!("the namer chose option {index} of {}", order.len()).into()),
    }
}

#[cfg(test)]
mod tests {
    use kura_core::{ClusterName, NamingRequest};

    use super::*;

    /// Embeds "Topic Variant" names on a topic axis, plus a smaller component on a
    /// variant axis: "A" is weak (the most central of its topic), "B" and "C" strong.
    struct TopicVariantEmbedder;

    impl Embedder for TopicVariantEmbedder {
        fn id(&self) -> String {
            "topic-variant".into()
        }
        fn dim(&self) -> usize {
            5
        }
        fn embed(&self, texts: &[&str]) -> Result<Matrix, BoxError> {
            let rows: Vec<[f32; 5]> = texts
                .iter()
                .map(|t| {
                    let mut row = [0.0; 5];
                    row[if t.starts_with("Cooking") { 0 } else { 1 }] = 1.0;
                    match t.chars().last() {
                        Some('A') => row[2] = 0.2,
                        Some('B') => row[3] = 0.6,
                        _ => row[4] = 0.6,
                    }
                    row
                })
                .collect();
            Ok(Matrix::from_rows(&rows).expect("rows of five"))
        }
    }

    /// Picks the option ending in "C" when it may choose at all.
    struct PicksC {
        chooses: bool,
    }

    impl ClusterNamer for PicksC {
        fn id(&self) -> String {
            "picks-c".into()
        }
        fn name(&self, _: &NamingRequest) -> Result<ClusterName, BoxError> {
            Err("not used".into())
        }
        fn choose_parent(&self, request: &ChoiceRequest) -> Result<usize, BoxError> {
            if !self.chooses {
                return Err("declines".into());
            }
            Ok(request
                .options
                .iter()
                .position(|o| o.ends_with('C'))
                .unwrap_or(0))
        }
    }

    fn candidates() -> Vec<String> {
        [
            "Cooking A",
            "Travel B",
            "Cooking B",
            "Travel A",
            "Cooking C",
            "Travel C",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The names `deduplicate` keeps (sorted) down to two groups, and its report.
    fn deduplicated(chooses: bool) -> (Vec<String>, GroupingReport) {
        let mut report = GroupingReport::default();
        let (mut names, vectors) = deduplicate(
            candidates(),
            &TopicVariantEmbedder,
            2,
            &PicksC { chooses },
            3,
            &mut report,
        )
        .unwrap();
        assert_eq!(vectors.rows(), names.len());
        names.sort();
        (names, report)
    }

    #[test]
    fn the_model_names_each_group_of_near_duplicate_candidates() {
        let (names, report) = deduplicated(true);
        assert_eq!(names, ["Cooking C", "Travel C"]);
        assert_eq!(report.model_merges, 2);
    }

    #[test]
    fn without_the_model_the_most_central_candidate_names_its_group() {
        let (names, report) = deduplicated(false);
        assert_eq!(names, ["Cooking A", "Travel A"]);
        assert_eq!(report.model_merges, 0);
    }
}
