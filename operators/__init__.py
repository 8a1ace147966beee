"""FiftyOne plugin entry point: registers every GMValuator operator and the
GMValuator panel.

Each module listed in :data:`MODULES` exports an ``OPERATORS`` list; all of
them are registered, in :data:`ORDER` (the App's operator browser keeps the
registration order: the pipeline first). ``fiftyone.yml`` names the same
operators and panels.
"""

import importlib
import os
import sys

try:
    import gmv_plugin  # noqa: F401
except ImportError:  # loaded as a plugin from a checkout that isn't installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODULES = ("pipeline", "stages", "navigation", "runs", "evaluation", "weights", "panel")

#: the order users meet them: run the pipeline, browse, evaluate, manage runs
ORDER = (
    "compute_values", "update_values",
    "compute_gmv_embeddings", "build_gmv_index", "recall_contributors",
    "rerank_contributors", "score_quality", "assign_values",
    "show_contributors", "show_contributions", "sort_by_value", "gmv_report",
    "evaluate_valuation",
    "list_gmv_runs", "get_gmv_run_info", "rename_gmv_run", "delete_gmv_run",
    "download_gmv_weights",
    "gmv_panel",
)


def operator_classes():
    """Every operator (and panel) class of the plugin, in :data:`ORDER`."""
    classes = []
    for name in MODULES:
        module = importlib.import_module("." + name, __name__)
        classes.extend(module.OPERATORS)

    def rank(cls):
        name = cls().config.name
        return ORDER.index(name) if name in ORDER else len(ORDER)

    return sorted(classes, key=rank)


def register(p):
    for cls in operator_classes():
        p.register(cls)
