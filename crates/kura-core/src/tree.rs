//! A read-only view of a cluster hierarchy linked by `parent_id`: roots, children
//! and levels. Both our runs and Python Kura's checkpoints store the hierarchy as a
//! flat list, so every reader (the map, `kura tree`, the checks after a run) goes
//! through this one view instead of walking parent links by hand.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::types::Cluster;

#[derive(Debug)]
pub struct Tree<'a> {
    clusters: &'a [Cluster],
    index: HashMap<&'a str, usize>,
    children: Vec<Vec<usize>>,
    roots: Vec<usize>,
}

impl<'a> Tree<'a> {
    /// Builds the view and checks it is a forest: ids unique, every `parent_id`
    /// names a cluster, and no cycles.
    pub fn new(clusters: &'a [Cluster]) -> Result<Self> {
        let mut index = HashMap::with_capacity(clusters.len());
        for (i, c) in clusters.iter().enumerate() {
            if index.insert(c.id.as_str(), i).is_some() {
                return Err(Error::Invalid(format!("cluster id {} appears twice", c.id)));
            }
        }
        let mut children = vec![Vec::new(); clusters.len()];
        let mut roots = Vec::new();
        for (i, c) in clusters.iter().enumerate() {
            match &c.parent_id {
                None => roots.push(i),
                Some(p) => match index.get(p.as_str()) {
                    Some(&pi) => children[pi].push(i),
                    None => {
                        return Err(Error::Invalid(format!(
                            "cluster {} has parent {p}, which does not exist",
                            c.id
                        )))
                    }
                },
            }
        }
        let tree = Tree {
            clusters,
            index,
            children,
            roots,
        };
        let reachable = tree.walk().count();
        if reachable != clusters.len() {
            return Err(Error::Invalid(format!(
                "the hierarchy has a cycle: {} of {} clusters are reachable from a root",
                reachable,
                clusters.len()
            )));
        }
        Ok(tree)
    }

    pub fn roots(&self) -> impl Iterator<Item = &'a Cluster> + '_ {
        self.roots.iter().map(|&i| &self.clusters[i])
    }

    pub fn children(&self, id: &str) -> impl Iterator<Item = &'a Cluster> + '_ {
        let kids = self
            .index
            .get(id)
            .map(|&i| self.children[i].as_slice())
            .unwrap_or(&[]);
        kids.iter().map(|&i| &self.clusters[i])
    }

    pub fn is_leaf(&self, id: &str) -> bool {
        self.index
            .get(id)
            .is_some_and(|&i| self.children[i].is_empty())
    }

    /// Every cluster with its depth (0 for roots), parents before children,
    /// children in decreasing size.
    pub fn walk(&self) -> impl Iterator<Item = (&'a Cluster, usize)> + '_ {
        let mut stack: Vec<(usize, usize)> = self
            .sorted(&self.roots)
            .into_iter()
            .rev()
            .map(|i| (i, 0))
            .collect();
        std::iter::from_fn(move || {
            let (i, depth) = stack.pop()?;
            for &child in self.sorted(&self.children[i]).iter().rev() {
                stack.push((child, depth + 1));
            }
            Some((&self.clusters[i], depth))
        })
        .take(self.clusters.len())
    }

    /// Depth of every cluster by id.
    pub fn levels(&self) -> HashMap<&'a str, usize> {
        self.walk().map(|(c, d)| (c.id.as_str(), d)).collect()
    }

    fn sorted(&self, ids: &[usize]) -> Vec<usize> {
        let mut v = ids.to_vec();
        v.sort_by(|&a, &b| {
            let (ca, cb) = (&self.clusters[a], &self.clusters[b]);
            cb.count.cmp(&ca.count).then_with(|| ca.name.cmp(&cb.name))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(id: &str, parent: Option<&str>, count: usize) -> Cluster {
        Cluster {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            slug: id.into(),
            chat_ids: (0..count).map(|i| format!("{id}{i}")).collect(),
            parent_id: parent.map(Into::into),
            count,
            name_borrowed: false,
        }
    }

    #[test]
    fn walks_parents_first_with_depths() {
        let cs = vec![
            cluster("a", Some("r"), 1),
            cluster("b", Some("r"), 2),
            cluster("r", None, 3),
        ];
        let tree = Tree::new(&cs).unwrap();
        let order: Vec<_> = tree.walk().map(|(c, d)| (c.id.as_str(), d)).collect();
        assert_eq!(order, vec![("r", 0), ("b", 1), ("a", 1)]);
    }

    #[test]
    fn rejects_orphans_and_cycles() {
        let orphan = vec![cluster("a", Some("missing"), 1)];
        assert!(Tree::new(&orphan)
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        let cycle = vec![
            cluster("a", Some("b"), 1),
            cluster("b", Some("a"), 1),
            cluster("r", None, 1),
        ];
        assert!(Tree::new(&cycle).unwrap_err().to_string().contains("cycle"));
    }
}
