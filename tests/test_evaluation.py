"""Evaluation criteria (gmv_plugin.evaluation) on datasets with hand-set run fields."""

import json
import uuid

import numpy as np
import pytest

import fiftyone as fo

from gmv_plugin import evaluation as ev

KEY = "gmv"


def _name():
    return "test-eval-" + uuid.uuid4().hex[:8]


@pytest.fixture
def c1_dataset():
    """6 training samples (labels a,a,b,b,c,c) and 3 generated with 4 contributors."""
    ds = fo.Dataset(_name())
    train_labels = ["a", "a", "b", "b", "c", "c"]
    train = [
        fo.Sample(
            filepath=f"/nonexistent/train{i}.png",
            tags=["train"],
            ground_truth=fo.Classification(label=lab),
            digit=i // 2,
            gmv_value=float(i),
        )
        for i, lab in enumerate(train_labels)
    ]
    ids = ds.add_samples(train)
    # generated: (label, contributor indices)
    gen_spec = [
        ("a", [0, 1, 2, 4]),  # matches top1..4: 1,1,0,0 -> @1 1, @2 1, @4 .5
        ("b", [0, 2, 3, 5]),  # 0,1,1,0 -> @1 0, @2 .5, @4 .5
        ("c", [4, 5, 0, 2]),  # 1,1,0,0 -> @1 1, @2 1, @4 .5
    ]
    gens = [
        fo.Sample(
            filepath=f"/nonexistent/gen{j}.png",
            tags=["generated"],
            ground_truth=fo.Classification(label=lab),
            digit={"a": 0, "b": 1, "c": 2}[lab],
            cond=str({"a": 0, "b": 1, "c": 2}[lab]),
            gmv_contributors=[ids[i] for i in contribs],
            gmv_distances=[0.1, 0.2, 0.3, 0.4],
            gmv_scores=[0.4, 0.3, 0.2, 0.1],
        )
        for j, (lab, contribs) in enumerate(gen_spec)
    ]
    ds.add_samples(gens)
    yield ds
    ds.delete()


def test_c1_hand_computed(c1_dataset):
    out = ev.identical_class(c1_dataset, KEY, "ground_truth", ks=(1, 2, 4))
    assert out["identical_class"] == pytest.approx({1: 2 / 3, 2: 2.5 / 3, 4: 0.5})
    assert out["num_generated"] == 3
    json.dumps(out)


def test_c1_plain_int_field_and_other_train_field(c1_dataset):
    out = ev.identical_class(c1_dataset, KEY, "digit", ks=[1, 2, 4])
    assert out["identical_class"] == pytest.approx({1: 2 / 3, 2: 2.5 / 3, 4: 0.5})
    # generated condition stored as a string, training labels as ints: "1" == 1
    out = ev.identical_class(c1_dataset, KEY, "cond", ks=[2], train_label_field="digit")
    assert out["identical_class"][2] == pytest.approx(2.5 / 3)


def test_c1_on_a_view_and_unlabelled_generated_skipped(c1_dataset):
    gen = c1_dataset.match_tags("generated").first()
    gen["digit"] = None
    gen.save()
    out = ev.identical_class(c1_dataset, KEY, "digit", ks=[1])
    assert out["num_generated"] == 2 and out["num_skipped"] == 1
    assert out["identical_class"][1] == pytest.approx(0.5)


def test_c1_k_too_large(c1_dataset):
    with pytest.raises(ValueError, match="4 contributors stored"):
        ev.identical_class(c1_dataset, KEY, "ground_truth", ks=(30,))


def test_c1_errors(c1_dataset):
    with pytest.raises(ValueError, match="Unknown valuation key 'nope'.*gmv"):
        ev.identical_class(c1_dataset, "nope", "ground_truth", ks=(1,))
    with pytest.raises(ValueError, match="not a label field.*ground_truth"):
        ev.identical_class(c1_dataset, KEY, "missing", ks=(1,))
    with pytest.raises(ValueError, match="positive integers"):
        ev.identical_class(c1_dataset, KEY, "ground_truth", ks=(0,))


def test_c2_several_fields(c1_dataset):
    out = ev.identical_attributes(c1_dataset, KEY, ["ground_truth", "digit"], ks=(1, 4))
    assert out["identical_attributes"]["ground_truth"] == pytest.approx({1: 2 / 3, 4: 0.5})
    assert out["identical_attributes"]["digit"] == pytest.approx({1: 2 / 3, 4: 0.5})
    with pytest.raises(ValueError, match="at least one"):
        ev.identical_attributes(c1_dataset, KEY, [], ks=(1,))


@pytest.fixture
def c3_dataset():
    """20 training samples valued 0..19; the 3 lowest are corrupted (tag and bool)."""
    ds = fo.Dataset(_name())
    samples = []
    for i in range(20):
        bad = i in (0, 1, 5)
        samples.append(
            fo.Sample(
                filepath=f"/nonexistent/t{i}.png",
                tags=["noisy"] if bad else [],
                is_noisy=bad,
                member=i >= 10,
                held_out=i < 10,
                gmv_value=float(i),
            )
        )
    ids = ds.add_samples(samples)
    ds.add_sample(
        fo.Sample(filepath="/nonexistent/g.png", gmv_contributors=ids[:3])
    )
    yield ds
    ds.delete()


def test_c3_hand_computed(c3_dataset):
    for spec in ("noisy", "is_noisy"):
        out = ev.cleansing(c3_dataset, KEY, spec)
        assert out["num_train"] == 20 and out["num_corrupted"] == 3
        # ranks 1, 2, 6 of 20: percentiles (r - .5) / 20 * 100
        assert out["percentiles"]["min"] == pytest.approx(2.5)
        assert out["percentiles"]["max"] == pytest.approx(27.5)
        # lowest 5% = 1 sample, 10% = 2 samples
        assert out["share_in_lowest"] == pytest.approx({"0.01": 0, "0.05": 1 / 3, "0.1": 2 / 3})
        # pairs (bad, clean) where bad < clean: 17 + 17 + 14 of 3 * 17
        assert out["auc"] == pytest.approx(48 / 51)
        assert out["num_at_min_value"] == out["num_corrupted_at_min_value"] == 1
        json.dumps(out)


def test_c3_ties_averaged(c3_dataset):
    c3_dataset.set_values("gmv_value", [0.0] * 20)
    out = ev.cleansing(c3_dataset, KEY, "noisy")
    assert out["auc"] == pytest.approx(0.5)
    assert out["share_in_lowest"]["0.1"] == 0
    assert out["num_at_min_value"] == 20 and out["num_corrupted_at_min_value"] == 3


def test_c3_errors(c3_dataset):
    with pytest.raises(ValueError, match="neither a sample tag.*noisy.*is_noisy"):
        ev.cleansing(c3_dataset, KEY, "corrupt")
    with pytest.raises(ValueError, match="not boolean"):
        ev.cleansing(c3_dataset, KEY, "gmv_value")
    c3_dataset.untag_samples("noisy")
    c3_dataset.tag_samples("noisy")
    with pytest.raises(ValueError, match="Every training sample"):
        ev.cleansing(c3_dataset, KEY, "noisy")


def test_membership(c3_dataset):
    out = ev.membership(c3_dataset, KEY, "member", "held_out")
    from scipy.stats import ttest_ind

    ref = ttest_ind(np.arange(10, 20), np.arange(10), equal_var=False, alternative="greater")
    assert out["t"] == pytest.approx(ref.statistic)
    assert out["p"] == pytest.approx(ref.pvalue)
    assert out["auc"] == 1.0
    assert out["mean_members"] == pytest.approx(14.5)
    assert out["num_members"] == out["num_non_members"] == 10
    json.dumps(out)


def test_membership_errors(c3_dataset):
    with pytest.raises(ValueError, match="both"):
        ev.membership(c3_dataset, KEY, "member", "member")
    c3_dataset.set_values("held_out", [False] * 20)
    with pytest.raises(ValueError, match="at least 2"):
        ev.membership(c3_dataset, KEY, "member", "held_out")


def test_c4_from_registered_run(c3_dataset):
    ds = c3_dataset
    config = ds.init_run(method="gmvaluator", model="pixels", k=3)
    ds.register_run(KEY, config)
    results = fo.RunResults(
        ds,
        config,
        KEY,
        timings={"embed": 1.0, "index": 0.5, "recall": 0.25, "values": 0.25},
        num_train=20,
        num_generated=1000,
    )
    ds.save_run_results(KEY, results)
    assert ev.list_runs(ds) == [KEY]
    out = ev.efficiency(ds, KEY)
    assert out["total_s"] == pytest.approx(2.0)
    assert out["per_generated_ms"] == pytest.approx(2.0)
    assert out["stages"]["embed"] == 1.0
    assert out["per_generated_ms_by_stage"]["index"] == pytest.approx(0.5)
    json.dumps(out)
    assert ev.evaluate(ds, KEY, "C4") == out
    with pytest.raises(ValueError, match="Unknown run key.*'gmv'"):
        ev.efficiency(ds, "other")
    with pytest.raises(ValueError, match="Unknown criterion"):
        ev.evaluate(ds, KEY, "C9")


def test_c4_without_timings(c3_dataset):
    config = c3_dataset.init_run(method="gmvaluator")
    c3_dataset.register_run(KEY, config)
    with pytest.raises(ValueError, match="no timings"):
        ev.efficiency(c3_dataset, KEY)


# --------------------------------------------------------------------------
# operator


def _operator_module():
    """operators/evaluation.py, imported as part of this checkout's operators
    package (it shares operators/_common.py)."""
    import importlib
    import pathlib
    import sys

    root = str(pathlib.Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("operators.evaluation")


def _register(ds):
    ds.register_run(KEY, ds.init_run(method="gmvaluator", model="pixels"))


def test_operator_direct(c1_dataset):
    from fiftyone.operators.executor import ExecutionContext

    mod = _operator_module()
    assert [c.__name__ for c in mod.OPERATORS] == ["EvaluateValuation"]
    op = mod.EvaluateValuation()
    assert op.config.allow_delegated_execution
    _register(c1_dataset)
    params = {"run_key": KEY, "criterion": "C1", "label_field": "ground_truth", "ks": "1,4"}
    ctx = ExecutionContext({"dataset_name": c1_dataset.name, "params": params})
    form = op.resolve_input(ctx).to_json()
    props = form["type"]["properties"]
    assert props["run_key"]["type"]["values"] == [KEY]
    assert "ground_truth" in props["label_field"]["type"]["values"]
    out = op.execute(ctx)
    assert out["result"]["identical_class"] == pytest.approx({"1": 2 / 3, "4": 0.5})
    assert "66.67%" in out["summary"]
    json.dumps(out)
    assert op.resolve_output(ctx) is not None

    ctx = ExecutionContext({"dataset_name": c1_dataset.name,
                            "params": {"run_key": KEY, "criterion": "C2",
                                       "fields": ["digit"], "ks": "1"}})
    assert "fields" in op.resolve_input(ctx).to_json()["type"]["properties"]
    assert op.execute(ctx)["result"]["identical_attributes"]["digit"]["1"] == pytest.approx(2 / 3)


def test_operator_without_runs(c1_dataset):
    from fiftyone.operators.executor import ExecutionContext

    op = _operator_module().EvaluateValuation()
    ctx = ExecutionContext({"dataset_name": c1_dataset.name, "params": {}})
    props = op.resolve_input(ctx).to_json()["type"]["properties"]
    assert "run_key" not in props


def test_operator_registered(c3_dataset):
    import pathlib

    if not (pathlib.Path(__file__).resolve().parents[1] / "operators" / "__init__.py").exists():
        pytest.skip("operators/__init__.py not written yet")
    import fiftyone.operators as foo

    _register(c3_dataset)
    res = foo.execute_operator(
        "@gmvaluator/gmv/evaluate_valuation",
        ctx={"dataset": c3_dataset.name,
             "params": {"run_key": KEY, "criterion": "C3", "corrupted": "noisy"}},
    )
    assert res.result["result"]["auc"] == pytest.approx(48 / 51)
    res = foo.execute_operator(
        "@gmvaluator/gmv/evaluate_valuation",
        ctx={"dataset": c3_dataset.name,
             "params": {"run_key": KEY, "criterion": "membership",
                        "members": "member", "non_members": "held_out"}},
    )
    assert res.result["result"]["auc"] == 1.0


# --------------------------------------------------------------------------
# end to end on real digits


def _mnist_dir():
    import os
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    for d in (os.environ.get("GMV_MNIST_DIR"), root.parent / "shared" / "data" / "mnist",
              "/work/shared/data/mnist"):
        if d and (pathlib.Path(d) / "t10k-images-idx3-ubyte.gz").is_file():
            return pathlib.Path(d)
    return None


def _read_mnist(d, n):
    import gzip

    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(d / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x[:n], y[:n]


def test_end_to_end_pixels_l2(tmp_images):
    from PIL import Image

    import gmv_plugin as gmv

    d = _mnist_dir()
    if d is None:
        pytest.skip("MNIST files not found (shared/data/mnist)")
    x, y = _read_mnist(d, 300)
    ds = fo.Dataset(_name())
    samples = []
    for i, (img, lab) in enumerate(zip(x, y)):
        path = tmp_images / f"{i:04d}.png"
        Image.fromarray(img).save(path)
        # the last 50 real digits stand in for perfect generations
        samples.append(fo.Sample(filepath=str(path), tags=["generated" if i >= 250 else "train"],
                                 ground_truth=fo.Classification(label=str(lab)),
                                 noisy=False))
    ds.add_samples(samples)
    try:
        res = gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), key=KEY,
                                 model="pixels", rerank="l2", k=10, progress=False)
        assert res.num_generated == 50
        out = ev.identical_class(ds, KEY, "ground_truth", ks=(1, 5, 10))
        assert out["num_generated"] == 50
        assert out["identical_class"][5] > 0.6, out
        assert ev.list_runs(ds) == [KEY]
        c4 = ev.efficiency(ds, KEY)
        assert c4["num_generated"] == 50 and c4["num_train"] == 250
        assert {"embed", "recall", "rerank", "values"} <= set(c4["stages"])
        assert c4["total_s"] > 0
        with pytest.raises(ValueError, match="10 contributors stored"):
            ev.identical_class(ds, KEY, "ground_truth", ks=(30,))
        # credit sums to the number of generated images (quality "none" = 1 each)
        assert sum(ds.match_tags("train").values(f"{KEY}_value")) == pytest.approx(50, rel=1e-4)
    finally:
        ds.delete()
