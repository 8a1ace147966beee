"""Smoke test of the real FiftyOne App in headless Chromium (see tests/browser.py)."""

import uuid

import browser
import fiftyone as fo
import numpy as np
import pytest
from browser import open_operator_browser, run_operator, screenshot, wait_for_grid
from PIL import Image

app_url = browser.app_url  # fixtures, made visible to this module
page = browser.page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_IMAGES = 6


def _write_pngs(directory, n):
    """n small distinct PNGs: a colour ramp with a white square at a different place."""
    paths = []
    ramp = np.linspace(0, 255, 96, dtype=np.uint8)
    for i in range(n):
        a = np.zeros((64, 96, 3), np.uint8)
        a[..., i % 3] = ramp[None, :]
        a[12:32, 8 + 12 * i : 28 + 12 * i] = 255
        path = directory / f"img_{i}.png"
        Image.fromarray(a).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def png_dataset(tmp_images):
    """A persistent dataset of real PNGs, deleted after the test."""
    ds = fo.Dataset(f"gmv-browser-smoke-{uuid.uuid4().hex[:8]}")
    ds.persistent = True
    ds.add_samples([fo.Sample(filepath=p) for p in _write_pngs(tmp_images, N_IMAGES)])
    try:
        yield ds
    finally:
        ds.delete()


def test_app_shows_grid_and_operator_browser(app_url, page, png_dataset):
    page.goto(f"{app_url}/datasets/{png_dataset.name}")
    wait_for_grid(page, N_IMAGES)
    screenshot(page, "smoke-grid")

    ops = open_operator_browser(page)
    assert ops.is_visible()
    screenshot(page, "smoke-operator-browser")

    # this checkout is loaded as a plugin: its operators are listed
    page.locator('[data-cy="operators-browser-search"]').fill("compute_values")
    ops.get_by_text("compute_values", exact=True).wait_for(state="visible")
    screenshot(page, "smoke-operator-browser-gmv")


def test_run_operator_fills_form_and_writes_to_session_db(app_url, page, png_dataset):
    """run_operator fills a built-in operator's form; the server writes to our db."""
    png_dataset.set_values("score", [float(i) for i in range(N_IMAGES)])
    page.goto(f"{app_url}/datasets/{png_dataset.name}")
    wait_for_grid(page, N_IMAGES)

    body = run_operator(
        page,
        "clone sample field",
        fill={"Sample field": "score", "New sample field": "score_clone"},
    )
    screenshot(page, "smoke-after-operator")

    assert body["error"] is None and body["delegated"] is False
    png_dataset.reload()
    assert png_dataset.values("score_clone") == png_dataset.values("score")
