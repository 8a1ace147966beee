"""The App as a curator's workspace, in real headless Chromium (issue 8).

One App server and one fresh dataset of real digit PNGs for the module; the
tests run in order and build on each other: the first values the dataset from
the operator menu with the form's defaults. Screenshots go to
``test-artifacts/curator-*.png``.
"""

import re
import uuid

import browser
import numpy as np
import pytest
from browser import open_operator_browser, screenshot, wait_for_grid

from gmv_plugin import panel_data as gmvpanel
from gmv_testdata import make_digits_dataset

app_url = browser.app_url  # one App server for the module
page = browser.page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_TRAIN, N_GENERATED = 200, 12
KEY = "gmv"  # what the form proposes on a fresh dataset
MODAL = '[data-cy="operators-prompt-modal"]'
PANEL = "gmv_panel"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A dataset never valued; generated samples first in the grid."""
    ds = make_digits_dataset(
        tmp_path_factory.mktemp("curator"), n_train=N_TRAIN, n_generated=N_GENERATED,
        name="gmv-curator-%s" % uuid.uuid4().hex[:8], persistent=True, generated_first=True,
    )
    yield ds
    ds.delete()


def _open(page, app_url, ds, n=12):
    page.goto(f"{app_url}/datasets/{ds.name}")
    wait_for_grid(page, n)


def _open_form(page, search):
    open_operator_browser(page)
    page.locator('[data-cy="operators-browser-search"]').fill(search)
    page.keyboard.press("Enter")
    modal = page.locator(MODAL)
    modal.wait_for(state="visible", timeout=30_000)
    return modal


def _execute_button(modal):
    return modal.get_by_role("button", name="Execute", exact=True)


def _field(modal, label):
    return browser.form_field(modal, label)


def _type(modal, label, value):
    f = _field(modal, label)
    f.wait_for(state="attached", timeout=15_000)
    f.fill(str(value))


def _wait_disabled(button, disabled, timeout=20_000):
    button.page.wait_for_function(
        "([el, d]) => el.disabled === d || (el.getAttribute('aria-disabled') === 'true') === d",
        arg=[button.element_handle(), disabled], timeout=timeout,
    )


def _grid_count(page):
    text = page.locator("[data-cy=entry-counts]").inner_text()
    return int(re.search(r"[\d,]+", text).group().replace(",", ""))


def _wait_grid_count(page, n, timeout=30_000):
    page.wait_for_function(
        "n => { const e = document.querySelector('[data-cy=entry-counts]');"
        " if (!e) return false; const m = e.innerText.replace(/,/g, '').match(/\\d+/);"
        " return m && Number(m[0]) === n; }",
        arg=n, timeout=timeout,
    )


# ------------------------------------------------------------------ forms


def test_compute_values_runs_on_first_click_with_defaults(app_url, page, fresh):
    _open(page, app_url, fresh)
    open_operator_browser(page)
    page.locator('[data-cy="operators-browser-search"]').fill("GMValuator")
    page.get_by_text("GMValuator: compute values").first.wait_for()
    screenshot(page, "curator-01-operator-order")

    modal = _open_form(page, "GMValuator: compute values")
    execute = _execute_button(modal)
    execute.wait_for(state="visible", timeout=30_000)  # Execute, not "Set up now"
    modal.get_by_text("Run now or in the background").wait_for()
    _wait_disabled(execute, False)
    assert _field(modal, "Run key").input_value() == KEY
    screenshot(page, "curator-02-compute-form")
    with page.expect_response(lambda r: "/operators/execute" in r.url, timeout=300_000) as info:
        execute.click()
    body = info.value.json()
    assert body["error"] is None and body["delegated"] is False
    rep = body["result"]["report"]
    assert rep["counts"] == {"train": N_TRAIN, "generated": N_GENERATED,
                             "contributing": rep["counts"]["contributing"],
                             "zero_value": rep["counts"]["zero_value"], "unvalued": 0}
    page.locator("img[alt='value histogram']").wait_for()
    screenshot(page, "curator-03-compute-report", full_page=True)
    fresh.reload()
    assert fresh.match_tags("train").exists(KEY + "_value").count() == N_TRAIN


def test_list_runs_shows_the_run(app_url, page, fresh):
    _open(page, app_url, fresh)
    open_operator_browser(page)
    page.locator('[data-cy="operators-browser-search"]').fill("GMValuator: list runs")
    with page.expect_response(lambda r: "/operators/execute" in r.url, timeout=60_000) as info:
        page.keyboard.press("Enter")  # not dynamic, no inputs: runs at once
    body = info.value.json()
    assert [r["key"] for r in body["result"]["runs"]] == [KEY]
    modal = page.locator(MODAL)
    modal.get_by_text("1 GMValuator run(s)").wait_for()
    modal.locator("td", has_text=re.compile("^%s$" % KEY)).first.wait_for()
    screenshot(page, "curator-04-list-runs")


def test_live_validation_disables_execute(app_url, page, fresh):
    _open(page, app_url, fresh)
    modal = _open_form(page, "GMValuator: compute values")
    execute = _execute_button(modal)
    execute.wait_for()
    _wait_disabled(execute, False)
    assert _field(modal, "Run key").input_value() == KEY + "_2"  # a fresh key

    _type(modal, "Contributors per generated image (k)", 0)
    modal.get_by_text("between 1 and %d inclusive" % N_TRAIN).first.wait_for()
    _wait_disabled(execute, True)
    screenshot(page, "curator-05-k-zero")

    _type(modal, "Contributors per generated image (k)", 10)
    _type(modal, "Candidates recalled before re-ranking (recall_k)", 5)
    modal.get_by_text(re.compile("recall_k must be")).first.wait_for()
    _wait_disabled(execute, True)
    screenshot(page, "curator-06-recall-k-below-k")

    _type(modal, "Candidates recalled before re-ranking (recall_k)", 20)
    _wait_disabled(execute, False)


def test_an_error_while_running_is_one_sentence(app_url, page, fresh):
    import shutil

    _open(page, app_url, fresh)
    modal = _open_form(page, "GMValuator: compute values")
    execute = _execute_button(modal)
    execute.wait_for()
    _type(modal, "Contributors per generated image (k)", 7)
    _wait_disabled(execute, False)
    # an image vanishes after the form was checked: only execute can find out
    victim = fresh.match_tags("train").last().filepath
    shutil.move(victim, victim + ".away")
    try:
        with page.expect_response(lambda r: "/operators/execute" in r.url) as info:
            execute.click()
        result = info.value.json()["result"]
        assert "missing" in result["error_sentence"]
        modal.get_by_text("Nothing was changed: ").wait_for(timeout=30_000)
        assert "Traceback" not in modal.inner_text()
        screenshot(page, "curator-06b-error-sentence")
    finally:
        shutil.move(victim + ".away", victim)
    fresh.reload()
    assert fresh.list_runs() == [KEY]  # nothing was written


def test_delete_asks_for_confirmation(app_url, page, fresh):
    import gmv_plugin as gmv

    gmv.compute_values(fresh.match_tags("train"), fresh.match_tags("generated"),
                       key="scratch", model="pixels", k=3)
    _open(page, app_url, fresh)
    modal = _open_form(page, "GMValuator: delete run")
    modal.get_by_text("Run 'scratch' will be deleted").wait_for()  # the latest run
    execute = _execute_button(modal)
    execute.wait_for()
    _wait_disabled(execute, True)
    screenshot(page, "curator-07-delete-confirm")
    _field(modal, "Yes, delete run 'scratch'").check()
    _wait_disabled(execute, False)
    with page.expect_response(lambda r: "/operators/execute" in r.url) as info:
        execute.click()
    result = info.value.json()["result"]
    assert result["deleted"] == "scratch" and "scratch_value" in result["fields"]
    modal.get_by_text("Deleted run").wait_for()
    screenshot(page, "curator-08-deleted")
    fresh.reload()
    assert gmv.list_runs(fresh) == [KEY]


def test_sort_by_offers_the_value_field(app_url, page, fresh):
    """Passes once the run store creates the index on {key}_value (lead's
    store, issue 7); until then it is an expected failure."""
    fresh.reload()
    if KEY + "_value" not in fresh.list_indexes():
        pytest.xfail("no database index on %s_value yet (created by the run store)" % KEY)
    _open(page, app_url, fresh)
    page.locator('[data-cy="selector-Sort by"]').click()
    page.locator('[data-cy="selector-result-%s_value"]' % KEY).wait_for(timeout=15_000)
    screenshot(page, "curator-09-sort-by")


# ------------------------------------------------------------------ panel


def _open_panel(page):
    page.locator("[data-cy=new-panel-btn]").click()
    page.locator("[data-cy=new-panel-option-%s]" % PANEL).click()
    content = page.locator("[data-cy=panel-content-%s]" % PANEL)
    content.locator(".js-plotly-plot").wait_for(timeout=60_000)
    return content


def test_panel_histogram_selection_filters_the_grid(app_url, page, fresh):
    hist = gmvpanel.value_histogram(fresh, KEY)
    counts = hist["counts"]
    # a bar small enough that the grid's first page holds all of it
    i = max((j for j, n in enumerate(counts) if 0 < n <= 20), key=lambda j: counts[j])
    expected = set(gmvpanel.bins_view(fresh, KEY, hist["edges"], [i]).values("id"))
    assert len(expected) == counts[i]

    _open(page, app_url, fresh)
    panel = _open_panel(page)
    screenshot(page, "curator-10-panel")
    shown = []
    page.on("response", lambda r: _record_grid(r, shown))
    panel.locator(".js-plotly-plot g.trace.bars g.point path").nth(i).click(force=True)
    _wait_grid_count(page, counts[i])
    page.wait_for_function(
        "n => document.querySelectorAll('[data-cy=looker] canvas[canvas-loaded=true]').length >= n",
        arg=min(counts[i], 6))
    panel.get_by_text("Grid: the %d training samples" % counts[i]).wait_for()
    assert shown and set(shown[-1]) == expected
    screenshot(page, "curator-11-panel-bar-selected")

    # drag across the middle of the plot: a range of bars
    events = []
    page.on("request", lambda r: _record_selection(r, events))
    drag = panel.locator(".js-plotly-plot .nsewdrag").first
    box = drag.bounding_box()
    y = box["y"] + box["height"] * 0.5
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=8)
    page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=8)
    page.mouse.up()
    for _ in range(120):
        if events:
            break
        page.wait_for_timeout(250)
    assert events, "no selection event reached the panel"
    bins = sorted(events[-1])
    assert bins == list(range(bins[0], bins[-1] + 1)) and len(bins) > 1  # a contiguous range
    in_range = gmvpanel.bins_view(fresh, KEY, hist["edges"], bins)
    n = in_range.count()
    assert n == sum(counts[b] for b in bins)
    _wait_grid_count(page, n)
    panel.get_by_text("Grid: the %d training samples" % n).wait_for()
    lo, hi = hist["edges"][bins[0]], hist["edges"][bins[-1] + 1]
    values = in_range.values(KEY + "_value")
    assert all(lo <= v <= hi for v in values)
    wait_for_grid(page, 6)
    screenshot(page, "curator-11b-panel-range-selected")


def _record_selection(req, events):
    """Bar indices of each non-empty selection the panel receives."""
    if "/operators/execute" not in req.url:
        return
    try:
        params = req.post_data_json["params"]
    except Exception:
        return
    if params.get("__method__") == "on_hist_select":
        idx = [d.get("idx") for d in (params.get("event_args") or params).get("data") or []]
        if idx and None not in idx:
            events.append(idx)


def _record_grid(resp, shown):
    req = resp.request
    if "graphql" not in resp.url or "paginateSamplesQuery" not in (req.post_data or ""):
        return
    try:
        shown.append([e["node"]["id"] for e in resp.json()["data"]["samples"]["edges"]])
    except Exception:
        pass


def test_panel_lists_contributors_of_the_selected_sample(app_url, page, fresh):
    _open(page, app_url, fresh, n=1)  # the server may keep the last test's (smaller) view
    content = page.locator("[data-cy=panel-content-%s]" % PANEL)
    if not content.count():  # the server keeps open panels; open it if it's not
        content = _open_panel(page)
    content.get_by_role("button", name="Reset view", exact=True).click()
    _wait_grid_count(page, N_TRAIN + N_GENERATED)  # the server kept the last test's view
    wait_for_grid(page, 6)
    tile = page.locator("[data-cy=looker]").first
    tile.hover()
    box = tile.bounding_box()
    page.mouse.click(box["x"] + 14, box["y"] + 14)  # the tile's checkbox
    heading = content.get_by_text("Contributors of the 1 selected generated sample(s)")
    heading.wait_for(timeout=30_000)

    gen = fresh.match_tags("generated").first()  # generated samples come first
    table = content.locator(
        "xpath=.//*[contains(text(), 'Contributors of the 1 selected')]/following::table[1]")
    rows = table.locator("tbody tr")
    rows.nth(0).wait_for()
    cells = [rows.nth(r).locator("td").all_inner_texts() for r in range(rows.count())]
    contributors = gen[KEY + "_contributors"]
    names = dict(zip(*fresh.select(contributors).values(["id", "filepath"])))
    assert [int(c[0]) for c in cells] == list(range(1, len(contributors) + 1))
    assert [c[1] for c in cells] == [names[i].rsplit("/", 1)[-1] for i in contributors]
    np.testing.assert_allclose([float(c[2]) for c in cells], gen[KEY + "_scores"], rtol=1e-5)
    np.testing.assert_allclose([float(c[3]) for c in cells], gen[KEY + "_distances"], rtol=1e-5)
    screenshot(page, "curator-12-panel-contributors")
    content.get_by_role("button", name="Tag lowest 10% for review", exact=True).scroll_into_view_if_needed()
    screenshot(page, "curator-13-panel-next-steps")

    # a next-step button opens the operator's form
    content.get_by_role("button", name="Evaluate", exact=True).click()
    modal = page.locator(MODAL)
    modal.get_by_text("Evaluate a valuation run").first.wait_for(timeout=30_000)
    screenshot(page, "curator-14-panel-evaluate-form")
    modal.get_by_role("button", name="Cancel").click()
