"""Loops that create millions of short-lived Python objects (documents,
ids, strings) for the database.

With FiftyOne imported the interpreter tracks a few hundred thousand
objects, and every few hundred new containers the cyclic garbage collector
walks them: building 10^6 staging documents spent more time there than in
MongoDB. The objects these loops make hold no cycles, so reference counting
frees them and the collector can pause for the loop.
"""

import contextlib
import gc


@contextlib.contextmanager
def paused_gc():
    """Pauses the cyclic garbage collector in the block; it resumes when the
    outermost of nested blocks ends, if it was enabled before."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
