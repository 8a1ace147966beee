"""Where each library keeps its weights (its cache roots), and the error
raised when weights are missing.

Every path the plugin reads or writes is ``<cache root>/<relative path>``;
the roots are resolved at call time, so ``TORCH_HOME``,
``FIFTYONE_MODEL_ZOO_DIR``, ``HF_HUB_CACHE`` / ``HF_HOME`` and
``GMV_DREAMSIM_DIR`` set before the call are honoured.
"""

import contextlib
import os
import sys
from urllib.parse import urlparse


class MissingWeightsError(RuntimeError):
    """Pretrained weights for a model are not available on this machine."""

    def __init__(self, model, expected, how):
        self.model = model
        self.expected = expected
        self.how = how
        super().__init__(
            "Weights for %s are missing. Expected at: %s. %s" % (model, expected, how)
        )


def url_filename(url):
    return os.path.basename(urlparse(url).path)


def torch_hub_dir():
    """``torch.hub.get_dir()``: ``$TORCH_HOME/hub`` (``~/.cache/torch/hub``)."""
    import torch.hub

    return torch.hub.get_dir()


def hub_checkpoint_path(url):
    """Where ``torch.hub.load_state_dict_from_url(url)`` caches ``url``."""
    return os.path.join(torch_hub_dir(), "checkpoints", url_filename(url))


def pyiqa_cache_dir():
    """The directory pyiqa downloads arch checkpoints to.

    pyiqa freezes it at import as ``torch.hub.get_dir()/pyiqa``; the module's
    value is used when pyiqa is already imported.
    """
    mod = sys.modules.get("pyiqa.utils.download_util")
    if mod is not None:
        return mod.DEFAULT_CACHE_DIR
    return os.path.join(torch_hub_dir(), "pyiqa")


def hf_cache_dir():
    """The Hugging Face hub cache (``HF_HUB_CACHE``)."""
    import huggingface_hub.constants as hfc

    return hfc.HF_HUB_CACHE


@contextlib.contextmanager
def hub_offline():
    """Keeps ``huggingface_hub`` from contacting the hub inside the block, so
    a library that re-checks files already in the cache (timm, on every
    ``pretrained=True``) reads them at once instead of waiting on a blocked
    network."""
    import huggingface_hub.constants as hfc

    saved = hfc.HF_HUB_OFFLINE
    hfc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hfc.HF_HUB_OFFLINE = saved


def zoo_dir():
    """FiftyOne's model zoo dir, ``fo.config.model_zoo_dir``."""
    import fiftyone as fo

    return fo.config.model_zoo_dir


DREAMSIM_DIR_ENV = "GMV_DREAMSIM_DIR"


def dreamsim_cache_dir(cache_dir=None):
    """The DreamSim weights directory: ``cache_dir``, else
    ``$GMV_DREAMSIM_DIR``, else ``~/.cache/dreamsim``."""
    if cache_dir is None:
        cache_dir = os.environ.get(DREAMSIM_DIR_ENV) or os.path.join(
            "~", ".cache", "dreamsim"
        )
    return os.path.abspath(os.path.expanduser(str(cache_dir)))


def lpips_package_dir():
    """The installed ``lpips`` package (its linear layers ship inside)."""
    import lpips.lpips

    return os.path.dirname(os.path.abspath(lpips.lpips.__file__))


# root name -> (resolver, description). "lpips" is read-only: its files ship
# with the package and are never downloaded, bundled or installed.
ROOTS = {
    "fiftyone_zoo": (zoo_dir, "FiftyOne model zoo dir (fo.config.model_zoo_dir)"),
    "torch_hub": (torch_hub_dir, "torch hub dir ($TORCH_HOME/hub)"),
    "pyiqa": (pyiqa_cache_dir, "pyiqa cache ($TORCH_HOME/hub/pyiqa)"),
    "huggingface": (hf_cache_dir, "Hugging Face hub cache (HF_HUB_CACHE)"),
    "dreamsim": (dreamsim_cache_dir, "DreamSim dir ($%s)" % DREAMSIM_DIR_ENV),
    "lpips": (lpips_package_dir, "the lpips package"),
}
WRITABLE_ROOTS = tuple(r for r in ROOTS if r != "lpips")


def root_dir(root, overrides=None):
    """The absolute directory of cache root ``root`` (see :data:`ROOTS`);
    ``overrides`` maps root names to directories used instead."""
    if overrides and overrides.get(root):
        return os.path.abspath(os.path.expanduser(str(overrides[root])))
    if root not in ROOTS:
        raise ValueError("Unknown cache root %r; allowed values are %s" % (root, list(ROOTS)))
    return os.path.abspath(ROOTS[root][0]())
