//! Errors of the clustering stage. Each names the row, cluster or parameter at fault
//! and says what to change, because the input is usually thousands of embeddings
//! and the user needs to find the one that is wrong.

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("there are no points to cluster; embed at least one conversation first")]
    NoPoints,
    #[error("k-means was asked for 0 clusters; ask for at least 1")]
    ZeroClusters,
    #[error(
        "row {row}, column {col} is {value}: every coordinate must be a finite number; \
         re-embed that row or drop it"
    )]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("{name} is {value}: {expected}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "{vectors} vectors were given for {clusters} base clusters; \
         give exactly one vector per base cluster"
    )]
    VectorCountMismatch { vectors: usize, clusters: usize },
    #[error("base cluster id {0:?} occurs more than once; cluster ids must be unique")]
    DuplicateClusterId(String),
}

impl ClusterError {
    pub(crate) fn invalid(
        name: &'static str,
        value: impl ToString,
        expected: &'static str,
    ) -> Self {
        ClusterError::InvalidParameter {
            name,
            value: value.to_string(),
            expected,
        }
    }
}
