//! `kura tree`: the hierarchy in the terminal, like Python Kura's
//! `visualise_clusters`. Names and descriptions come from an LLM fed with user
//! text, so they are made terminal-safe before printing.

use std::fmt::Write;

use kura_core::text::{terminal_safe, truncate_chars};
use kura_core::tree::Tree;
use kura_core::Cluster;

/// After a name the namer did not write (see `Cluster::name_borrowed`): it says
/// what one member is about, which a reader would otherwise take for the group.
const BORROWED_MARK: &str = " [named after a member]";

pub fn render(
    clusters: &[Cluster],
    max_depth: Option<usize>,
    descriptions: bool,
) -> kura_core::Result<String> {
    let tree = Tree::new(clusters)?;
    let total: usize = tree.roots().map(|c| c.count).sum();
    let mut out = format!("Clusters ({total} conversations)\n");
    let roots: Vec<&Cluster> = tree.roots().collect();
    let mut sorted = roots.clone();
    sorted.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    for (i, root) in sorted.iter().enumerate() {
        draw(
            &tree,
            root,
            total,
            "",
            i + 1 == sorted.len(),
            0,
            max_depth,
            descriptions,
            &mut out,
        );
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn draw(
    tree: &Tree,
    cluster: &Cluster,
    parent_count: usize,
    prefix: &str,
    last: bool,
    depth: usize,
    max_depth: Option<usize>,
    descriptions: bool,
    out: &mut String,
) {
    let share = 100.0 * cluster.count as f64 / parent_count.max(1) as f64;
    let branch = if last { "╚══ " } else { "╠══ " };
    let borrowed = if cluster.name_borrowed {
        BORROWED_MARK
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "{prefix}{branch}{}{borrowed} ({} conversations, {share:.1}%)",
        terminal_safe(&cluster.name),
        cluster.count
    );
    let child_prefix = format!("{prefix}{}", if last { "    " } else { "║   " });
    if descriptions {
        let _ = writeln!(
            out,
            "{child_prefix}  {}",
            terminal_safe(&truncate_chars(&cluster.description, 160))
        );
    }
    if max_depth.is_some_and(|d| depth + 1 >= d) {
        return;
    }
    let mut children: Vec<&Cluster> = tree.children(&cluster.id).collect();
    children.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    for (i, child) in children.iter().enumerate() {
        draw(
            tree,
            child,
            cluster.count,
            &child_prefix,
            i + 1 == children.len(),
            depth + 1,
            max_depth,
            descriptions,
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(id: &str, name: &str, parent: Option<&str>, count: usize) -> Cluster {
        Cluster {
            id: id.into(),
            name: name.into(),
            description: String::new(),
            slug: id.into(),
            chat_ids: (0..count).map(|i| format!("{id}-{i}")).collect(),
            parent_id: parent.map(Into::into),
            count,
            name_borrowed: false,
        }
    }

    #[test]
    fn draws_counts_shares_and_escapes_names() {
        let clusters = vec![
            cluster("r", "Root \x1b[2Jtopic", None, 4),
            cluster("a", "Child A", Some("r"), 3),
            cluster("b", "Child B", Some("r"), 1),
        ];
        let text = render(&clusters, None, false).unwrap();
        assert!(text.starts_with("Clusters (4 conversations)"));
        assert!(text.contains("Child A (3 conversations, 75.0%)"));
        assert!(text.contains("╚══ Child B (1 conversations, 25.0%)"));
        assert!(
            !text.contains('\x1b'),
            "escape sequences must not reach the terminal"
        );
        let shallow = render(&clusters, Some(1), false).unwrap();
        assert!(!shallow.contains("Child A"));
    }

    #[test]
    fn marks_only_the_names_the_namer_did_not_write() {
        let mut clusters = vec![
            cluster("r", "Root", None, 4),
            cluster("a", "Child A", Some("r"), 3),
            cluster("b", "Child B", Some("r"), 1),
        ];
        clusters[1].name_borrowed = true;
        let text = render(&clusters, None, false).unwrap();
        assert!(text.contains("Child A [named after a member] (3 conversations"));
        assert_eq!(text.matches(BORROWED_MARK).count(), 1, "{text}");
    }
}
