"""Form building and parameter parsing shared by the GMValuator operators.

Operators stay thin: these helpers turn form parameters into arguments of
:mod:`gmv_plugin` calls and build the matching form fields. Every parameter
has a default that works offline, so the operators can be called from the SDK
with few or no ``params``.
"""


import fiftyone.core.fields as fof
import fiftyone.core.utils as fou
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone import ViewField as F

import gmv_plugin as gmv  # importable: see operators/__init__.py

from gmv_plugin import index as gmvi
from gmv_plugin import navigation as gmvnav
from gmv_plugin import report as gmvreport
from gmv_plugin import runs as gmvruns
from gmv_plugin import weights as gmvw

SOURCES = {
    "tag": "Tag",
    "saved_view": "Saved view",
    "field": "Field value",
    "current_view": "Current view",
}
ENCODERS = {
    "pixels": "Pixels (built-in, no weights)",
    "zoo": "FiftyOne zoo model",
    "field": "Existing embeddings field",
}
DEFAULT_ZOO_MODEL = "vgg16-imagenet-torch"
RERANK_LABELS = {
    "none": "None (keep index distances)",
    "l2": "L2 in pixel space (no weights)",
    "lpips": "LPIPS",
    "dreamsim": "DreamSim",
}
QUALITY_LABELS = {
    "none": "None (every image has quality 1)",
    "realism": "Realism in embedding space (no weights)",
    "maniqa": "MANIQA (pyiqa)",
    "other": "Other pyiqa no-reference metric",
}
INDEX_LABELS = {
    "auto": "Auto (by training set size)",
    "flat": "Flat (exact)",
    "pq": "Product quantization (PQ)",
    "ivfpq": "Inverted file + PQ (IVF-PQ)",
}
INDEX_PARAM_FIELDS = {
    "M": ("Sub-vectors M", ("pq", "ivfpq")),
    "nbits": ("Bits per sub-vector code (nbits)", ("pq", "ivfpq")),
    "nlist": ("Inverted lists (nlist)", ("ivfpq",)),
    "nprobe": ("Lists searched (nprobe)", ("ivfpq",)),
    "refine": ("Exact re-scoring factor (refine, 0 = codes only)", ("pq", "ivfpq")),
    "train_size": ("Codebook training sample size", ("pq", "ivfpq")),
}
DEFAULTS = {
    "encoder": "pixels",
    "index": "auto",
    "rerank": "l2",
    "quality": "realism",
    "k": 50,
    "temperature": "auto",  # chosen by benchmarks/truth.py; 1.0 is the paper's
    "batch_size": 64,
}
PAPER_TEMPERATURE = 1.0


def param(ctx, name, default=None):
    """``ctx.params[name]``, or ``default`` when missing, None or ''."""
    value = ctx.params.get(name)
    return default if value is None or value == "" else value


def _dropdown(inputs, ctx, name, choices, label, default=None, empty=None, error=None, **warning):
    """A dropdown of ``choices``, defaulting to ``default`` or else the first;
    returns the chosen value. With no choices it shows the warning ``empty``
    (``warning``: its other options), marks the field invalid with ``error``
    (default ``empty``) and returns None."""
    if not choices:
        inputs.view(name + "_none", types.Warning(label=empty, **warning))
        inputs.str(name, label=label, invalid=True, error_message=error or empty)
        return None
    view = types.DropdownView()
    for choice in choices:
        view.add_choice(choice, label=choice)
    if default not in choices:
        default = choices[0]
    inputs.enum(name, view.values(), default=default, label=label, view=view)
    return param(ctx, name, default)


def _choice_view(view, labels, problems=None):
    """``view`` with a choice per ``labels`` item ({value: label}), marked
    where ``problems`` says its weights are missing."""
    for k, label in labels.items():
        if problems and problems.get(k):
            label += " (weights missing)"
        view.add_choice(k, label=label)
    return view


def add_radio(inputs, name, labels, default, label, **kwargs):
    """A horizontal radio group of ``labels`` ({value: label})."""
    view = _choice_view(types.RadioGroup(orientation="horizontal"), labels)
    inputs.enum(name, view.values(), default=default, label=label, view=view, **kwargs)


# ------------------------------------------------------------- sample sets


def _value_fields(dataset):
    """Paths usable for "field value" sets: string, boolean and integer
    fields, including embedded ones such as ``ground_truth.label``."""
    out = []
    for path, field in dataset.get_field_schema(flat=True).items():
        if path in ("filepath", "id") or path.startswith("metadata") or path.split(".")[-1] in ("id", "_id"):
            continue
        if isinstance(field, (fof.StringField, fof.BooleanField, fof.IntField)) and not isinstance(
            field, fof.ObjectIdField
        ):
            out.append(path)
    return sorted(out)


def _typed_value(dataset, path, value):
    field = dataset.get_field(path)
    if isinstance(field, fof.BooleanField) and isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(field, fof.IntField) and isinstance(value, str):
        return int(value)
    return value


def resolve_samples(ctx, prefix, default_tag):
    """The collection chosen by the ``{prefix}_*`` parameters (see
    :func:`add_sample_set`)."""
    ds = ctx.dataset
    by = param(ctx, prefix + "_by", "tag")
    if by == "tag":
        return ds.match_tags(param(ctx, prefix + "_tag", default_tag))
    if by == "saved_view":
        name = param(ctx, prefix + "_saved_view")
        if name is None:
            raise ValueError("Choose a saved view for the %s samples" % prefix)
        return ds.load_saved_view(name)
    if by == "field":
        path, value = param(ctx, prefix + "_field"), ctx.params.get(prefix + "_value")
        if path is None or value is None:
            raise ValueError("Choose a field and a value for the %s samples" % prefix)
        return ds.match(F(path) == _typed_value(ds, path, value))
    if by == "current_view":
        return ctx.view
    raise ValueError("Unknown %s_by %r; allowed are %s" % (prefix, by, list(SOURCES)))


def add_sample_set(inputs, ctx, prefix, label, default_tag):
    """Form fields choosing a set of samples by tag, saved view, field value
    or the current view; shows how many samples the choice holds. Returns
    the number of samples, or None if the choice is incomplete."""
    ds = ctx.dataset
    add_radio(inputs, prefix + "_by", SOURCES, "tag", label)
    by = param(ctx, prefix + "_by", "tag")

    if by == "tag":
        if _dropdown(inputs, ctx, prefix + "_tag", sorted(ds.distinct("tags")), "Tag",
                     default_tag, "The dataset has no sample tags") is None:
            return None
    elif by == "saved_view":
        if _dropdown(inputs, ctx, prefix + "_saved_view", ds.list_saved_views(), "Saved view",
                     empty="The dataset has no saved views") is None:
            return None
    elif by == "field":
        path = _dropdown(inputs, ctx, prefix + "_field", _value_fields(ds), "Field",
                         "ground_truth.label",
                         "The dataset has no string, boolean or integer fields")
        if path is None:
            return None
        values = [str(v) for v in ds.distinct(path)[:500] if v is not None]
        if _dropdown(inputs, ctx, prefix + "_value", values, "Value",
                     empty="Field %r has no values" % path) is None:
            return None
    try:
        n = resolve_samples(ctx, prefix, default_tag).count()
    except Exception as e:  # incomplete or stale choice: say why
        inputs.view(prefix + "_error", types.Warning(label=str(e)))
        return None
    note = "%d samples" % n + (" (the current view)" if by == "current_view" else "")
    inputs.view(prefix + "_count", types.Notice(label=note))
    return n


# ----------------------------------------------------------------- run keys


def key_error(dataset, key, overwrite):
    """Why ``key`` cannot be used for a new run, or None."""
    if not isinstance(key, str) or not key.isidentifier():
        return "The run key must be a Python identifier (letters, digits, _), e.g. gmv"
    if key in dataset.list_runs():
        if key not in gmvruns.list_runs(dataset):
            return "Key %r is used by a run of another kind" % key
        if not overwrite:
            return "A GMValuator run %r exists: choose another key or tick overwrite" % key
    elif not overwrite:
        names = gmvruns.field_names(key)
        taken = [f for f in names["train"] + names["generated"] if dataset.has_field(f)]
        if taken:
            return "Fields %s exist and would be replaced: choose another key or tick overwrite" % taken
    return None


def add_new_key(inputs, ctx, default="gmv"):
    """A run key field, validated live, and an overwrite checkbox."""
    key = param(ctx, "key", default)
    overwrite = bool(param(ctx, "overwrite", False))
    err = key_error(ctx.dataset, key, overwrite)
    inputs.str(
        "key", default=default, label="Run key",
        description="Fields are named {key}_value, {key}_contributors, ...",
        invalid=err is not None, error_message=err or "",
    )
    inputs.bool("overwrite", default=False, label="Overwrite an existing run with this key")
    return key


def add_run_choice(inputs, ctx, name="run_key", label="Valuation run"):
    """A dropdown of the dataset's GMValuator runs; returns the chosen key or
    None (with a warning) when there is no run."""
    return _dropdown(
        inputs, ctx, name, gmvruns.list_runs(ctx.dataset), label,
        empty="No GMValuator run on this dataset", error="No GMValuator run",
        description="Compute values first (GMValuator: compute values).",
    )


def run_key(ctx, name="run_key"):
    """The chosen existing run (the only run when there is just one)."""
    key = param(ctx, name)
    if key is None:
        keys = gmvruns.list_runs(ctx.dataset)
        if len(keys) != 1:
            raise ValueError("Choose a run (param %r) among %s" % (name, keys))
        key = keys[0]
    return key


# ------------------------------------------------------ weights and choices


def weights_problem(check, *args):
    """The message of a failed weights check (missing and not downloadable
    here), or None; the check does not contact the download source."""
    try:
        check(*args, probe=False)
    except gmvw.MissingWeightsError as e:
        return str(e)
    except ValueError as e:
        return str(e)
    return None


def _rerank_problem(name, net="alex"):
    if name == "lpips":
        return weights_problem(gmvw.check_lpips, net)
    if name == "dreamsim":
        return weights_problem(gmvw.check_dreamsim)
    return None


def _quality_problem(metric):
    if metric in ("none", "realism", None):
        return None
    return weights_problem(gmvw.check_pyiqa, metric)


def _add_choice(inputs, ctx, name, labels, label, defaults, problems=None, radio=False):
    """Option ``name``, chosen among ``labels`` (see :func:`_choice_view`) in
    a dropdown or radio group; its default is the run's (``defaults``) or
    :data:`DEFAULTS`. Returns the chosen value."""
    d = defaults.get(name, DEFAULTS[name])
    view = _choice_view(types.RadioGroup() if radio else types.DropdownView(), labels, problems)
    inputs.enum(name, view.values(), default=d, label=label, view=view)
    return param(ctx, name, d)


def _warn(inputs, name, problem, what, model=None):
    """A warning when weights are missing here, else a notice when ``model``'s
    weights will be downloaded on first use."""
    if problem:
        inputs.view(name, types.Warning(
            label="%s cannot run here: weights are missing" % what, description=problem))
        return
    if model is None:
        return
    try:
        s = gmvw.model_status(model)
    except ValueError:
        return
    if s["state"] == "missing" and s["downloadable"]:
        size = s["download_bytes"]
        inputs.view(name, types.Notice(
            label="%s: weights will be downloaded on first use (%s)"
            % (what, gmvw.checks.format_bytes(size) if size else "size unknown"),
            description="From " + ", ".join(
                sorted({f["url"] for f in s["files"] if not f["present"] and f["url"]}))))


def add_encoder(inputs, ctx, defaults=None):
    """Encoder choice: pixels, a zoo model (weights checked) or an existing
    embeddings field."""
    defaults = defaults or {}
    enc = _add_choice(inputs, ctx, "encoder", ENCODERS, "Encoder", defaults, radio=True)
    if enc == "zoo":
        import fiftyone.zoo as foz

        names = foz.list_zoo_models(tags="embeddings")
        d_model = defaults.get("zoo_model", DEFAULT_ZOO_MODEL)
        inputs.str("zoo_model", default=d_model, label="Zoo model",
                   description="A FiftyOne zoo model that exposes embeddings (the paper: VGG-16)",
                   view=types.AutocompleteView(choices=[types.Choice(n, label=n) for n in names]))
        name = param(ctx, "zoo_model", d_model)
        problem = weights_problem(gmvw.check_zoo_model, name)
        _warn(inputs, "zoo_model_warning", problem, "Zoo model %r" % name, model=name)
    elif enc == "field":
        fields = sorted(
            p for p, f in ctx.dataset.get_field_schema().items()
            if isinstance(f, (fof.VectorField, fof.ArrayField))
        )
        _dropdown(inputs, ctx, "embeddings_field", fields, "Embeddings field",
                  defaults.get("embeddings_field"),
                  empty="The dataset has no embeddings fields", error="No embeddings field")


def encoder_kwargs(ctx):
    """``model`` and ``embeddings_field`` for the library."""
    enc = param(ctx, "encoder", DEFAULTS["encoder"])
    if enc == "pixels":
        return {"model": "pixels", "embeddings_field": None}
    if enc == "zoo":
        return {"model": param(ctx, "zoo_model", DEFAULT_ZOO_MODEL), "embeddings_field": None}
    if enc == "field":
        field = param(ctx, "embeddings_field")
        if field is None:
            raise ValueError("Choose an embeddings field")
        return {"model": None, "embeddings_field": field}
    raise ValueError("Unknown encoder %r; allowed are %s" % (enc, list(ENCODERS)))


def add_index(inputs, ctx, n_train=None, defaults=None):
    """Index type and its optional parameters (blank = automatic)."""
    defaults = defaults or {}
    index = _add_choice(inputs, ctx, "index", INDEX_LABELS, "Recall index", defaults)
    itype = index
    if index == "auto" and n_train:
        itype = gmvi.resolve_index_type("auto", n_train)
        inputs.view("index_auto", types.Notice(
            label="Auto picks '%s' for %d training samples" % (itype, n_train)))
    d_params = defaults.get("index_params") or {}
    for name, (label, kinds) in INDEX_PARAM_FIELDS.items():
        if itype in kinds or index == "auto" and itype == "auto":
            inputs.int("index_" + name, min=0, label=label, default=d_params.get(name),
                       description="blank = automatic")


def index_kwargs(ctx):
    params = {}
    for name in INDEX_PARAM_FIELDS:
        v = param(ctx, "index_" + name)
        if v is not None:
            params[name] = int(v)
    return {"index": param(ctx, "index", DEFAULTS["index"]), "index_params": params}


def add_rerank(inputs, ctx, defaults=None):
    """Re-ranker choice; LPIPS / DreamSim weights are checked and reported."""
    defaults = defaults or {}
    net = param(ctx, "lpips_net", defaults.get("lpips_net", "alex"))
    problems = {k: _rerank_problem(k, net) for k in ("lpips", "dreamsim")}
    rerank = _add_choice(inputs, ctx, "rerank", RERANK_LABELS, "Re-ranker", defaults, problems)
    if rerank == "lpips":
        add_radio(inputs, "lpips_net", {"alex": "AlexNet", "vgg": "VGG"},
                  defaults.get("lpips_net", "alex"), "LPIPS network")
    if rerank in ("l2", "lpips"):
        inputs.int("rerank_size", min=1, default=defaults.get("rerank_size"),
                   label="Resolution (pixels)", description="blank = the re-ranker's default")
    model = {"lpips": "lpips-%s" % net, "dreamsim": "dreamsim"}.get(rerank)
    _warn(inputs, "rerank_warning", problems.get(rerank), RERANK_LABELS.get(rerank, rerank),
          model=model)


def rerank_kwargs(ctx):
    rerank = param(ctx, "rerank", DEFAULTS["rerank"])
    params = {}
    if rerank == "lpips":
        params["net"] = param(ctx, "lpips_net", "alex")
    if rerank in ("l2", "lpips") and param(ctx, "rerank_size") is not None:
        params["size"] = int(param(ctx, "rerank_size"))
    return {"rerank": rerank, "rerank_params": params}


def add_quality(inputs, ctx, defaults=None):
    """Quality model choice; pyiqa weights are checked and reported."""
    defaults = defaults or {}
    problems = {"maniqa": _quality_problem("maniqa")}
    quality = _add_choice(inputs, ctx, "quality", QUALITY_LABELS, "Quality model", defaults,
                          problems)
    problem = problems.get(quality)
    metric = quality if quality == "maniqa" else None
    if quality == "other":
        inputs.str("quality_metric", default=defaults.get("quality_metric"), label="pyiqa metric",
                   description="a higher-is-better no-reference metric, e.g. musiq, clipiqa")
        metric = param(ctx, "quality_metric")
        problem = _quality_problem(metric) if metric else None
    _warn(inputs, "quality_warning", problem, "Quality model", model=metric)


def quality_kwargs(ctx):
    quality = param(ctx, "quality", DEFAULTS["quality"])
    if quality == "other":
        quality = param(ctx, "quality_metric")
        if quality is None:
            raise ValueError("Give a pyiqa metric name")
    return {"quality": quality}


def add_k(inputs, ctx, n_train=None, defaults=None):
    defaults = defaults or {}
    d = defaults.get("k", min(DEFAULTS["k"], n_train) if n_train else DEFAULTS["k"])
    inputs.int("k", min=1, max=n_train or None, default=d, label="Contributors per generated image (k)")
    return d


def add_recall_k(inputs, ctx, n_train=None, defaults=None):
    defaults = defaults or {}
    inputs.int("recall_k", min=1, max=n_train or None, default=(defaults or {}).get("recall_k"),
               label="Candidates recalled before re-ranking (recall_k)",
               description="blank = k (as in the paper)")


def add_temperature(inputs, ctx, defaults=None):
    current = (defaults or {}).get("temperature", DEFAULTS["temperature"])
    inputs.bool("auto_temperature", default=current == "auto", label="Automatic temperature",
                description="tau from the spread of each image's contributor distances")
    if not param(ctx, "auto_temperature", current == "auto"):
        inputs.float("temperature", default=PAPER_TEMPERATURE if current == "auto" else current,
                      label="Temperature", description="tau in exp(-d / tau); 1 is the paper")


def k_kwargs(ctx, n_train=None):
    k = param(ctx, "k")
    if k is None:
        k = min(DEFAULTS["k"], n_train) if n_train else DEFAULTS["k"]
    recall_k = param(ctx, "recall_k")
    return {"k": int(k), "recall_k": None if recall_k is None else int(recall_k)}


def temperature_kwargs(ctx):
    auto = param(ctx, "auto_temperature")
    if auto is None:  # an explicit temperature wins over the default
        auto = param(ctx, "temperature") is None and DEFAULTS["temperature"] == "auto"
    if auto:
        return {"temperature": "auto"}
    return {"temperature": float(param(ctx, "temperature", PAPER_TEMPERATURE))}


def add_full_config(inputs, ctx, n_train):
    """Every valuation option (encoder, index, re-ranker, quality, k, ...)."""
    add_encoder(inputs, ctx)
    add_index(inputs, ctx, n_train)
    add_rerank(inputs, ctx)
    add_quality(inputs, ctx)
    add_k(inputs, ctx, n_train)
    add_recall_k(inputs, ctx, n_train)
    add_temperature(inputs, ctx)
    inputs.int("batch_size", min=1, default=DEFAULTS["batch_size"], label="Batch size")


def full_kwargs(ctx, n_train):
    kw = {}
    kw.update(encoder_kwargs(ctx))
    kw.update(index_kwargs(ctx))
    kw.update(rerank_kwargs(ctx))
    kw.update(quality_kwargs(ctx))
    kw.update(k_kwargs(ctx, n_train))
    kw.update(temperature_kwargs(ctx))
    kw["batch_size"] = int(param(ctx, "batch_size", DEFAULTS["batch_size"]))
    return kw


def add_new_run(inputs, ctx):
    """The form of a new run: its training and generated samples, its key and
    every valuation option."""
    n_train = add_sample_set(inputs, ctx, "train", "Training samples", "train")
    add_sample_set(inputs, ctx, "generated", "Generated samples", "generated")
    add_new_key(inputs, ctx)
    add_full_config(inputs, ctx, n_train)


def new_run_args(ctx):
    """``(train, generated, kwargs)`` of the run :func:`add_new_run`'s form
    describes; ``kwargs`` holds ``key``, ``overwrite`` and every option."""
    train = resolve_samples(ctx, "train", "train")
    generated = resolve_samples(ctx, "generated", "generated")
    kwargs = {"key": param(ctx, "key", "gmv"), "overwrite": bool(param(ctx, "overwrite", False))}
    kwargs.update(full_kwargs(ctx, len(train)))
    return train, generated, kwargs


def config_defaults(dataset, key):
    """Form defaults taken from run ``key``'s config."""
    c = gmvruns.get_run_config(dataset, key)
    model = c.model or {}
    if c.embeddings_field and model.get("name") in (None, "NoneType"):
        enc = {"encoder": "field", "embeddings_field": c.embeddings_field}
    elif model.get("name") == "pixels":
        enc = {"encoder": "pixels"}
    else:
        enc = {"encoder": "zoo", "zoo_model": model.get("name")}
    d = dict(enc)
    d.update(index=c.index, index_params=c.index_params or {}, k=c.k, recall_k=c.recall_k,
             temperature=c.temperature)
    d["rerank"] = c.rerank.get("name", "none")
    if d["rerank"] == "lpips":
        d["lpips_net"] = c.rerank.get("net", "alex")
    if "size" in c.rerank and d["rerank"] in ("l2", "lpips"):
        d["rerank_size"] = c.rerank["size"]
    q = c.quality.get("name", "none")
    d.update({"quality": q} if q in QUALITY_LABELS else {"quality": "other", "quality_metric": q})
    return d


# ------------------------------------------------------ execution helpers


def operator_config(name, label, description, delegated=False, **kwargs):
    """The config of a dynamic operator that runs immediately, and delegated
    too when ``delegated``; ``kwargs`` are further ``OperatorConfig`` options."""
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        allow_immediate_execution=True,
        allow_delegated_execution=delegated,
        **kwargs,
    )


def add_delegate(inputs, default):
    inputs.bool("delegate", default=default, label="Run in the background (delegated)",
                description="Delegated runs are executed by `fiftyone delegated launch`; "
                "untick to run now in the App")


def resolve_delegation(ctx):
    """The form's ``delegate`` choice, or None to leave it to the caller
    (``request_delegation`` / the App's execution menu)."""
    d = ctx.params.get("delegate")
    return None if d is None else bool(d)


def progress(ctx, label):
    """For delegated runs, a library ``progress=`` callback forwarding to
    ``ctx.set_progress`` (at most twice a second); None (FiftyOne's default
    progress bars) for immediate runs, whose App shows no progress."""
    if not ctx.delegated:
        return None

    def report(pb):
        total = pb.total or 0
        frac = pb.progress if total else None
        stage = getattr(pb, "stage", None)
        text = "%s [%s]" % (label, stage) if stage else label
        ctx.set_progress(
            progress=frac,
            label="%s: %d/%d" % (text, pb.iteration, total) if total else text,
        )

    return fou.report_progress(report, dt=0.5)


def report_result(dataset, key, n=10):
    """A build_report dict plus its markdown, for operator output."""
    rep = gmvreport.build_report(dataset, key, n=n)

    def table(rows):
        return [dict(r, value=None if r["value"] is None else round(r["value"], 5)) for r in rows]

    return {
        "report": rep,
        "summary": gmvreport.report_markdown(rep, tables=False),
        "histogram": rep["histogram"]["data_url"],
        "top": table(rep["top"]),
        "bottom": table(rep["bottom"]),
    }


def table_view(columns):
    """A table view of ``columns``, ``(key, label)`` pairs."""
    table = types.TableView()
    for key, label in columns:
        table.add_column(key, label=label)
    return table


_SAMPLES_COLUMNS = (
    ("filename", "Sample"),
    ("value", "Value"),
    ("hits", "Credited by (generated samples)"),
    ("id", "ID"),
)


def report_output(outputs=None):
    """The output of an operator returning :func:`report_result`: its
    fields, after those already in ``outputs``."""
    if outputs is None:
        outputs = types.Object()
    outputs.str("summary", label="Summary", view=types.MarkdownView())
    outputs.str("histogram", label="Value distribution",
                view=types.ImageView(width="640px", alt="value histogram"))
    outputs.list("top", types.Object(), label="Most valuable training samples",
                 view=table_view(_SAMPLES_COLUMNS))
    outputs.list("bottom", types.Object(), label="Least valuable training samples",
                 view=table_view(_SAMPLES_COLUMNS))
    return types.Property(outputs, view=types.View(label="GMValuator run report"))


__all__ = ["gmv", "gmvnav", "gmvreport", "gmvruns", "gmvw"]
