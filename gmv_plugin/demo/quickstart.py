"""GMValuator quickstart on real data, no download: ``python -m gmv_plugin.demo.quickstart``.

1. loads scikit-learn's 1,797 handwritten digits (upsampled to 32x32) as the training set;
2. trains a small class-conditional VAE on them and a classifier on a split of them
   (both cached, so a rerun skips training);
3. generates balanced images, labels them with the classifier, and builds the persistent
   FiftyOne dataset ``gmv-quickstart`` (tags ``train`` / ``generated``);
4. values every training image with :func:`gmv_plugin.compute_values` (pixel embeddings,
   L2 re-ranking, realism quality) and prints a report.
"""

import argparse
import pathlib
import sys
import time

import numpy as np

DATASET_NAME = "gmv-quickstart"


def _default_dir(sub):
    return pathlib.Path.home() / ".cache" / "gmv_plugin" / sub


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m gmv_plugin.demo.quickstart",
                                description=__doc__.splitlines()[0])
    p.add_argument("--name", default=DATASET_NAME, help="dataset name (replaced if it exists)")
    p.add_argument("--images-dir", type=pathlib.Path, default=None,
                   help="where PNGs are written (default ~/.cache/gmv_plugin/quickstart/<name>)")
    p.add_argument("--cache-dir", type=pathlib.Path, default=None,
                   help="model checkpoints (default $GMV_CACHE_DIR or ~/.cache/gmv_plugin)")
    p.add_argument("--retrain", action="store_true", help="ignore cached checkpoints")
    p.add_argument("--size", type=int, default=32, help="digits are upsampled to size x size")
    p.add_argument("--n-generated", type=int, default=500)
    p.add_argument("--epochs", type=int, default=60, help="cVAE epochs")
    p.add_argument("--k", type=int, default=10, help="contributors per generated image")
    p.add_argument("--temperature", type=float, default=0.05,
                   help="tau in exp(-d/tau); L2 distances here are RMS pixel differences")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-persistent", action="store_true")
    return p.parse_args(argv)


def train_models(images, labels, args):
    """The cVAE (all images) and the classifier (80/20 split), cached."""
    from . import generators as g

    cache = args.cache_dir
    if args.retrain:
        for name in ("quickstart-cvae", "quickstart-classifier"):
            g.cache_path(name, cache).unlink(missing_ok=True)
    vae_params = dict(epochs=args.epochs, seed=args.seed, width=16, latent_dim=8, batch_size=64)
    vae = g.cached(
        g.cache_path("quickstart-cvae", cache),
        lambda: g.train_cvae(images, labels, **vae_params),
        g.fingerprint(images, labels, model="cvae", **vae_params),
    )
    clf_params = dict(epochs=30, seed=args.seed, val_fraction=0.2, width=16)
    clf = g.cached(
        g.cache_path("quickstart-classifier", cache),
        lambda: g.train_classifier(images, labels, **clf_params),
        g.fingerprint(images, labels, model="classifier", **clf_params),
    )
    return vae, clf


def identical_class_ratio(dataset, key, gen_label_path, train_label_path="ground_truth.label"):
    """Mean share of each generated sample's contributors with its label (C1 at k)."""
    train_ids, train_labels = dataset.match_tags("train").values(["id", train_label_path])
    lut = dict(zip(train_ids, train_labels))
    contributors, gen_labels = dataset.match_tags("generated").values(
        [f"{key}_contributors", gen_label_path])
    shares = [np.mean([lut.get(c) == lab for c in cs])
              for cs, lab in zip(contributors, gen_labels) if cs]
    return float(np.mean(shares)) if shares else float("nan")


def report(dataset, results, key, timings, args):
    """Prints the run's summary; returns it as a dict."""
    train = dataset.match_tags("train")
    gen = dataset.match_tags("generated")
    ids, labels, values, hits = train.values(
        ["id", "ground_truth.label", f"{key}_value", f"{key}_hits"])
    values = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    order = np.argsort(-values, kind="stable")
    ratios = {
        "ground_truth": identical_class_ratio(dataset, key, "ground_truth.label"),
        "condition": identical_class_ratio(dataset, key, "condition.label"),
    }
    zero = int(np.sum(values == 0))

    print(f"\nDataset {dataset.name!r}: {len(train)} training, {len(gen)} generated samples")
    print("Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    stage = getattr(results, "timings", None) or {}
    if stage:
        print("Valuation stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stage.items()))
    print(f"Total value {np.nansum(values):.2f} (= sum of generated quality)")

    def rows(idx):
        for i in idx:
            print(f"  {ids[i]}  label {labels[i]}  value {values[i]:.4f}  hits {hits[i]}")

    print("Top 5 training samples by value:")
    rows(order[:5])
    print("Bottom 5 training samples by value:")
    rows(order[-5:][::-1])
    print(f"Training samples with zero value: {zero} of {len(values)}")
    print(f"Identical-class ratio of the top-{args.k} contributors: "
          f"{ratios['ground_truth']:.3f} vs classifier label, "
          f"{ratios['condition']:.3f} vs generation condition")
    print("\nOpen it in the App:\n"
          f"  fiftyone app launch {dataset.name}\n"
          "or in Python:\n"
          f"  import fiftyone as fo; fo.launch_app(fo.load_dataset({dataset.name!r})).wait()")
    return {"zero_value": zero, "identical_class": ratios,
            "top": [ids[i] for i in order[:5]], "bottom": [ids[i] for i in order[-5:]]}


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    timings = {}
    t = time.time()

    from . import data
    from . import generators as g

    images, labels = data.load_digits(size=args.size)
    print(f"Loaded {len(images)} scikit-learn digits at {args.size}x{args.size}")
    vae, clf = train_models(images, labels, args)
    def how(m):
        return "cached" if m.meta["cached"] else f"trained in {m.meta['train_seconds']:.1f}s"

    print(f"cVAE: {how(vae)}; classifier: {how(clf)}, "
          f"held-out accuracy {clf.meta['val_accuracy']:.3f}")
    gen_images, conditions = g.generate(vae, args.n_generated, seed=args.seed + 1)
    predicted = g.classify(clf, gen_images)
    print(f"Generated {len(gen_images)} images; classifier agrees with the condition on "
          f"{np.mean(predicted == conditions):.1%}")
    timings["models"] = time.time() - t

    t = time.time()
    images_dir = args.images_dir or _default_dir("quickstart") / args.name
    dataset = data.make_dataset(
        args.name, images_dir,
        train=(images, labels), generated=(gen_images, predicted, conditions),
        persistent=not args.no_persistent, overwrite=True,
    )
    timings["dataset"] = time.time() - t

    import gmv_plugin

    key = "gmv"
    t = time.time()
    results = gmv_plugin.compute_values(
        dataset.match_tags("train"), dataset.match_tags("generated"),
        key=key, model="pixels", index="auto", rerank="l2", quality="realism",
        k=args.k, temperature=args.temperature, overwrite=True, progress=True,
    )
    timings["valuation"] = time.time() - t
    dataset.reload()
    return report(dataset, results, key, timings, args)


if __name__ == "__main__":
    main(sys.argv[1:])
