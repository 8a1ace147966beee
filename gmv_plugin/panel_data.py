"""Data for browsing a GMValuator run interactively (the App's GMValuator
panel), as plain JSON-able values and views.

- :func:`runs_by_recency`: run keys, most recent first;
- :func:`value_histogram` and :func:`bins_view`: the distribution of the
  non-zero values and the training samples of any of its bins, exactly;
- :func:`extremes`: most and least valuable (least among the non-zero values)
  and the number of zero-value samples; :func:`zero_view`;
- :func:`split_selection`: which selected samples are valued generated or
  training samples of a run;
- :func:`contributor_rows` / :func:`contribution_rows`: the contributors of
  generated samples in rank order, what training samples contributed to.
"""

import os

import numpy as np
from fiftyone import ViewField as F

from gmv_plugin import navigation as gmvnav
from gmv_plugin import runs as gmvruns


def runs_by_recency(samples):
    """The GMValuator run keys of ``samples``' dataset, most recent first."""
    dataset = samples._root_dataset
    keys = gmvruns.list_runs(dataset)

    def when(key):
        ts = dataset.get_run_info(key).timestamp
        return ts.timestamp() if ts is not None else 0.0

    return sorted(keys, key=when, reverse=True)


def _train(samples, key):
    return gmvruns.train_view(samples._root_dataset, gmvruns.get_run_config(samples, key))


def value_histogram(samples, key, bins=30):
    """The distribution of run ``key``'s non-zero training values.

    Bin ``i`` holds the values ``v`` with ``edges[i] <= v < edges[i + 1]``;
    the last bin also holds ``edges[-1]``. :func:`bins_view` selects the same
    samples.

    Returns:
        a dict with ``edges``, ``counts``, ``zero_count`` (value 0),
        ``nonzero_count`` and ``unvalued`` (training samples without a value)
    """
    train = _train(samples, key)
    values = np.asarray(
        [v for v in train.values("%s_value" % key) if v is not None], dtype=np.float64
    )
    n_total = len(train)
    nonzero = values[values > 0]
    zero = int((values == 0).sum())
    if len(nonzero) == 0:
        edges, counts = [], []
    else:
        lo, hi = float(nonzero.min()), float(nonzero.max())
        if lo == hi:
            edges = np.array([lo, hi])
        else:
            edges = np.linspace(lo, hi, int(bins) + 1)
        idx = _bin_index(nonzero, edges)
        counts = np.bincount(idx, minlength=len(edges) - 1).tolist()
        edges = [float(e) for e in edges]
    return {
        "edges": edges,
        "counts": [int(c) for c in counts],
        "zero_count": zero,
        "nonzero_count": int(len(nonzero)),
        "unvalued": n_total - len(values),
    }


def _bin_index(values, edges):
    idx = np.searchsorted(np.asarray(edges), values, side="right") - 1
    return np.clip(idx, 0, len(edges) - 2)


def _bin_expr(value, edges, i):
    lo, hi = float(edges[i]), float(edges[i + 1])
    if i == len(edges) - 2:
        return (F(value) >= lo) & (F(value) <= hi)
    return (F(value) >= lo) & (F(value) < hi)


def bins_view(samples, key, edges, bins):
    """The training samples of run ``key`` whose value falls in any of the
    histogram ``bins`` (indices into :func:`value_histogram`'s bins, whose
    ``edges`` are given), most valuable first."""
    if len(edges) < 2:
        raise ValueError("The histogram has no bins (no non-zero values)")
    bins = sorted({int(b) for b in bins})
    bad = [b for b in bins if not 0 <= b < len(edges) - 1]
    if bad or not bins:
        raise ValueError("Bins must be between 0 and %d; got %s" % (len(edges) - 2, bad or bins))
    value = "%s_value" % key
    expr = _bin_expr(value, edges, bins[0])
    for b in bins[1:]:
        expr = expr | _bin_expr(value, edges, b)
    return _train(samples, key).match((F(value) > 0) & expr).sort_by(value, reverse=True)


def zero_view(samples, key):
    """The training samples of run ``key`` whose value is 0."""
    return _train(samples, key).match(F("%s_value" % key) == 0)


def _rows(view, key, ids=None):
    value, hits = "%s_value" % key, "%s_hits" % key
    sids, paths, vals, nhits = view.values(["id", "filepath", value, hits])
    return [
        {"id": i, "filename": os.path.basename(p), "filepath": p,
         "value": None if v is None else float(v), "hits": h}
        for i, p, v, h in zip(sids, paths, vals, nhits)
    ]


def extremes(samples, key, n=10):
    """The ``n`` most valuable training samples, the ``n`` least valuable
    among those with a non-zero value, and how many have value 0.

    Returns:
        a dict with ``top`` and ``least`` (lists of id, filename, filepath,
        value, hits) and ``zero_count``
    """
    value = "%s_value" % key
    train = _train(samples, key).exists(value)
    return {
        "top": _rows(train.sort_by(value, reverse=True).limit(n), key),
        "least": _rows(train.match(F(value) > 0).sort_by(value).limit(n), key),
        "zero_count": train.match(F(value) == 0).count(),
    }


def split_selection(samples, key, ids):
    """Splits sample ``ids`` into ``generated`` (valued by run ``key``),
    ``training`` (with a ``{key}_value``) and ``other``; order is kept."""
    dataset = samples._root_dataset
    ids = [str(i) for i in ids or []]
    out = {"generated": [], "training": [], "other": []}
    if not ids:
        return out
    found, contribs, vals = dataset.select(ids).values(
        ["id", "%s_contributors" % key, "%s_value" % key]
    )
    kind = {}
    for i, c, v in zip(found, contribs, vals):
        kind[i] = "generated" if c else "training" if v is not None else "other"
    for i in ids:
        out[kind.get(i, "other")].append(i)
    return out


def contributor_rows(samples, key, generated_ids):
    """The contributors of ``generated_ids`` under run ``key``, best first,
    with ``rank`` (1-based position in this list), ``id``, ``filename``,
    ``credit`` and ``distance``. For one generated sample these are its
    stored ``{key}_contributors``, ``{key}_scores`` and ``{key}_distances``
    in rank order; for several, credits are summed (see
    :func:`gmv_plugin.navigation.contributor_credits`)."""
    rows = gmvnav.contributor_credits(samples, key, generated_ids)
    dataset = samples._root_dataset
    ids = [r["train_id"] for r in rows]
    paths = dict(zip(*dataset.select(ids).values(["id", "filepath"]))) if ids else {}
    return [
        {"rank": i, "id": r["train_id"], "filename": os.path.basename(paths.get(r["train_id"], "")),
         "credit": float(r["credit"]), "distance": float(r["distance"])}
        for i, r in enumerate(rows, start=1)
    ]


def contribution_rows(samples, key, train_ids, limit=200):
    """The generated samples that credit any of ``train_ids`` under run
    ``key``, most credit first: ``rank``, ``id``, ``filename``, ``credit``
    (at most ``limit`` rows)."""
    view = gmvnav.contributions_view(samples, key, train_ids)
    expr = gmvnav.credit_expression(key, train_ids)
    ids, paths, credit = view.limit(limit).values(["id", "filepath", expr])
    return [
        {"rank": i, "id": sid, "filename": os.path.basename(p), "credit": float(c)}
        for i, (sid, p, c) in enumerate(zip(ids, paths, credit), start=1)
    ]


def run_summary(samples, key):
    """Counts, configuration essentials and stage timings of run ``key``."""
    dataset = samples._root_dataset
    info = dataset.get_run_info(key)
    cfg = info.config
    try:
        res = gmvruns.load_results(dataset, key)
    except Exception:  # registered, never completed
        res = None
    timings = {k: float(v) for k, v in (getattr(res, "timings", None) or {}).items()}
    return {
        "key": key,
        "created": info.timestamp.isoformat(sep=" ", timespec="seconds") if info.timestamp else None,
        "encoder": (cfg.model or {}).get("name") or cfg.embeddings_field,
        "index": getattr(res, "index_type", None) or cfg.index,
        "rerank": (cfg.rerank or {}).get("name"),
        "quality": (cfg.quality or {}).get("name"),
        "k": cfg.k,
        "recall_k": cfg.recall_k,
        "temperature": cfg.temperature,
        "temperature_used": getattr(res, "temperature", None),
        "num_train": getattr(res, "num_train", None),
        "num_generated": getattr(res, "num_generated", None),
        "timings": timings,
        "total_seconds": float(sum(timings.values())) if timings else None,
    }
