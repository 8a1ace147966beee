"""Background runs from the App (headless Chromium): an App server started
with ``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true`` still runs
``compute_values`` on the first click (Execute), offers Schedule in the
Execute menu; a scheduled run is listed with its id in the GMValuator panel,
and appears there once a delegated-operation runner has executed it.
Screenshots go to ``test-artifacts/schedule-*.png``.
"""

import threading
import uuid

import pytest
from browser import app_server, chromium_page, open_operator_browser, require_browser, screenshot
from browser import wait_for_grid

from gmv_testdata import make_digits_dataset

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODAL = '[data-cy="operators-prompt-modal"]'
PLUGIN = "@gmvaluator/gmv"


@pytest.fixture(scope="module")
def legacy_app():
    require_browser()
    with app_server(env={"FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS": "true"}) as url:
        yield url


@pytest.fixture
def dataset(tmp_path):
    ds = make_digits_dataset(tmp_path / "d", n_train=60, n_generated=6,
                             name="gmv-schedule-%s" % uuid.uuid4().hex[:8], persistent=True,
                             generated_first=True)
    yield ds
    ds.delete()


def test_schedule_from_the_form_and_see_it_in_the_panel(legacy_app, dataset):
    from fiftyone.operators.delegated import DelegatedOperationService

    svc = DelegatedOperationService()
    with chromium_page() as page:
        page.goto(f"{legacy_app}/datasets/{dataset.name}")
        wait_for_grid(page, 6)
        open_operator_browser(page)
        page.locator('[data-cy="operators-browser-search"]').fill("GMValuator: compute values")
        page.keyboard.press("Enter")
        modal = page.locator(MODAL)
        main = modal.locator('[aria-label="split button"] button').first
        main.wait_for(timeout=30_000)
        assert main.inner_text().strip() == "Execute"  # the first click still runs it now
        modal.locator("[aria-haspopup=menu]").first.click()
        schedule = page.locator("#split-button-menu li", has_text="Schedule").first
        schedule.wait_for()
        screenshot(page, "schedule-01-execute-menu")
        schedule.click()
        main.wait_for()
        assert main.inner_text().strip() == "Schedule"
        with page.expect_response(lambda r: "/operators/execute" in r.url) as info:
            main.click()
        body = info.value.json()
        assert body["delegated"] is True
        page.get_by_text("Operation successfully scheduled").wait_for(timeout=15_000)
        queued = svc.list_operations(dataset_name=dataset.name, run_state="queued")
        assert [o.operator for o in queued] == [PLUGIN + "/compute_values"]
        op_id = str(queued[0].id)

        # the panel lists it with its id
        page.locator("[data-cy=new-panel-btn]").click()
        page.locator("[data-cy=new-panel-option-gmv_panel]").click()
        panel = page.locator("[data-cy=panel-content-gmv_panel]")
        panel.get_by_text("no valuation run on this dataset yet").wait_for(timeout=60_000)
        panel.get_by_text(op_id).wait_for()
        screenshot(page, "schedule-02-panel-queued")

        # what `fiftyone delegated launch` does; then Refresh shows the run
        results = []  # in a thread: Playwright's event loop runs in this one
        runner = threading.Thread(target=lambda: results.extend(
            svc.execute_queued_operations(dataset_name=dataset.name)))
        runner.start()
        runner.join(300)
        assert len(results) == 1 and not results[0].error, results[0].error
        panel.get_by_role("button", name="Refresh", exact=True).click()
        panel.locator(".js-plotly-plot").wait_for(timeout=60_000)
        panel.get_by_text("completed").first.wait_for()
        screenshot(page, "schedule-03-panel-after-run")
