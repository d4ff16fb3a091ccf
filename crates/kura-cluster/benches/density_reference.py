"""Times the Python packages on the inputs `cargo bench --bench density` wrote.

    pip install hdbscan umap-learn
    KURA_BENCH_DATA=/tmp/density cargo bench -p kura-cluster --bench density
    python3 crates/kura-cluster/benches/density_reference.py /tmp/density

Threads follow the machine, as in the Rust bench. UMAP is timed twice: the first
call includes numba's compilation, which every fresh Python process pays.
"""

import os
import sys
import time

import numpy as np


def main(folder):
    import hdbscan
    from sklearn.metrics import v_measure_score

    points = np.load(os.path.join(folder, "hdbscan_points.npy"))
    truth = np.load(os.path.join(folder, "hdbscan_truth.npy")).ravel().astype(int)
    started = time.perf_counter()
    labels = hdbscan.HDBSCAN(min_cluster_size=10, min_samples=10).fit_predict(points)
    seconds = time.perf_counter() - started
    clusters = labels.max() + 1
    noise = (labels < 0).mean() * 100
    flat = np.where(labels < 0, clusters, labels)
    print(
        f"hdbscan {points.shape[0]} x {points.shape[1]}: {seconds:.2f} s, {clusters} clusters, "
        f"{noise:.1f}% noise, V-measure {v_measure_score(truth, flat):.3f}"
    )

    import umap

    wide = np.load(os.path.join(folder, "umap_points.npy"))
    for attempt in ("first (with numba compilation)", "second"):
        started = time.perf_counter()
        umap.UMAP(n_neighbors=15, n_components=2, metric="cosine", random_state=None).fit_transform(wide)
        print(f"umap-learn {wide.shape[0]} x {wide.shape[1]} -> 2, {attempt}: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1])
