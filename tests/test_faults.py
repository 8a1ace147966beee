"""Fault injection: a run is exactly the old one or exactly the new one after a
crash at any named point of any operation that changes it, and re-running
reproduces a clean run bit for bit. Each operation runs in a child process
(tests/faultrun.py) that exits with os._exit at the crash point, like kill -9.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fiftyone as fo
import gmv_plugin as gmv
from gmv_plugin import runs as gmvruns
from gmv_plugin import store as gmvstore
from gmv_plugin.faults import CRASH_EXIT_CODE

from conftest import load_mnist, write_pngs

HERE = os.path.dirname(os.path.abspath(__file__))
OLD = dict(model="pixels", k=5, progress=False)
NEW = dict(pixel_size=16, k=8, rerank="l2", quality="realism", temperature="auto")
NEW_BEFORE_COMMIT = ["stage.embed_train", "stage.truth_train", "stage.embed_generated", "stage.truth_generated",
                     "stage.index", "stage.recall", "stage.rerank", "stage.quality", "fields.stage_chunk",
                     "stage.values"]
NEW_AFTER_COMMIT = ["commit.journaled", "commit.declared", "commit.merged", "commit.fields",
                    "commit.config", "commit.results", "commit.manifest", "commit.done"]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    images, _ = load_mnist(160)
    paths = write_pngs(images, tmp_path_factory.mktemp("faults"))
    dataset = fo.Dataset("gmv-faults", persistent=True, overwrite=True)
    tags = ["generated" if i % 8 == 0 else "train" for i in range(150)] + ["more"] * 10
    dataset.add_samples(fo.Sample(filepath=p, tags=[t]) for p, t in zip(paths, tags))
    dataset.match_tags(["generated", "more"]).tag_samples("all_gen")
    yield dataset
    dataset.delete()


def child(ds, op, env=None, wait=True, **kwargs):
    spec = json.dumps({"dataset": ds.name, "op": op, "kwargs": kwargs})
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "faultrun.py"), spec],
        env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def compute(ds, key, overwrite=False, pixel_size=None, **kw):
    if pixel_size is not None:
        kw["model"] = gmv.PixelEmbedder(size=pixel_size)
    kw.setdefault("progress", False)
    return gmv.compute_values(ds.match_tags("train"), ds.match_tags(kw.pop("gen_tag", "generated")),
                              key=key, overwrite=overwrite, **kw)


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def snapshot(ds, key):
    """Everything that makes run ``key``, with the key stripped from names
    and timings left out, so runs under different keys compare equal."""
    ds.reload()
    strip = len(key) + 1
    out = {"run": key in ds.list_runs(), "fields": {}, "arrays": {}}
    for f in gmvruns.all_field_names(key):
        if ds.has_field(f):
            ids, vals = ds.values(["id", f])
            out["fields"][f[strip:]] = dict(zip(ids, vals))
    out["indexes"] = sorted(i[strip:] for i in ds.list_indexes() if i.startswith(key + "_"))
    if out["run"]:
        cfg = ds.get_run_info(key).config.serialize()
        out["config"] = {k: _no_uuid(v) if k.endswith("_view") else v
                         for k, v in cfg.items() if k != "generated_added"}
        out["generated_added"] = len(cfg.get("generated_added") or [])
        res = ds.load_run_results(key, cache=False).serialize()
        out["results"] = {k: v for k, v in res.items() if k not in ("timings", "reused")}
    store = gmvstore.RunStore(ds, key)
    for part, entry in store.manifest()["stages"].items():
        out["arrays"][part] = {
            "files": {label: _sha(store.path(name)) for label, name in entry["files"].items()},
            "info": {k: v for k, v in entry.items() if k not in ("files", "seconds")},
        }
    return out


def _no_uuid(view_json):
    return [{k: v for k, v in st.items() if k != "_uuid"} for st in json.loads(view_json)]


def diff(a, b):
    """Where two snapshots differ, for assertion messages."""
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                for kk in sorted(set(a[k]) | set(b[k]), key=str):
                    if a[k].get(kk) != b[k].get(kk):
                        out.append("%s.%s: %.200s != %.200s" % (k, kk, a[k].get(kk), b[k].get(kk)))
            else:
                out.append("%s: %.200s != %.200s" % (k, a.get(k), b.get(k)))
    return "\n".join(out)


def leftovers(ds, key):
    """Files no manifest refers to, staging collections, journal."""
    store = gmvstore.RunStore(ds, key)
    files = []
    if os.path.isdir(store.dir):
        files = sorted(set(os.listdir(store.dir)) - store.referenced(store.manifest()))
    staging = gmvstore.staging_collections(gmvstore.staging_prefix(ds, key))
    return files + staging + ([gmvstore.journal_path(ds, key)] if os.path.exists(gmvstore.journal_path(ds, key)) else [])


@pytest.fixture(scope="module")
def refs(ds):
    """Clean runs to compare with: the old configuration, the new one, and
    the new one after an incremental update."""
    compute(ds, "ref_old", **OLD)
    compute(ds, "ref_new", **NEW)
    compute(ds, "ref_upd", **OLD)
    gmv.update_values(ds, "ref_upd", ds.match_tags("all_gen"), progress=False)
    return {k: snapshot(ds, "ref_" + k) for k in ("old", "new", "upd")}


def _check_crash(ds, key, point, op, expect, refs, **kwargs):
    before = snapshot(ds, key)
    assert before == refs["old"]
    rc, out, err = child(ds, op, env={"GMV_CRASH_AT": point}, key=key, **kwargs)
    assert rc == CRASH_EXIT_CODE, (out, err)
    gmvstore.recover_if_free(ds, key)  # what the next reader does
    after = snapshot(ds, key)
    assert after == refs[expect], "crash at %s: neither old nor new run\n%s" % (point, diff(after, refs[expect]))
    return before


@pytest.mark.parametrize("point", NEW_BEFORE_COMMIT + NEW_AFTER_COMMIT)
def test_overwrite_crash_leaves_old_or_new_run(ds, refs, point):
    key = "ow_" + point.replace(".", "_")
    compute(ds, key, **OLD)
    expect = "old" if point in NEW_BEFORE_COMMIT else "new"
    _check_crash(ds, key, point, "compute_values", expect, refs,
                 train_tag="train", gen_tag="generated", overwrite=True, **NEW)
    # the next writer cleans up and reproduces a clean run bit for bit
    compute(ds, key, overwrite=True, **NEW)
    assert snapshot(ds, key) == refs["new"]
    assert leftovers(ds, key) == []
    gmv.delete_run(ds, key)


@pytest.mark.parametrize("point", ["stage.embed_generated", "stage.recall", "stage.quality",
                                   "stage.truth_generated", "stage.values", "commit.journaled", "commit.merged", "commit.results"])
def test_update_crash_leaves_old_or_new_run(ds, refs, point):
    key = "up_" + point.replace(".", "_")
    compute(ds, key, **OLD)
    expect = "old" if point.startswith("stage.") else "upd"
    _check_crash(ds, key, point, "update_values", expect, refs, gen_tag="all_gen")
    results = gmv.update_values(ds, key, ds.match_tags("all_gen"), progress=False)
    assert results.num_generated == 29
    assert snapshot(ds, key) == refs["upd"]
    assert leftovers(ds, key) == []
    gmv.delete_run(ds, key)


@pytest.mark.parametrize("point", ["rename.journaled", "rename.field", "rename.dir"])
def test_rename_crash_completes_the_rename(ds, refs, point):
    key, new_key = "rn_" + point.split(".")[1], "rn2_" + point.split(".")[1]
    compute(ds, key, **OLD)
    rc, out, err = child(ds, "rename_run", env={"GMV_CRASH_AT": point}, key=key, new_key=new_key)
    assert rc == CRASH_EXIT_CODE, (out, err)
    gmvstore.recover_if_free(ds, key)
    assert snapshot(ds, new_key) == refs["old"]
    assert snapshot(ds, key) == {"run": False, "fields": {}, "arrays": {}, "indexes": []}
    assert gmv.load_results(ds, new_key).run_dir == gmvruns.run_dir(ds, new_key)
    gmv.delete_run(ds, new_key)


@pytest.mark.parametrize("point", ["delete.journaled", "delete.fields", "delete.run"])
def test_delete_crash_completes_the_delete(ds, point):
    key = "dl_" + point.split(".")[1]
    compute(ds, key, **OLD)
    rc, out, err = child(ds, "delete_run", env={"GMV_CRASH_AT": point}, key=key)
    assert rc == CRASH_EXIT_CODE, (out, err)
    gmvstore.recover_if_free(ds, key)
    assert snapshot(ds, key) == {"run": False, "fields": {}, "arrays": {}, "indexes": []}
    assert not os.path.exists(gmvruns.run_dir(ds, key))


def test_sigkill_at_timed_moments_during_overwrite(ds, refs):
    start = time.time()
    rc, out, err = child(ds, "compute_values", key="ref_new", train_tag="train", gen_tag="generated",
                         overwrite=True, **NEW)
    total = time.time() - start
    assert rc == 0, err
    outcomes = set()
    for i, frac in enumerate((0.55, 0.7, 0.8, 0.88, 0.94, 0.98)):
        key = "kill_%d" % i
        compute(ds, key, **OLD)
        proc = child(ds, "compute_values", wait=False, key=key, train_tag="train",
                     gen_tag="generated", overwrite=True, **NEW)
        time.sleep(total * frac)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        gmvstore.recover_if_free(ds, key)
        snap = snapshot(ds, key)
        assert snap in (refs["old"], refs["new"]), "killed at %.2f s: mixed run" % (total * frac)
        outcomes.add("old" if snap == refs["old"] else "new")
        compute(ds, key, overwrite=True, **NEW)
        assert snapshot(ds, key) == refs["new"] and leftovers(ds, key) == []
        gmv.delete_run(ds, key)


def test_failed_stage_call_keeps_run(ds, refs):
    compute(ds, "fail", **OLD)
    with pytest.raises(ValueError, match="index_params M=7 must divide the embedding dimension 1024"):
        gmv.build_index(ds, key="fail", index="pq", index_params={"M": 7})
    other = fo.Dataset()
    other.add_sample(fo.Sample(filepath=ds.first().filepath))
    with pytest.raises(ValueError, match="must come from dataset"):
        gmv.update_values(ds, "fail", other)
    with pytest.raises(ValueError, match="contains 5 training samples"):
        gmv.update_values(ds, "fail", ds.match_tags("train").limit(5))
    snap = snapshot(ds, "fail")
    assert snap == refs["old"], diff(snap, refs["old"])
    assert gmv.build_report(ds, "fail")["counts"]["train"] == 131
    other.delete()
