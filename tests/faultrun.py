"""Runs one GMValuator operation in a child process, for fault-injection and
concurrency tests: ``python faultrun.py '<json>'`` with ``dataset``, ``op``
and ``kwargs``; sample sets are given as tags. Prints a JSON line with the
outcome; the environment (database URI, runs dir, GMV_CRASH_AT,
GMV_PAUSE_AT) comes from the parent."""

import json
import os
import sys
import time

# this checkout's library, not whichever the environment installed (worktrees share one venv)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fiftyone as fo  # noqa: E402

import gmv_plugin as gmv  # noqa: E402


def main(spec):
    ds = fo.load_dataset(spec["dataset"])
    kw = dict(spec.get("kwargs", {}))
    if "pixel_size" in kw:
        kw["model"] = gmv.PixelEmbedder(size=kw.pop("pixel_size"))
    op = spec["op"]
    start = time.time()
    try:
        if op == "compute_values":
            gmv.compute_values(ds.match_tags(kw.pop("train_tag")), ds.match_tags(kw.pop("gen_tag")),
                               progress=False, **kw)
        elif op == "update_values":
            gmv.update_values(ds, kw.pop("key"), ds.match_tags(kw.pop("gen_tag")), progress=False)
        elif op in ("build_index", "assign_values", "rerank_contributors"):
            getattr(gmv, op)(ds, progress=False, **kw)
        elif op == "rename_run":
            gmv.rename_run(ds, kw["key"], kw["new_key"])
        elif op == "delete_run":
            gmv.delete_run(ds, kw["key"])
        else:
            raise ValueError(op)
    except Exception as e:
        print(json.dumps({"ok": False, "error": type(e).__name__, "message": str(e),
                          "seconds": time.time() - start}))
        return 1
    print(json.dumps({"ok": True, "seconds": time.time() - start}))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
