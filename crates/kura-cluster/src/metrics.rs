//! External clustering metrics, for scoring a clustering against known labels
//! (the labelled test sets). Conventions follow scikit-learn so scores can be
//! compared with published Python numbers: natural logarithms, and the degenerate
//! cases (one class, one cluster) score as perfect matches where scikit-learn does.

use std::collections::BTreeMap;

/// Counts of each (true, predicted) label pair and of each label on its own side.
/// Ordered maps keep every sum in the same order, so scores are reproducible.
struct Contingency {
    n: f64,
    cells: BTreeMap<(usize, usize), f64>,
    true_sizes: BTreeMap<usize, f64>,
    pred_sizes: BTreeMap<usize, f64>,
}

impl Contingency {
    /// # Panics
    /// If the two labellings differ in length (a programming error).
    fn new(labels_true: &[usize], labels_pred: &[usize]) -> Self {
        assert_eq!(
            labels_true.len(),
            labels_pred.len(),
            "both labellings must label the same points"
        );
        let mut c = Contingency {
            n: labels_true.len() as f64,
            cells: BTreeMap::new(),
            true_sizes: BTreeMap::new(),
            pred_sizes: BTreeMap::new(),
        };
        for (&t, &p) in labels_true.iter().zip(labels_pred) {
            *c.cells.entry((t, p)).or_default() += 1.0;
            *c.true_sizes.entry(t).or_default() += 1.0;
            *c.pred_sizes.entry(p).or_default() += 1.0;
        }
        c
    }

    /// Mutual information (nats) of the two labellings.
    fn mutual_information(&self) -> f64 {
        let n = self.n;
        self.cells
            .iter()
            .map(|(&(t, p), &nij)| {
                (nij / n) * ((nij * n) / (self.true_sizes[&t] * self.pred_sizes[&p])).ln()
            })
            .sum::<f64>()
            .max(0.0)
    }

    fn true_entropy(&self) -> f64 {
        entropy(self.true_sizes.values(), self.n)
    }

    fn pred_entropy(&self) -> f64 {
        entropy(self.pred_sizes.values(), self.n)
    }
}

/// Entropy (nats) of a distribution given as counts summing to `n`.
fn entropy<'a>(sizes: impl Iterator<Item = &'a f64>, n: f64) -> f64 {
    -sizes
        .filter(|&&s| s > 0.0)
        .map(|&s| (s / n) * (s / n).ln())
        .sum::<f64>()
}

/// Homogeneity, completeness and their harmonic mean, the V-measure.
///
/// # Panics
/// If the two labellings differ in length.
pub fn homogeneity_completeness_v_measure(
    labels_true: &[usize],
    labels_pred: &[usize],
) -> (f64, f64, f64) {
    if labels_true.is_empty() {
        return (1.0, 1.0, 1.0);
    }
    let c = Contingency::new(labels_true, labels_pred);
    let mi = c.mutual_information();
    let (h_true, h_pred) = (c.true_entropy(), c.pred_entropy());
    let homogeneity = if h_true == 0.0 { 1.0 } else { mi / h_true };
    let completeness = if h_pred == 0.0 { 1.0 } else { mi / h_pred };
    let v = if homogeneity + completeness == 0.0 {
        0.0
    } else {
        2.0 * homogeneity * completeness / (homogeneity + completeness)
    };
    (homogeneity, completeness, v)
}

/// The V-measure: 1 for a perfect clustering, 0 for one independent of the truth.
pub fn v_measure(labels_true: &[usize], labels_pred: &[usize]) -> f64 {
    homogeneity_completeness_v_measure(labels_true, labels_pred).2
}

/// Normalised mutual information with the arithmetic-mean normaliser (scikit-learn's
/// default; numerically the V-measure).
pub fn nmi(labels_true: &[usize], labels_pred: &[usize]) -> f64 {
    if labels_true.is_empty() {
        return 1.0;
    }
    let c = Contingency::new(labels_true, labels_pred);
    if c.true_sizes.len() == 1 && c.pred_sizes.len() == 1 {
        return 1.0;
    }
    let mi = c.mutual_information();
    let normaliser = (c.true_entropy() + c.pred_entropy()) / 2.0;
    if normaliser <= 0.0 {
        0.0
    } else {
        (mi / normaliser).min(1.0)
    }
}

/// The adjusted Rand index: 1 for identical partitions, about 0 for random ones
/// (it can be negative).
pub fn ari(labels_true: &[usize], labels_pred: &[usize]) -> f64 {
    let c = Contingency::new(labels_true, labels_pred);
    let pairs = |x: f64| x * (x - 1.0) / 2.0;
    let index: f64 = c.cells.values().map(|&x| pairs(x)).sum();
    let true_pairs: f64 = c.true_sizes.values().map(|&x| pairs(x)).sum();
    let pred_pairs: f64 = c.pred_sizes.values().map(|&x| pairs(x)).sum();
    let total = pairs(c.n);
    if total == 0.0 {
        return 1.0;
    }
    let expected = true_pairs * pred_pairs / total;
    let maximum = (true_pairs + pred_pairs) / 2.0;
    if maximum == expected {
        // No split at all, or every point alone, on both sides: a perfect match.
        return 1.0;
    }
    (index - expected) / (maximum - expected)
}
