"""A summary of a GMValuator run: counts, value distribution, extremes, timings.

:func:`build_report` returns a JSON-serializable dict and draws the value
histogram as a PNG in the run's directory (optionally also as a ``data:`` URL,
which the App displays in operator output). :func:`report_markdown` renders
the dict as text.
"""

import base64
import io
import os

import fiftyone as fo
from fiftyone import ViewField as F

from gmv_plugin import runs as gmvruns

HISTOGRAM_NAME = "report_histogram.png"


def build_report(samples, key="gmv", n=10, bins=30, data_url=True):
    """Summarizes run ``key``.

    Args:
        samples: any collection of the run's dataset
        key ("gmv"): the run key
        n (10): how many top and bottom training samples to list
        bins (30): histogram bins over the non-zero values
        data_url (True): include the histogram PNG as a base64 ``data:`` URL

    Returns:
        a dict with ``key``, ``dataset``, ``counts`` (train, generated,
        contributing, zero_value, unvalued), ``values`` (min, max, mean,
        median, sum, p90, p99), ``quality`` (min, mean, max of ``q_j``),
        ``histogram`` (counts, edges, zero_count, path, data_url), ``top``
        (the ``n`` most valuable) and ``bottom`` (the ``n`` least valuable
        among the non-zero values; ``counts["zero_value"]`` counts the
        others), lists of id, filepath, value, hits; ``remove_first`` (the
        lowest cleansing scores: id, filepath, cleansing, value),
        ``possible_copies`` (``count`` and ``rows`` of id, filepath,
        copy_score; None for runs without these fields); ``timings``
        (seconds per stage), ``total_seconds``, ``reused`` and ``config``
    """
    dataset = samples._root_dataset
    results = gmvruns.load_results(dataset, key)
    config = results.config
    value, hits = "%s_value" % key, "%s_hits" % key
    train = results.train_view()
    generated = results.generated_view()

    n_train = train.count()
    count, total, mean, bounds, quants = train.aggregate(
        [
            fo.Count(value),
            fo.Sum(value),
            fo.Mean(value),
            fo.Bounds(value),
            fo.Quantiles(value, [0.5, 0.9, 0.99]),
        ]
    )
    zero = train.match(F(value) == 0).count()
    qmean, qbounds = generated.aggregate(
        [fo.Mean("%s_quality" % key), fo.Bounds("%s_quality" % key)]
    )

    nonzero = train.match(F(value) > 0)
    if count - zero > 0:
        counts, edges, _ = nonzero.histogram_values(value, bins=bins)
    else:
        counts, edges = [], []
    path = os.path.join(gmvruns.runs_root(), str(dataset._doc.id), "_reports", "%s_%s" % (key, HISTOGRAM_NAME))
    png = _histogram_png(counts, edges, zero, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)

    def rows(view):
        ids, paths, vals, nhits = view.values(["id", "filepath", value, hits])
        return [
            {"id": i, "filepath": p, "filename": os.path.basename(p),
             "value": _float(v), "hits": nhits_i}
            for i, p, v, nhits_i in zip(ids, paths, vals, nhits)
        ]

    timings = {k: float(v) for k, v in (getattr(results, "timings", None) or {}).items()}
    remove_first, copies = _truth_rows(dataset, train, generated, key, n)
    return {
        "key": key,
        "dataset": dataset.name,
        "counts": {
            "train": n_train,
            "generated": generated.count(),
            "contributing": count - zero,
            "zero_value": zero,
            "unvalued": n_train - count,
        },
        "values": {
            "min": _float(bounds[0]),
            "max": _float(bounds[1]),
            "mean": _float(mean),
            "median": _float(quants[0]) if quants else None,
            "p90": _float(quants[1]) if quants else None,
            "p99": _float(quants[2]) if quants else None,
            "sum": _float(total),
        },
        "quality": {"min": _float(qbounds[0]), "mean": _float(qmean), "max": _float(qbounds[1])},
        "histogram": {
            "counts": [int(c) for c in counts],
            "edges": [float(e) for e in edges],
            "zero_count": zero,
            "path": path,
            "data_url": (
                "data:image/png;base64," + base64.b64encode(png).decode("ascii")
                if data_url else None
            ),
        },
        "top": rows(results.top(n)),
        "bottom": rows(nonzero.sort_by(value).limit(n)),
        "remove_first": remove_first,
        "possible_copies": copies,
        "timings": timings,
        "total_seconds": float(sum(timings.values())),
        "reused": list(getattr(results, "reused", None) or []),
        "config": {
            "model": config.model,
            "embeddings_field": config.embeddings_field,
            "index": config.index,
            "index_type": getattr(results, "index_type", None),
            "rerank": config.rerank,
            "quality": config.quality,
            "k": config.k,
            "recall_k": config.recall_k,
            "temperature": config.temperature,
        },
    }


def _float(x):
    return None if x is None else float(x)


def _truth_rows(dataset, train, generated, key, n):
    """The ``n`` training samples with the lowest cleansing score, and every
    generated sample flagged as a copy (highest copy score first, at most
    ``n``), or None for runs written before these fields existed."""
    cleansing, value = "%s_cleansing" % key, "%s_value" % key
    remove_first = None
    if dataset.has_field(cleansing):
        view = train.exists(cleansing).sort_by(cleansing).limit(n)
        ids, paths, scores, vals = view.values(["id", "filepath", cleansing, value])
        remove_first = [
            {"id": i, "filepath": p, "filename": os.path.basename(p), "cleansing": _float(c), "value": _float(v)}
            for i, p, c, v in zip(ids, paths, scores, vals)
        ]
    copies = None
    flag, score = "%s_is_copy" % key, "%s_copy_score" % key
    if dataset.has_field(flag):
        flagged = generated.match(F(flag) == True)  # noqa: E712
        view = flagged.sort_by(score, reverse=True).limit(n)
        ids, paths, scores = view.values(["id", "filepath", score])
        copies = {
            "count": flagged.count(),
            "rows": [{"id": i, "filepath": p, "filename": os.path.basename(p), "copy_score": _float(c)}
                     for i, p, c in zip(ids, paths, scores)],
        }
    return remove_first, copies


#: the FiftyOne App's dark theme
_BG, _FG, _GRID, _BAR = "#1a1a1a", "#d0d0d0", "#3a3a3a", "#ff6d04"


def _histogram_png(counts, edges, zero, key):
    """Draws the non-zero value histogram (log count axis, integer labels)
    as PNG bytes in the App's dark colours, without touching pyplot's global
    state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = Figure(figsize=(6.4, 3.2), dpi=100, facecolor=_BG)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1, facecolor=_BG)
    if len(counts):
        widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
        ax.bar(edges[:-1], counts, width=widths, align="edge",
               color=_BAR, edgecolor=_BG, linewidth=0.5)
        if max(counts) > 20:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: "%d" % y if y >= 1 else ""))
            ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.text(0.5, 0.5, "no training sample has a non-zero value",
                ha="center", va="center", transform=ax.transAxes, color=_FG)
    ax.set_xlabel("%s_value (non-zero values)" % key, color=_FG)
    ax.set_ylabel("training samples", color=_FG)
    ax.set_title("Value distribution; %d training samples have value 0" % zero,
                 fontsize=10, color=_FG)
    ax.tick_params(colors=_FG, which="both")
    for spine in ax.spines.values():
        spine.set_color(_GRID)
    ax.grid(axis="y", color=_GRID, linewidth=0.5)
    ax.set_axisbelow(True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=_BG)
    return buf.getvalue()


def report_markdown(report, tables=True, max_rows=None):
    """Renders a :func:`build_report` dict as markdown (without the picture);
    ``tables`` adds the top and bottom samples, at most ``max_rows`` each."""
    c, v, q = report["counts"], report["values"], report["quality"]
    cfg = report["config"]

    def fmt(x):
        return "n/a" if x is None else "%.4g" % x

    lines = [
        "**GMValuator run `%s` on dataset `%s`**" % (report["key"], report["dataset"]),
        "",
        "- **%d** training samples valued from **%d** generated samples; "
        "%d contribute, %d have value 0%s"
        % (c["train"], c["generated"], c["contributing"], c["zero_value"],
           ", %d unvalued" % c["unvalued"] if c["unvalued"] else ""),
        "- values: min %s, median %s, mean %s, p99 %s, max %s, total %s"
        % tuple(fmt(v[k]) for k in ("min", "median", "mean", "p99", "max", "sum")),
        "- generated quality q_j: min %s, mean %s, max %s"
        % (fmt(q["min"]), fmt(q["mean"]), fmt(q["max"])),
        "- encoder `%s`, index `%s` (%s), re-rank `%s`, quality `%s`, k=%s, "
        "recall_k=%s, temperature=%s"
        % (cfg["model"].get("name") if isinstance(cfg["model"], dict) else cfg["model"],
           cfg["index"], cfg["index_type"], cfg["rerank"].get("name"),
           cfg["quality"].get("name"), cfg["k"], cfg["recall_k"], cfg["temperature"]),
        "- stage timings: "
        + ", ".join("%s %.2f s" % (s, t) for s, t in report["timings"].items())
        + " (total %.2f s%s)"
        % (report["total_seconds"],
           "; reused: " + ", ".join(report["reused"]) if report["reused"] else ""),
    ]
    if not tables:
        return "\n".join(lines)
    for title, rows in (("Most valuable", report["top"]),
                        ("Least valuable (non-zero; %d have value 0)" % c["zero_value"],
                         report["bottom"])):
        rows = rows if max_rows is None else rows[:max_rows]
        lines += ["", "**%s**" % title, "", "| # | sample | value | hits |", "|---|---|---|---|"]
        lines += [
            "| %d | %s | %s | %s |" % (i, r["filename"], fmt(r["value"]), r["hits"])
            for i, r in enumerate(rows, start=1)
        ]
    rows = report.get("remove_first")
    if rows:
        rows = rows if max_rows is None else rows[:max_rows]
        lines += ["", "**Remove first (lowest cleansing score)**", "",
                  "| # | sample | cleansing | value |", "|---|---|---|---|"]
        lines += ["| %d | %s | %s | %s |" % (i, r["filename"], fmt(r["cleansing"]), fmt(r["value"]))
                  for i, r in enumerate(rows, start=1)]
    copies = report.get("possible_copies")
    if copies is not None:
        lines += ["", "**Possible copies**: %d generated samples flagged" % copies["count"]]
        rows = copies["rows"] if max_rows is None else copies["rows"][:max_rows]
        if rows:
            lines += ["", "| # | generated sample | copy score |", "|---|---|---|"]
            lines += ["| %d | %s | %s |" % (i, r["filename"], fmt(r["copy_score"]))
                      for i, r in enumerate(rows, start=1)]
    return "\n".join(lines)
