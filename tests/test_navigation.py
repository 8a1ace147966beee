"""Library navigation views and the run report, on a valued digits dataset."""

import base64
import os

import numpy as np
import pytest
from PIL import Image

from fiftyone import ViewField as F

import gmv_plugin as gmv
from gmv_plugin import navigation as nav
from gmv_plugin import report as rep
from gmv_plugin import runs as gmvruns
from gmv_testdata import make_digits_dataset

K = 5


@pytest.fixture(scope="module")
def valued(tmp_path_factory):
    ds = make_digits_dataset(tmp_path_factory.mktemp("nav"))
    gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), key="gmv",
                       model="pixels", rerank="l2", quality="realism", k=K)
    yield ds
    ds.delete()


def _listing(ds):
    cols = ds.match_tags("generated").values(["id", "gmv_contributors", "gmv_distances", "gmv_scores"])
    return {g: (c, d, s) for g, c, d, s in zip(*cols)}


def test_contributors_of_one_generated_sample_in_rank_order(valued):
    g = valued.match_tags("generated").first()
    view = nav.contributors_view(valued, "gmv", [g.id])
    assert view.values("id") == g.gmv_contributors
    assert len(view) == K and all(view.exists("gmv_value").values("id"))
    rows = nav.contributor_credits(valued, "gmv", g.id)  # a single id works too
    assert [r["train_id"] for r in rows] == g.gmv_contributors
    assert [r["credit"] for r in rows] == pytest.approx(g.gmv_scores)
    assert [r["distance"] for r in rows] == pytest.approx(g.gmv_distances)
    assert [r["rank"] for r in rows] == list(range(1, K + 1))
    assert sum(r["credit"] for r in rows) == pytest.approx(g.gmv_quality)
    # any collection of the dataset works, e.g. a view without training samples
    assert nav.contributors_view(valued.match_tags("generated"), "gmv", [g.id]).values("id") == g.gmv_contributors


def test_contributors_of_several_generated_samples_by_total_credit(valued):
    listing = _listing(valued)
    gids = list(listing)[:4]
    credit = {}
    for gid in gids:
        for t, s in zip(listing[gid][0], listing[gid][2]):
            credit[t] = credit.get(t, 0.0) + s
    rows = nav.contributor_credits(valued, "gmv", gids)
    assert {r["train_id"]: r["credit"] for r in rows} == pytest.approx(credit)
    assert [r["credit"] for r in rows] == sorted(credit.values(), reverse=True)
    assert nav.contributors_view(valued, "gmv", gids).values("id") == [r["train_id"] for r in rows]
    shared = [r for r in rows if len(r["generated_ids"]) > 1]
    for r in shared:
        assert set(r["generated_ids"]) <= set(gids)


def test_contributions_ordered_by_credit(valued):
    listing = _listing(valued)
    top = gmv.load_results(valued, "gmv").top(2).values("id")
    expected = {}
    for gid, (c, _, s) in listing.items():
        got = sum(sc for t, sc in zip(c, s) if t in top)
        if got:
            expected[gid] = got
    view = nav.contributions_view(valued, "gmv", top)
    ids = view.values("id")
    assert set(ids) == set(expected)
    assert [expected[i] for i in ids] == sorted(expected.values(), reverse=True)
    assert view.values(nav.credit_expression("gmv", top)) == pytest.approx([expected[i] for i in ids])
    one = nav.contributions_view(valued, "gmv", top[0])
    assert sum(one.values(nav.credit_expression("gmv", [top[0]]))) == pytest.approx(valued[top[0]].gmv_value)


def test_ranked_training_view(valued):
    train = valued.match_tags("train")
    values = dict(zip(*train.values(["id", "gmv_value"])))
    most = nav.ranked_training_view(valued, "gmv")
    assert len(most) == 150 and most.values("gmv_value") == sorted(values.values(), reverse=True)
    least = nav.ranked_training_view(valued, "gmv", reverse=False, nonzero=True)
    assert least.values("gmv_value") == sorted(v for v in values.values() if v > 0)
    zeros = nav.ranked_training_view(valued, "gmv", zero="only")
    assert set(zeros.values("id")) == {i for i, v in values.items() if v == 0}
    assert len(zeros) > 0
    # within a view: the 0s only
    zeros_lbl = train.match(F("ground_truth.label") == "0")
    assert set(nav.ranked_training_view(zeros_lbl, "gmv").values("id")) == set(zeros_lbl.values("id"))
    with pytest.raises(ValueError, match="zero must be"):
        nav.ranked_training_view(valued, "gmv", zero="drop")


def test_navigation_errors(valued):
    with pytest.raises(ValueError, match="No GMValuator run"):
        nav.contributors_view(valued, "nope", [valued.first().id])
    with pytest.raises(ValueError, match="Select at least one"):
        nav.contributors_view(valued, "gmv", [])
    train_id = valued.match_tags("train").first().id
    with pytest.raises(ValueError, match="not generated samples valued"):
        nav.contributors_view(valued, "gmv", [train_id])
    gen_id = valued.match_tags("generated").first().id
    with pytest.raises(ValueError, match="training sample valued"):
        nav.contributions_view(valued, "gmv", [gen_id])


def test_build_report(valued):
    r = rep.build_report(valued, "gmv", n=4)
    train = valued.match_tags("train")
    values = np.array(train.values("gmv_value"))
    assert r["counts"] == {"train": 150, "generated": 50, "contributing": int((values > 0).sum()),
                           "zero_value": int((values == 0).sum()), "unvalued": 0}
    assert r["values"]["sum"] == pytest.approx(values.sum())
    assert r["values"]["max"] == pytest.approx(values.max())
    assert r["values"]["mean"] == pytest.approx(values.mean())
    q = valued.match_tags("generated").values("gmv_quality")
    assert r["values"]["sum"] == pytest.approx(sum(q))  # Eq. 4: each hands out q_j
    assert r["quality"]["mean"] == pytest.approx(np.mean(q))

    h = r["histogram"]
    assert sum(h["counts"]) == r["counts"]["contributing"] and h["zero_count"] == r["counts"]["zero_value"]
    assert len(h["edges"]) == len(h["counts"]) + 1
    assert h["path"] == os.path.join(gmvruns.runs_root(), str(valued._doc.id), "_reports", "gmv_" + rep.HISTOGRAM_NAME)
    with Image.open(h["path"]) as im:
        assert im.format == "PNG" and im.size[0] > 300
    with open(h["path"], "rb") as f:
        assert base64.b64decode(h["data_url"].split(",", 1)[1]) == f.read()

    assert [t["id"] for t in r["top"]] == nav.ranked_training_view(valued, "gmv").limit(4).values("id")
    nonzero = np.sort(values[values > 0])[:4]
    assert [t["value"] for t in r["bottom"]] == pytest.approx(nonzero)  # least among non-zero
    assert set(r["timings"]) == set(gmv.STAGES) and r["total_seconds"] > 0
    assert r["config"]["index_type"] == "flat" and r["config"]["k"] == K

    md = rep.report_markdown(r)
    assert "Most valuable" in md and r["top"][0]["filename"] in md and "stage timings" in md
    assert "Most valuable" not in rep.report_markdown(r, tables=False)
    assert rep.build_report(valued, "gmv", data_url=False)["histogram"]["data_url"] is None


def test_report_when_every_value_is_zero(tmp_path):
    """The report (and its picture) also works when no value is non-zero."""
    ds = make_digits_dataset(tmp_path / "z", n_train=20, n_generated=5)
    gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), key="z",
                       model="pixels", k=2)
    ds.match_tags("train").set_values("z_value", [0.0] * 20)
    r = rep.build_report(ds, "z", n=3)
    assert r["counts"]["contributing"] == 0 and r["histogram"]["counts"] == []
    assert os.path.isfile(r["histogram"]["path"])
    ds.delete()
