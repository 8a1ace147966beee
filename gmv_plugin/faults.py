"""Named crash points for fault-injection tests.

``GMV_CRASH_AT=name`` (or ``name@N`` for the N-th time the point is reached,
several separated by commas) makes the process exit at once with
``os._exit(CRASH_EXIT_CODE)`` when it reaches :func:`crashpoint` ``name``:
no ``finally`` blocks, no flushing, like a kill -9.
"""

import collections
import os

CRASH_EXIT_CODE = 77
_hits = collections.Counter()


def crashpoint(name):
    """Exits the process here when ``GMV_CRASH_AT`` names this point."""
    spec = os.environ.get("GMV_CRASH_AT")
    if not spec:
        return
    _hits[name] += 1
    for item in spec.split(","):
        target, _, nth = item.strip().partition("@")
        if target == name and _hits[name] == int(nth or 1):
            os._exit(CRASH_EXIT_CODE)
