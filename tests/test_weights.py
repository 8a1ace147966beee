"""Weights: download on first use, bundles for air-gapped machines, mirror.

A local HTTP server on 127.0.0.1 (tests/weights_server.py) serves small
stand-in files under the real file names, in the mirror layout
(``<mirror>/<host>/<path>``); every cache (TORCH_HOME, the FiftyOne zoo dir,
pyiqa's, Hugging Face's, DreamSim's) points into the test's tmp dir, and a
guard fails any request to a host other than 127.0.0.1. The stand-ins cannot
match torchvision's published sha256 prefixes, so the tests pin their own
checksums with ``GMV_WEIGHTS_CHECKSUMS`` (the documented override). Loading
the real models from these paths is not exercised: their weights cannot be
downloaded here.
"""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from urllib.parse import urlparse

import pytest
import torch.hub

from gmv_plugin import weights as w
from gmv_plugin.weights import archive as wb
from gmv_plugin.weights import fetching
from gmv_plugin.weights.__main__ import main as cli
from weights_server import WeightsServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"
ALEX = "/download.pytorch.org/models/alexnet-owt-7be5be79.pth"
VGG = "/download.pytorch.org/models/vgg16-397923af.pth"
SQUEEZE = "/download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"
DS_ZIP = ("/github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/"
          "dreamsim_ensemble_checkpoint.zip")
DINO_REPO = "/github.com/facebookresearch/dino/zipball/main"
DINO = "/dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
KONIQ = "/huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/ckpt_koniq10k.pt"
VIT = ("/huggingface.co/timm/vit_base_patch8_224.augreg2_in21k_ft_in1k/resolve/main/"
       "model.safetensors")


def _blob(name, n):
    """``n`` deterministic pseudo-random bytes."""
    out, seed = bytearray(), name.encode()
    while len(out) < n:
        seed = hashlib.sha256(seed).digest()
        out.extend(seed)
    return bytes(out[:n])


def _zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def standins():
    """{mirror path: bytes} of every source of the known models."""
    files = {
        ALEX: _blob("alex", 300_000),
        VGG: _blob("vgg", 200_000),
        SQUEEZE: _blob("squeeze", 50_000),
        DINO: _blob("dino", 120_000),
        KONIQ: _blob("koniq", 80_000),
        VIT: _blob("vit", 90_000),
        DS_ZIP: _zip({
            "dino_vitb16_pretrain.pth": _blob("ds-dino", 5000),
            "open_clip_vitb16_pretrain.pth.tar": _blob("ds-oc", 5000),
            "clip_vitb16_pretrain.pth.tar": _blob("ds-clip", 5000),
            "ensemble_lora/adapter_config.json": b'{"r": 16}',
            "ensemble_lora/adapter_model.bin": _blob("ds-lora", 3000),
        }),
        DINO_REPO: _zip({
            "facebookresearch-dino-7c446df/hubconf.py": b"dependencies = ['torch']\n",
            "facebookresearch-dino-7c446df/vision_transformer.py": b"# vit\n",
        }),
    }
    return files


def _sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server():
    srv = WeightsServer()
    files = standins()
    srv.files.update(files)
    # the hub answers with a redirect carrying the commit and the LFS sha256
    for path in (KONIQ, VIT):
        cdn = "/cdn" + path
        srv.files[cdn] = srv.files.pop(path)
        srv.redirects[path] = (cdn, {"X-Repo-Commit": HF_COMMIT,
                                     "X-Linked-Etag": '"%s"' % _sha(files[path])})
    with srv:
        yield srv


@pytest.fixture(autouse=True)
def only_localhost(monkeypatch):
    """Fails any request beyond 127.0.0.1."""
    real_open = fetching._open
    real_redirect = fetching._RecordingRedirects.redirect_request

    def guarded_open(url, *args, **kwargs):
        assert urlparse(url).hostname == "127.0.0.1", url
        return real_open(url, *args, **kwargs)

    def guarded_redirect(self, req, fp, code, msg, headers, newurl):
        assert urlparse(newurl).hostname == "127.0.0.1", newurl
        return real_redirect(self, req, fp, code, msg, headers, newurl)

    monkeypatch.setattr(fetching, "_open", guarded_open)
    monkeypatch.setattr(fetching._RecordingRedirects, "redirect_request", guarded_redirect)
    monkeypatch.setattr(fetching, "_PROBES", {})


def cache_env(base, server):
    """Environment pointing every cache under ``base`` and downloads at the
    local mirror."""
    base = str(base)
    pins = os.path.join(base, "pins.json")
    os.makedirs(base, exist_ok=True)
    with open(pins, "w") as f:
        json.dump({os.path.basename(p): _sha(d) for p, d in standins().items()}, f)
    return {
        "TORCH_HOME": os.path.join(base, "torch"),
        "FIFTYONE_MODEL_ZOO_DIR": os.path.join(base, "zoo"),
        "HF_HUB_CACHE": os.path.join(base, "hf"),
        "GMV_DREAMSIM_DIR": os.path.join(base, "dreamsim"),
        "GMV_WEIGHTS_MIRROR": server.base,
        "GMV_WEIGHTS_CHECKSUMS": pins,
    }


def point_caches(monkeypatch, base, server):
    """Points this process's caches at ``base`` (see :func:`cache_env`)."""
    import fiftyone as fo
    import huggingface_hub.constants as hfc

    env = cache_env(base, server)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("GMV_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(fo.config, "model_zoo_dir", env["FIFTYONE_MODEL_ZOO_DIR"])
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    mod = sys.modules.get("pyiqa.utils.download_util")
    if mod is not None:
        monkeypatch.setattr(mod, "DEFAULT_CACHE_DIR",
                            os.path.join(env["TORCH_HOME"], "hub", "pyiqa"))
    monkeypatch.setattr(fetching, "_PROBES", {})
    return env


@pytest.fixture
def caches(tmp_path, monkeypatch, server):
    return point_caches(monkeypatch, tmp_path / "cache", server)


def tree(path):
    """{relative path: sha256} of every file under ``path``."""
    out = {}
    for dirpath, _, names in os.walk(path):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = _sha(f.read())
    return out


def alex_path(env):
    return os.path.join(env["TORCH_HOME"], "hub", "checkpoints", "alexnet-owt-7be5be79.pth")


# ------------------------------------------------------ online first use


def test_check_reports_then_first_use_downloads_into_torch_hub(caches, server, caplog):
    dest = alex_path(caches)
    # the check before work: reports what will be downloaded, fetches nothing
    with caplog.at_level("INFO", logger="gmv_plugin.weights.checks"):
        found = w.check_lpips("alex")
    assert found == [w.lpips_lin_path("alex")]
    assert "alexnet-owt-7be5be79.pth will be downloaded (293.0 KB)" in caplog.text
    assert server.gets(ALEX) == [] and not os.path.exists(dest)

    seen = []
    found = w.check_lpips("alex", download=True, progress=lambda pb: seen.append(pb.iteration))
    assert found[-1] == dest == w.hub_checkpoint_path(w.lpips_trunk_url("alex"))
    with open(dest, "rb") as f:
        assert f.read() == server.files[ALEX]
    assert seen and seen[-1] == len(server.files[ALEX])
    assert [n for n in os.listdir(os.path.dirname(dest))] == ["alexnet-owt-7be5be79.pth"]
    # present now: no further request
    n = len(server.requests)
    assert w.check_lpips("alex", download=True)[-1] == dest
    assert len(server.requests) == n


def test_zoo_model_one_download_serves_zoo_dir_and_torch_hub(caches, server):
    import fiftyone.zoo as foz

    assert not foz.is_zoo_model_downloaded("vgg16-imagenet-torch")
    found = w.check_zoo_model("vgg16-imagenet-torch", download=True)
    assert found == [os.path.join(caches["FIFTYONE_MODEL_ZOO_DIR"], "vgg16-397923af.pth"),
                     os.path.join(caches["TORCH_HOME"], "hub", "checkpoints", "vgg16-397923af.pth")]
    assert len(server.gets(VGG)) == 1
    assert foz.is_zoo_model_downloaded("vgg16-imagenet-torch")  # FiftyOne's own lookup


def test_huggingface_files_land_where_the_hub_finds_them_offline(caches, server):
    import huggingface_hub

    found = w.check_pyiqa("maniqa", download=True)
    pyiqa_file = os.path.join(w.pyiqa_cache_dir(), "ckpt_koniq10k.pt")
    assert found[0] == pyiqa_file
    repo = "timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"
    assert HF_COMMIT in found[1]
    # the hub's own offline lookup (what timm does when pyiqa loads MANIQA
    # in hub_offline()) resolves refs/main to our snapshot
    online = huggingface_hub.constants.HF_HUB_OFFLINE
    with w.hub_offline():
        path = huggingface_hub.hf_hub_download(repo, "model.safetensors",
                                               cache_dir=caches["HF_HUB_CACHE"])
    assert huggingface_hub.constants.HF_HUB_OFFLINE == online
    assert os.path.realpath(path) == os.path.realpath(found[1])
    with open(path, "rb") as f:
        assert _sha(f.read()) == _sha(server.files["/cdn" + VIT])


def test_hub_checksum_header_is_verified(caches, server):
    # no pin: the sha256 the hub announces is the one checked
    os.remove(caches["GMV_WEIGHTS_CHECKSUMS"])
    os.environ.pop("GMV_WEIGHTS_CHECKSUMS")
    server.redirects[KONIQ][1]["X-Linked-Etag"] = '"%s"' % ("0" * 64)
    with pytest.raises(w.MissingWeightsError, match="does not match the published"):
        w.check_pyiqa("maniqa", download=True)
    assert not os.path.exists(w.pyiqa_cache_dir()) or os.listdir(w.pyiqa_cache_dir()) == []


def test_dreamsim_zip_zipball_and_file_sources(caches, server):
    found = w.check_dreamsim(download=True)
    d = caches["GMV_DREAMSIM_DIR"]
    assert len(found) == len(w.dreamsim_expected_files())
    assert os.path.isfile(os.path.join(d, "ensemble_lora", "adapter_model.bin"))
    assert os.path.isfile(os.path.join(d, "facebookresearch_dino_main", "vision_transformer.py"))
    leftovers = [n for n in os.listdir(d) if n.startswith(".gmv")]
    assert leftovers == []


def test_mirror_layout_is_host_then_path(caches, server):
    url = w.lpips_trunk_url("squeeze")
    assert w.effective_url(url) == server.base + SQUEEZE
    rows = w.status(["lpips-squeeze"])
    assert rows[0]["files"][1]["url"] == server.base + SQUEEZE


# ---------------------------------------------- corrupt, truncated, killed


def test_corrupted_download_is_rejected_and_leaves_nothing(caches, server):
    server.files[ALEX] = _blob("evil", len(server.files[ALEX]))  # same size, other bytes
    with pytest.raises(w.MissingWeightsError, match="does not match the published"):
        w.check_lpips("alex", download=True)
    assert not os.path.exists(os.path.dirname(alex_path(caches))) or \
        os.listdir(os.path.dirname(alex_path(caches))) == []


def test_truncated_file_is_rejected_and_leaves_nothing(caches, server):
    server.files[ALEX] = server.files[ALEX][:1000]  # a short file, honestly announced
    with pytest.raises(w.MissingWeightsError, match="sha256"):
        w.check_lpips("alex", download=True)
    assert os.listdir(os.path.dirname(alex_path(caches))) == []
    assert w.model_status("lpips-alex")["state"] == "missing"


def test_dropped_connection_keeps_part_and_resumes(caches, server):
    data = server.files[ALEX]
    server.cut_after[ALEX] = 100_000
    with pytest.raises(w.MissingWeightsError, match="resume"):
        w.check_lpips("alex", download=True)
    dest = alex_path(caches)
    assert not os.path.exists(dest)
    assert os.path.getsize(dest + ".part") == 100_000
    del server.cut_after[ALEX]
    w.check_lpips("alex", download=True)
    assert server.gets(ALEX)[-1] == "bytes=100000-"
    with open(dest, "rb") as f:
        assert f.read() == data
    assert os.listdir(os.path.dirname(dest)) == [os.path.basename(dest)]


def test_part_of_another_file_is_restarted_not_resumed(caches, server):
    dest = alex_path(caches)
    os.makedirs(os.path.dirname(dest))
    with open(dest + ".part", "wb") as f:
        f.write(b"x" * 5000)  # no .part.json: unknown origin
    w.check_lpips("alex", download=True)
    assert server.gets(ALEX) == [None]
    with open(dest, "rb") as f:
        assert f.read() == server.files[ALEX]


def test_killed_download_resumes_cleanly(caches, server, tmp_path):
    server.throttle = (8192, 0.05)  # 300 KB in ~2 s
    env = dict(os.environ, **caches)
    for k in ("GMV_OFFLINE", "HF_HUB_OFFLINE"):
        env.pop(k, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gmv_plugin.weights", "download", "--models", "lpips-alex"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dest = alex_path(caches)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if os.path.exists(dest + ".part") and os.path.getsize(dest + ".part") > 50_000:
            break
        assert proc.poll() is None, "the download finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(dest)
    have = os.path.getsize(dest + ".part")
    assert 0 < have < len(server.files[ALEX])
    assert w.model_status("lpips-alex")["state"] == "missing"

    server.throttle = None
    w.check_lpips("alex", download=True)
    assert server.gets(ALEX)[-1] == "bytes=%d-" % have
    with open(dest, "rb") as f:
        assert f.read() == server.files[ALEX]


# -------------------------------------------------------------- offline


def test_gmv_offline_fails_fast_before_any_work(caches, server, monkeypatch, digits_dataset):
    import gmv_plugin as gmv

    monkeypatch.setenv("GMV_OFFLINE", "1")
    train = digits_dataset.match_tags("train")
    gen = digits_dataset.match_tags("generated")
    fields = set(digits_dataset.get_field_schema())
    with pytest.raises(w.MissingWeightsError) as ei:
        gmv.compute_values(train, gen, key="offline", model="pixels", rerank="lpips")
    assert "GMV_OFFLINE=1" in str(ei.value)
    assert "alexnet-owt-7be5be79.pth" in ei.value.expected
    assert "gmv_plugin.weights install" in ei.value.how
    assert server.requests == []
    assert "offline" not in digits_dataset.list_runs()
    assert set(digits_dataset.get_field_schema()) == fields


def test_hf_offline_disables_downloads_too(caches, server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(w.MissingWeightsError, match="HF_HUB_OFFLINE=1"):
        w.check_pyiqa("maniqa")
    assert server.requests == []
    assert w.model_status("maniqa")["reason"] == "Downloads are disabled (HF_HUB_OFFLINE=1)."


def test_unreachable_source_fails_fast(caches, server, monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    monkeypatch.setenv("GMV_WEIGHTS_MIRROR", "http://127.0.0.1:%d" % port)
    with pytest.raises(w.MissingWeightsError, match="cannot be reached"):
        w.check_lpips("vgg")


# ------------------------------------------------------ bundle / install


def test_bundle_then_install_into_a_fresh_cache(caches, server, tmp_path, monkeypatch):
    models = ["vgg16-imagenet-torch", "lpips-alex", "dreamsim", "maniqa"]
    w.download(models, progress=False)
    before = {k: tree(caches[k]) for k in ("TORCH_HOME", "FIFTYONE_MODEL_ZOO_DIR",
                                            "HF_HUB_CACHE", "GMV_DREAMSIM_DIR")}
    archive = str(tmp_path / "weights.tar")
    assert cli(["bundle", "--models"] + models + ["--to", archive]) == 0
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[-1] == wb.MANIFEST
    assert "torch_hub/checkpoints/alexnet-owt-7be5be79.pth" in names
    # the zoo file and its torch hub copy are stored once, installed twice
    assert [n for n in names if n.endswith("vgg16-397923af.pth")] == [
        "fiftyone_zoo/vgg16-397923af.pth"]

    fresh = point_caches(monkeypatch, tmp_path / "fresh", server)
    monkeypatch.setenv("GMV_OFFLINE", "1")  # the air-gapped machine
    assert all(r["state"] == "missing" for r in w.status(models))
    n_requests = len(server.requests)
    assert cli(["install", archive]) == 0
    assert all(r["state"] == "present" for r in w.status(models))
    for k, files in before.items():
        assert tree(fresh[k]) == files, k
    for m in models:
        w.check_model(m)  # offline, and nothing missing
    assert len(server.requests) == n_requests


def _crafted(path, entries, manifest_entries=None):
    """A tar with ``entries`` ({name: bytes}) and a manifest of
    ``manifest_entries`` ((root, rel, data) triples; default derived)."""
    with tarfile.open(path, "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        files = [{"root": r, "path": p, "size": len(d), "sha256": _sha(d)}
                 for r, p, d in manifest_entries]
        data = json.dumps({"format": wb.FORMAT, "files": files, "models": []}).encode()
        info = tarfile.TarInfo(wb.MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_install_refuses_dotdot_member_and_writes_nothing(caches, tmp_path):
    good = b"weights"
    archive = tmp_path / "evil.tar"
    _crafted(archive, {"torch_hub/checkpoints/ok.pth": good, "torch_hub/../escape.pth": good},
             [("torch_hub", "checkpoints/ok.pth", good), ("torch_hub", "../escape.pth", good)])
    snapshot = tree(tmp_path)
    with pytest.raises(w.BundleError, match="outside"):
        w.install(archive)
    assert cli(["install", str(archive)]) == 2
    assert tree(tmp_path) == snapshot


def test_install_refuses_checksum_mismatch_and_writes_nothing(caches, tmp_path):
    archive = tmp_path / "bad.tar"
    _crafted(archive, {"torch_hub/checkpoints/a.pth": b"aaaa", "pyiqa/b.pt": b"tampered"},
             [("torch_hub", "checkpoints/a.pth", b"aaaa"), ("pyiqa", "b.pt", b"original")])
    snapshot = tree(tmp_path)
    with pytest.raises(w.BundleError, match="sha256 .* does not match"):
        w.install(archive)
    assert tree(tmp_path) == snapshot
    assert not os.path.exists(caches["TORCH_HOME"])


@pytest.mark.parametrize("case", ["absolute", "symlink", "unlisted", "root"])
def test_install_refuses_other_unsafe_archives(caches, tmp_path, case):
    archive = str(tmp_path / "x.tar")
    data = b"data"
    if case == "absolute":
        _crafted(archive, {"torch_hub//etc/x": data}, [("torch_hub", "/etc/x", data)])
    elif case == "unlisted":
        _crafted(archive, {"torch_hub/a": data, "torch_hub/b": data}, [("torch_hub", "a", data)])
    elif case == "root":
        _crafted(archive, {"lpips/weights/v0.1/alex.pth": data},
                 [("lpips", "weights/v0.1/alex.pth", data)])
    else:
        with tarfile.open(archive, "w") as tar:
            info = tarfile.TarInfo("torch_hub/link")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    snapshot = tree(tmp_path)
    with pytest.raises(w.BundleError):
        w.install(archive)
    assert tree(tmp_path) == snapshot


def test_bundle_refuses_incomplete_models(caches, tmp_path):
    with pytest.raises(w.BundleError, match="missing"):
        w.bundle(tmp_path / "x.tar", ["lpips-alex"])
    assert not os.path.exists(tmp_path / "x.tar") and not os.path.exists(tmp_path / "x.tar.part")


# --------------------------------------------------------------- status


def test_status_reports_each_case(caches, server, monkeypatch, capsys):
    w.check_lpips("alex", download=True)
    rows = {r["model"]: r for r in w.status()}
    assert set(rows) == set(w.KNOWN_MODELS)
    assert rows["lpips-alex"]["state"] == "present"
    assert rows["lpips-vgg"]["state"] == "missing" and rows["lpips-vgg"]["downloadable"]
    vgg_file = rows["lpips-vgg"]["files"][1]
    assert vgg_file["path"].endswith("vgg16-397923af.pth") and not vgg_file["present"]
    assert vgg_file["url"] == server.base + VGG
    assert rows["lpips-alex"]["files"][1]["size"] == len(server.files[ALEX])
    assert w.model_status("musiq")["state"] == "untraced"

    assert cli(["status", "--models", "lpips-alex"]) == 0
    out = capsys.readouterr().out
    assert "present" in out and "downloads: allowed" in out
    assert cli(["status", "--models", "lpips-vgg"]) == 1
    out = capsys.readouterr().out
    assert "missing" in out and server.base + VGG in out
    monkeypatch.setenv("GMV_OFFLINE", "1")
    assert cli(["status", "--json", "--models", "lpips-vgg"]) == 1
    row = json.loads(capsys.readouterr().out)[0]
    assert row["reason"] == "Downloads are disabled (GMV_OFFLINE=1)." and not row["downloadable"]
    assert cli(["status", "--models", "no-such-model"]) == 2


# ------------------------------------------------------------- operator


def _form(name, dataset, params):
    from fiftyone.operators.executor import ExecutionContext
    from fiftyone.operators.registry import OperatorRegistry

    op = OperatorRegistry().get_operator("@gmvaluator/gmv/" + name)
    ctx = ExecutionContext({"dataset_name": dataset.name, "params": params})
    return op.resolve_input(ctx).to_json()["type"]["properties"]


def test_operator_shows_status_and_downloads(caches, server, digits_dataset, monkeypatch):
    import fiftyone.operators as foo

    digits_dataset.tags = []
    props = _form("download_gmv_weights", digits_dataset, {})
    assert "| lpips-alex | missing | 1 file(s) |" in props["status_table"]["default"]
    assert props["get_lpips_alex"]["default"] is True
    assert "Download LPIPS" in props["get_lpips_alex"]["view"]["label"]
    # the valuation form says the weights will come on first use
    props = _form("compute_values", digits_dataset, {"rerank": "lpips", "key": "new"})
    notice = props["rerank_warning"]["view"]
    assert notice["name"] == "Notice" and "will be downloaded on first use" in notice["label"]
    assert server.requests == []  # forms never contact the source

    result = foo.execute_operator(
        "@gmvaluator/gmv/download_gmv_weights",
        ctx=dict(dataset=digits_dataset.name, params={"get_lpips_alex": True, "delegate": False}))
    assert result.error is None, result.error
    assert result.result["downloaded"] == ["lpips-alex"]
    assert os.path.isfile(alex_path(caches))
    row = [r for r in result.result["files"] if r["path"] == alex_path(caches)][0]
    assert row["state"] == "present"

    monkeypatch.setenv("GMV_OFFLINE", "1")
    props = _form("download_gmv_weights", digits_dataset, {})
    assert "GMV_OFFLINE=1" in props["offline"]["view"]["description"]
    assert "get_lpips_vgg" not in props


# ------------------------------------------------- through the real loader


def test_lpips_first_use_downloads_and_the_real_loader_reads_it(caches, server, tmp_images):
    """LPIPS (squeeze) loads through lpips and torchvision from the file the
    plugin downloaded: a stand-in with torchvision's real SqueezeNet 1.1
    architecture and random weights (the real ones are not obtainable here)."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    from gmv_plugin.perceptual import LPIPSReranker

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), buf)
    server.files[SQUEEZE] = buf.getvalue()
    with open(caches["GMV_WEIGHTS_CHECKSUMS"], "w") as f:
        json.dump({"squeezenet1_1-b8a52dc0.pth": _sha(buf.getvalue())}, f)

    paths = []
    for i in range(3):
        p = str(tmp_images / ("img%d.png" % i))
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    r = LPIPSReranker(net="squeeze", size=32)
    r.check()  # before work: reports, downloads nothing
    assert server.gets(SQUEEZE) == []
    d = r.distances(paths[:1], [paths])
    assert server.gets(SQUEEZE) == [None]
    assert d.shape == (1, 3) and d[0, 0] == pytest.approx(0, abs=1e-6) and (d[0, 1:] > 0).all()
    dest = os.path.join(caches["TORCH_HOME"], "hub", "checkpoints", "squeezenet1_1-b8a52dc0.pth")
    with open(dest, "rb") as f:
        assert f.read() == buf.getvalue()
