"""Every GMValuator operator executed through FiftyOne, on real digit PNGs.

Operators are called with ``fiftyone.operators.execute_operator`` (the plugin
is loaded from this checkout by tests/conftest.py), including a delegated run
executed by FiftyOne's delegated-operation service.
"""

import base64
import os
import pathlib

import numpy as np
import pytest
import yaml

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators.executor import ExecutionContext, ExecutionError
from fiftyone.operators.registry import OperatorRegistry

import gmv_plugin as gmv
from gmv_plugin import runs as gmvruns
from gmv_plugin import weights as gmvw
from gmv_testdata import make_digits_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
URI = "@gmvaluator/gmv/"
K = 5


def run(name, dataset, params=None, selected=None, **kwargs):
    return foo.execute_operator(
        URI + name,
        ctx=dict(dataset=dataset.name, params=params or {}, selected=selected or [], **kwargs),
    )


def set_view_ids(result, dataset):
    """Ids of the view the operator asked the App to show, in order."""
    reqs = [r for r in result.executor._requests if r.operator_uri == "set_view"]
    assert len(reqs) == 1
    return fo.DatasetView._build(dataset, reqs[0].params["view"]).values("id")


def train_values(dataset, field):
    return dataset.match_tags("train").values(field)


def form(name, dataset, params=None, selected=None, view=None):
    """The resolved input form of an operator, as JSON properties."""
    op = OperatorRegistry().get_operator(URI + name)
    req = {"dataset_name": dataset.name, "params": dict(params or {}), "selected": selected or []}
    if view is not None:
        req["view"] = view._serialize()
    return op.resolve_input(ExecutionContext(req)).to_json()["type"]["properties"]


@pytest.fixture
def digits(tmp_path):
    ds = make_digits_dataset(tmp_path / "digits")
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def valued(tmp_path_factory):
    """A dataset valued by the compute_values operator (key "gmv")."""
    ds = make_digits_dataset(tmp_path_factory.mktemp("valued"))
    run("compute_values", ds, {"k": K})
    yield ds
    ds.delete()


# ------------------------------------------------------------------ plugin


def test_manifest_lists_every_registered_operator():
    import fiftyone.plugins as fop

    manifest = yaml.safe_load((ROOT / "fiftyone.yml").read_text())
    assert manifest["name"] == "@gmvaluator/gmv"
    assert manifest["py_entry"] == "operators/__init__.py"
    registered = {
        op.name for op in OperatorRegistry().list_operators(builtin=False)
        if op.plugin_name == "@gmvaluator/gmv"
    }
    assert registered == set(manifest["operators"]) | set(manifest["panels"])
    assert len(manifest["operators"]) == len(set(manifest["operators"])) == 20
    assert manifest["panels"] == ["gmv_panel"]
    assert "@gmvaluator/gmv" in [p.name for p in fop.list_plugins()]


def test_compute_operators_run_on_execute_and_can_be_scheduled():
    """The App's first button is Execute (it runs); Schedule is in its menu."""
    reg = OperatorRegistry()
    for name in ("compute_values", "update_values", "compute_gmv_embeddings", "build_gmv_index",
                 "recall_contributors", "rerank_contributors", "score_quality", "assign_values",
                 "evaluate_valuation"):
        op = reg.get_operator(URI + name)
        cfg = op.config
        assert cfg.allow_delegated_execution and cfg.allow_immediate_execution, name
        assert not cfg.default_choice_to_delegated, name
        assert type(op).resolve_delegation is foo.Operator.resolve_delegation, name
    # without inputs, an operator must not be dynamic, or the App shows an empty prompt
    assert not reg.get_operator(URI + "list_gmv_runs").config.dynamic


def test_operator_browser_order_is_the_pipeline_first():
    """The App orders by the description's first letter, then registration."""
    reg = OperatorRegistry()
    ops = [op for op in reg.list_operators(builtin=False, type="operator")
           if op.plugin_name == "@gmvaluator/gmv"]
    assert {op.config.description[0] for op in ops} == {"G"}
    names = [op.name for op in ops]
    assert names[:3] == ["compute_values", "update_values", "compute_gmv_embeddings"]


# ------------------------------------------------------------ the pipeline


def test_compute_values_operator_matches_library(digits):
    res = run("compute_values", digits, {"k": K, "key": "op"})
    out = res.result
    for f in ("op_value", "op_hits"):
        assert digits.match_tags("train").exists(f).count() == 150
        assert digits.match_tags("generated").exists(f).count() == 0
    for f in ("op_contributors", "op_distances", "op_scores", "op_quality"):
        assert digits.match_tags("generated").exists(f).count() == 50
    cfg = gmvruns.get_run_config(digits, "op")
    assert (cfg.model["name"], cfg.index, cfg.rerank["name"], cfg.quality["name"], cfg.k) == (
        "pixels", "auto", "l2", "realism", K)

    lib = gmv.compute_values(digits.match_tags("train"), digits.match_tags("generated"),
                             key="lib", model="pixels", rerank="l2", quality="realism", k=K)
    np.testing.assert_allclose(train_values(digits, "op_value"), train_values(digits, "lib_value"),
                               rtol=1e-6)
    assert lib.num_train == 150

    rep = out["report"]
    assert rep["counts"]["train"] == 150 and rep["counts"]["generated"] == 50
    assert rep["values"]["sum"] == pytest.approx(sum(digits.values("op_quality", missing_value=0)))
    assert set(rep["timings"]) == set(gmv.STAGES)
    assert out["histogram"].startswith("data:image/png;base64,")
    png = base64.b64decode(out["histogram"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.isfile(rep["histogram"]["path"])
    assert rep["histogram"]["path"].startswith(os.path.join(gmvruns.runs_root(), str(digits._doc.id)))
    assert [r["id"] for r in out["top"]] == gmv.load_results(digits, "op").top(10).values("id")
    assert "150" in out["summary"] and "stage timings" in out["summary"]
    assert any(r.operator_uri == "reload_dataset" for r in res.executor._requests)


def test_sets_by_field_value_saved_view_and_current_view(digits):
    digits.save_view("gen", digits.match_tags("generated"))
    run("compute_values", digits, {
        "key": "f", "k": K, "train_by": "field", "train_field": "split", "train_value": "train",
        "generated_by": "saved_view", "generated_saved_view": "gen",
    })
    assert digits.exists("f_value").count() == 150
    assert digits.exists("f_contributors").count() == 50

    # current view: only the "3"s among the generated samples
    threes = digits.match_tags("generated").match(fo.ViewField("ground_truth.label") == "3")
    foo.execute_operator(URI + "compute_values", ctx={
        "view": threes,
        "params": {"key": "cv", "k": K, "generated_by": "current_view"},
    })
    assert digits.exists("cv_contributors").values("id") == threes.values("id")


def test_existing_embeddings_field_encoder(digits):
    rng = np.random.default_rng(0)
    digits.set_values("emb", [rng.random(16).astype(np.float32) for _ in range(len(digits))])
    props = form("compute_values", digits, {"encoder": "field"})
    assert props["embeddings_field"]["type"]["values"] == ["emb"]
    run("compute_values", digits, {"key": "e", "k": K, "encoder": "field",
                                   "embeddings_field": "emb", "rerank": "none"})
    cfg = gmvruns.get_run_config(digits, "e")
    assert cfg.embeddings_field == "emb"
    assert digits.exists("e_value").count() == 150


def test_stage_operator_on_existing_embeddings_field_run(digits):
    rng = np.random.default_rng(0)
    digits.set_values("emb", [rng.random(16).astype(np.float32) for _ in range(len(digits))])
    run("compute_values", digits, {"key": "e", "k": K, "encoder": "field",
                                   "embeddings_field": "emb", "rerank": "none"})
    run("assign_values", digits, {"run_key": "e", "temperature": 2.0})
    assert gmvruns.get_run_config(digits, "e").temperature == 2.0
    run("assign_values", digits, {"run_key": "e", "auto_temperature": True})
    assert gmvruns.get_run_config(digits, "e").temperature == "auto"
    assert "temperature" not in form("assign_values", digits, {"run_key": "e"})


def test_form_defaults_weights_notes_and_live_key_validation(valued):
    props = form("compute_values", valued)
    defaults = {n: props[n].get("default") for n in
                ("train_by", "train_tag", "generated_tag", "key", "encoder", "index", "rerank",
                 "quality", "k", "auto_temperature")}
    assert defaults == {"train_by": "tag", "train_tag": "train", "generated_tag": "generated",
                        "key": "gmv_2", "encoder": "pixels", "index": "auto", "rerank": "l2",
                        "quality": "realism", "k": 50, "auto_temperature": True}
    assert "temperature" not in props  # "auto" by default (benchmarks/truth.py); unticked: 1.0
    assert form("compute_values", valued, {"auto_temperature": False})["temperature"]["default"] == 1.0
    assert "fiftyone delegated launch" in props["background_note"]["view"]["description"]
    assert "150 samples" in props["train_count"]["view"]["label"]
    assert "Auto picks 'flat'" in props["index_auto"]["view"]["label"]

    # choices whose weights are missing say so, before running
    labels = {c["value"]: c["label"] for c in props["rerank"]["view"]["choices"]}
    for name, check in (("lpips", lambda: gmvw.check_lpips("alex")), ("dreamsim", gmvw.check_dreamsim)):
        try:
            check()
            missing = False
        except gmvw.MissingWeightsError:
            missing = True
        assert labels[name].endswith("(weights missing)") == missing
        props = form("compute_values", valued, {"rerank": name, "key": "new"})
        assert ("rerank_warning" in props) == missing
        if missing:
            assert "Expected at" in props["rerank_warning"]["view"]["description"]
    props = form("compute_values", valued, {"encoder": "zoo", "quality": "maniqa", "key": "new"})
    assert props["zoo_model"]["default"] == "vgg16-imagenet-torch"
    try:
        gmvw.check_zoo_model("vgg16-imagenet-torch")
        assert "zoo_model_warning" not in props
    except gmvw.MissingWeightsError:
        assert "vgg16-imagenet-torch" in props["zoo_model_warning"]["view"]["label"]

    # the run key: a fresh one is proposed; identifier, not taken unless overwrite is ticked
    assert not form("compute_values", valued)["key"]["invalid"]
    assert form("compute_values", valued, {"key": "gmv"})["key"]["invalid"]  # "gmv" exists
    assert not form("compute_values", valued, {"key": "gmv", "overwrite": True})["key"]["invalid"]
    assert not form("compute_values", valued, {"key": "other"})["key"]["invalid"]
    bad = form("compute_values", valued, {"key": "not a key"})["key"]
    assert bad["invalid"] and "identifier" in bad["error_message"]
    # the form's checks also guard SDK calls (FiftyOne validates inputs first)
    with pytest.raises(ExecutionError, match="Path: key. Reason: A GMValuator run"):
        run("compute_values", valued, {"k": K, "key": "gmv"})
    with pytest.raises(ExecutionError, match="identifier"):
        run("compute_values", valued, {"k": K, "key": "a-b"})


# --------------------------------------------------------------- delegated


def test_delegated_run_executed_by_the_delegated_service(digits):
    from fiftyone.operators.delegated import DelegatedOperationService

    svc = DelegatedOperationService()
    # scheduled (the App's Schedule, or request_delegation from Python)
    res = run("compute_values", digits, {"k": K, "key": "dg"}, request_delegation=True)
    assert res.delegated and not digits.has_field("dg_value")
    queued = svc.list_operations(dataset_name=digits.name, run_state="queued")
    assert [op.operator for op in queued] == [URI + "compute_values"]
    results = svc.execute_queued_operations(dataset_name=digits.name)
    assert len(results) == 1 and not results[0].error, results[0].error
    done = svc.get(queued[0].id)
    assert done.run_state == "completed"
    assert done.result.result["report"]["counts"]["train"] == 150
    assert done.status is not None and done.status.progress == pytest.approx(1.0)
    digits.reload()
    assert digits.exists("dg_value").count() == 150
    # operators that only allow immediate execution ignore the request
    res = run("gmv_report", digits, {"run_key": "dg"}, request_delegation=True)
    assert not res.delegated and res.result["report"]["counts"]["generated"] == 50

    # a stage delegated on request
    res = run("assign_values", digits, {"run_key": "dg", "temperature": 0.5},
              request_delegation=True)
    assert res.delegated
    svc.execute_queued_operations(dataset_name=digits.name)
    assert gmvruns.get_run_config(digits, "dg").temperature == 0.5


def test_immediate_by_default(digits):
    res = run("compute_values", digits, {"k": K, "key": "im"})
    assert not res.delegated and digits.exists("im_value").count() == 150


# ------------------------------------------------------------- incremental


def test_update_values_operator_equals_full_recomputation(digits):
    gen = digits.match_tags("generated")
    digits.select(gen.values("id")[:20]).tag_samples("batch1")
    run("compute_values", digits, {"k": K, "key": "inc", "generated_tag": "batch1"})
    store = gmv.store.RunStore(digits, "inc")
    kept = {p: store.manifest()["stages"][p] for p in ("embed_train", "index")}

    props = form("update_values", digits, {"run_key": "inc"})
    assert props["generated_tag"]["default"] == "generated"
    assert "30 new generated samples to value (20 already valued" in props["new_count"]["view"]["label"]
    res = run("update_values", digits, {"run_key": "inc", "generated_tag": "generated"})
    assert res.result["num_added"] == 30
    assert res.result["report"]["counts"]["generated"] == 50
    # training embeddings and index were reused, not redone
    assert {p: store.manifest()["stages"][p] for p in kept} == kept

    run("compute_values", digits, {"k": K, "key": "full"})
    np.testing.assert_allclose(train_values(digits, "inc_value"), train_values(digits, "full_value"),
                               rtol=1e-6, atol=1e-9)
    assert train_values(digits, "inc_hits") == train_values(digits, "full_hits")
    assert gen.values("inc_contributors") == gen.values("full_contributors")
    np.testing.assert_allclose(gen.values("inc_quality"), gen.values("full_quality"), rtol=1e-6)

    # nothing new: values unchanged
    res = run("update_values", digits, {"run_key": "inc", "generated_tag": "generated"})
    assert res.result["num_added"] == 0


# ------------------------------------------------------------------ stages


def test_stage_operators_one_by_one_equal_the_pipeline(digits):
    res = run("compute_gmv_embeddings", digits, {"mode": "new", "key": "st", "k": K})
    assert res.result["timings"]["embed"] > 0
    assert "build the index" in res.result["summary"]
    for name in ("build_gmv_index", "recall_contributors", "rerank_contributors", "score_quality"):
        res = run(name, digits, {"run_key": "st"})
        assert res.result["key"] == "st"
    assert not digits.has_field("st_value")
    res = run("assign_values", digits, {"run_key": "st"})
    assert res.result["report"]["counts"]["train"] == 150
    run("compute_values", digits, {"k": K, "key": "full"})
    np.testing.assert_allclose(train_values(digits, "st_value"), train_values(digits, "full_value"),
                               rtol=1e-6)

    # stage options are config updates of the run
    props = form("rerank_contributors", digits, {"run_key": "st"})
    assert props["rerank"]["default"] == "l2" and props["k"]["default"] == K
    run("build_gmv_index", digits, {"run_key": "st", "index": "pq", "index_M": 8, "index_nbits": 4})
    run("recall_contributors", digits, {"run_key": "st", "recall_k": 20})
    run("rerank_contributors", digits, {"run_key": "st", "rerank": "l2", "k": 3})
    run("score_quality", digits, {"run_key": "st", "quality": "none"})
    run("assign_values", digits, {"run_key": "st", "temperature": 2.0})
    cfg = gmvruns.get_run_config(digits, "st")
    assert (cfg.index, cfg.index_params, cfg.recall_k, cfg.k, cfg.quality["name"],
            cfg.temperature) == ("pq", {"M": 8, "nbits": 4}, 20, 3, "none", 2.0)
    assert all(len(c) == 3 for c in digits.exists("st_contributors").values("st_contributors"))
    assert sum(digits.values("st_value", missing_value=0)) == pytest.approx(50.0)

    # embeddings of an existing run
    res = run("compute_gmv_embeddings", digits, {"mode": "existing", "run_key": "st"})
    assert res.result["timings"]["embed"] > 0


def test_stage_form_without_runs(digits):
    props = form("build_gmv_index", digits)
    assert props["run_key"]["invalid"] and "run_key_none" in props
    props = form("compute_gmv_embeddings", digits)
    assert props["mode"]["default"] == "new" and "key" in props


# -------------------------------------------------------------- navigation


def test_show_contributors(valued):
    gen = valued.match_tags("generated")
    g1, g2 = gen.values("id")[:2]
    c1 = valued[g1]["gmv_contributors"]
    res = run("show_contributors", valued, selected=[g1])
    assert set_view_ids(res, valued) == c1  # exactly the contributors, in rank order
    rows = res.result["contributors"]
    assert [r["id"] for r in rows] == c1
    assert res.result["train_ids"] == c1
    assert res.result["scores"] == pytest.approx(valued[g1]["gmv_scores"])
    assert [r["score"] for r in rows] == pytest.approx(valued[g1]["gmv_scores"], abs=1e-5)
    assert [r["rank"] for r in rows] == list(range(1, K + 1))

    res = run("show_contributors", valued, {"run_key": "gmv"}, selected=[g1, g2])
    ids = set_view_ids(res, valued)
    assert set(ids) == set(c1) | set(valued[g2]["gmv_contributors"])
    credits = res.result["scores"]
    assert credits == sorted(credits, reverse=True)

    with pytest.raises(ExecutionError, match="Select generated"):
        run("show_contributors", valued)
    train_id = valued.match_tags("train").first().id
    with pytest.raises(ExecutionError, match="are training samples"):
        run("show_contributors", valued, selected=[train_id])
    # the form says so before running: Execute disabled, the reason shown once
    props = form("show_contributors", valued, selected=[train_id])
    assert props["selection"]["invalid"] and "training samples" in props["selection"]["error_message"]
    assert "selection" not in form("show_contributors", valued, selected=[g1])


def test_show_contributions(valued):
    top = gmv.load_results(valued, "gmv").top(1).first()
    res = run("show_contributions", valued, selected=[top.id])
    ids = set_view_ids(res, valued)
    listing = valued.match_tags("generated").values(["id", "gmv_contributors", "gmv_scores"])
    expected = {g: s[c.index(top.id)] for g, c, s in zip(*listing) if top.id in c}
    assert len(ids) == top.gmv_hits == len(expected)
    assert set(ids) == set(expected)
    got = [expected[i] for i in ids]
    assert got == sorted(got, reverse=True)
    assert res.result["generated_ids"] == ids
    assert res.result["credits"] == pytest.approx(got)
    assert [r["credit"] for r in res.result["contributions"]] == pytest.approx(got, abs=1e-5)
    assert sum(got) == pytest.approx(top.gmv_value)

    gen_id = valued.match_tags("generated").first().id
    with pytest.raises(ExecutionError, match="are generated samples"):
        run("show_contributions", valued, selected=[gen_id])


def test_sort_by_value(valued):
    train = valued.match_tags("train")
    values = dict(zip(*train.values(["id", "gmv_value"])))
    res = run("sort_by_value", valued)
    ids = set_view_ids(res, valued)
    assert len(ids) == 150 and [values[i] for i in ids] == sorted(values.values(), reverse=True)
    res = run("sort_by_value", valued, {"order": "least", "zero": "hide"})
    ids = set_view_ids(res, valued)
    assert [values[i] for i in ids] == sorted(v for v in values.values() if v > 0)
    res = run("sort_by_value", valued, {"zero": "only"})
    assert set(set_view_ids(res, valued)) == {i for i, v in values.items() if v == 0}
    assert res.result["count"] == sum(v == 0 for v in values.values())
    # within the current view
    sevens = train.match(fo.ViewField("ground_truth.label") == "7")
    res = foo.execute_operator(URI + "sort_by_value", ctx={"view": sevens, "params": {"scope": "view"}})
    assert set(set_view_ids(res, valued)) == set(sevens.values("id"))


# ---------------------------------------------------------- run management


def test_list_info_report(valued):
    res = run("list_gmv_runs", valued)
    (row,) = [r for r in res.result["runs"] if r["key"] == "gmv"]
    assert (row["encoder"], row["rerank"], row["quality"], row["k"]) == ("pixels", "l2", "realism", K)
    assert row["num_train"] == 150 and row["num_generated"] == 50
    (t,) = [t for t in res.result["timings"] if t["key"] == "gmv"]
    assert set(t) == {"key"} | set(gmv.STAGES)

    info = run("get_gmv_run_info", valued, {"run_key": "gmv"}).result
    assert info["config"]["k"] == K and info["config"]["method"] == "gmvaluator"
    assert info["fields"] == gmvruns.field_names("gmv")
    assert set(info["timings"]) == set(gmv.STAGES)
    shown = {r["name"]: r["value"] for r in info["settings"]}
    assert shown["k"] == str(K) and shown["files"] == gmvruns.run_dir(valued, "gmv")
    for v in shown.values():  # readable numbers: at most 4 significant digits
        assert not any(len(d) > 6 for d in __import__("re").findall(r"\d+\.(\d+)", v)), v

    rep = run("gmv_report", valued, {"n": 3}).result
    assert len(rep["top"]) == len(rep["bottom"]) == 3
    assert rep["top"][0]["value"] >= rep["top"][1]["value"] >= rep["top"][2]["value"]
    assert 0 < rep["bottom"][0]["value"] <= rep["bottom"][1]["value"]  # least among non-zero
    zeros = valued.match_tags("train").match(fo.ViewField("gmv_value") == 0).count()
    assert rep["zero_note"].startswith("%d training samples have value 0" % zeros)
    assert rep["histogram"].startswith("data:image/png;base64,")


def test_rename_and_delete(digits):
    run("compute_values", digits, {"k": K, "key": "a"})
    old_dir = gmvruns.run_dir(digits, "a")
    assert os.path.isdir(old_dir)
    props = form("rename_gmv_run", digits, {"run_key": "a", "new_key": "a b"})
    assert props["new_key"]["invalid"]
    with pytest.raises(ExecutionError, match="identifier"):
        run("rename_gmv_run", digits, {"run_key": "a", "new_key": "a b"})

    res = run("rename_gmv_run", digits, {"run_key": "a", "new_key": "b"})
    assert "Renamed run" in res.result["summary"]
    assert gmvruns.list_runs(digits) == ["b"]
    assert digits.has_field("b_value") and not digits.has_field("a_value")
    assert os.path.isdir(gmvruns.run_dir(digits, "b")) and not os.path.isdir(old_dir)

    props = form("delete_gmv_run", digits, {"run_key": "b"})
    assert "b\\_value" in props["delete_warning"]["view"]["description"]  # Markdown-escaped
    assert props["confirm"]["invalid"]  # Execute is disabled until confirmed
    assert not form("delete_gmv_run", digits, {"run_key": "b", "confirm": True})["confirm"]["invalid"]
    with pytest.raises(ExecutionError, match="confirm"):
        run("delete_gmv_run", digits, {"run_key": "b"})
    assert gmvruns.list_runs(digits) == ["b"]
    res = run("delete_gmv_run", digits, {"run_key": "b", "confirm": True})
    assert "b_value" in res.result["fields"] and "Deleted run" in res.result["summary"]
    assert gmvruns.list_runs(digits) == []
    assert not any(f.startswith("b_") for f in digits.get_field_schema())
    assert not os.path.isdir(gmvruns.run_dir(digits, "b"))


# --------------------------------------------------------- live validation


def test_live_validation_marks_fields_invalid_with_the_library_message(digits):
    def field(params, name):
        return form("compute_values", digits, params)[name]

    ok = form("compute_values", digits, {"k": 5, "recall_k": 10, "temperature": 0.5})
    assert not any(ok[n]["invalid"] for n in ("k", "recall_k", "temperature", "batch_size"))
    k0 = field({"k": 0}, "k")
    assert k0["invalid"] and "between 1 and 150 inclusive" in k0["error_message"]
    assert field({"k": 151}, "k")["invalid"] and not field({"k": 150}, "k")["invalid"]
    assert field({"k": 2.5}, "k")["invalid"]
    rk = field({"k": 10, "recall_k": 5}, "recall_k")
    assert rk["invalid"] and "recall_k" in rk["error_message"]
    for tau in (0, -1):
        t = field({"temperature": tau}, "temperature")
        assert t["invalid"] and "temperature" in t["error_message"]
    assert not field({"auto_temperature": True, "temperature": 0}, "k")["invalid"]
    assert field({"batch_size": 0}, "batch_size")["invalid"]
    with pytest.raises(ExecutionError, match="recall_k"):
        run("compute_values", digits, {"k": 10, "recall_k": 5, "key": "x"})
    assert not digits.has_field("x_value")

    # missing weights make the choice invalid (Execute disabled)
    try:
        gmvw.check_lpips("alex")
    except gmvw.MissingWeightsError:
        rr = field({"rerank": "lpips"}, "rerank")
        assert rr["invalid"] and "missing" in rr["error_message"]


def test_expected_errors_inside_execute_are_one_sentence(digits):
    """What only execute can find (here: an image deleted after the form was
    checked) comes back as one sentence, not a traceback."""
    os.remove(digits.match_tags("generated").first().filepath)
    res = run("compute_values", digits, {"k": K, "key": "x"})
    msg = res.result["error_sentence"]
    assert "missing" in msg and "Traceback" not in msg
    assert not digits.has_field("x_value")


def test_run_choices_default_to_the_latest_run(digits):
    run("compute_values", digits, {"k": K, "key": "first"})
    run("compute_values", digits, {"k": K, "key": "second"})
    for name in ("gmv_report", "delete_gmv_run", "rename_gmv_run", "get_gmv_run_info",
                 "assign_values", "evaluate_valuation"):
        assert form(name, digits)["run_key"]["default"] == "second", name
    assert form("compute_values", digits)["key"]["default"] == "gmv"  # not in use here


def test_run_locked_by_another_writer_is_one_sentence(valued):
    from gmv_plugin import locks

    other = locks.RunLock(valued, "gmv", "a test standing in for another process")
    other.acquire()  # held, but not by this process's run_lock
    try:
        res = run("assign_values", valued, {"run_key": "gmv", "temperature": 0.5})
        msg = res.result["error_sentence"]
        assert "being changed by another process" in msg and "Traceback" not in msg
    finally:
        other.release()
    assert gmvruns.get_run_config(valued, "gmv").temperature != 0.5


def test_markdown_of_paths_and_identifiers():
    import importlib
    import sys

    sys.path.insert(0, str(ROOT))
    c = importlib.import_module("operators._common")
    assert c.md("~/fiftyone/__models__/vgg16.pth") == "\\~/fiftyone/\\_\\_models\\_\\_/vgg16.pth"
    assert c.code("gmv_value") == "`gmv_value`" and c.code("a`b") == "``a`b``"
    assert c.first_sentence("Weights for x are missing. Expected at: /p. Run y") == \
        "Weights for x are missing."
