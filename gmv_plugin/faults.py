"""Named crash points for fault-injection tests.

``GMV_CRASH_AT=name`` (or ``name@N`` for the N-th time the point is reached,
several separated by commas) makes the process exit at once with
``os._exit(CRASH_EXIT_CODE)`` when it reaches :func:`crashpoint` ``name``:
no ``finally`` blocks, no flushing, like a kill -9. ``GMV_PAUSE_AT=name:seconds``
sleeps there instead (to hold a run's lock in concurrency tests).
"""

import collections
import os
import time

CRASH_EXIT_CODE = 77
_hits = collections.Counter()


def crashpoint(name):
    """Exits the process here when ``GMV_CRASH_AT`` names this point."""
    pause = os.environ.get("GMV_PAUSE_AT")
    if pause and pause.rpartition(":")[0] == name:
        time.sleep(float(pause.rpartition(":")[2]))
    spec = os.environ.get("GMV_CRASH_AT")
    if not spec:
        return
    _hits[name] += 1
    for item in spec.split(","):
        target, _, nth = item.strip().partition("@")
        if target == name and _hits[name] == int(nth or 1):
            os._exit(CRASH_EXIT_CODE)
