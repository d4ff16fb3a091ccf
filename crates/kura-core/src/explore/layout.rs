//! Map positions for runs that carry none per conversation (Python Kura's
//! checkpoints): each conversation sits in a small disc around its base cluster's
//! point, at a place derived from its id, so the same run draws the same map.

use crate::store::fingerprint;

use super::{Point, RunView};

/// One point per conversation, around the point of its base cluster.
pub(super) fn jittered_points(view: &RunView) -> Vec<Point> {
    let base_of = base_clusters(view);
    let radius = leaf_radius(view);
    let largest = view
        .clusters
        .iter()
        .filter(|c| c.children.is_empty())
        .map(|c| c.members.len())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    view.conversations
        .iter()
        .zip(&base_of)
        .map(|(conversation, base)| match base {
            Some(b) => {
                let node = &view.clusters[*b];
                let size = (node.members.len() as f64 / largest).sqrt().max(0.3);
                let (dx, dy) = disc_offset(&conversation.chat_id);
                Point {
                    x: (node.x + dx * radius * size) as f32,
                    y: (node.y + dy * radius * size) as f32,
                    base: Some(*b),
                }
            }
            None => Point {
                x: 0.0,
                y: 0.0,
                base: None,
            },
        })
        .collect()
}

/// Where a conversation the map left out is drawn: at its base cluster, if any.
pub(super) fn fallback_point(view: &RunView, base: Option<usize>) -> Point {
    let (x, y) = base
        .map(|b| (view.clusters[b].x as f32, view.clusters[b].y as f32))
        .unwrap_or((0.0, 0.0));
    Point { x, y, base }
}

/// The leaf cluster of each conversation (the first, should a file list one twice).
pub(super) fn base_clusters(view: &RunView) -> Vec<Option<usize>> {
    let mut base = vec![None; view.conversations.len()];
    for (i, node) in view.clusters.iter().enumerate() {
        if node.children.is_empty() {
            for &m in &node.members {
                base[m].get_or_insert(i);
            }
        }
    }
    base
}

/// A quarter of the spacing leaf clusters would have if spread evenly over the map.
fn leaf_radius(view: &RunView) -> f64 {
    let leaves: Vec<(f64, f64)> = view
        .clusters
        .iter()
        .filter(|c| c.children.is_empty())
        .map(|c| (c.x, c.y))
        .collect();
    let span = |f: fn(&(f64, f64)) -> f64| {
        let (lo, hi) = leaves
            .iter()
            .map(f)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        hi - lo
    };
    let extent = span(|p| p.0).max(span(|p| p.1));
    let extent = if extent.is_finite() && extent > 0.0 {
        extent
    } else {
        1.0
    };
    0.25 * extent / (leaves.len().max(1) as f64).sqrt()
}

/// A point in the unit disc, uniform over its area, chosen by the id's digest.
fn disc_offset(chat_id: &str) -> (f64, f64) {
    let digest = fingerprint(&[chat_id]);
    let word = |range: std::ops::Range<usize>| {
        u32::from_str_radix(&digest[range], 16).unwrap_or(0) as f64 / u32::MAX as f64
    };
    let r = word(0..8).sqrt();
    let theta = word(8..16) * std::f64::consts::TAU;
    (r * theta.cos(), r * theta.sin())
}
