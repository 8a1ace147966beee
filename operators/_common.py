"""Form building and parameter parsing shared by the GMValuator operators.

Operators stay thin: these helpers turn form parameters into arguments of
:mod:`gmv_plugin` calls and build the matching form fields. Every parameter
has a default that works offline, so the operators can be called from the SDK
with few or no ``params``.
"""


import functools
import re

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
from gmv_plugin import locks as gmvlocks
from gmv_plugin import panel_data as gmvpanel
from gmv_plugin import weights as gmvw

from gmv_plugin import validation as gmvval

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
    "auto": "Auto (cheapest by a cost model, within a memory budget)",
    "flat": "Flat (exact)",
    "ivfflat": "Inverted file (IVF-flat, PCA for large dimensions)",
    "pq": "Product quantization (PQ)",
    "ivfpq": "Inverted file + PQ (IVF-PQ)",
}
INDEX_PARAM_FIELDS = {
    "pca": ("PCA dimensions (0 = none)", ("ivfflat", "pq", "ivfpq")),
    "M": ("Sub-vectors M", ("pq", "ivfpq")),
    "nbits": ("Bits per sub-vector code (nbits)", ("pq", "ivfpq")),
    "nlist": ("Inverted lists (nlist)", ("ivfflat", "ivfpq")),
    "nprobe": ("Lists searched (nprobe)", ("ivfflat", "ivfpq")),
    "refine": ("Exact re-scoring factor (refine, 0 = codes only)", ("ivfflat", "pq", "ivfpq")),
    "train_size": ("Codebook training sample size", ("ivfflat", "pq", "ivfpq")),
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


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def md(text):
    """``text`` with Markdown's special characters escaped, so that paths like
    ``~/fiftyone/__models__`` render as written."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def code(text):
    """``text`` as a Markdown code span (shown literally; no escaping)."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    return "%s%s%s" % (fence, text, fence)


def first_sentence(text):
    """The first sentence of an error message (for a field's error line)."""
    text = str(text).strip()
    for m in re.finditer(r"\.\s", text):
        if not text[: m.start()].endswith(("e.g", "i.e", "etc", "vs")):
            return text[: m.start() + 1]
    return text


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


def key_error(dataset, key, overwrite=False):
    """Why ``key`` cannot be used for a new run, or None (the library's
    rule: :func:`gmv_plugin.validation.key_error`)."""
    return gmvval.key_error(dataset, key, overwrite=overwrite)


def add_new_key(inputs, ctx):
    """A run key field, validated live (runs and existing fields), proposing
    a key not in use, and an overwrite checkbox."""
    default = gmvval.propose_key(ctx.dataset)
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
    """A dropdown of the dataset's GMValuator runs, most recent first and
    chosen by default; returns the chosen key or None (with a warning) when
    there is no run."""
    keys = gmvpanel.runs_by_recency(ctx.dataset)
    return _dropdown(
        inputs, ctx, name, keys, label, keys[0] if keys else None,
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
    gmvruns.get_run_config(ctx.dataset, key)  # a clear error for unknown keys
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
    :data:`DEFAULTS`. A choice whose weights are missing (``problems``) makes
    the form invalid while chosen. Returns the chosen value."""
    d = defaults.get(name, DEFAULTS[name])
    view = _choice_view(types.RadioGroup() if radio else types.DropdownView(), labels, problems)
    chosen = param(ctx, name, d)
    problem = (problems or {}).get(chosen)
    inputs.enum(name, view.values(), default=d, label=label, view=view,
                invalid=bool(problem), error_message=_weights_line(problem))
    return chosen


def _weights_line(problem):
    return "Weights are missing; choose another option or provide them" if problem else ""


def _warn(inputs, name, problem, what, model=None):
    """A warning when weights are missing here, else a notice when ``model``'s
    weights will be downloaded on first use."""
    if problem:
        inputs.view(name, types.Warning(
            label="%s cannot run here: weights are missing" % what, description=md(problem)))
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
        if problem:
            inputs.str("zoo_model_weights", view=types.HiddenView(), invalid=True,
                       error_message=first_sentence(problem))
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
        if problem:
            inputs.str("quality_weights", view=types.HiddenView(), invalid=True,
                       error_message=first_sentence(problem))
    _warn(inputs, "quality_warning", problem, "Quality model", model=metric)


def quality_kwargs(ctx):
    quality = param(ctx, "quality", DEFAULTS["quality"])
    if quality == "other":
        quality = param(ctx, "quality_metric")
        if quality is None:
            raise ValueError("Give a pyiqa metric name")
    return {"quality": quality}


def default_k(n_train=None):
    return min(DEFAULTS["k"], n_train) if n_train else DEFAULTS["k"]


def live_errors(ctx, n_train=None, defaults=None):
    """The library's verdict (:func:`gmv_plugin.validation.param_errors`) on
    the form's k, recall_k, temperature and batch size: ``{name: message}``."""
    defaults = defaults or {}
    k = param(ctx, "k", defaults.get("k", default_k(n_train)))
    recall_k = param(ctx, "recall_k", defaults.get("recall_k"))
    current = defaults.get("temperature", DEFAULTS["temperature"])
    if _auto_temperature(ctx, current):
        temperature = "auto"
    else:
        temperature = param(ctx, "temperature", PAPER_TEMPERATURE if current == "auto" else current)
    batch_size = param(ctx, "batch_size", defaults.get("batch_size", DEFAULTS["batch_size"]))
    params = dict(k=k, recall_k=recall_k, temperature=temperature, batch_size=batch_size)
    return gmvval.param_errors(n_train=n_train, **params)


def _invalid(errors, name):
    err = (errors or {}).get(name)
    return {"invalid": bool(err), "error_message": err or ""}


def _range(n_train, low="1"):
    return "between %s and %d" % (low, n_train) if n_train else "at least %s" % low


def add_k(inputs, ctx, n_train=None, defaults=None, errors=None):
    defaults = defaults or {}
    d = defaults.get("k", default_k(n_train))
    inputs.int("k", default=d, label="Contributors per generated image (k)",
               description="an integer %s (the training samples)" % _range(n_train),
               **_invalid(errors, "k"))
    return d


def add_recall_k(inputs, ctx, n_train=None, defaults=None, errors=None):
    defaults = defaults or {}
    inputs.int("recall_k", default=defaults.get("recall_k"),
               label="Candidates recalled before re-ranking (recall_k)",
               description="blank = k (as in the paper); otherwise %s" % _range(n_train, "k"),
               **_invalid(errors, "recall_k"))


def _auto_temperature(ctx, current):
    """Whether the form means ``temperature="auto"``: its checkbox, else an
    explicit temperature wins over an "auto" default."""
    auto = param(ctx, "auto_temperature")
    if auto is None:
        auto = param(ctx, "temperature") is None and current == "auto"
    return bool(auto)


def add_temperature(inputs, ctx, defaults=None, errors=None):
    current = (defaults or {}).get("temperature", DEFAULTS["temperature"])
    auto = _auto_temperature(ctx, current)
    inputs.bool("auto_temperature", default=auto, label="Automatic temperature",
                description="tau from the spread of each image's contributor distances")
    if not auto:
        inputs.float("temperature", default=PAPER_TEMPERATURE if current == "auto" else current,
                      label="Temperature", description="tau > 0 in exp(-d / tau); 1 is the paper",
                      **_invalid(errors, "temperature"))


def k_kwargs(ctx, n_train=None):
    k = param(ctx, "k", default_k(n_train))
    recall_k = param(ctx, "recall_k")
    return {"k": _int(k), "recall_k": None if recall_k is None else _int(recall_k)}


def _int(x):
    """Whole numbers as int; anything else as given, for the library to
    reject with its own message."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def temperature_kwargs(ctx):
    if _auto_temperature(ctx, DEFAULTS["temperature"]):
        return {"temperature": "auto"}
    return {"temperature": param(ctx, "temperature", PAPER_TEMPERATURE)}


def add_full_config(inputs, ctx, n_train):
    """Every valuation option (encoder, index, re-ranker, quality, k, ...),
    validated live by the library's rules."""
    errors = live_errors(ctx, n_train)
    add_encoder(inputs, ctx)
    add_index(inputs, ctx, n_train)
    add_rerank(inputs, ctx)
    add_quality(inputs, ctx)
    add_k(inputs, ctx, n_train, errors=errors)
    add_recall_k(inputs, ctx, n_train, errors=errors)
    add_temperature(inputs, ctx, errors=errors)
    inputs.int("batch_size", default=DEFAULTS["batch_size"], label="Batch size",
               description="an integer, at least 1", **_invalid(errors, "batch_size"))


def full_kwargs(ctx, n_train):
    kw = {}
    kw.update(encoder_kwargs(ctx))
    kw.update(index_kwargs(ctx))
    kw.update(rerank_kwargs(ctx))
    kw.update(quality_kwargs(ctx))
    kw.update(k_kwargs(ctx, n_train))
    kw.update(temperature_kwargs(ctx))
    kw["batch_size"] = _int(param(ctx, "batch_size", DEFAULTS["batch_size"]))
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
    kwargs = {"key": param(ctx, "key", gmvval.propose_key(ctx.dataset)),
              "overwrite": bool(param(ctx, "overwrite", False))}
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


def operator_config(name, label, description, delegated=False, dynamic=True, **kwargs):
    """The config of an operator that runs at once on Execute; with
    ``delegated`` it can also be scheduled (the App's Execute ▾ menu, or
    ``request_delegation=True`` from Python), never by default.

    Operators without inputs must not be ``dynamic``: the App then shows an
    empty prompt that never runs. ``kwargs`` are further ``OperatorConfig``
    options.
    """
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=described(description),
        dynamic=dynamic,
        allow_immediate_execution=True,
        allow_delegated_execution=delegated,
        default_choice_to_delegated=False,
        **kwargs,
    )


def described(text):
    """An operator description. The App's operator browser orders operators
    by the first letter of their description, then by registration order:
    one common prefix keeps the plugin's order (the pipeline first)."""
    return "GMValuator: " + text[0].lower() + text[1:]


BACKGROUND_NOTE = (
    "Execute runs it now, in the App. To run it in the background instead: start the App "
    "with FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true, pick Schedule in the Execute ▾ menu, "
    "and keep `fiftyone delegated launch` running (same FIFTYONE_DATABASE_URI and "
    "FIFTYONE_PLUGINS_DIR); `fiftyone delegated list` shows the scheduled run's id. "
    "Reload the page when it has finished."
)


def add_background_note(inputs):
    """One line on what a background (scheduled) run needs."""
    inputs.view("background_note", types.Notice(label="Run now or in the background",
                                                description=BACKGROUND_NOTE))


#: errors a user can cause (bad input, missing weights, a run in use): shown
#: as one sentence in the output, not as a traceback
EXPECTED_ERRORS = (ValueError, gmvw.MissingWeightsError, gmvlocks.RunLockedError)


def friendly_errors(execute):
    """Wraps an operator's ``execute``: an expected error of an immediate run
    becomes the result ``{"error_sentence": message}``, which
    :func:`error_output` shows as one sentence. Delegated runs still fail
    (their state must say so)."""

    @functools.wraps(execute)
    def wrapper(self, ctx):
        try:
            return execute(self, ctx)
        except EXPECTED_ERRORS as e:
            if ctx.delegated:
                raise
            return {"error_sentence": str(e)}

    return wrapper


def failed(ctx):
    """Whether the result being shown is an expected error."""
    return bool((ctx.results or {}).get("error_sentence"))


def error_output(ctx):
    """The output of a run that failed with an expected error."""
    outputs = types.Object()
    err = ctx.results["error_sentence"]
    first = first_sentence(err)
    outputs.view("error_sentence", types.Error(
        label="Nothing was changed: " + first,
        description=md(err) if err.strip() != first else None))
    return types.Property(outputs, view=types.View(label="GMValuator: did not complete"))


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


def show_run_fields(ctx, key):
    """After an immediate run: reloads the App's dataset (new fields appear
    in the sidebar) and shows ``{key}_value`` on the grid's tiles, next to
    the fields already shown. Delegated runs cannot reach the App."""
    if ctx.delegated:
        return
    ctx.ops.reload_dataset()
    active = list(ctx.active_fields or [])
    if active:
        ctx.ops.set_active_fields(list(dict.fromkeys(active + ["%s_value" % key])))


def report_result(dataset, key, n=10):
    """A build_report dict plus its markdown, for operator output."""
    rep = gmvreport.build_report(dataset, key, n=n)

    def table(rows):
        return [dict(r, value=None if r["value"] is None else round(r["value"], 5)) for r in rows]

    zero = rep["counts"]["zero_value"]
    return {
        "report": rep,
        "summary": gmvreport.report_markdown(rep, tables=False),
        "histogram": rep["histogram"]["data_url"],
        "top": table(rep["top"]),
        "bottom": table(rep["bottom"]),
        "zero_note": "%d training samples have value 0 (no generated sample credits them); "
        "GMValuator: sort by value with 'Only these' shows them" % zero,
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


def report_output(ctx, outputs=None, title="GMValuator run report"):
    """The output of an operator returning :func:`report_result`: its
    fields, after those already in ``outputs`` (or the error sentence)."""
    if failed(ctx):
        return error_output(ctx)
    if outputs is None:
        outputs = types.Object()
    outputs.str("summary", label="Summary", view=types.MarkdownView())
    outputs.str("histogram", label="Value distribution",
                view=types.ImageView(width="640px", alt="value histogram"))
    outputs.list("top", types.Object(), label="Most valuable training samples",
                 view=table_view(_SAMPLES_COLUMNS))
    outputs.list("bottom", types.Object(),
                 label="Least valuable training samples (among non-zero values)",
                 view=table_view(_SAMPLES_COLUMNS))
    outputs.str("zero_note", label="Zero-value training samples")
    return types.Property(outputs, view=types.View(label=title))


__all__ = ["gmv", "gmvnav", "gmvreport", "gmvruns", "gmvw"]
