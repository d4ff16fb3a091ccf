mod common;

use kura_cluster::{pca_2d, ClusterError, Pca};
use kura_core::{Matrix, Reducer};

fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

#[test]
fn points_on_a_line_land_on_the_first_axis() {
    let direction = common::unit((0..20).map(|i| (i as f32 * 0.7).sin()).collect());
    let offset: Vec<f32> = (0..20).map(|i| i as f32 * 0.1).collect();
    let ts: Vec<f32> = (0..50).map(|i| i as f32 * 0.3 - 4.0).collect();
    let rows: Vec<Vec<f32>> = ts
        .iter()
        .map(|&t| {
            offset
                .iter()
                .zip(&direction)
                .map(|(o, d)| o + t * d)
                .collect()
        })
        .collect();
    let coords = pca_2d(&Matrix::from_rows(&rows).unwrap(), 1).unwrap();
    assert_eq!((coords.rows(), coords.cols()), (50, 2));
    for (i, c) in coords.iter_rows().enumerate() {
        assert!(c[1].abs() < 1e-3, "row {i} is off the axis: {c:?}");
    }
    // Distances along the line are preserved on the first axis.
    let (first, last) = (coords.row(0)[0], coords.row(49)[0]);
    assert!(((last - first).abs() - (ts[49] - ts[0])).abs() < 1e-3);
}

#[test]
fn recovers_the_plane_of_largest_variance() {
    // Variance 9 along e0, 1 along e1, almost none along e2..e5.
    let (noise, _) = common::blobs(1, 400, 6, 0.001, 3);
    let rows: Vec<Vec<f32>> = (0..400)
        .map(|i| {
            let a = ((i * 37) % 400) as f32 / 400.0 - 0.5;
            let b = ((i * 91) % 400) as f32 / 400.0 - 0.5;
            let mut r: Vec<f32> = noise.row(i).iter().map(|x| x * 0.01).collect();
            r[0] += 6.0 * a;
            r[1] += 2.0 * b;
            r
        })
        .collect();
    let points = Matrix::from_rows(&rows).unwrap();
    let coords = pca_2d(&points, 8).unwrap();
    // The projection keeps pairwise distances (the dropped axes carry no variance).
    for (i, j) in [(0, 1), (5, 200), (17, 399)] {
        let full = distance(points.row(i), points.row(j));
        let map = distance(coords.row(i), coords.row(j));
        assert!(
            (full - map).abs() < 0.01,
            "pair ({i}, {j}): {full} vs {map}"
        );
    }
    let spread = |axis: usize| coords.iter_rows().map(|c| c[axis] * c[axis]).sum::<f32>();
    assert!(spread(0) > 4.0 * spread(1));
}

#[test]
fn same_seed_same_map_and_other_seeds_do_not_mirror_it() {
    let (points, _) = common::blobs(5, 100, 48, 0.2, 4);
    let a = pca_2d(&points, 1).unwrap();
    assert_eq!(a, pca_2d(&points, 1).unwrap());
    for seed in 2..10 {
        let b = pca_2d(&points, seed).unwrap();
        for (p, q) in a.iter_rows().zip(b.iter_rows()) {
            assert!(distance(p, q) < 1e-3, "seed {seed}: {p:?} vs {q:?}");
        }
    }
}

#[test]
fn degenerate_inputs_give_finite_coordinates() {
    let one = pca_2d(&Matrix::from_rows(&[[1.0f32, 2.0, 3.0]]).unwrap(), 0).unwrap();
    assert_eq!(one.as_slice(), &[0.0, 0.0]);

    let two = pca_2d(
        &Matrix::from_rows(&[[1.0f32, 1.0, 0.0], [3.0, 1.0, 0.0]]).unwrap(),
        0,
    )
    .unwrap();
    assert!(
        (two.row(0)[0] + 1.0).abs() < 1e-5 && (two.row(1)[0] - 1.0).abs() < 1e-5,
        "{two:?}"
    );
    assert!(two.row(0)[1].abs() < 1e-6 && two.row(1)[1].abs() < 1e-6);

    let same = pca_2d(&Matrix::from_rows(&[[0.5f32, -0.5, 2.0]; 7]).unwrap(), 0).unwrap();
    assert!(same.as_slice().iter().all(|&v| v == 0.0));

    let narrow = pca_2d(&Matrix::from_rows(&[[1.0f32], [2.0], [4.0]]).unwrap(), 0).unwrap();
    assert!(narrow.as_slice().iter().all(|v| v.is_finite()));
    assert!(narrow.iter_rows().all(|c| c[1] == 0.0));

    assert_eq!(pca_2d(&Matrix::zeros(0, 5), 0).unwrap().rows(), 0);
}

#[test]
fn nan_is_an_error_naming_the_row() {
    let mut rows = vec![[0.5f32, 0.5]; 4];
    rows[2][0] = f32::INFINITY;
    let err = pca_2d(&Matrix::from_rows(&rows).unwrap(), 0).unwrap_err();
    assert!(matches!(
        err,
        ClusterError::NonFinite { row: 2, col: 0, .. }
    ));
    assert!(Pca.reduce(&Matrix::from_rows(&rows).unwrap(), 0).is_err());
}
