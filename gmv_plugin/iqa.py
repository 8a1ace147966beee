"""No-reference image quality q_j from pyiqa (the paper uses MANIQA)."""

import contextlib
import os

import numpy as np

from gmv_plugin.images import read_image
from gmv_plugin.quality import QualityScorer
from gmv_plugin.weights import (
    MissingWeightsError,
    hub_offline,
    check_pyiqa,
    pyiqa_cache_dir,
    pyiqa_metric_config,
)

# pyiqa "NR" metrics that do not score one image on its own
_SET_LEVEL_TYPES = {
    "FID": "compares two image sets",
    "InceptionScore": "scores an image set",
    "CLIPScore": "needs a caption per image",
}


def _range_low(score_range):
    """Lower bound of a pyiqa ``score_range`` string such as ``"~0, ~1"``."""
    try:
        return float(str(score_range).split(",")[0].strip().lstrip("~"))
    except ValueError:
        return None


def usable_metrics():
    """pyiqa metrics usable as q_j: no-reference, per-image,
    higher-is-better and non-negative."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    out = []
    for name in sorted(DEFAULT_CONFIGS):
        try:
            validate_metric(name)
        except ValueError:
            continue
        out.append(name)
    return out


def validate_metric(metric):
    """Raises ValueError unless ``metric`` can serve as q_j.

    q_j multiplies each generated image's credit (Eq. 4), so it must grow
    with quality and be non-negative. Lower-is-better metrics (NIQE, BRISQUE,
    PIQE, ...) are rejected rather than transformed: no monotone map to a
    non-negative, higher-is-better score is principled without knowing the
    metric's scale. Metrics whose range includes negative values are
    rejected too, since clipping at 0 would discard their ordering.

    Returns:
        pyiqa's default config of the metric
    """
    if not isinstance(metric, str):
        raise TypeError("pyiqa metric must be a name; got %r" % (metric,))
    cfg = pyiqa_metric_config(metric)  # unknown / full-reference
    why = _SET_LEVEL_TYPES.get(cfg["metric_opts"]["type"])
    if why is not None:
        raise ValueError(
            "pyiqa metric %r %s; q_j needs a per-image no-reference score "
            "such as 'maniqa'" % (metric, why)
        )
    if cfg.get("lower_better"):
        raise ValueError(
            "pyiqa metric %r is lower-is-better, but q_j must grow with "
            "image quality (it scales each generated image's credit); use a "
            "higher-is-better metric such as 'maniqa', 'musiq', 'clipiqa' "
            "or 'topiq_nr'" % metric
        )
    low = _range_low(cfg.get("score_range"))
    if low is not None and low < 0:
        raise ValueError(
            "pyiqa metric %r can be negative (range %s), but q_j must be "
            "non-negative; use a metric such as 'maniqa' (range ~0 to ~1)"
            % (metric, cfg.get("score_range"))
        )
    return cfg


@contextlib.contextmanager
def _record_pyiqa_downloads(attempts):
    """Records ``(url, destination)`` of each download pyiqa attempts (the
    real download still runs), so a failure can name the file."""
    import pyiqa.utils.download_util as du

    real = du.download_url_to_file

    def recording(url, dst, *args, **kwargs):
        attempts.append((url, dst))
        return real(url, dst, *args, **kwargs)

    du.download_url_to_file = recording
    try:
        yield
    finally:
        du.download_url_to_file = real


class PyiqaQuality(QualityScorer):
    """q_j from a pyiqa no-reference metric, e.g. ``"maniqa"``.

    Images are read as RGB floats in ``[0, 1]`` (pyiqa's input), at their
    own resolution unless ``size`` is given; images of equal size are scored
    together. Scores are clipped at 0.

    Args:
        metric ("maniqa"): a pyiqa metric name (see :func:`validate_metric`)
        device (None): torch device; CUDA when available, else CPU
        batch_size (16): images per forward pass
        size (None): resize images to ``size x size`` first
    """

    def __init__(self, metric="maniqa", device=None, batch_size=16, size=None):
        self.metric = metric
        self.name = metric
        self.device = device
        self.batch_size = int(batch_size)
        self.size = None if size is None else int(size)
        self._metric = None
        self._traced = None

    def check(self):
        validate_metric(self.metric)
        self._traced = check_pyiqa(self.metric) is not None

    def config(self):
        return {
            "name": self.name,
            "backend": "pyiqa",
            "metric": self.metric,
            "size": self.size,
        }

    @property
    def model(self):
        """The loaded pyiqa metric (loaded on first use)."""
        if self._metric is None:
            self._metric = self._load()
        return self._metric

    def _load(self):
        validate_metric(self.metric)
        self._traced = check_pyiqa(self.metric, download=True) is not None
        import pyiqa

        from gmv_plugin.perceptual import default_device

        self.device = default_device(self.device)
        attempts = []
        # traced metrics have every file in place: the hub need not be asked
        offline = hub_offline() if self._traced else contextlib.nullcontext()
        with _record_pyiqa_downloads(attempts), offline:
            try:
                return pyiqa.create_metric(
                    self.metric, as_loss=False, device=self.device
                )
            except OSError as e:
                if self._traced:
                    raise
                err = e
        # weights of this metric are not traced by check_pyiqa: a failed
        # download surfaces here (URLError, requests and huggingface_hub
        # offline errors are OSErrors)
        attempts = [(u, d) for u, d in attempts if not os.path.isfile(d)]
        if attempts:
            expected = ", ".join(dst for _, dst in attempts)
            source = " (from %s)" % ", ".join(url for url, _ in attempts)
        else:
            expected = "pyiqa's cache %s or the Hugging Face cache" % (
                pyiqa_cache_dir()
            )
            source = ""
        raise MissingWeightsError(
            "pyiqa metric %r" % self.metric,
            expected,
            "Loading failed with %s: %s. On a machine with internet run "
            "`python -c \"import pyiqa; pyiqa.create_metric('%s', "
            "device='cpu')\"` and copy the files it downloads%s to the same "
            "places here (Hugging Face files: the models--* folders of "
            "~/.cache/huggingface/hub); set HF_HUB_OFFLINE=1 to skip the "
            "hub's slow retries." % (type(err).__name__, err, self.metric, source),
        ) from err

    def scores(self, paths):
        import torch

        paths = list(paths)
        out = np.zeros(len(paths), dtype=np.float32)
        if not paths:
            return out
        metric = self.model
        for lo in range(0, len(paths), self.batch_size):
            chunk = paths[lo : lo + self.batch_size]
            imgs = [read_image(p, size=self.size, mode="RGB") for p in chunk]
            groups = {}
            for i, img in enumerate(imgs):
                groups.setdefault(img.shape, []).append(i)
            for idx in groups.values():
                x = torch.from_numpy(np.stack([imgs[i] for i in idx]))
                with torch.no_grad():
                    s = metric(x.to(self.device))
                s = s.detach().float().reshape(len(idx), -1)[:, 0].cpu().numpy()
                out[[lo + i for i in idx]] = s
        return np.clip(out, 0.0, None)
