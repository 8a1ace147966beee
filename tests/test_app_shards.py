"""A sharded valuation started from the App, in real headless Chromium: the
compute form's "Shards" field queues shard operations and a reduce, which
two `fiftyone delegated launch` workers run; the values land on the dataset
and show in the App. Screenshots go to ``test-artifacts/shards-*.png``."""

import time
import uuid

import browser
import pytest
from browser import open_operator_browser, screenshot, wait_for_grid

import gmv_plugin as gmv
from gmv_testdata import make_digits_dataset

app_url = browser.app_url
page = browser.page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_TRAIN, N_GENERATED = 150, 2100  # 2100 generated: 3 blocks of 1024, so 2 shards
KEY = "gmv"
MODAL = '[data-cy="operators-prompt-modal"]'
SHARDS = "Shards (delegated workers)"


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    dataset = make_digits_dataset(
        tmp_path_factory.mktemp("app-shards"), n_train=N_TRAIN, n_generated=N_GENERATED,
        name="gmv-app-shards-%s" % uuid.uuid4().hex[:8], persistent=True,
    )
    yield dataset
    dataset.delete()


def _form(page, search):
    open_operator_browser(page)
    page.locator('[data-cy="operators-browser-search"]').fill(search)
    page.keyboard.press("Enter")
    modal = page.locator(MODAL)
    modal.wait_for(state="visible", timeout=30_000)
    return modal




def test_sharded_run_from_the_compute_form(app_url, page, ds):
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService
    from playwright.sync_api import expect

    page.goto(f"{app_url}/datasets/{ds.name}")
    wait_for_grid(page, 12)
    modal = _form(page, "GMValuator: compute values")
    shards = browser.form_field(modal, SHARDS)
    shards.wait_for(state="attached", timeout=15_000)
    assert shards.input_value() == "1"  # one process unless asked
    modal.get_by_text("whole blocks of at least 1024 generated samples").first.wait_for(timeout=60_000)
    shards.fill("2")
    # more than one shard offers training shards too (1: the training side is computed here)
    train_shards = browser.form_field(modal, "Training shards")
    train_shards.wait_for(state="attached", timeout=15_000)
    assert train_shards.input_value() == "1"
    train_shards.scroll_into_view_if_needed()
    screenshot(page, "shards-01-compute-form")
    execute = modal.get_by_role("button", name="Execute", exact=True)
    with page.expect_response(lambda r: "/operators/execute" in r.url, timeout=300_000) as info:
        execute.click()
    body = info.value.json()
    assert body["error"] is None, body["error"]
    out = body["result"]
    assert out["num_shards"] == 2 and "Queued 2 shard operations and a reduce" in out["summary"]
    page.locator(MODAL).get_by_text("GMValuator: shards queued").wait_for(timeout=30_000)
    page.locator(MODAL).get_by_text("compute one shard").first.wait_for(timeout=60_000)
    assert page.locator("img[alt='value histogram']").count() == 0  # no report before the reduce
    screenshot(page, "shards-02-queued")

    # before any worker runs: the shard form shows the plan's progress
    page.keyboard.press("Escape")
    modal = _form(page, "GMValuator: compute one shard")
    modal.get_by_text("2 shards: done [], running [], pending [0, 1]").wait_for(timeout=60_000)
    execute = modal.get_by_role("button", name="Execute", exact=True)
    expect(execute).to_be_enabled(timeout=60_000)  # re-queried: the form re-renders as it resolves
    assert browser.form_field(modal, "Shard").input_value() == "0"
    screenshot(page, "shards-03-shard-status")
    page.keyboard.press("Escape")

    svc = DelegatedOperationService()
    ops = [op for op in svc.list_operations(dataset_name=ds.name)
           if op.operator.startswith("@gmvaluator/gmv/") and op.run_state == "queued"]
    assert sorted(op.operator.split("/")[-1] for op in ops) == [
        "compute_gmv_shard", "compute_gmv_shard", "reduce_gmv_shards"]
    with browser.delegated_workers(2):
        deadline = time.time() + 300
        while time.time() < deadline:
            states = [svc.get(ObjectId(str(op.id))).run_state for op in ops]
            if all(s in ("completed", "failed") for s in states):
                break
            time.sleep(1)
    docs = [svc.get(ObjectId(str(op.id))) for op in ops]
    assert [d.run_state for d in docs] == ["completed"] * 3, [(d.label, d.result) for d in docs]

    ds.reload()
    assert ds.match_tags("train").exists(KEY + "_value").count() == N_TRAIN
    assert ds.match_tags("generated").exists(KEY + "_contributors").count() == N_GENERATED
    res = gmv.load_results(ds, KEY)
    assert res.num_generated == N_GENERATED and gmv.shard_status(ds, KEY) is None

    # the App shows the written values: sort the grid by them
    page.reload()
    wait_for_grid(page, 12)
    page.get_by_text(KEY + "_value").first.wait_for(timeout=60_000)
    screenshot(page, "shards-04-values-in-app", full_page=True)
