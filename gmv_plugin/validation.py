"""Checks of a valuation's key and parameters, made before any work.

The library raises one ``ValueError`` listing every problem
(:func:`check_params`, :func:`check_key`); App forms show each message beside
its field (:func:`param_errors`, :func:`key_error`). Both use the same rules.
"""

import inspect
import math
import numbers

import numpy as np

from gmv_plugin import index as gmvi
from gmv_plugin import runs as gmvruns

MAX_KEY_LENGTH = 64
POSITIVE_INTS = ("size", "batch_size", "cache_mb")


def _is_int(x):
    return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, bool)


def _int_error(name, value, low, high=None, high_name=None):
    if high is not None:
        allowed = "an integer between %d and %d inclusive" % (low, high)
        if high_name:
            allowed += " (%s)" % high_name
    else:
        allowed = "an integer >= %d" % low
    if not _is_int(value) or value < low or (high is not None and value > high):
        return "%s must be %s; got %r" % (name, allowed, value)
    return None


def key_error(dataset, key, overwrite=False):
    """The reason ``key`` cannot name a new run on ``dataset`` (or replace
    one when ``overwrite``), or None when it can."""
    if not isinstance(key, str) or not key.isidentifier():
        return (
            "The run key must be a Python identifier (letters, digits and "
            "underscores, not starting with a digit); got %r" % (key,)
        )
    if key.startswith("_"):
        return "The run key cannot start with '_' (FiftyOne reserves such field names); got %r" % key
    if len(key) > MAX_KEY_LENGTH:
        return "The run key must have at most %d characters; got %d" % (MAX_KEY_LENGTH, len(key))
    dataset = dataset._root_dataset
    ours = False
    if key in dataset.list_runs():
        if key not in gmvruns.list_runs(dataset):
            return "Run key %r is used by another kind of run (e.g. a Brain run)" % key
        if not overwrite:
            return (
                "A GMValuator run with key %r already exists on dataset %r; "
                "choose another key or overwrite it" % (key, dataset.name)
            )
        ours = True
    if not ours:
        clash = [f for f in gmvruns.all_field_names(key) if dataset.has_field(f)]
        if clash:
            return (
                "Dataset %r already has field(s) %s, which run key %r would "
                "write; choose another key" % (dataset.name, ", ".join(clash), key)
            )
    return None


def check_key(dataset, key, overwrite=False):
    """Raises a ``ValueError`` when :func:`key_error` finds a problem."""
    error = key_error(dataset, key, overwrite=overwrite)
    if error:
        raise ValueError(error)


def propose_key(dataset, base="gmv"):
    """The first of ``base``, ``base_2``, ``base_3``, ... usable as a new key."""
    key, i = base, 1
    while key_error(dataset, key) is not None:
        i += 1
        key = "%s_%d" % (base, i)
    return key


def param_errors(
    n_train=None,
    k=50,
    recall_k=None,
    temperature=1.0,
    index="auto",
    index_params=None,
    rerank="none",
    rerank_params=None,
    quality="none",
    quality_params=None,
    batch_size=64,
    progress=None,
    embeddings_field=None,
    dim=None,
):
    """Every problem with these parameters, as ``{name: message}``.

    ``n_train`` (the number of training samples) and ``dim`` (the embedding
    dimension) enable the checks that need them.
    """
    errors = {}

    def put(name, message):
        if message:
            errors[name] = message

    bound = "the number of training samples" if n_train is not None else None
    put("k", _int_error("k", k, 1, n_train, bound))
    if recall_k is not None:
        low = k if _is_int(k) and k >= 1 else 1
        put("recall_k", _int_error("recall_k", recall_k, low, n_train, bound))
        if "recall_k" in errors and low > 1:
            errors["recall_k"] += " (recall_k must be >= k)"
    if temperature != "auto":
        ok = isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
        if not ok or not math.isfinite(temperature) or temperature <= 0:
            put("temperature", "temperature must be a finite number > 0 or 'auto'; got %r" % (temperature,))
    put("batch_size", _int_error("batch_size", batch_size, 1))
    put("progress", _progress_error(progress))
    if embeddings_field is not None and (
        not isinstance(embeddings_field, str) or not embeddings_field or embeddings_field.startswith("_")
    ):
        put("embeddings_field", "embeddings_field must be a field name not starting with '_'; got %r" % (embeddings_field,))

    if index not in gmvi.INDEX_TYPES:
        put("index", "index must be one of %s; got %r" % (gmvi.INDEX_TYPES, index))
    else:
        try:
            gmvi.check_params(index_params, index=index, n=n_train, d=dim)
        except ValueError as e:
            put("index_params", str(e))

    put("rerank_params", _component_error("rerank", rerank, rerank_params))
    put("quality_params", _component_error("quality", quality, quality_params))
    return errors


def _progress_error(progress):
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        return "progress must be True, False, None or a callable; got %r" % (progress,)
    return None


def check_progress(progress):
    """Raises a ``ValueError`` unless ``progress`` is True, False, None or callable."""
    error = _progress_error(progress)
    if error:
        raise ValueError(error)


def check_params(**params):
    """Raises one ``ValueError`` naming every problem :func:`param_errors`
    finds."""
    errors = param_errors(**params)
    if errors:
        raise ValueError("; ".join(errors.values()))


def _component_error(kind, name, params):
    """Unknown constructor parameters of a named re-ranker / quality model."""
    if not params:
        return None
    if not isinstance(params, dict):
        return "%s_params must be a dict; got %r" % (kind, params)
    cls = _component_class(kind, name)
    if cls is None:
        return "%s=%r takes no parameters; got %s" % (kind, name, sorted(params))
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "metric")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        return "Unknown %s_params %s for %s=%r; allowed are %s" % (kind, unknown, kind, name, allowed)
    errors = []
    for p in POSITIVE_INTS:
        if params.get(p) is not None:
            errors.append(_int_error("%s_params %s" % (kind, p), params[p], 1))
    if params.get("mode") is not None and params["mode"] not in ("RGB", "L"):
        errors.append("%s_params mode must be one of ('RGB', 'L'); got %r" % (kind, params["mode"]))
    if params.get("net") is not None:
        from gmv_plugin.perceptual import LPIPS_NETS

        if params["net"] not in LPIPS_NETS:
            errors.append("%s_params net must be one of %s; got %r" % (kind, LPIPS_NETS, params["net"]))
    errors = [e for e in errors if e]
    return "; ".join(errors) or None


def _component_class(kind, name):
    if not isinstance(name, str):
        return type(name)
    if kind == "rerank":
        from gmv_plugin import rerank as gmvr

        if name == "l2":
            return gmvr.L2Reranker
        if name in ("lpips", "dreamsim"):
            from gmv_plugin import perceptual

            return {"lpips": perceptual.LPIPSReranker, "dreamsim": perceptual.DreamSimReranker}[name]
        return None
    if name in ("none", "realism"):
        return None
    from gmv_plugin.iqa import PyiqaQuality

    return PyiqaQuality
