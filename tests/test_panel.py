"""The GMValuator panel's callbacks executed through FiftyOne (no browser):
what it puts in panel state and data, and the views it sets."""

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest

from gmv_plugin import panel_data as gmvpanel
from gmv_testdata import make_digits_dataset

URI = "@gmvaluator/gmv/gmv_panel"
K = 5


@pytest.fixture(scope="module")
def valued(tmp_path_factory):
    import gmv_plugin as gmv

    ds = make_digits_dataset(tmp_path_factory.mktemp("panel"))
    gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), key="old",
                       model="pixels", rerank="l2", quality="realism", k=3)
    gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), key="gmv",
                       model="pixels", rerank="l2", quality="realism", k=K)
    yield ds
    ds.delete()


def call(ds, method, state=None, selected=None, **event):
    res = foo.execute_operator(URI, ctx=dict(
        dataset=ds.name, selected=selected or [],
        params={"__method__": method, "panel_state": state or {}, "event_args": {},
                "panel_id": "p1", **event},
    ))
    state, data, views = dict(state or {}), {}, []
    for r in res.executor._requests:
        if r.operator_uri.endswith("patch_panel_state"):
            state.update(r.params["state"])
        elif r.operator_uri.endswith("patch_panel_data"):
            data.update(r.params["data"])
        elif r.operator_uri.endswith("set_view"):
            views.append(fo.DatasetView._build(ds, r.params["view"]).values("id"))
    outputs = [r for r in res.executor._requests if r.operator_uri.endswith("show_panel_output")]
    assert outputs, "the panel rendered nothing"
    return state, data, views


def test_load_picks_latest_run_and_histogram_matches_library(valued):
    state, data, _ = call(valued, "on_load")
    assert state["run_key"] == "gmv" and state["run_keys"] == ["gmv", "old"]
    hist = gmvpanel.value_histogram(valued, "gmv")
    (trace,) = data["hist"]
    assert trace["type"] == "bar" and trace["y"] == hist["counts"]
    values = np.array(valued.match_tags("train").values("gmv_value"))
    assert sum(trace["y"]) == (values > 0).sum() and state["zero_count"] == (values == 0).sum()
    least = [float(r["value"]) for r in data["least"]]
    assert least == sorted(least) and min(least) > 0  # least valuable among non-zero


def test_bar_click_and_box_selection_show_exactly_those_samples(valued):
    state, _, _ = call(valued, "on_load")
    edges = state["edges"]
    values = dict(zip(*valued.match_tags("train").values(["id", "gmv_value"])))
    last = len(edges) - 2

    def in_bins(bins):
        out = set()
        for i, v in values.items():
            for b in bins:
                lo, hi = edges[b], edges[b + 1]
                if v > 0 and lo <= v and (v < hi or b == last and v <= hi):
                    out.add(i)
        return out

    for b in (0, last):
        _, _, views = call(valued, "on_hist_click", state, idx=b)
        assert set(views[0]) == in_bins([b])
    _, _, views = call(valued, "on_hist_select", state, data=[{"idx": 1}, {"idx": 2}])
    assert set(views[0]) == in_bins([1, 2])
    _, _, views = call(valued, "on_hist_select", state, data=[])
    assert views == []  # the empty selection sent with every click changes nothing
    # every non-zero sample is in exactly one bin
    assert sum(len(in_bins([b])) for b in range(last + 1)) == sum(v > 0 for v in values.values())


def test_selected_generated_sample_lists_contributors_in_rank_order(valued):
    state, _, _ = call(valued, "on_load")
    gen = valued.match_tags("generated").first()
    state, data, _ = call(valued, "on_change_selected", state, selected=[gen.id])
    assert state["contrib_ids"] == gen.gmv_contributors
    rows = data["contributors"]
    assert [r["rank"] for r in rows] == list(range(1, K + 1))
    np.testing.assert_allclose([float(r["credit"]) for r in rows], gen.gmv_scores, rtol=1e-5)
    np.testing.assert_allclose([float(r["distance"]) for r in rows], gen.gmv_distances, rtol=1e-5)
    _, _, views = call(valued, "show_contributors", state)
    assert views == [gen.gmv_contributors]

    top = valued[state["contrib_ids"][0]]
    state, data, _ = call(valued, "on_change_selected", state, selected=[top.id])
    assert state["sel_training"] == [top.id] and len(data["contributions"]) == top.gmv_hits


def test_zero_values_and_review_tag(valued):
    state, _, _ = call(valued, "on_load")
    _, _, views = call(valued, "show_zero", state)
    assert set(views[0]) == set(gmvpanel.zero_view(valued, "gmv").values("id"))
    call(valued, "tag_for_review", state)
    valued.reload()
    assert valued.match_tags("gmv_review").count() == 15  # 10% of 150


def test_scheduled_runs_are_listed_with_their_id(valued):
    res = foo.execute_operator("@gmvaluator/gmv/assign_values", ctx=dict(
        dataset=valued.name, params={"run_key": "gmv"}), request_delegation=True)
    assert res.delegated
    op_id = str(res.result["id"]) if "id" in res.result else str(res.result["_id"])
    state, data, _ = call(valued, "on_load")
    assert state["num_scheduled"] >= 1
    row = [r for r in data["scheduled"] if r["id"] == op_id]
    assert row and row[0]["state"] == "queued"
