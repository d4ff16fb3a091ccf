use kura_cluster::metrics::{ari, homogeneity_completeness_v_measure, nmi, v_measure};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn perfect_labelling_scores_one_under_any_renaming() {
    let truth = [0, 0, 1, 1, 2, 2, 2];
    let renamed = [5, 5, 0, 0, 9, 9, 9];
    for score in [v_measure, nmi, ari] {
        assert!(close(score(&truth, &renamed), 1.0));
    }
}

#[test]
fn scores_are_symmetric_where_the_definition_is() {
    let a = [0, 0, 1, 1, 2, 2, 0, 1];
    let b = [1, 0, 1, 1, 0, 2, 2, 2];
    assert!(close(v_measure(&a, &b), v_measure(&b, &a)));
    assert!(close(nmi(&a, &b), nmi(&b, &a)));
    assert!(close(ari(&a, &b), ari(&b, &a)));
}

/// truth {0,0,1,1}, prediction {0,0,0,1}, worked by hand (logs base 2 for readability).
#[test]
fn matches_a_hand_computed_case() {
    let truth = [0, 0, 1, 1];
    let pred = [0, 0, 0, 1];
    let log3 = 3f64.log2();
    // H(C) = 1 bit; H(C|K) = 3/4 · H(2/3, 1/3) = 3/4 · (log 3 − 2/3).
    let homogeneity = 1.0 - 0.75 * (log3 - 2.0 / 3.0);
    // H(K) = H(3/4, 1/4) = 2 − 3/4 · log 3; H(K|C) = 1/2 · 1 bit.
    let h_k = 2.0 - 0.75 * log3;
    let completeness = 1.0 - 0.5 / h_k;
    let v = 2.0 * homogeneity * completeness / (homogeneity + completeness);
    let (h, c, got) = homogeneity_completeness_v_measure(&truth, &pred);
    assert!(close(h, homogeneity) && close(c, completeness) && close(got, v));
    // NMI (arithmetic mean) = I / ((H(C) + H(K)) / 2), with I = H(C) − H(C|K).
    let mutual = homogeneity;
    assert!(close(nmi(&truth, &pred), mutual / ((1.0 + h_k) / 2.0)));
    // Pairs: index 1, row pairs 2, column pairs 3, of 6 → expected 1, max 2.5 → ARI 0.
    assert!(close(ari(&truth, &pred), 0.0));
}

#[test]
fn one_cluster_against_a_split_truth() {
    let truth = [0, 0, 1, 1];
    let single = [0, 0, 0, 0];
    let (h, c, v) = homogeneity_completeness_v_measure(&truth, &single);
    assert!(close(h, 0.0) && close(c, 1.0) && close(v, 0.0));
    assert!(close(ari(&truth, &single), 0.0));
    assert!(close(nmi(&truth, &single), 0.0));
}
