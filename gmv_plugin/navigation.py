"""Views for browsing a GMValuator run: who contributed to what.

All functions take any collection of the run's dataset and return views that
the App can show (``session.view = ...``) or that operators set with
``ctx.ops.set_view``:

- :func:`contributors_view`: the training samples credited by some generated
  samples, best first (rank order for one generated sample);
- :func:`contributions_view`: the generated samples that list some training
  samples among their contributors, ordered by the credit those received;
- :func:`ranked_training_view`: training samples sorted by value, optionally
  without (or only) zero-value samples.
"""

from fiftyone import ViewField as F

from gmv_plugin import runs as gmvruns

ZERO_CHOICES = ("keep", "hide", "only")


def _fields(key):
    return {
        "value": "%s_value" % key,
        "hits": "%s_hits" % key,
        "contributors": "%s_contributors" % key,
        "distances": "%s_distances" % key,
        "scores": "%s_scores" % key,
    }


def _ids(ids, what):
    if isinstance(ids, str):
        ids = [ids]
    ids = [str(i) for i in (ids or [])]
    if not ids:
        raise ValueError("Select at least one %s sample" % what)
    return ids


def contributor_credits(samples, key, generated_ids):
    """The training samples credited by ``generated_ids`` under run ``key``.

    Returns:
        a list of dicts, best first, with ``train_id``, ``credit`` (the sum of
        the scores the selected generated samples gave it), ``rank`` (its best
        rank, 1-based), ``distance`` (its smallest distance) and
        ``generated_ids`` (the selected samples listing it). For a single
        generated sample the order is its contributor rank order.

    Raises:
        ValueError: if the run does not exist, nothing is selected, or a
            selected sample was not valued by the run
    """
    dataset = samples._root_dataset
    gmvruns.get_run_config(dataset, key)
    ids = _ids(generated_ids, "generated")
    f = _fields(key)
    found, contribs, dists, scores = dataset.select(ids, ordered=True).values(
        ["id", f["contributors"], f["distances"], f["scores"]]
    )
    unvalued = sorted(set(ids) - {i for i, c in zip(found, contribs) if c})
    if unvalued:
        raise ValueError(
            "%d selected samples are not generated samples valued by run %r "
            "(no %s), e.g. %s" % (len(unvalued), key, f["contributors"], unvalued[:3])
        )
    rows = {}
    for gid, cs, ds, ss in zip(found, contribs, dists, scores):
        for rank, (tid, d, s) in enumerate(zip(cs, ds, ss), start=1):
            row = rows.setdefault(
                tid,
                {"train_id": tid, "credit": 0.0, "rank": rank, "distance": d,
                 "generated_ids": []},
            )
            row["credit"] += float(s)
            row["rank"] = min(row["rank"], rank)
            row["distance"] = min(row["distance"], float(d))
            row["generated_ids"].append(gid)
    return sorted(rows.values(), key=lambda r: (-r["credit"], r["rank"]))


def contributors_view(samples, key, generated_ids):
    """The training samples credited by ``generated_ids``, best first (see
    :func:`contributor_credits` for the order and errors)."""
    rows = contributor_credits(samples, key, generated_ids)
    return samples._root_dataset.select([r["train_id"] for r in rows], ordered=True)


def credit_expression(key, train_ids):
    """An expression for the credit a generated sample gave ``train_ids``
    (the sum of its scores for those contributors)."""
    f = _fields(key)
    return (
        F.zip(F(f["contributors"]), F(f["scores"]))
        .filter(F()[0].is_in(list(train_ids)))
        .map(F()[1])
        .sum()
    )


def contributions_view(samples, key, train_ids):
    """The generated samples listing any of ``train_ids`` among their
    contributors, ordered by the credit they gave those training samples
    (most first).

    Raises:
        ValueError: if the run does not exist, nothing is selected, or none of
            ``train_ids`` is a training sample of the run
    """
    dataset = samples._root_dataset
    gmvruns.get_run_config(dataset, key)
    ids = _ids(train_ids, "training")
    f = _fields(key)
    if not dataset.select(ids).exists(f["value"]).count():
        raise ValueError(
            "None of the %d selected samples is a training sample valued by "
            "run %r (no %s)" % (len(ids), key, f["value"])
        )
    return dataset.match(F(f["contributors"]).contains(ids)).sort_by(
        credit_expression(key, ids), reverse=True
    )


def ranked_training_view(samples, key, reverse=True, nonzero=False, zero=None):
    """The training samples of run ``key`` in ``samples``, sorted by value.

    Args:
        samples: a collection of the run's dataset (e.g. the current view)
        key: the run key
        reverse (True): most valuable first; False for least valuable first
        nonzero (False): drop samples whose value is 0
        zero (None): ``"keep"``, ``"hide"`` or ``"only"`` zero-value samples;
            overrides ``nonzero`` when given
    """
    gmvruns.get_run_config(samples, key)
    if zero is None:
        zero = "hide" if nonzero else "keep"
    if zero not in ZERO_CHOICES:
        raise ValueError("zero must be one of %s; got %r" % (ZERO_CHOICES, zero))
    value = _fields(key)["value"]
    view = samples.exists(value)
    if zero == "hide":
        view = view.match(F(value) > 0)
    elif zero == "only":
        view = view.match(F(value) == 0)
    return view.sort_by(value, reverse=reverse)
