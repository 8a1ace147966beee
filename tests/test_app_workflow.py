"""The GMValuator curation workflow in the real FiftyOne App (headless Chromium).

Opens a small dataset of real digit PNGs, finds the plugin's operators in the
operator browser, runs a valuation from its form, selects a generated sample,
runs "show contributors" and checks that the grid shows exactly that sample's
contributors in rank order; then goes back the other way with "show
contributions". Screenshots go to ``test-artifacts/workflow-*.png``.
"""

import json
import pathlib
import uuid

import browser
import pytest
import yaml
from browser import open_operator_browser, run_operator, screenshot, wait_for_grid

from gmv_testdata import make_digits_dataset

app_url = browser.app_url  # fixtures, made visible to this module
page = browser.page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[1]
N_TRAIN, N_GENERATED, K = 30, 4, 5


@pytest.fixture
def digits(tmp_path):
    """Generated samples first, so the first grid tile is a generated one."""
    ds = make_digits_dataset(
        tmp_path / "digits", n_train=N_TRAIN, n_generated=N_GENERATED,
        name="gmv-workflow-%s" % uuid.uuid4().hex[:8], persistent=True, generated_first=True,
    )
    yield ds
    ds.delete()


class GridFeed:
    """Records the samples the App's grid fetches (paginateSamplesQuery)."""

    def __init__(self, page):
        self.pages = []
        page.on("response", self._on_response)

    def _on_response(self, resp):
        req = resp.request
        if "graphql" not in resp.url or "paginateSamplesQuery" not in (req.post_data or ""):
            return
        try:
            edges = resp.json()["data"]["samples"]["edges"]
        except Exception:
            return
        self.pages.append([e["node"]["id"] for e in edges])

    def wait_for_new(self, page, since, timeout=30_000):
        """Ids of the first page fetched after ``since`` pages were recorded."""
        deadline = timeout / 250
        while len(self.pages) <= since and deadline > 0:
            page.wait_for_timeout(250)
            deadline -= 1
        assert len(self.pages) > since, "the grid fetched no samples"
        return self.pages[since]


def wait_for_exact_grid(page, n, timeout=30_000):
    """Wait until the grid holds exactly ``n`` tiles, all painted."""
    page.wait_for_function(
        "n => { const t = document.querySelectorAll('[data-cy=looker]');"
        " const p = document.querySelectorAll('[data-cy=looker] canvas[canvas-loaded=true]');"
        " return t.length === n && p.length === n; }",
        arg=n, timeout=timeout,
    )


def tile_labels(page):
    """The ground_truth tag of each grid tile, in reading order."""
    tiles = page.locator("[data-cy=looker]")
    boxes = []
    for i in range(tiles.count()):
        t = tiles.nth(i)
        box = t.bounding_box()
        tag = t.locator("[data-cy=tag-ground_truth]")
        boxes.append((round(box["y"]), round(box["x"]), tag.inner_text() if tag.count() else None))
    return [label for _, _, label in sorted(boxes)]


def select_tile(page, i):
    tile = page.locator("[data-cy=looker]").nth(i)
    tile.hover()
    tile.locator("[data-cy=looker-checkbox-]").click()


def close_output(page):
    page.get_by_role("button", name="Close").click()


def test_valuation_and_contributor_navigation_in_the_app(app_url, page, digits):
    feed = GridFeed(page)
    page.goto(f"{app_url}/datasets/{digits.name}")
    wait_for_grid(page, 12)
    screenshot(page, "workflow-01-dataset")

    # the operator browser lists every operator of the plugin
    ops = open_operator_browser(page)
    page.locator('[data-cy="operators-browser-search"]').fill("GMValuator")
    names = yaml.safe_load((ROOT / "fiftyone.yml").read_text())["operators"]
    for name in names:
        ops.get_by_text(name, exact=True).wait_for(timeout=15_000)
    screenshot(page, "workflow-02-operator-browser")
    page.keyboard.press("Escape")

    # run a valuation from the form: offline defaults, k=5, Execute runs it now
    body = run_operator(
        page, "GMValuator: compute values",
        fill={"Contributors per generated image (k)": K},
    )
    assert body["delegated"] is False
    report = body["result"]["report"]
    assert report["counts"]["train"] == N_TRAIN and report["counts"]["generated"] == N_GENERATED
    assert report["config"]["rerank"]["name"] == "l2" and report["config"]["k"] == K
    page.get_by_text("Value distribution").first.wait_for()
    page.locator("img[alt='value histogram']").wait_for()
    screenshot(page, "workflow-03-report")
    close_output(page)
    digits.reload()
    assert digits.match_tags("train").exists("gmv_value").count() == N_TRAIN

    # the key is now taken: the form proposes another, and says so if "gmv" is typed
    open_operator_browser(page)
    page.locator('[data-cy="operators-browser-search"]').fill("GMValuator: compute values")
    page.keyboard.press("Enter")
    modal = page.locator('[data-cy="operators-prompt-modal"]')
    key = browser.form_field(modal, "Run key")
    key.wait_for(timeout=30_000)
    assert key.input_value() == "gmv_2"
    key.fill("gmv")
    modal.get_by_text("A GMValuator run with key 'gmv' already exists", exact=False).first.wait_for(
        timeout=30_000)
    screenshot(page, "workflow-04-key-taken")
    page.keyboard.press("Escape")
    modal.wait_for(state="hidden", timeout=15_000)

    # select the first generated sample and show its contributors
    generated = digits.match_tags("generated").first()
    expected = generated.gmv_contributors
    expected_labels = digits.select(expected, ordered=True).values("ground_truth.label")
    page.reload()
    wait_for_grid(page, 12)
    select_tile(page, 0)
    screenshot(page, "workflow-05-selected")
    since = len(feed.pages)
    body = run_operator(page, "GMValuator: show contributors")
    assert body["result"]["train_ids"] == expected
    page.get_by_text("Score (credit)").first.wait_for()
    screenshot(page, "workflow-06-contributors-output")
    close_output(page)

    assert feed.wait_for_new(page, since) == expected  # what the grid loaded, in order
    wait_for_exact_grid(page, K)  # and it shows exactly these tiles
    assert tile_labels(page) == expected_labels
    screenshot(page, "workflow-07-contributors-grid")

    # the other way: what the best contributor contributed to
    best = expected[0]
    listing = digits.match_tags("generated").values(["id", "gmv_contributors", "gmv_scores"])
    credit = {g: s[c.index(best)] for g, c, s in zip(*listing) if best in c}
    select_tile(page, 0)
    since = len(feed.pages)
    body = run_operator(page, "GMValuator: show contributions")
    shown = body["result"]["generated_ids"]
    assert set(shown) == set(credit) and generated.id in shown
    assert [credit[g] for g in shown] == sorted(credit.values(), reverse=True)
    close_output(page)
    assert feed.wait_for_new(page, since) == shown
    wait_for_exact_grid(page, len(shown))
    screenshot(page, "workflow-08-contributions-grid")
    json.dumps(body)  # the response is plain JSON
