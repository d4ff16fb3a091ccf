//! The clustering algorithms of Kura for Rust: k-means ([`KMeans`]) and HDBSCAN on
//! a UMAP reduction ([`Hdbscan`]) for base clusters, Clio's hierarchy of
//! meta-clusters ([`ClioHierarchy`]), UMAP ([`Umap`]) and PCA ([`Pca`]) for the 2-D
//! map, k-nearest-neighbour lists (exact, or by NN-descent for large inputs), and
//! external metrics for scoring against known labels.
//!
//! The key design decision is exact, deterministic numerics without a BLAS: all
//! of it is plain Rust over [`kura_core::Matrix`] with rayon for parallelism, every
//! random choice comes from a seeded ChaCha stream, and every parallel reduction
//! runs in a fixed order. A run directory therefore reproduces from its seed on any
//! machine and any core count, which is what lets the checkpoint store trust a
//! fingerprint instead of recomputing. Everything works in cosine geometry
//! (L2-normalised rows), the geometry sentence embeddings are trained for, except
//! PCA, which maps whatever geometry it is given.

mod blocked;
mod error;
mod hdbscan;
mod hierarchy;
mod kdtree;
mod kmeans;
mod knn;
pub mod metrics;
mod nndescent;
mod parents;
mod pca;
mod umap;
mod vector;

pub use error::ClusterError;
pub use hdbscan::{hdbscan, Hdbscan};
pub use hierarchy::ClioHierarchy;
pub use kmeans::{default_k, kmeans, KMeans, KMeansFit, KMeansMode, AUTO_LLOYD_MAX_PAIRS};
pub use knn::{
    cosine_neighbours, cosine_neighbours_seeded, euclidean_neighbours, Neighbours,
    EXACT_NEIGHBOURS_UP_TO,
};
pub use kura_core::vector::{nearest_rows, normalized_mean};
pub use nndescent::nn_descent;
pub use pca::{pca, pca_2d, Pca};
pub use umap::Umap;
