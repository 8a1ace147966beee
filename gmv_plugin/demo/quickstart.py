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
import os
import pathlib
import sys
import time

import numpy as np

DATASET_NAME = "gmv-quickstart"
#: this checkout (the plugin's root: fiftyone.yml, scripts/, .venv/)
ROOT = pathlib.Path(__file__).resolve().parents[2]
#: ``dataset.info`` key naming the checkout that built the dataset
OWNER_KEY = "gmv_quickstart_checkout"


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
    p.add_argument("--classifier-epochs", type=int, default=30, help="classifier epochs")
    p.add_argument("--k", type=int, default=10, help="contributors per generated image")
    p.add_argument("--temperature", type=float, default=0.05,
                   help="tau in exp(-d/tau); L2 distances here are RMS pixel differences")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-persistent", action="store_true")
    return p.parse_args(argv)


def _note_replaced_checkpoint(path, fp):
    """Says so when a cached checkpoint made with other settings (or by
    another checkout sharing the cache) is about to be replaced."""
    from . import generators as g

    if not path.is_file():
        return
    try:
        old = g.load_checkpoint(path).meta.get("fingerprint")
    except Exception:
        old = None
    if old != fp:
        print(f"Note: replacing the cached model {path}, trained with other settings "
              "(another checkout or other options); pass --cache-dir to keep it")


def train_models(images, labels, args):
    """The cVAE (all images) and the classifier (80/20 split), cached."""
    from . import generators as g

    cache = args.cache_dir
    if args.retrain:
        for name in ("quickstart-cvae", "quickstart-classifier"):
            g.cache_path(name, cache).unlink(missing_ok=True)
    vae_params = dict(epochs=args.epochs, seed=args.seed, width=16, latent_dim=8, batch_size=64)
    vae_fp = g.fingerprint(images, labels, model="cvae", **vae_params)
    _note_replaced_checkpoint(g.cache_path("quickstart-cvae", cache), vae_fp)
    vae = g.cached(
        g.cache_path("quickstart-cvae", cache),
        lambda: g.train_cvae(images, labels, **vae_params),
        vae_fp,
    )
    clf_params = dict(epochs=args.classifier_epochs, seed=args.seed, val_fraction=0.2, width=16)
    clf_fp = g.fingerprint(images, labels, model="classifier", **clf_params)
    _note_replaced_checkpoint(g.cache_path("quickstart-classifier", cache), clf_fp)
    clf = g.cached(
        g.cache_path("quickstart-classifier", cache),
        lambda: g.train_classifier(images, labels, **clf_params),
        clf_fp,
    )
    return vae, clf


def _claim_dataset(name):
    """Says so before replacing a dataset of this name that another checkout
    built (or that the quickstart did not build at all)."""
    import fiftyone as fo

    if not fo.dataset_exists(name):
        return
    owner = fo.load_dataset(name).info.get(OWNER_KEY)
    if owner is None:
        print(f"Note: replacing the existing dataset {name!r}, which the quickstart did not "
              "build; pass --name to keep it")
    elif owner != str(ROOT):
        print(f"Note: replacing dataset {name!r}, built by the checkout at {owner}; "
              "pass --name to keep it")


class _StageLines:
    """A ``progress=`` callback printing one line per valuation stage (for
    output that is not a terminal, where progress bars repeat)."""

    def __init__(self):
        self.stage = None
        self.t0 = time.time()

    def __call__(self, pb):
        stage = getattr(pb, "stage", None)
        if stage != self.stage:
            self.stage = stage
            print(f"  valuation stage: {stage} ({time.time() - self.t0:.1f}s)", flush=True)


def app_commands(name, persistent=True):
    """The commands that open dataset ``name`` in the App with this
    checkout's operators and panel, as printed lines."""
    py = ROOT / ".venv" / "bin"
    plugins = os.environ.get("FIFTYONE_PLUGINS_DIR")
    if not persistent:
        return [f"(Dataset {name!r} is not persistent: it is gone when this process ends; "
                "rerun without --no-persistent to open it in the App.)"]
    link = (f"  bash {ROOT / 'scripts' / 'link_plugin.sh'}"
            + (f" {plugins}" if plugins else "")
            + "    # once: links this checkout into FiftyOne's plugins dir")
    return [
        "",
        "Open it in the App, with the GMValuator operators and panel:",
        link,
        f"  {py / 'fiftyone'} app launch {name}",
        "In the App: press ` (backtick) and search \"GMValuator\" for the operators; "
        "click + beside \"Samples\" and choose GMValuator for the panel.",
        "From Python instead:",
        f"  {py / 'python'} -c \"import fiftyone as fo; "
        f"fo.launch_app(fo.load_dataset({name!r})).wait()\"",
    ]


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
    nonzero = [i for i in order[::-1] if values[i] > 0]
    print("Least valuable 5 among the non-zero values:")
    rows(nonzero[:5])
    print(f"Training samples with value 0 (no generated image credits them): {zero} of {len(values)}")
    print(f"Identical-class ratio of the top-{args.k} contributors: "
          f"{ratios['ground_truth']:.3f} vs classifier label, "
          f"{ratios['condition']:.3f} vs generation condition")
    for line in app_commands(dataset.name, persistent=not args.no_persistent):
        print(line)
    return {"zero_value": zero, "identical_class": ratios,
            "top": [ids[i] for i in order[:5]], "bottom": [ids[i] for i in nonzero[:5]]}


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
    _claim_dataset(args.name)
    dataset = data.make_dataset(
        args.name, images_dir,
        train=(images, labels), generated=(gen_images, predicted, conditions),
        persistent=not args.no_persistent, overwrite=True,
    )
    dataset.info[OWNER_KEY] = str(ROOT)
    dataset.save()
    timings["dataset"] = time.time() - t

    import gmv_plugin

    key = "gmv"
    t = time.time()
    results = gmv_plugin.compute_values(
        dataset.match_tags("train"), dataset.match_tags("generated"),
        key=key, model="pixels", index="auto", rerank="l2", quality="realism",
        k=args.k, temperature=args.temperature, overwrite=True,
        progress=True if sys.stdout.isatty() else _StageLines(),
    )
    timings["valuation"] = time.time() - t
    dataset.reload()
    return report(dataset, results, key, timings, args)


if __name__ == "__main__":
    main(sys.argv[1:])
