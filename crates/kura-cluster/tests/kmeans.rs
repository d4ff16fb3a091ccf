mod common;

use kura_cluster::metrics::v_measure;
use kura_cluster::{default_k, kmeans, ClusterError, KMeans, KMeansMode};
use kura_core::{Clusterer, Matrix};

/// k-means with `k` clusters in each mode: full Lloyd as `kmeans(points, k, seed,
/// 2, 10)` runs it, and mini-batch with batches small enough to take several
/// steps. The edge cases below must hold for both.
fn in_each_mode(k: usize) -> [KMeans; 2] {
    [KMeansMode::Lloyd, KMeansMode::MiniBatch].map(|mode| KMeans {
        k: Some(k),
        restarts: 2,
        max_iter: 10,
        mode,
        batch_size: 8,
        ..KMeans::default()
    })
}

#[test]
fn recovers_well_separated_blobs() {
    let (points, truth) = common::blobs(6, 50, 32, 0.03, 1);
    let fit = kmeans(&points, 6, 7, 4, 100).unwrap();
    assert_eq!(fit.centroids.rows(), 6);
    assert_eq!(v_measure(&truth, &fit.labels), 1.0);
}

#[test]
fn same_seed_gives_same_fit() {
    let (points, _) = common::blobs(8, 40, 24, 0.3, 2);
    let a = kmeans(&points, 10, 42, 3, 50).unwrap();
    let b = kmeans(&points, 10, 42, 3, 50).unwrap();
    assert_eq!(a, b);
}

#[test]
fn result_does_not_depend_on_thread_count() {
    let (points, _) = common::blobs(8, 300, 24, 0.3, 3);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| kmeans(&points, 12, 5, 2, 50).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(3));
    assert_eq!(one, run(8));
}

#[test]
fn more_restarts_never_give_a_worse_inertia() {
    let (points, _) = common::blobs(10, 30, 16, 0.5, 4);
    let single = kmeans(&points, 10, 9, 1, 100).unwrap();
    let several = kmeans(&points, 10, 9, 6, 100).unwrap();
    assert!(several.inertia <= single.inertia);
}

#[test]
fn inertia_and_centroids_match_the_labels() {
    let (points, _) = common::blobs(4, 25, 8, 0.4, 5);
    let fit = kmeans(&points, 4, 1, 2, 100).unwrap();
    let unit: Vec<Vec<f32>> = points
        .iter_rows()
        .map(|r| common::unit(r.to_vec()))
        .collect();
    let mut inertia = 0.0f64;
    for cluster in 0..fit.centroids.rows() {
        let members: Vec<&Vec<f32>> = (0..unit.len())
            .filter(|&i| fit.labels[i] == cluster)
            .map(|i| &unit[i])
            .collect();
        assert!(!members.is_empty(), "cluster {cluster} is empty");
        let dim = fit.centroids.cols();
        let mean = common::unit(
            (0..dim)
                .map(|d| members.iter().map(|m| m[d]).sum())
                .collect(),
        );
        for (&m, &c) in mean.iter().zip(fit.centroids.row(cluster)) {
            assert!((m - c).abs() < 1e-5);
        }
        for m in members {
            inertia += m
                .iter()
                .zip(fit.centroids.row(cluster))
                .map(|(a, b)| f64::from((a - b) * (a - b)))
                .sum::<f64>();
        }
    }
    assert!((inertia - fit.inertia).abs() < 1e-4 * inertia.max(1.0));
}

#[test]
fn more_clusters_than_points_uses_one_cluster_per_point() {
    let points = Matrix::from_rows(&[[1.0f32, 0.0], [0.0, 1.0], [-1.0, 0.0]]).unwrap();
    for config in in_each_mode(10) {
        let fit = config.fit(&points, 0).unwrap();
        assert_eq!(fit.centroids.rows(), 3, "{:?}", config.mode);
        let mut labels = fit.labels.clone();
        labels.sort_unstable();
        assert_eq!(labels, vec![0, 1, 2]);
        assert_eq!(fit.inertia, 0.0);
    }
}

#[test]
fn zero_clusters_is_an_error() {
    let points = Matrix::from_rows(&[[1.0f32, 0.0]]).unwrap();
    for config in in_each_mode(0) {
        assert!(matches!(
            config.fit(&points, 0),
            Err(ClusterError::ZeroClusters)
        ));
    }
}

#[test]
fn no_points_is_an_error() {
    let points = Matrix::zeros(0, 4);
    for config in in_each_mode(3) {
        assert!(matches!(
            config.fit(&points, 0),
            Err(ClusterError::NoPoints)
        ));
    }
    let err = KMeans::default().cluster(&points, 0).unwrap_err();
    assert!(err.to_string().contains("no points"), "{err}");
}

#[test]
fn identical_points_form_one_cluster() {
    let points = Matrix::from_rows(&[[0.3f32, -0.2, 0.9]; 20]).unwrap();
    for config in in_each_mode(4) {
        let fit = config.fit(&points, 0).unwrap();
        assert_eq!(fit.centroids.rows(), 1, "{:?}", config.mode);
        assert!(fit.labels.iter().all(|&l| l == 0));
        assert_eq!(fit.inertia, 0.0);
    }
}

#[test]
fn duplicated_positions_give_one_cluster_per_position() {
    let positions = [[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let rows: Vec<[f32; 3]> = (0..30).map(|i| positions[i % 3]).collect();
    let points = Matrix::from_rows(&rows).unwrap();
    let truth: Vec<usize> = (0..30).map(|i| i % 3).collect();
    for k in [3, 5] {
        let fit = kmeans(&points, k, 11, 3, 20).unwrap();
        assert_eq!(fit.centroids.rows(), 3, "k = {k}");
        assert_eq!(v_measure(&truth, &fit.labels), 1.0, "k = {k}");
    }
}

#[test]
fn nan_is_an_error_naming_the_row() {
    let mut rows = vec![[0.5f32, 0.5]; 10];
    rows[7][1] = f32::NAN;
    let points = Matrix::from_rows(&rows).unwrap();
    for config in in_each_mode(2) {
        let err = config.fit(&points, 0).unwrap_err();
        assert!(matches!(
            err,
            ClusterError::NonFinite { row: 7, col: 1, .. }
        ));
        assert!(err.to_string().contains("row 7"), "{err}");
    }
}

#[test]
fn zero_vectors_are_valid_points() {
    let rows = [
        [0.0f32, 0.0],
        [0.0, 0.0],
        [1.0, 0.0],
        [2.0, 0.1],
        [0.0, 3.0],
        [0.1, 1.0],
    ];
    let points = Matrix::from_rows(&rows).unwrap();
    let fit = kmeans(&points, 3, 0, 4, 50).unwrap();
    assert_eq!(fit.labels[0], fit.labels[1]);
    assert_eq!(fit.labels[2], fit.labels[3]);
    assert_eq!(fit.labels[4], fit.labels[5]);
    assert_ne!(fit.labels[0], fit.labels[2]);
    assert_ne!(fit.labels[0], fit.labels[4]);
    assert!(fit.centroids.as_slice().iter().all(|v| v.is_finite()));
}

#[test]
fn a_single_point_is_one_cluster() {
    let points = Matrix::from_rows(&[[0.2f32, 0.4, 0.1]]).unwrap();
    let fit = kmeans(&points, 5, 0, 2, 10).unwrap();
    assert_eq!(fit.labels, vec![0]);
    assert_eq!(fit.centroids.rows(), 1);
    assert_eq!(fit.inertia, 0.0);
}

#[test]
fn clusterer_uses_default_k_and_labels_every_point() {
    let (points, _) = common::blobs(5, 60, 16, 0.1, 6);
    let labels = KMeans::default().cluster(&points, 3).unwrap();
    assert_eq!(labels.len(), points.rows());
    let found: std::collections::BTreeSet<usize> = labels.iter().map(|l| l.unwrap()).collect();
    assert_eq!(found.len(), default_k(points.rows()));
    assert_eq!(found.into_iter().max(), Some(default_k(points.rows()) - 1));
}

#[test]
fn clusterer_id_changes_with_parameters() {
    let base = KMeans::default();
    let ids = [
        base.id(),
        KMeans {
            k: Some(7),
            ..base.clone()
        }
        .id(),
        KMeans {
            restarts: 9,
            ..base.clone()
        }
        .id(),
        KMeans {
            max_iter: 3,
            ..base.clone()
        }
        .id(),
        KMeans {
            tol: 0.5,
            ..base.clone()
        }
        .id(),
    ];
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
}

#[test]
fn default_k_stays_within_bounds_and_grows() {
    assert_eq!(default_k(0), 0);
    let mut previous = 0;
    for n in 1..20_000 {
        let k = default_k(n);
        assert!(k >= 1 && k <= n, "n = {n}, k = {k}");
        assert!(
            k >= previous,
            "default_k must not shrink as n grows (n = {n})"
        );
        previous = k;
    }
    // Kura's ten conversations per cluster for small sets, far fewer for large ones.
    assert_eq!(default_k(100), 10);
    assert!(default_k(10_000) < 10_000 / 10);
}

#[test]
fn all_zero_vectors_form_one_cluster_at_the_origin() {
    let points = Matrix::zeros(12, 5);
    let fit = kmeans(&points, 3, 0, 2, 10).unwrap();
    assert_eq!(fit.centroids.rows(), 1);
    assert!(fit.labels.iter().all(|&l| l == 0));
    assert!(fit.centroids.as_slice().iter().all(|&v| v == 0.0));
    assert_eq!(fit.inertia, 0.0);
}

#[test]
fn infinity_is_an_error_naming_row_and_column_through_the_trait() {
    let mut rows = vec![[0.1f32, 0.2, 0.3]; 5];
    rows[3][2] = f32::INFINITY;
    let points = Matrix::from_rows(&rows).unwrap();
    let err = KMeans::default()
        .cluster(&points, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("row 3, column 2") && err.contains("finite"),
        "{err}"
    );
}

#[test]
fn k_equal_to_the_number_of_points_gives_singletons() {
    let (points, _) = common::blobs(3, 4, 6, 0.2, 8);
    let fit = kmeans(&points, points.rows(), 1, 2, 20).unwrap();
    assert_eq!(fit.centroids.rows(), points.rows());
    let distinct: std::collections::BTreeSet<usize> = fit.labels.iter().copied().collect();
    assert_eq!(distinct.len(), points.rows());
    assert!(fit.inertia < 1e-9, "{}", fit.inertia);
}

#[test]
fn the_clusterer_asked_for_more_clusters_than_points_labels_each_point_alone() {
    let points = Matrix::from_rows(&[[1.0f32, 0.0], [0.0, 1.0]]).unwrap();
    let labels = KMeans {
        k: Some(50),
        ..KMeans::default()
    }
    .cluster(&points, 0)
    .unwrap();
    assert_eq!(labels.len(), 2);
    assert_ne!(labels[0], labels[1]);
    assert!(labels.iter().all(|l| l.is_some_and(|c| c < 2)));
}
