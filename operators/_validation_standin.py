"""TEMPORARY stand-in for ``gmv_plugin.validation`` (the lead's module), with
its interface, used only until that module exists. Delete when merged."""

import numpy as np

from gmv_plugin import runs as gmvruns


def _int_error(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            return "%s must be an integer; got %r" % (name, value)
    if high is not None and (value < low or value > high):
        return "%s must be between %d and %d inclusive; got %d" % (name, low, high, value)
    if value < low:
        return "%s must be at least %d; got %d" % (name, low, value)
    return None


def param_errors(n_train=None, **params):
    errors = {}
    k = params.get("k")
    if "k" in params and k is not None:
        e = _int_error("k", k, 1, n_train)
        if e:
            errors["k"] = e
    rk = params.get("recall_k")
    if rk is not None:
        low = int(k) if k is not None and "k" not in errors else 1
        e = _int_error("recall_k", rk, low, n_train)
        if e:
            if "k" not in errors and k is not None and isinstance(rk, (int, float)) and rk < k:
                e = "recall_k must be at least k (%d); got %r" % (k, rk)
            errors["recall_k"] = e
    t = params.get("temperature")
    if "temperature" in params and t != "auto":
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            errors["temperature"] = "temperature must be a number > 0 or 'auto'; got %r" % (t,)
    bs = params.get("batch_size")
    if bs is not None:
        e = _int_error("batch_size", bs, 1, None)
        if e:
            errors["batch_size"] = e
    return errors


def key_error(dataset, key, overwrite=False):
    if not isinstance(key, str) or not key.isidentifier():
        return "key must be a valid Python identifier; got %r" % (key,)
    if key in dataset.list_runs():
        if key not in gmvruns.list_runs(dataset):
            return "Run key %r is used by a run of another kind" % key
        if not overwrite:
            return "A GMValuator run with key %r already exists on dataset %r" % (key, dataset.name)
    elif not overwrite:
        names = gmvruns.field_names(key)
        taken = [f for f in names["train"] + names["generated"] if dataset.has_field(f)]
        if taken:
            return "Fields %s already exist on dataset %r" % (", ".join(taken), dataset.name)
    return None


def check_key(dataset, key, overwrite=False):
    err = key_error(dataset, key, overwrite)
    if err:
        raise ValueError(err)


def propose_key(dataset, base="gmv"):
    key, i = base, 1
    while key_error(dataset, key) is not None:
        i += 1
        key = "%s_%d" % (base, i)
    return key
