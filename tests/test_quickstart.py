"""The newcomer's path: the quickstart's output when not on a terminal, the
App commands it ends with, and what it says before replacing another
checkout's dataset or cached models."""

import collections
import uuid

import fiftyone as fo
import pytest

from gmv_plugin.demo import quickstart as qs

pytestmark = pytest.mark.slow


def _run(name, tmp_path, capsys):
    qs.main(["--name", name, "--epochs", "1", "--classifier-epochs", "1",
             "--n-generated", "40", "--k", "5",
             "--cache-dir", str(tmp_path / "cache"), "--images-dir", str(tmp_path / "img")])
    return capsys.readouterr().out


def test_quickstart_output_and_app_commands(tmp_path, capsys):
    name = "gmv-qs-%s" % uuid.uuid4().hex[:8]
    try:
        out = _run(name, tmp_path, capsys)
        lines = [l for l in out.splitlines() if l.strip()]
        repeated = [l for l, n in collections.Counter(lines).items() if n > 1]
        assert not repeated, repeated  # no progress bar redrawn line by line
        assert "valuation stage: embed" in out and "valuation stage: values" in out
        tail = out[out.index("Open it in the App"):]
        assert "%s/scripts/link_plugin.sh" % qs.ROOT in tail
        assert "%s/.venv/bin/fiftyone app launch %s" % (qs.ROOT, name) in tail
        assert "GMValuator for the panel" in tail
        assert fo.load_dataset(name).info[qs.OWNER_KEY] == str(qs.ROOT)
        assert "Note: replacing" not in out

        # another checkout's dataset (and models trained with other settings) are
        # replaced only with a note
        ds = fo.load_dataset(name)
        ds.info[qs.OWNER_KEY] = "/somewhere/else"
        ds.save()
        qs.main(["--name", name, "--epochs", "2", "--classifier-epochs", "1",
                 "--n-generated", "40", "--k", "5", "--cache-dir", str(tmp_path / "cache"),
                 "--images-dir", str(tmp_path / "img")])
        out = capsys.readouterr().out
        assert "replacing dataset %r, built by the checkout at /somewhere/else" % name in out
        assert "replacing the cached model" in out and "quickstart-cvae" in out
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
