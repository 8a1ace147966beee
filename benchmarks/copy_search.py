"""The copy flags' inverted-file search against exact search, on image descriptors.

Computes copy descriptors of the scale benchmark's training and generated PNGs
(``benchmarks/scale_data.py``: every training digit appears in several shifted,
noised variants, so generated images have many near-tied nearest training
images, a hard case) and the copy scores twice: exact, and through
:class:`gmv_plugin.knn.NeighbourSearch`'s inverted file as the pipeline runs it
at this size. Reports agreement and times.

    .venv/bin/python -m benchmarks.copy_search [--train 100000] [--generated 10000]

Writes ``benchmarks/results/copy_search.json``.
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--generated", type=int, default=10_000)
    ap.add_argument("--out", default=str(HERE / "results" / "copy_search.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import numpy as np

    from benchmarks.scale_data import ensure_pngs
    from gmv_plugin import cleansing as gmvcl
    from gmv_plugin import copies as gmvc
    from gmv_plugin import knn as gmvk

    train_paths, _ = ensure_pngs("train", args.train)
    gen_paths, _ = ensure_pngs("generated", args.generated)
    start = time.perf_counter()
    train = gmvcl.read_features(train_paths, stats=False)["desc"]
    gen = gmvcl.read_features(gen_paths, stats=False)["desc"]
    features_s = time.perf_counter() - start
    flipped = gmvc.flip_descriptors(gen)

    start = time.perf_counter()
    approx = gmvc.copy_scores(gen, flipped, train)
    approx_s = time.perf_counter() - start
    budget, gmvk.EXACT_BUDGET = gmvk.EXACT_BUDGET, float("inf")
    start = time.perf_counter()
    exact = gmvc.copy_scores(gen, flipped, train)
    exact_s = time.perf_counter() - start
    gmvk.EXACT_BUDGET = budget

    diff = np.abs(approx["copy_score"] - exact["copy_score"])
    out = {
        "n_train": len(train), "n_generated": len(gen), "descriptor_dim": int(train.shape[1]),
        "search": approx["search"], "exact_search": exact["search"],
        "features_s": features_s, "approx_s": approx_s, "exact_s": exact_s,
        "same_nearest": float(np.mean(approx["nearest"] == exact["nearest"])),
        # descriptors are unit-norm: distances lie in [0, 2]; float32 rounding of
        # |q|^2 + |x|^2 - 2 q.x is about 1e-3 on the distance of near-duplicates
        "nearest_distance_abs_diff_max": float(np.abs(approx["distance"] - exact["distance"]).max()),
        "train_nn_same": float(np.mean(np.abs(approx["train_nn"] - exact["train_nn"]) <= 1e-3)),
        "train_nn_abs_diff_max": float(np.abs(approx["train_nn"] - exact["train_nn"]).max()),
        "copy_score_abs_diff_max": float(diff.max()),
        "copy_score_abs_diff_p99": float(np.percentile(diff, 99)),
        "is_copy_exact": int((exact["copy_score"] >= gmvc.COPY_THRESHOLD).sum()),
        "is_copy_approx": int((approx["copy_score"] >= gmvc.COPY_THRESHOLD).sum()),
        "is_copy_disagree": int(((exact["copy_score"] >= gmvc.COPY_THRESHOLD)
                                 != (approx["copy_score"] >= gmvc.COPY_THRESHOLD)).sum()),
        "machine": "%s, %d CPUs" % (platform.platform(), os.cpu_count()),
        "loadavg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
