"""Test setup: an isolated FiftyOne database and plugins directory per session.

The environment is prepared before FiftyOne is imported anywhere, so every test
talks to a private embedded mongod and loads this checkout as a plugin.
"""

import os
import pathlib
import shutil
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
_TMP = pathlib.Path(tempfile.mkdtemp(prefix="gmv-tests-"))
_PLUGINS = _TMP / "plugins"
_PLUGINS.mkdir()
(_PLUGINS / "gmv").symlink_to(ROOT, target_is_directory=True)

os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(_TMP / "db"))
os.environ["FIFTYONE_PLUGINS_DIR"] = str(_PLUGINS)
os.environ["GMV_RUNS_DIR"] = str(_TMP / "runs")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")

import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture
def tmp_images(tmp_path):
    """A directory for images written by a test."""
    d = tmp_path / "images"
    d.mkdir()
    return d
