"""FiftyOne plugin entry point: registers every GMValuator operator.

Each module listed in :data:`MODULES` exports an ``OPERATORS`` list; all of
them are registered. ``fiftyone.yml`` names the same operators.
"""

import importlib
import os
import sys

try:
    import gmv_plugin  # noqa: F401
except ImportError:  # loaded as a plugin from a checkout that isn't installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODULES = ("pipeline", "stages", "navigation", "runs", "evaluation", "weights")


def operator_classes():
    """Every operator class of the plugin, module by module."""
    classes = []
    for name in MODULES:
        module = importlib.import_module("." + name, __name__)
        classes.extend(module.OPERATORS)
    return classes


def register(p):
    for cls in operator_classes():
        p.register(cls)
