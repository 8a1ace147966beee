"""Evaluation criteria for a GMValuator run (paper section V and appendix A).

Every function takes the dataset (or a view of it) and the run key, reads the
fields the run wrote in bulk and returns a plain JSON-serializable dict:

- :func:`identical_class` (C1): share of the top-k contributors that share the
  generated sample's label;
- :func:`identical_attributes` (C2): the same for several fields at once;
- :func:`cleansing` (C3): how low the run values training samples marked as
  corrupted;
- :func:`efficiency` (C4): per-stage and per-generated-sample times;
- :func:`membership`: values of training members versus held-out non-members.

Fields read (``{key}`` is the run key): ``{key}_value`` on training samples,
``{key}_contributors`` on generated samples. Training samples are those with a
``{key}_value``; generated samples those with ``{key}_contributors``.
"""

import math

import numpy as np

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol

METHOD = "gmvaluator"
CRITERIA = ("C1", "C2", "C3", "C4", "membership")

_PLAIN_LABEL_TYPES = (fof.StringField, fof.IntField, fof.BooleanField)


# --------------------------------------------------------------------------
# run and field helpers


def list_runs(dataset):
    """Keys of the GMValuator runs on ``dataset`` (config ``method == "gmvaluator"``)."""
    keys = []
    for run_key in dataset.list_runs():
        try:
            method = dataset.get_run_info(run_key).config.method
        except Exception:  # a run whose config class can't be loaded here
            continue
        if method == METHOD:
            keys.append(run_key)
    return keys


def _name(dataset):
    return getattr(dataset, "dataset_name", None) or getattr(dataset, "name", "?")


def _valuation_keys(dataset):
    """Run keys plus any key whose ``{key}_contributors`` field exists."""
    keys = set(list_runs(dataset))
    for name in dataset.get_field_schema():
        if name.endswith("_contributors"):
            keys.add(name[: -len("_contributors")])
    return sorted(keys)


def _check_key(dataset, key):
    if not isinstance(key, str) or dataset.get_field(f"{key}_contributors") is None:
        raise ValueError(
            f"Unknown valuation key {key!r}: no field '{key}_contributors' on "
            f"dataset {_name(dataset)!r}. Valuation keys here: "
            f"{_valuation_keys(dataset) or 'none'}"
        )


def _generated(dataset, key):
    return dataset.exists(f"{key}_contributors")


def _training(dataset, key):
    if dataset.get_field(f"{key}_value") is None:
        raise ValueError(
            f"Run {key!r} has no training values: field '{key}_value' is missing"
        )
    return dataset.exists(f"{key}_value")


def label_fields(dataset):
    """Top-level fields usable as labels: Classification, string, int or bool."""
    names = []
    for name, field in dataset.get_field_schema().items():
        if name in ("id", "filepath") or name.startswith("_"):
            continue
        if isinstance(field, fof.EmbeddedDocumentField) and issubclass(
            field.document_type, fol.Classification
        ):
            names.append(name)
        elif isinstance(field, _PLAIN_LABEL_TYPES) and not isinstance(
            field, fof.ObjectIdField
        ):
            names.append(name)
    return names


def boolean_fields(dataset):
    """Top-level boolean fields of ``dataset``."""
    return [
        name
        for name, field in dataset.get_field_schema().items()
        if isinstance(field, fof.BooleanField)
    ]


def _label_path(dataset, field):
    """The path to read for ``field``: ``field.label`` for a Classification."""
    f = dataset.get_field(field) if isinstance(field, str) else None
    if f is not None:
        if isinstance(f, fof.EmbeddedDocumentField) and issubclass(
            f.document_type, fol.Classification
        ):
            return f"{field}.label"
        if isinstance(f, _PLAIN_LABEL_TYPES):
            return field
    raise ValueError(
        f"{field!r} is not a label field of dataset {_name(dataset)!r}; "
        f"label fields (Classification, string, int or bool): "
        f"{label_fields(dataset) or 'none'}"
    )


def _norm(v):
    """Label values compared as strings, so that 3, 3.0 and "3" match."""
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _check_ks(ks):
    ks = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    if not ks or any(
        not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1
        for k in ks
    ):
        raise ValueError(f"ks must be positive integers; got {ks!r}")
    return [int(k) for k in ks]


def _float(x):
    """A JSON-safe float (NaN and infinities become None)."""
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------
# C1 / C2


def _identical(dataset, key, gen_path, train_path, ks):
    """Shares of matching labels among the top-k contributors, per k."""
    gen = _generated(dataset, key)
    contributors, gen_labels = gen.values([f"{key}_contributors", gen_path])
    train_ids, train_labels = _training(dataset, key).values(["id", train_path])
    lut = {i: _norm(v) for i, v in zip(train_ids, train_labels)}

    lengths = [len(c) for c in contributors if c is not None]
    stored = min(lengths) if lengths else 0
    if not lengths:
        raise ValueError(f"Run {key!r} stores no contributors on any sample")
    for k in ks:
        if k > stored:
            raise ValueError(
                f"k={k} exceeds the {stored} contributors stored per generated "
                f"sample for run {key!r}; use k <= {stored}"
            )

    kmax = max(ks)
    codes = {}
    rows, targets = [], []
    skipped = 0
    missing = 0
    for contribs, label in zip(contributors, gen_labels):
        label = _norm(label)
        if contribs is None or label is None:
            skipped += 1
            continue
        row = []
        for cid in contribs[:kmax]:
            lab = lut.get(cid)
            if cid not in lut:
                missing += 1
            row.append(-1 if lab is None else codes.setdefault(lab, len(codes)))
        rows.append(row)
        targets.append(codes.setdefault(label, len(codes)))
    if not rows:
        raise ValueError(
            f"No generated sample of run {key!r} has both contributors and a "
            f"value in {gen_path!r}"
        )
    match = np.asarray(rows) == np.asarray(targets)[:, None]
    cum = np.cumsum(match, axis=1)
    ratios = {k: float(np.mean(cum[:, k - 1] / k)) for k in ks}
    return ratios, len(rows), skipped, missing


def identical_class(dataset, key, label_field, ks=(30, 50, 100), train_label_field=None):
    """C1: mean share of the top-k contributors with the generated sample's label.

    Args:
        dataset: the dataset (or a view) holding the run's samples
        key: the valuation run key
        label_field: label of the generated samples (Classification, string,
            int or bool field)
        ks: the k values
        train_label_field (None): label field of the training samples, if it
            differs from ``label_field``

    Returns:
        a dict with ``identical_class`` mapping each k to a ratio in [0, 1]
    """
    _check_key(dataset, key)
    ks = _check_ks(ks)
    train_label_field = train_label_field or label_field
    gen_path = _label_path(dataset, label_field)
    train_path = _label_path(dataset, train_label_field)
    ratios, n, skipped, missing = _identical(dataset, key, gen_path, train_path, ks)
    return {
        "criterion": "C1",
        "key": key,
        "label_field": label_field,
        "train_label_field": train_label_field,
        "ks": ks,
        "identical_class": ratios,
        "num_generated": n,
        "num_skipped": skipped,
        "num_unknown_contributors": missing,
    }


def identical_attributes(dataset, key, fields, ks=(5, 10, 15)):
    """C2: :func:`identical_class` for several attribute fields at once.

    Returns:
        a dict with ``identical_attributes`` mapping field -> {k: ratio}
    """
    _check_key(dataset, key)
    ks = _check_ks(ks)
    if isinstance(fields, str):
        fields = [fields]
    if not fields:
        raise ValueError(
            f"Give at least one attribute field; label fields: {label_fields(dataset)}"
        )
    paths = {f: _label_path(dataset, f) for f in fields}
    out, counts = {}, {}
    for f, path in paths.items():
        out[f], counts[f], _, _ = _identical(dataset, key, path, path, ks)
    return {
        "criterion": "C2",
        "key": key,
        "fields": list(fields),
        "ks": ks,
        "identical_attributes": out,
        "num_generated": counts,
    }


def identical_labels(gen_labels, train_labels, contributors, ks):
    """C1/C2 on arrays: mean share of each generated image's top-k contributors
    whose label equals its own.

    Args:
        gen_labels: ``(m,)`` labels of the generated images
        train_labels: ``(n,)`` labels of the training images
        contributors: ``(m, K)`` training rows, best first
        ks: the k values (each <= K)

    Returns:
        a dict k -> share in [0, 1]
    """
    ks = _check_ks(ks)
    contributors = np.asarray(contributors)
    if max(ks) > contributors.shape[1]:
        raise ValueError(f"k={max(ks)} exceeds the {contributors.shape[1]} contributors given")
    match = np.asarray(train_labels)[contributors[:, : max(ks)]] == np.asarray(gen_labels)[:, None]
    cum = np.cumsum(match, axis=1)
    return {k: float(np.mean(cum[:, k - 1] / k)) for k in ks}


def digit_attribute_fields(dataset, train_view, prefix="digit_", n_bins=3, batch_size=2000):
    """Writes binned digit attributes (C2 on MNIST) to every sample of ``dataset``.

    Measures :data:`gmv_plugin.attributes.ATTRIBUTES` (stroke thickness,
    slant, width, ink share; see :mod:`gmv_plugin.attributes` for the method)
    on each image, read as grayscale, and stores ``low`` / ``mid`` / ``high``
    (terciles of ``train_view``'s values) in string fields
    ``{prefix}{attribute}``, ready for :func:`identical_attributes`.

    Returns:
        the list of field names written
    """
    from gmv_plugin import attributes as gmva
    from gmv_plugin.images import read_image

    def measure(view):
        ids, paths = view.values(["id", "filepath"])
        parts = {a: [] for a in gmva.ATTRIBUTES}
        for b in range(0, len(paths), batch_size):
            imgs = [read_image(p, mode="L")[0] for p in paths[b : b + batch_size]]
            shapes = {im.shape for im in imgs}
            if len(shapes) != 1:
                raise ValueError(f"Digit attributes need images of one size; found {sorted(shapes)[:3]}")
            for a, vals in gmva.digit_attributes(np.stack(imgs)).items():
                parts[a].append(vals)
        return ids, {a: np.concatenate(v) if v else np.zeros(0) for a, v in parts.items()}

    _, train_attrs = measure(train_view)
    if not len(train_attrs[gmva.ATTRIBUTES[0]]):
        raise ValueError("train_view is empty")
    edges = {a: gmva.bin_edges(v, n_bins) for a, v in train_attrs.items()}
    ids, attrs = measure(dataset)
    bins = gmva.bin_attributes(attrs, edges)
    names = []
    for a in gmva.ATTRIBUTES:
        field = f"{prefix}{a}"
        dataset.set_values(field, dict(zip(ids, bins[a].tolist())), key_field="id")
        names.append(field)
    return names


# --------------------------------------------------------------------------
# C3 / membership


def _group(dataset, key, spec, values_view=None):
    """Boolean mask over the training samples for a tag or boolean field."""
    train = _training(dataset, key)
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"Expected a tag or boolean field name; got {spec!r}")
    field = dataset.get_field(spec)
    if field is not None:
        if not isinstance(field, fof.BooleanField):
            raise ValueError(
                f"Field {spec!r} is not boolean; boolean fields: "
                f"{boolean_fields(dataset) or 'none'}"
            )
        flags = train.values(spec)
        return np.array([bool(f) for f in flags], dtype=bool)
    tags = dataset.distinct("tags")
    if spec in tags:
        return np.array([spec in (t or []) for t in train.values("tags")], dtype=bool)
    raise ValueError(
        f"{spec!r} is neither a sample tag nor a boolean field; tags: "
        f"{tags or 'none'}; boolean fields: {boolean_fields(dataset) or 'none'}"
    )


SCORES = ("value", "cleansing")


def _values(dataset, key, score="value"):
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    if dataset.get_field(f"{key}_{score}") is None:
        raise ValueError(f"Run {key!r} has no field '{key}_{score}'; recompute it to get one")
    vals = np.array(_training(dataset, key).values(f"{key}_{score}"), dtype=float)
    if vals.size == 0:
        raise ValueError(f"Run {key!r} has no training samples with values")
    return vals


def _auc(positive, scores):
    """ROC AUC of ``scores`` for detecting ``positive`` (ties count one half)."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cleansing(dataset, key, corrupted, fractions=(0.01, 0.05, 0.10), score="value"):
    """C3: how low the run values (or scores) training samples marked as corrupted.

    Ranks use averaged ties, so a corrupted sample tied with many others at the
    same value (e.g. 0, never recalled) sits at the middle of that tie.

    Args:
        dataset: the dataset (or a view)
        key: the valuation run key
        corrupted: a sample tag or boolean field marking corrupted training samples
        fractions: report the share of corrupted samples within these lowest
            fractions of values
        score ("value"): rank by ``{key}_value`` (the paper's C3) or by
            ``{key}_cleansing`` (:mod:`gmv_plugin.cleansing`)

    Returns:
        a dict with ``percentiles`` (of the corrupted samples' values, 0-100),
        ``share_in_lowest`` (fraction string -> share), ``auc`` (low value as
        a detector of corruption) and counts
    """
    from scipy.stats import rankdata

    _check_key(dataset, key)
    vals = _values(dataset, key, score)
    mask = _group(dataset, key, corrupted)
    n, n_bad = len(vals), int(mask.sum())
    if n_bad == 0:
        raise ValueError(f"No training sample of run {key!r} is marked {corrupted!r}")
    if n_bad == n:
        raise ValueError(f"Every training sample of run {key!r} is marked {corrupted!r}")
    ranks = rankdata(vals)  # 1 = lowest value, ties averaged
    pct = (ranks[mask] - 0.5) / n * 100.0
    share = {f"{q:g}": float(np.mean(ranks[mask] <= q * n)) for q in fractions}
    return {
        "criterion": "C3",
        "key": key,
        "score": score,
        "corrupted": corrupted,
        "num_train": n,
        "num_corrupted": n_bad,
        "percentiles": {
            "min": float(pct.min()),
            "median": float(np.median(pct)),
            "mean": float(pct.mean()),
            "max": float(pct.max()),
        },
        "share_in_lowest": share,
        "auc": _auc(mask, -vals),
        # samples tied at the lowest value (e.g. 0: never a contributor) can't be
        # told apart; they are what keeps the AUC below 1 when all corrupted sit there
        "num_at_min_value": int((vals == vals.min()).sum()),
        "num_corrupted_at_min_value": int((vals[mask] == vals.min()).sum()),
        "mean_value_corrupted": float(vals[mask].mean()),
        "mean_value_clean": float(vals[~mask].mean()),
    }


def membership(dataset, key, members, non_members):
    """Training members versus held-out non-members: one-sided Welch t test.

    Args:
        dataset: the dataset (or a view)
        key: the valuation run key
        members: tag or boolean field marking samples the generator trained on
        non_members: tag or boolean field marking held-out samples (they must
            be part of the run's training view so that they were valued)

    Returns:
        a dict with ``t``, ``p`` (H1: members are valued higher), ``auc`` (value
        as a detector of membership), means and counts
    """
    from scipy.stats import ttest_ind

    _check_key(dataset, key)
    vals = _values(dataset, key)
    mem = _group(dataset, key, members)
    non = _group(dataset, key, non_members)
    if (mem & non).any():
        raise ValueError(
            f"{int((mem & non).sum())} training samples are marked both "
            f"{members!r} and {non_members!r}"
        )
    for name, m in ((members, mem), (non_members, non)):
        if m.sum() < 2:
            raise ValueError(
                f"Membership needs at least 2 valued training samples marked "
                f"{name!r}; found {int(m.sum())}"
            )
    a, b = vals[mem], vals[non]
    test = ttest_ind(a, b, equal_var=False, alternative="greater")
    both = mem | non
    return {
        "criterion": "membership",
        "key": key,
        "members": members,
        "non_members": non_members,
        "num_members": int(mem.sum()),
        "num_non_members": int(non.sum()),
        "mean_members": float(a.mean()),
        "mean_non_members": float(b.mean()),
        "t": _float(test.statistic),
        "p": _float(test.pvalue),
        "auc": _auc(mem[both], vals[both]),
    }


# --------------------------------------------------------------------------
# C4


def efficiency(dataset, key):
    """C4: per-stage seconds from the run's timings, total and per generated sample.

    Returns:
        a dict with ``stages`` (stage -> seconds), ``total_s``,
        ``per_generated_ms`` and ``per_generated_ms_by_stage``
    """
    runs = list_runs(dataset)
    if key not in dataset.list_runs():
        raise ValueError(
            f"Unknown run key {key!r} on dataset {_name(dataset)!r}; "
            f"GMValuator runs: {runs or 'none'}"
        )
    results = dataset.load_run_results(key)
    timings = getattr(results, "timings", None) if results is not None else None
    if not timings:
        raise ValueError(f"Run {key!r} stored no timings")
    stages = {s: float(t) for s, t in timings.items() if s != "total"}
    total = float(sum(stages.values()))
    num_gen = getattr(results, "num_generated", None)
    if num_gen is None:
        num_gen = len(_generated(dataset, key))
    num_train = getattr(results, "num_train", None)
    if num_train is None and dataset.get_field(f"{key}_value") is not None:
        num_train = len(_training(dataset, key))
    per = (lambda s: s / num_gen * 1000.0) if num_gen else (lambda s: None)
    return {
        "criterion": "C4",
        "key": key,
        "num_train": None if num_train is None else int(num_train),
        "num_generated": int(num_gen),
        "stages": stages,
        "total_s": total,
        "per_generated_ms": per(total),
        "per_generated_ms_by_stage": {s: per(t) for s, t in stages.items()},
    }


# --------------------------------------------------------------------------


def evaluate(dataset, key, criterion, **kwargs):
    """Dispatch to a criterion by name: C1, C2, C3, C4 or membership."""
    funcs = {
        "C1": identical_class,
        "C2": identical_attributes,
        "C3": cleansing,
        "C4": efficiency,
        "membership": membership,
    }
    if criterion not in funcs:
        raise ValueError(f"Unknown criterion {criterion!r}; choose from {list(funcs)}")
    return funcs[criterion](dataset, key, **kwargs)
