"""Perceptual re-rankers, pyiqa quality and the missing-weights checks.

Runs offline: pretrained weights are absent here, so the LPIPS wiring is
exercised with a random trunk (real linear layers) and pyiqa scoring with
the weight-free ``entropy`` metric. Missing-weights tests point every cache
at an empty directory so they fail the same on a machine that has weights.
"""

import os

import numpy as np
import pytest
import torch
import torch.hub
from PIL import Image

from gmv_plugin import weights
from gmv_plugin.images import ImageReadError, read_images
from gmv_plugin.perceptual import (
    DreamSimReranker,
    LPIPSReranker,
    keep_torch_hub_dir,
)
from gmv_plugin.rerank import get_reranker
from gmv_plugin.weights import MissingWeightsError


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return home


@pytest.fixture
def digits(tmp_images):
    """12 real digit images (sklearn) as 28x28 grayscale PNGs, plus a
    slightly brightened copy of the first."""
    from sklearn.datasets import load_digits

    imgs = load_digits().images[:12]
    paths = []
    for i, a in enumerate(imgs):
        p = str(tmp_images / ("digit%02d.png" % i))
        Image.fromarray((a / 16 * 255).astype(np.uint8)).resize((28, 28)).save(p)
        paths.append(p)
    near = np.asarray(Image.open(paths[0]), dtype=np.int16) + 3
    p = str(tmp_images / "digit00_near.png")
    Image.fromarray(np.clip(near, 0, 255).astype(np.uint8)).save(p)
    return paths + [p]


def _assert_names(err, model_words, path_words):
    msg = str(err)
    for w in model_words:
        assert w in err.model and w in msg
    for w in path_words:
        assert w in str(err.expected) and w in msg
    assert err.how and err.how in msg


# ------------------------------------------------------------ missing weights


def test_lpips_missing_trunk_names_model_path_and_how(empty_torch_home):
    with pytest.raises(MissingWeightsError) as ei:
        weights.check_lpips("alex")
    expected = os.path.join(
        str(empty_torch_home), "hub", "checkpoints", "alexnet-owt-7be5be79.pth"
    )
    _assert_names(ei.value, ["LPIPS", "alex"], [expected])
    assert "TORCH_HOME" in ei.value.how
    assert "torchvision.models.alexnet(weights='IMAGENET1K_V1')" in ei.value.how

    for net, fname in [
        ("vgg", "vgg16-397923af.pth"),
        ("squeeze", "squeezenet1_1-b8a52dc0.pth"),
    ]:
        with pytest.raises(MissingWeightsError) as ei:
            weights.check_lpips(net)
        assert ei.value.expected.endswith(fname)


def test_lpips_fails_before_reading_images(empty_torch_home, tmp_path):
    r = get_reranker("lpips", net="alex")
    assert isinstance(r, LPIPSReranker)
    with pytest.raises(MissingWeightsError):
        r.check()
    # missing images would raise ImageReadError: the weights come first
    missing = str(tmp_path / "nope.png")
    with pytest.raises(MissingWeightsError):
        r.distances([missing], [[missing]])


def test_lpips_check_looks_exactly_there(empty_torch_home):
    path = weights.hub_checkpoint_path(weights.lpips_trunk_url("alex"))
    os.makedirs(os.path.dirname(path))
    open(path, "wb").close()
    found = weights.check_lpips("alex")
    assert found[-1] == path
    assert found[0] == weights.lpips_lin_path("alex")
    assert os.path.isfile(found[0])  # lin layers ship with lpips
    with pytest.raises(ValueError, match="alex"):
        weights.check_lpips("vgg16")


def test_dreamsim_missing_names_model_path_and_how(tmp_path, monkeypatch):
    d = tmp_path / "ds"
    monkeypatch.setenv(weights.DREAMSIM_DIR_ENV, str(d))
    r = get_reranker("dreamsim")
    assert isinstance(r, DreamSimReranker) and r.cache_dir == str(d)
    with pytest.raises(MissingWeightsError) as ei:
        r.check()
    _assert_names(
        ei.value,
        ["DreamSim"],
        [
            str(d / "dino_vitb16_pretrain.pth"),
            str(d / "ensemble_lora" / "adapter_config.json"),
            str(d / "facebookresearch_dino_main" / "hubconf.py"),
            str(d / "checkpoints" / "dino_vitbase16_pretrain.pth"),
        ],
    )
    assert "dreamsim_ensemble_checkpoint.zip" in ei.value.how
    assert weights.DREAMSIM_DIR_ENV in ei.value.how
    with pytest.raises(MissingWeightsError):
        r.distances([str(tmp_path / "x.png")], [[str(tmp_path / "y.png")]])

    # all files but one present: only that one is reported
    files = weights.dreamsim_expected_files(str(d))
    for alternatives in files[1:]:
        os.makedirs(os.path.dirname(alternatives[0]), exist_ok=True)
        open(alternatives[0], "wb").close()
    with pytest.raises(MissingWeightsError) as ei:
        weights.check_dreamsim(str(d))
    assert ei.value.expected == files[0][0]
    open(files[0][0], "wb").close()
    assert len(weights.check_dreamsim(str(d))) == len(files)


def test_maniqa_missing_names_model_path_and_how(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc
    import pyiqa.utils.download_util as du

    from gmv_plugin.iqa import PyiqaQuality

    monkeypatch.setattr(du, "DEFAULT_CACHE_DIR", str(tmp_path / "pyiqa"))
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    q = PyiqaQuality("maniqa")
    with pytest.raises(MissingWeightsError) as ei:
        q.check()
    _assert_names(
        ei.value,
        ["maniqa"],
        [
            str(tmp_path / "pyiqa" / "ckpt_koniq10k.pt"),
            str(
                tmp_path
                / "hf"
                / "models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k"
            ),
        ],
    )
    assert "pyiqa.create_metric('maniqa'" in ei.value.how
    assert "HF_HUB_OFFLINE" in ei.value.how
    with pytest.raises(MissingWeightsError):
        q.scores([str(tmp_path / "x.png")])
    with pytest.raises(MissingWeightsError) as ei:
        weights.check_pyiqa("maniqa-pipal")
    assert "MANIQA_PIPAL-ae6d356b.pth" in ei.value.expected


def test_vgg16_zoo_model_missing_names_both_paths(
    tmp_path, monkeypatch, empty_torch_home
):
    import fiftyone as fo

    monkeypatch.setattr(fo.config, "model_zoo_dir", str(tmp_path / "zoo"))
    with pytest.raises(MissingWeightsError) as ei:
        weights.check_zoo_model("vgg16-imagenet-torch")
    _assert_names(
        ei.value,
        ["vgg16-imagenet-torch"],
        [
            str(tmp_path / "zoo" / "vgg16-397923af.pth"),
            os.path.join(
                str(empty_torch_home), "hub", "checkpoints", "vgg16-397923af.pth"
            ),
        ],
    )
    assert "download_zoo_model('vgg16-imagenet-torch')" in ei.value.how
    with pytest.raises(ValueError):
        weights.check_zoo_model("no-such-model-torch")


# ----------------------------------------------------------- LPIPS wiring


def test_lpips_random_backbone_distances(digits):
    r = LPIPSReranker(net="alex", size=64, random_backbone=True)
    r.check()  # no trunk weights needed
    assert r.config() == {
        "name": "lpips",
        "net": "alex",
        "size": 64,
        "version": "0.1",
        "random_backbone": True,
    }
    gen = digits[:4]
    cands = [[digits[i]] + digits[4:8] for i in range(4)]
    d = r.distances(gen, cands)
    assert d.dtype == np.float32 and d.shape == (4, 5)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
    assert np.all(d[:, 0] == 0)  # identical images
    assert np.all(d[:, 1:] > 0)

    # a near copy is closer than any other digit
    near = r.distances([digits[0]], [[digits[-1]] + digits[1:8]])[0]
    assert 0 < near[0] < near[1:].min()

    # deterministic random trunk
    again = LPIPSReranker(net="alex", size=64, random_backbone=True)
    assert np.array_equal(again.distances(gen, cands), d)


def test_lpips_cached_features_equal_lpips_forward(digits):
    r = LPIPSReranker(net="alex", size=64, random_backbone=True, batch_size=3)
    gen = digits[:5]
    cands = [digits[5:9][::-1] if i % 2 else digits[5:9] for i in range(5)]
    d = r.distances(gen, cands)
    a = torch.from_numpy(read_images([g for g in gen for _ in range(4)], 64))
    b = torch.from_numpy(read_images([c for row in cands for c in row], 64))
    with torch.no_grad():
        ref = r.model(a, b, normalize=True).reshape(5, 4).numpy()
    np.testing.assert_allclose(d, ref, atol=1e-5, rtol=0)

    # chunking under a tiny feature budget gives the same distances
    small = LPIPSReranker(net="alex", size=64, random_backbone=True, cache_mb=1e-4)
    np.testing.assert_allclose(small.distances(gen, cands), d, atol=1e-6, rtol=0)


def test_lpips_squeeze_and_errors(digits, tmp_path):
    r = LPIPSReranker(net="squeeze", size=32, random_backbone=True)
    d = r.distances(digits[:2], [digits[:3], digits[:3]])
    assert d.shape == (2, 3) and d[0, 0] == 0 and d[1, 1] == 0
    assert r.distances([], []).shape == (0, 0)
    with pytest.raises(ValueError, match="net"):
        LPIPSReranker(net="resnet")
    with pytest.raises(ValueError, match="same number"):
        r.distances(digits[:2], [digits[:3], digits[:2]])
    with pytest.raises(ImageReadError):
        r.distances([str(tmp_path / "missing.png")], [digits[:2]])


# -------------------------------------------------------- DreamSim plumbing


class _FakeDreamSim(torch.nn.Module):
    """Test double standing in for a loaded DreamSim model: a fixed
    projection of pixels. Only the reranker's plumbing is tested with it."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3 * 16 * 16, 8, generator=g)

    def embed(self, x):
        return x.reshape(len(x), -1) @ self.w


def test_dreamsim_plumbing_with_test_double(digits, tmp_path, monkeypatch):
    r = DreamSimReranker(size=16, cache_dir=str(tmp_path / "ds"), batch_size=3)
    assert r.config() == {"name": "dreamsim", "size": 16, "dreamsim_type": "ensemble"}
    monkeypatch.setattr(DreamSimReranker, "check", lambda self: None)
    r._model, r.device = _FakeDreamSim(), torch.device("cpu")
    gen = digits[:3]
    cands = [digits[:4], digits[2:6], digits[1:5]]
    d = r.distances(gen, cands)
    assert d.dtype == np.float32 and d.shape == (3, 4)
    assert abs(d[0, 0]) < 1e-6 and abs(d[2, 1]) < 1e-6 and abs(d[1, 0]) > 1e-6
    f = r.features(digits[:6])
    cos = (
        (f[2] @ f[3]) / np.linalg.norm(f[2]) / np.linalg.norm(f[3])
    )  # d[2, 2]: digit 2 vs 3
    assert d[2, 2] == pytest.approx(1 - cos, abs=1e-5)


def test_keep_torch_hub_dir_restores_setting(empty_torch_home, tmp_path):
    before = torch.hub.get_dir()
    with keep_torch_hub_dir():
        torch.hub.set_dir(str(tmp_path / "elsewhere"))
    assert torch.hub._hub_dir is None and torch.hub.get_dir() == before


# ----------------------------------------------------------------- pyiqa


def test_pyiqa_metric_validation():
    from gmv_plugin.iqa import PyiqaQuality, usable_metrics, validate_metric
    from gmv_plugin.quality import get_quality

    with pytest.raises(ValueError, match="maniqa"):
        PyiqaQuality("not-a-metric").check()
    with pytest.raises(ValueError, match="full-reference"):
        PyiqaQuality("lpips").check()
    with pytest.raises(ValueError, match="lower-is-better"):
        PyiqaQuality("niqe").check()
    with pytest.raises(ValueError, match="lower-is-better"):
        get_quality("brisque").check()
    with pytest.raises(ValueError, match="set"):
        validate_metric("inception_score")
    with pytest.raises(ValueError, match="caption"):
        validate_metric("clipscore")
    with pytest.raises(ValueError, match="negative"):
        validate_metric("wadiqam_nr")
    allowed = usable_metrics()
    assert {"maniqa", "musiq", "clipiqa", "topiq_nr", "entropy"} <= set(allowed)
    assert not {"niqe", "fid", "lpips", "unique"} & set(allowed)
    q = get_quality("maniqa")
    assert isinstance(q, PyiqaQuality)
    assert q.config() == {
        "name": "maniqa",
        "backend": "pyiqa",
        "metric": "maniqa",
        "size": None,
    }


def test_pyiqa_scores_with_weight_free_metric(digits, tmp_images):
    from gmv_plugin.iqa import PyiqaQuality

    flat = str(tmp_images / "flat.png")
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(flat)
    q = PyiqaQuality("entropy", device="cpu", batch_size=4)
    q.check()
    paths = digits[:5] + [flat]  # two sizes in one batch
    s = q.scores(paths)
    assert s.shape == (6,) and s.dtype == np.float32
    assert np.all(np.isfinite(s)) and np.all(s >= 0)
    assert s[5] == pytest.approx(0, abs=1e-4) and np.all(s[:5] > 1)
    assert np.allclose(
        PyiqaQuality("entropy", device="cpu", batch_size=1).scores(paths), s
    )
    assert q.scores([]).shape == (0,)


def test_pyiqa_untraced_metric_reports_failed_download(tmp_path, monkeypatch):
    """For metrics check_pyiqa does not trace, the loader turns a failed
    download into MissingWeightsError naming the file (downloads are
    simulated offline so the test never fetches anything)."""
    import urllib.error

    import huggingface_hub.constants as hfc
    import pyiqa.utils.download_util as du

    from gmv_plugin.iqa import PyiqaQuality

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(du, "DEFAULT_CACHE_DIR", str(tmp_path / "pyiqa"))
    monkeypatch.setattr(du, "download_url_to_file", offline)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    q = PyiqaQuality("musiq", device="cpu")
    assert weights.check_pyiqa("musiq") is None  # not traced statically
    with pytest.raises(MissingWeightsError) as ei:
        q.scores([str(tmp_path / "x.png")])
    expected = str(tmp_path / "pyiqa" / "musiq_koniq_ckpt-e95806b9.pth")
    _assert_names(ei.value, ["musiq"], [expected])
    assert "huggingface.co" in ei.value.how and "URLError" in ei.value.how
    assert du.download_url_to_file is offline  # the recorder is removed
