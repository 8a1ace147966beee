"""Sharded valuation: shards computed apart (in this process, in killed
children, by real `fiftyone delegated launch` workers) reduce to exactly the
run a single process computes: same fields, same array files bit for bit."""

import os
import subprocess
import sys
import time

import pytest

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators.executor import ExecutionContext
from fiftyone.operators.registry import OperatorRegistry
import gmv_plugin as gmv
from gmv_plugin import shards as gmvshards
from gmv_plugin import store as gmvstore
from gmv_plugin.faults import CRASH_EXIT_CODE

from browser import delegated_workers
from conftest import ROOT, load_mnist, write_pngs
from test_faults import diff, leftovers, snapshot

N_TRAIN, N_GEN = 300, 3000  # 3000 generated samples: 3 blocks of gmvshards.ALIGN (1024)
URI = "@gmvaluator/gmv/"
OPTS = dict(k=5, rerank="l2", quality="realism", temperature="auto")


def options():
    return dict(OPTS, model=gmv.PixelEmbedder(size=16))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    images, _ = load_mnist(N_TRAIN + N_GEN)
    paths = write_pngs(images, tmp_path_factory.mktemp("shards"))
    dataset = fo.Dataset("gmv-shards", overwrite=True)
    dataset.add_samples((fo.Sample(filepath=p, tags=["train" if i < N_TRAIN else "generated"])
                         for i, p in enumerate(paths)), progress=False)
    yield dataset
    dataset.delete()


@pytest.fixture(scope="module")
def ref(ds):
    gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), key="single",
                       progress=False, **options())
    return snapshot(ds, "single")


def form(name, dataset, params):
    op = OperatorRegistry().get_operator(URI + name)
    req = {"dataset_name": dataset.name, "params": dict(params), "selected": []}
    return op.resolve_input(ExecutionContext(req)).to_json()["type"]["properties"]


def start_run(ds, key, num_shards):
    gmv.init_valuation(ds.match_tags("train"), ds.match_tags("generated"), key=key, **options())
    return gmv.plan_shards(ds, key, num_shards, progress=False)


def check_equal(ds, key, ref):
    snap = snapshot(ds, key)
    assert snap == ref, diff(snap, ref)
    assert leftovers(ds, key) == []
    assert gmv.shard_status(ds, key) is None


@pytest.mark.parametrize("num_shards", [2, 3])
def test_sharded_equals_single_process(ds, ref, num_shards):
    key = "sh%d" % num_shards
    plan = start_run(ds, key, num_shards)
    assert plan["num_shards"] == num_shards
    assert plan["shards"][0] == (0, gmvshards.ALIGN)
    records = {}
    for i in reversed(range(num_shards)):  # any order
        records[i] = gmv.compute_shard(ds, key, plan["plan_id"], i, progress=False)
    status = gmv.shard_status(ds, key)
    assert status["done"] == list(range(num_shards)) and not status["pending"]
    # a done shard is skipped
    assert gmv.compute_shard(ds, key, plan["plan_id"], 0) == records[0]
    assert records[0]["rows"] == [0, gmvshards.ALIGN]
    gmv.reduce_shards(ds, key, plan["plan_id"], progress=False)
    check_equal(ds, key, ref)
    assert not os.path.exists(os.path.join(gmvstore.RunStore(ds, key).dir, "shards"))
    gmv.delete_run(ds, key)


def child_shard(ds, key, plan_id, shard, env):
    code = ("import sys, fiftyone as fo, gmv_plugin as gmv; "
            "gmv.compute_shard(fo.load_dataset(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))")
    proc = subprocess.run([sys.executable, "-c", code, ds.name, key, plan_id, str(shard)],
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env), cwd=str(ROOT),
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("point", ["shard.recalled", "shard.done"])
def test_killed_shard_is_retried_alone(ds, ref, point):
    key = "kill_" + point.split(".")[1]
    plan = start_run(ds, key, 2)
    pid = plan["plan_id"]
    gmv.compute_shard(ds, key, pid, 0)
    rc, err = child_shard(ds, key, pid, 1, {"GMV_CRASH_AT": point})
    assert rc == CRASH_EXIT_CODE, err
    if point != "shard.done":
        with pytest.raises(gmvshards.ShardsNotDoneError, match=r"Shards \[1\] of 2 .*gmv.compute_shard"):
            gmv.reduce_shards(ds, key, pid)
        status = gmv.shard_status(ds, key)
        assert status["done"] == [0] and status["pending"] == [1] and not status["running"]
        assert gmv.list_runs(ds).count(key) == 1 and not ds.has_field(key + "_value")
        # retried alone from the App (its lock was left by a dead process; its partial
        # files are redone), then reduced there
        props = form("compute_gmv_shard", ds, {"run_key": key})
        assert props["plan_id"]["default"] == pid and props["shard"]["default"] == 1
        assert "2 shards: done [0], running [], pending [1]" in props["plan_status"]["view"]["label"]
        res = foo.execute_operator(URI + "compute_gmv_shard", ctx=dict(
            dataset=ds.name, params={"run_key": key, "plan_id": pid, "shard": 1}))
        assert res.error is None and res.result["rows"] == [gmvshards.ALIGN, N_GEN], res.error
        res = foo.execute_operator(URI + "reduce_gmv_shards", ctx=dict(
            dataset=ds.name, params={"run_key": key, "plan_id": pid}))
        assert res.error is None and res.result["report"]["counts"]["generated"] == N_GEN, res.error
    else:
        gmv.reduce_shards(ds, key, pid, progress=False)
    check_equal(ds, key, ref)
    gmv.delete_run(ds, key)


def test_reduce_can_compute_missing_shards_and_rejects_stale_plans(ds, ref):
    plan = start_run(ds, "miss", 3)
    gmv.compute_shard(ds, "miss", plan["plan_id"], 1)
    gmv.reduce_shards(ds, "miss", plan["plan_id"], compute_missing=True, progress=False)
    check_equal(ds, "miss", ref)
    with pytest.raises(gmvshards.PlanReducedError, match="already reduced"):
        gmv.compute_shard(ds, "miss", plan["plan_id"], 0)
    # a plan made stale by a change of the run is refused, not mixed in
    plan = gmv.plan_shards(ds, "miss", 2)
    gmv.assign_values(ds, key="miss", temperature=0.5, progress=False)
    with pytest.raises(ValueError, match="changed since its shards were planned"):
        gmv.compute_shard(ds, "miss", plan["plan_id"], 0)
    gmv.delete_run(ds, "miss")


def test_worker_with_another_runs_dir_is_told_to_mount_it(ds, ref, tmp_path, monkeypatch):
    plan = start_run(ds, "mnt", 2)
    planned_dir = os.environ["GMV_RUNS_DIR"]
    monkeypatch.setenv("GMV_RUNS_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(gmvshards.RunsDirUnreachableError) as e:
        gmv.compute_shard(ds, "mnt", plan["plan_id"], 0)
    assert planned_dir in str(e.value) and "must mount that directory and set GMV_RUNS_DIR" in str(e.value)
    assert not (tmp_path / "elsewhere").exists()  # nothing written there
    monkeypatch.setenv("GMV_RUNS_DIR", planned_dir)
    with pytest.raises(ValueError, match="num_shards must be an integer >= 1"):
        gmv.plan_shards(ds, "mnt", 0)
    gmv.delete_run(ds, "mnt")


def test_delegated_workers_compute_a_sharded_run(ds, ref):
    from fiftyone.operators.delegated import DelegatedOperationService

    svc = DelegatedOperationService()
    out = gmv.compute_values_sharded(ds.match_tags("train"), ds.match_tags("generated"), key="dl",
                                     shards=3, progress=False, **options())
    assert out["num_shards"] == 3 and len(out["shard_operations"]) == 3
    queued = sorted(op.operator for op in svc.list_operations(dataset_name=ds.name, run_state="queued"))
    assert queued == ["@gmvaluator/gmv/compute_gmv_shard"] * 3 + ["@gmvaluator/gmv/reduce_gmv_shards"]
    with delegated_workers(2):
        deadline = time.time() + 240
        ids = out["shard_operations"] + [out["reduce_operation"]]
        while time.time() < deadline:
            states = [svc.get(_oid(i)).run_state for i in ids]
            if all(s in ("completed", "failed") for s in states):
                break
            time.sleep(0.5)
        docs = [svc.get(_oid(i)) for i in ids]
        assert [d.run_state for d in docs] == ["completed"] * 4, [(d.run_state, d.result) for d in docs]
        hosts = {d.result.result["shard"]: d.result.result for d in docs[:3]}
        assert sorted(hosts) == [0, 1, 2]
    check_equal(ds, "dl", ref)
    gmv.delete_run(ds, "dl")


def _oid(s):
    from bson import ObjectId

    return ObjectId(s)


def child_reduce(ds, key, plan_id, point):
    code = ("import sys, fiftyone as fo, gmv_plugin as gmv; "
            "gmv.reduce_shards(fo.load_dataset(sys.argv[1]), sys.argv[2], sys.argv[3])")
    proc = subprocess.run([sys.executable, "-c", code, ds.name, key, plan_id],
                          env=dict(os.environ, PYTHONPATH=str(ROOT), GMV_CRASH_AT=point), cwd=str(ROOT),
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


def test_killed_reduce_leaves_the_run_before_or_after(ds, ref):
    key = "kred"
    plan = start_run(ds, key, 2)
    for i in range(2):
        gmv.compute_shard(ds, key, plan["plan_id"], i)
    before = snapshot(ds, key)
    # killed before its commit: the run as planned, the shards kept for the next reduce
    rc, err = child_reduce(ds, key, plan["plan_id"], "stage.rerank")
    assert rc == CRASH_EXIT_CODE, err
    gmvstore.recover_if_free(ds, key)
    assert snapshot(ds, key) == before
    assert gmv.shard_status(ds, key)["done"] == [0, 1]
    # killed inside its commit: completed by the next reader
    rc, err = child_reduce(ds, key, plan["plan_id"], "commit.merged")
    assert rc == CRASH_EXIT_CODE, err
    gmvstore.recover_if_free(ds, key)
    snap = snapshot(ds, key)
    assert snap == ref, diff(snap, ref)
    # the plan is still live: reducing again changes nothing and retires it
    gmv.reduce_shards(ds, key, plan["plan_id"])
    check_equal(ds, key, ref)
    gmv.delete_run(ds, key)


# --- training-side shards -------------------------------------------------------


def run_generated(ds, key, num_shards=2):
    plan = gmv.plan_shards(ds, key, num_shards, progress=False)
    for i in range(plan["num_shards"]):
        gmv.compute_shard(ds, key, plan["plan_id"], i)
    gmv.reduce_shards(ds, key, plan["plan_id"], progress=False)


def test_training_shards_equal_single_process(ds, ref):
    key = "tsh"
    gmv.init_valuation(ds.match_tags("train"), ds.match_tags("generated"), key=key, **options())
    plan = gmv.plan_train_shards(ds, key, 3, progress=False)
    # training shards hold whole model batches (64), not query batches
    assert plan["num_shards"] == 3 and plan["shards"] == [(0, 64), (64, 192), (192, N_TRAIN)]
    assert gmv.shard_status(ds, key)["side"] == "train"
    for i in reversed(range(3)):
        rec = gmv.compute_shard(ds, key, plan["plan_id"], i, progress=False)
        assert rec["side"] == "train" and rec["rows"] == list(plan["shards"][i])
    store = gmvstore.RunStore(ds, key)
    assert store.manifest()["stages"] == {}  # shards wrote only their own folders
    gmv.reduce_shards(ds, key, plan["plan_id"], progress=False)
    stages = store.manifest()["stages"]
    assert sorted(stages) == ["embed_train", "index"]
    emb_file = stages["embed_train"]["files"]["emb"]
    with pytest.raises(ValueError, match="already has fresh training embeddings"):
        gmv.plan_train_shards(ds, key, 2)
    # the generated side reuses the assembled training embeddings and index
    run_generated(ds, key)
    assert store.manifest()["stages"]["embed_train"]["files"]["emb"] == emb_file
    check_equal(ds, key, ref)
    gmv.delete_run(ds, key)


def test_killed_training_shard_is_retried_alone(ds, ref):
    key = "tkill"
    gmv.init_valuation(ds.match_tags("train"), ds.match_tags("generated"), key=key, **options())
    plan = gmv.plan_train_shards(ds, key, 2, progress=False)
    pid = plan["plan_id"]
    gmv.compute_shard(ds, key, pid, 0)
    done0 = os.path.join(gmvstore.RunStore(ds, key).dir, "shards", pid, "shard_0", "done.json")
    with open(done0) as f:
        record0 = f.read()
    rc, err = child_shard(ds, key, pid, 1, {"GMV_CRASH_AT": "train_shard.embedded"})
    assert rc == CRASH_EXIT_CODE, err
    with pytest.raises(gmvshards.ShardsNotDoneError, match=r"Shards \[1\] of 2 "):
        gmv.reduce_shards(ds, key, pid)
    status = gmv.shard_status(ds, key)
    assert status["side"] == "train" and status["done"] == [0] and status["pending"] == [1]
    assert gmvstore.RunStore(ds, key).manifest()["stages"] == {}  # the run is untouched
    # the killed shard alone is redone (shard 0 is not touched), from the App's operator
    res = foo.execute_operator(URI + "compute_gmv_shard", ctx=dict(
        dataset=ds.name, params={"run_key": key, "plan_id": pid, "shard": 1}))
    assert res.error is None and res.result["rows"] == list(plan["shards"][1]), res.error
    with open(done0) as f:
        assert f.read() == record0
    gmv.reduce_shards(ds, key, pid, progress=False)
    with pytest.raises(gmvshards.PlanReducedError):
        gmv.compute_shard(ds, key, pid, 1)
    run_generated(ds, key, 3)
    check_equal(ds, key, ref)
    gmv.delete_run(ds, key)


def test_training_plan_is_refused_for_a_brain_index_and_stale_after_a_model_change(ds, ref):
    key = "tstale"
    gmv.init_valuation(ds.match_tags("train"), ds.match_tags("generated"), key=key, **options())
    plan = gmv.plan_train_shards(ds, key, 2, progress=False)
    gmv.init_valuation(ds.match_tags("train"), ds.match_tags("generated"), key=key, overwrite=True,
                       **dict(options(), model=gmv.PixelEmbedder(size=8)))
    with pytest.raises(ValueError, match="no live shard plan|changed since its training shards"):
        gmv.compute_shard(ds, key, plan["plan_id"], 0)
    gmv.delete_run(ds, key)


# --- index="brain" --------------------------------------------------------------


def test_sharded_brain_run_equals_single_process(ds):
    """Shards recall through a FiftyOne Brain index (sklearn backend) and
    embed their queries from the index's field, like a single process."""
    import fiftyone.brain as fob

    ds.compute_embeddings(gmv.PixelEmbedder(size=16, mode="L"), embeddings_field="shemb", progress=False)
    fob.compute_similarity(ds.match_tags("train"), embeddings="shemb", brain_key="shbk",
                           backend="sklearn", progress=False)
    opts = dict(model=None, embeddings_field="shemb", index="brain", k=5, rerank="l2", quality="none",
                temperature="auto", index_params={"brain_key": "shbk", "batch_size": 512})
    try:
        gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), key="bsingle",
                           progress=False, **opts)
        brain_ref = snapshot(ds, "bsingle")
        assert brain_ref["config"]["index_params"]["backend"] == "sklearn"
        gmv.init_valuation(ds.match_tags("train"), ds.match_tags("generated"), key="bsh", **opts)
        # the Brain index holds the training vectors: nothing to shard there
        with pytest.raises(ValueError, match="Brain index 'shbk'.*no training embeddings to shard"):
            gmv.plan_train_shards(ds, "bsh", 2)
        plan = gmv.plan_shards(ds, "bsh", 3, progress=False)
        # shards hold whole query batches of the Brain searcher (512 here)
        assert plan["shards"] == [(0, 1024), (1024, 2048), (2048, N_GEN)]
        for i in (2, 0, 1):
            gmv.compute_shard(ds, "bsh", plan["plan_id"], i)
        gmv.reduce_shards(ds, "bsh", plan["plan_id"], progress=False)
        snap = snapshot(ds, "bsh")
        assert snap == brain_ref, diff(snap, brain_ref)
        assert gmv.load_results(ds, "bsh").index_type == "brain"
    finally:
        for key in ("bsingle", "bsh"):
            if key in gmv.list_runs(ds):
                gmv.delete_run(ds, key)
        ds.delete_brain_run("shbk")
        ds.delete_sample_field("shemb")


def test_delegated_workers_shard_both_sides(ds, ref):
    """compute_values_sharded(train_shards=2): training shards, their reduce
    (which stores the embeddings, builds the index and queues the generated
    side), generated shards and the final reduce, all on two workers."""
    from fiftyone.operators.delegated import DelegatedOperationService

    svc = DelegatedOperationService()
    out = gmv.compute_values_sharded(ds.match_tags("train"), ds.match_tags("generated"), key="both",
                                     shards=2, train_shards=2, progress=False, **options())
    assert out["plan_id"].startswith("train-") and out["num_shards"] == 2
    assert gmvstore.RunStore(ds, "both").manifest()["stages"] == {}  # nothing computed here

    def finish(ids, deadline):
        while time.time() < deadline:
            docs = [svc.get(_oid(i)) for i in ids]
            if all(d.run_state in ("completed", "failed") for d in docs):
                break
            time.sleep(0.5)
        assert [d.run_state for d in docs] == ["completed"] * len(ids), [(d.label, d.result) for d in docs]
        return docs

    with delegated_workers(2):
        deadline = time.time() + 300
        docs = finish(out["shard_operations"] + [out["reduce_operation"]], deadline)
        assert all(d.result.result["rows"] for d in docs[:2])
        nxt = docs[-1].result.result
        assert nxt["num_shards"] == 2 and not nxt["plan_id"].startswith("train-")
        finish(nxt["shard_operations"] + [nxt["reduce_operation"]], deadline)
    check_equal(ds, "both", ref)
    gmv.delete_run(ds, "both")


def test_killed_training_reduce_leaves_the_run_before_or_after(ds, ref):
    key = "tkred"
    gmv.init_valuation(ds.match_tags("train"), ds.match_tags("generated"), key=key, **options())
    plan = gmv.plan_train_shards(ds, key, 2, progress=False)
    for i in range(2):
        gmv.compute_shard(ds, key, plan["plan_id"], i)
    before = snapshot(ds, key)
    # killed before its commit (embeddings and index pending): the run as planned
    rc, err = child_reduce(ds, key, plan["plan_id"], "stage.index")
    assert rc == CRASH_EXIT_CODE, err
    gmvstore.recover_if_free(ds, key)
    assert snapshot(ds, key) == before
    status = gmv.shard_status(ds, key)
    assert status["side"] == "train" and status["done"] == [0, 1]
    # killed inside its commit (no fields to merge: before the manifest): completed by the next reader
    rc, err = child_reduce(ds, key, plan["plan_id"], "commit.results")
    assert rc == CRASH_EXIT_CODE, err
    gmvstore.recover_if_free(ds, key)
    stages = gmvstore.RunStore(ds, key).manifest()["stages"]
    assert sorted(stages) == ["embed_train", "index"]
    gmv.reduce_shards(ds, key, plan["plan_id"])  # retires the plan, changes nothing
    assert gmvstore.RunStore(ds, key).manifest()["stages"] == stages
    assert gmv.shard_status(ds, key) is None
    run_generated(ds, key)
    check_equal(ds, key, ref)
    gmv.delete_run(ds, key)


def test_training_shards_with_colour_images_in_one_shard(tmp_path):
    """``"auto"`` pixel embeddings: a shard of grayscale images is converted
    to RGB when another shard holds colour images, as one process converts
    its grayscale rows; the stored embeddings are the same bits."""
    import numpy as np

    images, _ = load_mnist(260)
    rng = np.random.default_rng(0)
    gray = write_pngs(images[:150], tmp_path, prefix="gray")
    colour = write_pngs([np.stack([im, rng.integers(0, 255, im.shape, dtype=np.uint8), im], -1)
                         for im in images[150:]], tmp_path, prefix="colour")
    dataset = fo.Dataset("gmv-shards-colour", overwrite=True)
    dataset.add_samples([fo.Sample(filepath=p, tags=["generated" if i >= 210 else "train"])
                         for i, p in enumerate(gray + colour)], progress=False)
    opts = dict(model=gmv.PixelEmbedder(size=16), k=5, rerank="none", quality="none")
    try:
        train, gen = dataset.match_tags("train"), dataset.match_tags("generated")
        gmv.compute_values(train, gen, key="one", progress=False, **opts)
        gmv.init_valuation(train, gen, key="sh", **opts)
        plan = gmv.plan_train_shards(dataset, "sh", 3)
        # shard 0 is all grayscale, shard 2 all colour
        assert plan["shards"] == [(0, 64), (64, 128), (128, 210)]
        dims = [gmv.compute_shard(dataset, "sh", plan["plan_id"], i)["dim"] for i in range(3)]
        assert dims == [256, 256, 768]
        gmv.reduce_shards(dataset, "sh", plan["plan_id"])
        run_generated(dataset, "sh", 1)
        snap, one = snapshot(dataset, "sh"), snapshot(dataset, "one")
        assert snap["arrays"]["embed_train"] == one["arrays"]["embed_train"]
        assert snap == one, diff(snap, one)
    finally:
        dataset.delete()
