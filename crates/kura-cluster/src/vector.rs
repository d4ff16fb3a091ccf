//! Checks, normalisation and seeded randomness for the algorithms of this crate; the
//! vector arithmetic itself is `kura_core::vector`, shared with the pipeline and
//! search.

use std::borrow::Cow;

pub(crate) use kura_core::vector::{
    dot, nearest_rows, normalize_in_place, normalized_mean, squared_distance,
};
use kura_core::Matrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::ClusterError;

/// Fails on the first NaN or infinity, naming its row and column.
pub(crate) fn check_finite(points: &Matrix) -> Result<(), ClusterError> {
    for (row, values) in points.iter_rows().enumerate() {
        if let Some(col) = values.iter().position(|v| !v.is_finite()) {
            return Err(ClusterError::NonFinite {
                row,
                col,
                value: values[col],
            });
        }
    }
    Ok(())
}

/// The rows scaled to unit length. Sentence embeddings usually arrive normalised
/// already; then the input is borrowed instead of copied.
pub(crate) fn normalized_rows(points: &Matrix) -> Cow<'_, Matrix> {
    let is_unit_or_zero = |r: &[f32]| {
        let n = dot(r, r);
        n == 0.0 || (n - 1.0).abs() < 1e-5
    };
    if points.iter_rows().all(is_unit_or_zero) {
        return Cow::Borrowed(points);
    }
    let mut out = points.clone();
    for i in 0..out.rows() {
        normalize_in_place(out.row_mut(i));
    }
    Cow::Owned(out)
}

/// A portable seeded generator: ChaCha's output is specified, so a seed gives the
/// same clusters on every platform and every version of `rand`.
pub(crate) fn seeded_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}
