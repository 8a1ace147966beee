"""GMValuator runs: FiftyOne custom runs with config, results and cleanup.

Each valuation is registered on its dataset like a Brain run, so
``dataset.list_runs()``, ``get_run_info()``, ``load_run_results()``,
``rename_run()`` and ``delete_run()`` all work; renaming renames the run's
fields and files, deleting removes them.
"""

import json
import os
import time

import fiftyone as fo
import fiftyone.core.runs as foruns

METHOD = "gmvaluator"
TRAIN_FIELDS = ("value", "hits", "cleansing", "copied_by")
GENERATED_FIELDS = ("contributors", "distances", "scores", "quality", "copy_score", "is_copy")


def runs_root():
    """Where run files (embeddings, indexes) live: ``$GMV_RUNS_DIR`` or
    ``~/.fiftyone/gmv``."""
    return os.environ.get("GMV_RUNS_DIR") or os.path.join(
        os.path.expanduser("~"), ".fiftyone", "gmv"
    )


def run_dir(dataset, key):
    """The directory holding the files of run ``key`` on ``dataset``."""
    dataset = dataset._root_dataset
    return os.path.join(runs_root(), str(dataset._doc.id), key)


def field_names(key):
    """The fields a run writes: ``{"train": [...], "generated": [...]}``."""
    return {
        "train": ["%s_%s" % (key, s) for s in TRAIN_FIELDS],
        "generated": ["%s_%s" % (key, s) for s in GENERATED_FIELDS],
    }


def all_field_names(key):
    """Every field name a run with this key may write."""
    names = field_names(key)
    return names["train"] + names["generated"]


def _existing_fields(dataset, key):
    return [f for f in all_field_names(key) if dataset.has_field(f)]


class GMValuationConfig(foruns.RunConfig):
    """Configuration of a GMValuator run; see :func:`gmv_plugin.compute_values`
    for the parameters."""

    def __init__(self, **kwargs):
        kwargs["method"] = METHOD
        super().__init__(**kwargs)


class GMValuation(foruns.Run):
    """A GMValuator run; knows its fields and files."""

    def get_fields(self, samples, key):
        return _existing_fields(samples._root_dataset, key)

    def rename(self, samples, key, new_key):
        from gmv_plugin import locks, store

        dataset = samples._root_dataset
        if locks.is_held_here(dataset, key):  # inside gmv's own journaled rename
            store.move_run_files(dataset, key, new_key)
            return
        with store.writing(dataset, key, "rename_run", new_key):
            store.move_run_files(dataset, key, new_key)

    def cleanup(self, samples, key):
        from gmv_plugin import locks, store

        dataset = samples._root_dataset
        if locks.is_held_here(dataset, key):
            store.remove_run_files(dataset, key)
            return
        with store.writing(dataset, key, "delete_run"):
            store.remove_run_files(dataset, key)


class GMValuationResults(foruns.RunResults):
    """Results of a GMValuator run.

    Attributes (as stored): ``timings`` (seconds per stage), ``reused`` (stages
    loaded from an earlier computation), ``num_train``, ``num_generated``,
    ``index_type``, ``index_params``, ``quality_summary``, ``temperature``
    (the tau used, resolved when the config says ``"auto"``),
    ``num_contributing``, ``dataset_id`` (the dataset whose run directory
    holds the arrays; another id means the dataset is a clone), ``truth``
    (what the cleansing and copy flags were computed from: ``source``
    "images", "embeddings" or "values"; ``num_copies``; ``copy_search``,
    exact or an inverted file, see :class:`gmv_plugin.knn.NeighbourSearch`).
    """

    @property
    def run_dir(self):
        """The directory of the run's arrays."""
        return run_dir(self.samples, self.key)

    @property
    def value_field(self):
        return "%s_value" % self.key

    @property
    def hits_field(self):
        return "%s_hits" % self.key

    def train_view(self):
        """The training samples of the run."""
        return train_view(self.samples, self.config)

    def generated_view(self):
        """The generated samples that have been valued."""
        return self.samples._root_dataset.exists("%s_contributors" % self.key)

    def sorted_view(self, reverse=True):
        """Training samples sorted by value, most valuable first."""
        return self.train_view().sort_by(self.value_field, reverse=reverse)

    def top(self, n=10):
        """The ``n`` most valuable training samples."""
        return self.sorted_view(reverse=True).limit(n)

    def bottom(self, n=10):
        """The ``n`` least valuable training samples."""
        return self.sorted_view(reverse=False).limit(n)

    def values(self):
        """A dict mapping training sample ids to values."""
        ids, vals = self.train_view().values(["id", self.value_field])
        return dict(zip(ids, vals))


def _load_view(samples, stages):
    """Rebuilds a view from its serialized stages (a JSON string, as stored
    in run configs: raw stage dicts would be taken for documents)."""
    dataset = samples._root_dataset
    if isinstance(stages, str):
        stages = json.loads(stages)
    return fo.DatasetView._build(dataset, stages or [])


def train_view(samples, config):
    """The training samples of a run with the given config."""
    return _load_view(samples, config.train_view)


def generated_view(samples, config):
    """The generated samples of a run: its generated view, plus the samples
    added later by :func:`gmv_plugin.update_values`, in valuation order."""
    view = _load_view(samples, config.generated_view)
    added = getattr(config, "generated_added", None) or []
    if not added:
        return view
    ids = view.values("id")
    seen = set(ids)
    for stages in added:
        for i in _load_view(samples, stages).values("id"):
            if i not in seen:
                seen.add(i)
                ids.append(i)
    return samples._root_dataset.select(ids, ordered=True)


def list_runs(samples):
    """The keys of the GMValuator runs on ``samples``' dataset."""
    return samples._root_dataset.list_runs(method=METHOD)


def get_run_config(samples, key):
    """The :class:`GMValuationConfig` of run ``key``; ValueError if absent."""
    dataset = samples._root_dataset
    keys = list_runs(dataset)
    if key not in keys:
        raise ValueError(
            "No GMValuator run with key %r on dataset %r; existing runs: %s"
            % (key, dataset.name, keys)
        )
    return dataset.get_run_info(key).config


def load_results(samples, key):
    """Loads the :class:`GMValuationResults` of run ``key``. Safe while
    another process changes the run: it returns the old or the new results."""
    from gmv_plugin import store

    dataset = samples._root_dataset
    store.recover_if_free(dataset, key)
    for attempt in range(5):
        get_run_config(dataset, key)
        try:
            return dataset.load_run_results(key, cache=False)
        except Exception:
            # the results document was being replaced; read it again
            dataset.reload()
            if attempt == 4:
                raise
            time.sleep(0.2)


def rename_run(samples, key, new_key):
    """Renames run ``key`` to ``new_key``, with its fields, indexes and files."""
    from gmv_plugin import store, validation

    dataset = samples._root_dataset
    get_run_config(dataset, key)
    validation.check_key(dataset, new_key)
    with store.writing(dataset, key, "rename_run", new_key) as lock:
        get_run_config(dataset, key)
        validation.check_key(dataset, new_key)
        store.rename(dataset, key, new_key, lock)


def delete_run(samples, key):
    """Deletes run ``key`` with its fields, indexes and files."""
    from gmv_plugin import store

    dataset = samples._root_dataset
    get_run_config(dataset, key)
    with store.writing(dataset, key, "delete_run") as lock:
        get_run_config(dataset, key)
        store.delete(dataset, key, lock)
