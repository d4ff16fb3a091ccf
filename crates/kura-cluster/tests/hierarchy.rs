mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use kura_cluster::{ClioHierarchy, ClusterError};
use kura_core::text::same_name;
use kura_core::{
    BoxError, ChoiceRequest, Cluster, ClusterName, ClusterNamer, Embedder, HierarchyBuilder,
    Matrix, NamingRequest, ProposalRequest,
};

/// Embeds a text as hashed word counts: texts that share words are similar.
struct WordEmbedder;

impl Embedder for WordEmbedder {
    fn id(&self) -> String {
        "words".into()
    }
    fn dim(&self) -> usize {
        16
    }
    fn embed(&self, texts: &[&str]) -> Result<Matrix, BoxError> {
        let rows: Vec<Vec<f32>> = texts
            .iter()
            .map(|text| {
                let mut row = vec![0.0f32; 16];
                for word in text.split_whitespace() {
                    let h = word.bytes().fold(7usize, |h, b| h * 31 + usize::from(b));
                    row[h % 16] += 1.0;
                }
                row
            })
            .collect();
        Ok(Matrix::from_rows(&rows).unwrap())
    }
}

/// Names a group from a hash of its members, so names are deterministic and distinct,
/// and records every request it was sent.
#[derive(Default)]
struct ScriptedNamer {
    requests: Mutex<Vec<NamingRequest>>,
    fail: bool,
}

impl ClusterNamer for ScriptedNamer {
    fn id(&self) -> String {
        "scripted".into()
    }

    fn name(&self, request: &NamingRequest) -> Result<ClusterName, BoxError> {
        self.requests.lock().unwrap().push(request.clone());
        if self.fail {
            return Err("the model returned nonsense".into());
        }
        let hash = request
            .members
            .iter()
            .flat_map(|m| m.bytes())
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        Ok(ClusterName {
            name: format!("Group {hash:016x}"),
            description: format!("Covers {} child clusters.", request.members.len()),
        })
    }
}

/// `n` base clusters with 1–4 conversations each, their vectors drawn from `topics` blobs.
/// The default builder with `top_clusters` at the top.
fn with_top(top_clusters: usize) -> ClioHierarchy {
    ClioHierarchy {
        top_clusters,
        ..ClioHierarchy::default()
    }
}

fn base(n: usize, topics: usize) -> (Vec<Cluster>, Matrix) {
    let (vectors, _) = common::blobs(topics, n.div_ceil(topics), 16, 0.2, 9);
    let vectors = vectors.select(&(0..n).collect::<Vec<_>>());
    let clusters = (0..n)
        .map(|i| {
            let chat_ids: Vec<String> = (0..i % 4 + 1).map(|j| format!("chat-{i}-{j}")).collect();
            Cluster {
                id: format!("base-{i}"),
                name: format!("Base topic {i}"),
                description: format!("Conversations of base cluster {i}."),
                slug: format!("base_topic_{i}"),
                count: chat_ids.len(),
                chat_ids,
                parent_id: None,
                name_borrowed: false,
            }
        })
        .collect();
    (clusters, vectors)
}

/// Depth of each cluster above the base level (base = 0), checking on the way that
/// every parent exists and no chain loops.
fn levels(tree: &[Cluster], base_len: usize) -> HashMap<String, usize> {
    let by_id: HashMap<&str, &Cluster> = tree.iter().map(|c| (c.id.as_str(), c)).collect();
    assert_eq!(by_id.len(), tree.len(), "cluster ids must be unique");
    let mut level = HashMap::new();
    for base in &tree[..base_len] {
        let mut current = base;
        let mut depth = 0;
        level.insert(current.id.clone(), 0);
        while let Some(parent) = &current.parent_id {
            current = by_id.get(parent.as_str()).expect("parent must exist");
            depth += 1;
            assert!(depth <= tree.len(), "cycle through {}", current.id);
            let previous = level.insert(current.id.clone(), depth);
            assert!(
                previous.is_none_or(|p| p == depth),
                "{} sits on two levels",
                current.id
            );
        }
    }
    assert_eq!(
        level.len(),
        tree.len(),
        "every cluster is reachable from a base cluster"
    );
    level
}

/// Builds the tree for `top_clusters` and checks what every tree must keep.
fn build_checked(
    top_clusters: usize,
    clusters: &[Cluster],
    vectors: &Matrix,
    namer: &dyn ClusterNamer,
    seed: u64,
) -> Vec<Cluster> {
    let tree = with_top(top_clusters)
        .build(clusters.to_vec(), vectors, namer, &WordEmbedder, seed)
        .unwrap();
    check_invariants(&tree, clusters, top_clusters);
    tree
}

fn check_invariants(tree: &[Cluster], base_in: &[Cluster], top_clusters: usize) {
    let n = base_in.len();
    for (built, given) in tree.iter().zip(base_in) {
        assert_eq!((&built.id, &built.chat_ids), (&given.id, &given.chat_ids));
    }
    let level = levels(tree, n);
    let roots = tree.iter().filter(|c| c.parent_id.is_none()).count();
    assert!(roots <= top_clusters.max(1), "{roots} roots");

    let mut per_level: BTreeMap<usize, usize> = BTreeMap::new();
    level
        .values()
        .for_each(|&l| *per_level.entry(l).or_default() += 1);
    let sizes: Vec<usize> = per_level.values().copied().collect();
    assert!(
        sizes.windows(2).all(|w| w[1] < w[0]),
        "a round did not shrink: {sizes:?}"
    );

    let mut names_per_level: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for parent in &tree[n..] {
        names_per_level
            .entry(level[&parent.id])
            .or_default()
            .push(&parent.name);
    }
    for (depth, names) in &names_per_level {
        for (i, a) in names.iter().enumerate() {
            assert!(
                names[..i].iter().all(|b| !same_name(a, b)),
                "level {depth} has two parents named {a:?}: {names:?}"
            );
        }
    }

    for parent in &tree[n..] {
        let children: Vec<&Cluster> = tree
            .iter()
            .filter(|c| c.parent_id.as_deref() == Some(&parent.id))
            .collect();
        assert!(!children.is_empty(), "{} has no children", parent.id);
        let child_total: usize = children.iter().map(|c| c.count).sum();
        assert_eq!(parent.count, child_total);
        assert_eq!(parent.count, parent.chat_ids.len());
        let union: HashSet<&String> = children.iter().flat_map(|c| &c.chat_ids).collect();
        assert_eq!(union, parent.chat_ids.iter().collect());
        assert!(children
            .iter()
            .all(|c| level[&c.id] + 1 == level[&parent.id]));
        assert!(!parent.slug.is_empty());
    }
}

/// Gives every parent one name.
struct OneNameNamer;

impl ClusterNamer for OneNameNamer {
    fn id(&self) -> String {
        "one-name".into()
    }
    fn name(&self, _: &NamingRequest) -> Result<ClusterName, BoxError> {
        Ok(ClusterName {
            name: "Discuss many things".into(),
            description: "Users discussed many things.".into(),
        })
    }
}

#[test]
fn parents_of_one_level_never_share_a_name() {
    let (clusters, vectors) = base(40, 5);
    // check_invariants holds every level's names distinct.
    let tree = build_checked(3, &clusters, &vectors, &OneNameNamer, 1);
    let numbered = tree[clusters.len()..]
        .iter()
        .filter(|c| c.name.starts_with("Discuss many things ("))
        .count();
    assert!(numbered > 0, "{tree:?}");
}

#[test]
fn builds_a_valid_forest() {
    let (clusters, vectors) = base(60, 6);
    let namer = ScriptedNamer::default();
    let tree = build_checked(4, &clusters, &vectors, &namer, 1);
    assert!(tree.len() > clusters.len());
    assert!(
        tree.iter().all(|c| !c.name_borrowed),
        "names the namer wrote are not marked"
    );

    for request in namer.requests.lock().unwrap().iter() {
        assert!(request.is_parent);
        assert!(
            request.members.len() >= 2,
            "a single child is never sent to the namer"
        );
        assert!(request.contrast.len() <= 5);
        let members: HashSet<&str> = request
            .members
            .iter()
            .map(|m| m.split(": ").next().unwrap())
            .collect();
        assert!(request
            .contrast
            .iter()
            .all(|c| !members.contains(c.as_str())));
    }
}

#[test]
fn same_seed_builds_the_same_tree() {
    let (clusters, vectors) = base(45, 5);
    let builder = ClioHierarchy::default();
    let a = builder
        .build(
            clusters.clone(),
            &vectors,
            &ScriptedNamer::default(),
            &WordEmbedder,
            3,
        )
        .unwrap();
    let b = builder
        .build(
            clusters,
            &vectors,
            &ScriptedNamer::default(),
            &WordEmbedder,
            3,
        )
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_level_limit_stops_early() {
    let (clusters, vectors) = base(60, 6);
    let builder = ClioHierarchy {
        top_clusters: 2,
        levels: Some(1),
        ratio: 3.0,
    };
    let tree = builder
        .build(
            clusters.clone(),
            &vectors,
            &ScriptedNamer::default(),
            &WordEmbedder,
            0,
        )
        .unwrap();
    check_invariants(&tree, &clusters, 60);
    assert_eq!(levels(&tree, 60).values().max(), Some(&1));
}

#[test]
fn a_single_base_cluster_is_its_own_root() {
    let (clusters, vectors) = base(1, 1);
    let tree = ClioHierarchy::default()
        .build(
            clusters.clone(),
            &vectors,
            &ScriptedNamer::default(),
            &WordEmbedder,
            0,
        )
        .unwrap();
    assert_eq!(tree, clusters);
}

#[test]
fn few_base_clusters_get_no_parents() {
    let (clusters, vectors) = base(8, 3);
    let namer = ScriptedNamer::default();
    let tree = with_top(8)
        .build(clusters.clone(), &vectors, &namer, &WordEmbedder, 0)
        .unwrap();
    assert_eq!(tree, clusters);
    assert!(namer.requests.lock().unwrap().is_empty());
}

#[test]
fn a_failing_namer_still_gives_one_forest() {
    let (clusters, vectors) = base(30, 3);
    let namer = ScriptedNamer {
        fail: true,
        ..ScriptedNamer::default()
    };
    let tree = build_checked(3, &clusters, &vectors, &namer, 0);
    assert!(!namer.requests.lock().unwrap().is_empty());
    // Every parent falls back to the name of one of its base descendants.
    let base_names: HashSet<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    assert!(tree[30..]
        .iter()
        .all(|p| base_names.contains(p.name.as_str())));
    // and says so, while the base clusters it was given keep their own mark.
    assert!(tree[30..].iter().all(|p| p.name_borrowed));
    assert!(tree[..30].iter().all(|c| !c.name_borrowed));
}

#[test]
fn identical_vectors_collapse_into_one_root() {
    let (clusters, _) = base(12, 1);
    let vectors = Matrix::from_rows(&[[0.1f32, 0.7, -0.2]; 12]).unwrap();
    let tree = with_top(3)
        .build(
            clusters.clone(),
            &vectors,
            &ScriptedNamer::default(),
            &WordEmbedder,
            0,
        )
        .unwrap();
    check_invariants(&tree, &clusters, 3);
    assert_eq!(tree.iter().filter(|c| c.parent_id.is_none()).count(), 1);
}

#[test]
fn bad_input_is_rejected_with_a_reason() {
    let (clusters, vectors) = base(10, 2);
    let namer = ScriptedNamer::default();
    let build = |b: ClioHierarchy, c: Vec<Cluster>, v: &Matrix| {
        b.build_tree(c, v, &namer, &WordEmbedder, 0)
    };
    let fewer = vectors.select(&[0, 1, 2]);
    assert!(matches!(
        build(ClioHierarchy::default(), clusters.clone(), &fewer),
        Err(ClusterError::VectorCountMismatch {
            vectors: 3,
            clusters: 10
        })
    ));
    let mut duplicated = clusters.clone();
    duplicated[4].id = "base-1".into();
    assert!(matches!(
        build(ClioHierarchy::default(), duplicated, &vectors),
        Err(ClusterError::DuplicateClusterId(id)) if id == "base-1"
    ));
    let flat = ClioHierarchy {
        ratio: 1.0,
        ..ClioHierarchy::default()
    };
    assert!(matches!(
        build(flat, clusters.clone(), &vectors),
        Err(ClusterError::InvalidParameter { name: "ratio", .. })
    ));
    let rootless = with_top(0);
    assert!(matches!(
        build(rootless, clusters, &vectors),
        Err(ClusterError::InvalidParameter {
            name: "top_clusters",
            ..
        })
    ));
}

#[test]
fn id_changes_with_parameters() {
    let a = ClioHierarchy::default();
    let ids: HashSet<String> = [
        a.id(),
        ClioHierarchy {
            top_clusters: 5,
            ..a.clone()
        }
        .id(),
        ClioHierarchy {
            levels: Some(2),
            ..a.clone()
        }
        .id(),
        ClioHierarchy {
            ratio: 2.0,
            ..a.clone()
        }
        .id(),
    ]
    .into_iter()
    .collect();
    assert_eq!(ids.len(), 4);
}

/// Proposes distinct candidate parents and places each cluster by a fixed rule,
/// recording what it was asked and what it chose.
#[derive(Default)]
struct ProposingNamer {
    inner: ScriptedNamer,
    proposals: Mutex<Vec<ProposalRequest>>,
    choices: Mutex<HashMap<String, String>>,
    choice_requests: Mutex<usize>,
    out_of_range: bool,
    /// Proposes the same single parent for every neighbourhood.
    one_parent: bool,
}

impl ClusterNamer for ProposingNamer {
    fn id(&self) -> String {
        "proposing".into()
    }
    fn name(&self, request: &NamingRequest) -> Result<ClusterName, BoxError> {
        self.inner.name(request)
    }
    fn propose_parents(&self, request: &ProposalRequest) -> Result<Vec<String>, BoxError> {
        let mut proposals = self.proposals.lock().unwrap();
        let batch = proposals.len();
        proposals.push(request.clone());
        if self.one_parent {
            return Ok(vec!["Everything Else Together".into()]);
        }
        Ok((0..request.count)
            .map(|i| format!("Parent{batch}x{i} alpha{batch}{i} beta{i}{batch}"))
            .collect())
    }
    fn choose_parent(&self, request: &ChoiceRequest) -> Result<usize, BoxError> {
        *self.choice_requests.lock().unwrap() += 1;
        if self.out_of_range {
            return Ok(request.options.len());
        }
        let index = request.item.len() % request.options.len();
        self.choices
            .lock()
            .unwrap()
            .insert(request.item.clone(), request.options[index].clone());
        Ok(index)
    }
}

#[test]
fn a_proposing_namer_groups_clusters_by_its_choices() {
    let (clusters, vectors) = base(60, 6);
    let namer = ProposingNamer::default();
    let tree = build_checked(4, &clusters, &vectors, &namer, 5);

    let proposals = namer.proposals.lock().unwrap();
    assert!(!proposals.is_empty());
    assert!(proposals
        .iter()
        .all(|p| p.count >= 1 && !p.members.is_empty()));
    // 60 clusters make three neighbourhoods of about 20 in the first round.
    assert!(proposals.len() >= 3, "{} proposals", proposals.len());

    // Children of one first-level parent all chose the same candidate.
    let choices = namer.choices.lock().unwrap();
    let describe = |c: &Cluster| format!("{}: {}", c.name, c.description);
    let mut chosen_by_parent: HashMap<&str, HashSet<&str>> = HashMap::new();
    for child in &tree[..60] {
        let parent = child.parent_id.as_deref().unwrap();
        if let Some(choice) = choices.get(&describe(child)) {
            chosen_by_parent.entry(parent).or_default().insert(choice);
        }
    }
    assert!(!chosen_by_parent.is_empty());
    assert!(chosen_by_parent.values().all(|chosen| chosen.len() == 1));
}

#[test]
fn a_model_that_merges_everything_does_not_shrink_the_top_below_the_asked_size() {
    let (clusters, vectors) = base(45, 5);
    let namer = ProposingNamer {
        one_parent: true,
        ..ProposingNamer::default()
    };
    let tree = build_checked(8, &clusters, &vectors, &namer, 3);
    assert!(!namer.proposals.lock().unwrap().is_empty());
    let roots = tree.iter().filter(|c| c.parent_id.is_none()).count();
    assert!((6..=8).contains(&roots), "{roots} roots for a top of 8");
}

#[test]
fn model_grouping_is_deterministic_for_a_seed() {
    let (clusters, vectors) = base(45, 5);
    let build = || {
        ClioHierarchy::default()
            .build(
                clusters.clone(),
                &vectors,
                &ProposingNamer::default(),
                &WordEmbedder,
                11,
            )
            .unwrap()
    };
    assert_eq!(build(), build());
}

#[test]
fn an_out_of_range_choice_falls_back_to_the_nearest_parent() {
    let (clusters, vectors) = base(30, 3);
    let namer = ProposingNamer {
        out_of_range: true,
        ..ProposingNamer::default()
    };
    build_checked(3, &clusters, &vectors, &namer, 0);
    assert!(!namer.proposals.lock().unwrap().is_empty());
    assert!(
        *namer.choice_requests.lock().unwrap() > 0,
        "clusters were offered to the namer before falling back"
    );
}
