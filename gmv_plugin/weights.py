"""Locating pretrained weights, and failing fast when they are missing.

Nothing here downloads anything: each check looks where the owning library
would look, and raises :class:`MissingWeightsError` naming the model, the
expected location and how to provide the files offline.

Where each library looks (verified against the installed sources):

- torchvision backbones (LPIPS trunks): ``torch.hub.get_dir()/checkpoints/
  <basename of the weights URL>``, i.e. ``$TORCH_HOME/hub/checkpoints`` with
  ``TORCH_HOME`` defaulting to ``~/.cache/torch``.
- LPIPS linear layers: shipped inside the ``lpips`` package,
  ``<lpips>/weights/v0.1/<net>.pth``.
- DreamSim (0.2.1, ``dreamsim(pretrained=True, cache_dir=D)``): the unzipped
  release checkpoint in ``D`` plus, because DreamSim points torch.hub at ``D``,
  the DINO hub repository and its weights under ``D``.
- pyiqa metrics: ``pyiqa.utils.download_util.DEFAULT_CACHE_DIR``
  (``torch.hub.get_dir()/pyiqa`` when pyiqa is imported); timm backbones that
  some metrics build come from the Hugging Face hub cache.
- FiftyOne zoo models: ``fo.config.model_zoo_dir``; torchvision-based zoo
  models also read the torch hub cache (see :func:`check_zoo_model`).
"""

import os
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


def _url_filename(url):
    return os.path.basename(urlparse(url).path)


def _join_paths(paths):
    return ", ".join(str(p) for p in paths)


def hub_checkpoint_path(url):
    """Where ``torch.hub.load_state_dict_from_url(url)`` caches ``url``."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints", _url_filename(url))


# ---------------------------------------------------------------- LPIPS

# LPIPS 0.1.4 builds its trunks with ``torchvision.models.<fn>(pretrained=
# True)``, which torchvision maps to these weights enums.
_LPIPS_TRUNKS = {
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}
LPIPS_NETS = tuple(_LPIPS_TRUNKS)


def lpips_lin_path(net, version="0.1"):
    """The linear-layer weights file that ``lpips.LPIPS`` loads."""
    import lpips.lpips

    pkg = os.path.dirname(os.path.abspath(lpips.lpips.__file__))
    return os.path.join(pkg, "weights", "v%s" % version, "%s.pth" % net)


def lpips_trunk_url(net):
    """URL of the torchvision ImageNet weights of an LPIPS trunk."""
    import torchvision.models

    _, enum_name = _LPIPS_TRUNKS[net]
    return getattr(torchvision.models, enum_name).IMAGENET1K_V1.url


def check_lpips(net="alex", version="0.1", backbone=True):
    """Checks the files ``lpips.LPIPS(net=net, version=version)`` loads.

    Args:
        net ("alex"): one of :data:`LPIPS_NETS`
        version ("0.1"): the LPIPS linear-layer version
        backbone (True): whether to check the ImageNet trunk too (``False``
            for a random trunk, ``pnet_rand=True``)

    Returns:
        the list of files found

    Raises:
        ValueError: if ``net`` is unknown
        MissingWeightsError: if a file is missing
    """
    if net not in _LPIPS_TRUNKS:
        raise ValueError(
            "Unknown LPIPS net %r; allowed values are %s" % (net, LPIPS_NETS)
        )
    model = "LPIPS (net=%r, v%s)" % (net, version)
    lin = lpips_lin_path(net, version)
    if not os.path.isfile(lin):
        raise MissingWeightsError(
            model + " linear layers",
            lin,
            "These files ship inside the lpips package; reinstall it from a "
            "wheel: on a machine with internet run `pip download lpips==0.1.4 "
            "--no-deps`, copy the .whl here and run `pip install "
            "--force-reinstall --no-deps <wheel>`.",
        )
    found = [lin]
    if not backbone:
        return found
    url = lpips_trunk_url(net)
    path = hub_checkpoint_path(url)
    if not os.path.isfile(path):
        fn = _LPIPS_TRUNKS[net][0]
        raise MissingWeightsError(
            model + " torchvision trunk %s" % fn,
            path,
            'On a machine with internet run `python -c "import torchvision; '
            "torchvision.models.%s(weights='IMAGENET1K_V1')\"` (or download "
            "%s), then copy %s into %s. Alternatively set TORCH_HOME to a "
            "directory whose hub/checkpoints/ holds that file."
            % (fn, url, _url_filename(url), os.path.dirname(path)),
        )
    found.append(path)
    return found


# ------------------------------------------------------------- DreamSim

DREAMSIM_DIR_ENV = "GMV_DREAMSIM_DIR"

# dreamsim 0.2.1, model.download_weights(): what the "ensemble" checkpoint
# zip unpacks into cache_dir.
_DREAMSIM_ENSEMBLE_FILES = (
    "dino_vitb16_pretrain.pth",
    "open_clip_vitb16_pretrain.pth.tar",
    "clip_vitb16_pretrain.pth.tar",
    os.path.join("ensemble_lora", "adapter_config.json"),
)
# PeftModel.from_pretrained reads one of these (safetensors first).
_PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# DreamSim calls torch.hub.set_dir(cache_dir) then
# torch.hub.load("facebookresearch/dino:main", "dino_vitb16"), whose
# hubconf downloads this URL into <cache_dir>/checkpoints.
_DINO_REPO_DIR = "facebookresearch_dino_main"
_DINO_VITB16_URL = (
    "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/"
    "dino_vitbase16_pretrain.pth"
)


def dreamsim_cache_dir(cache_dir=None):
    """The DreamSim weights directory: ``cache_dir``, else
    ``$GMV_DREAMSIM_DIR``, else ``~/.cache/dreamsim``."""
    if cache_dir is None:
        cache_dir = os.environ.get(DREAMSIM_DIR_ENV) or os.path.join(
            "~", ".cache", "dreamsim"
        )
    return os.path.abspath(os.path.expanduser(str(cache_dir)))


def _dreamsim_checkpoint_url(dreamsim_type="ensemble"):
    """Reads the checkpoint URL from dreamsim's config module without
    importing the (slow) package."""
    import importlib.util

    spec = importlib.util.find_spec("dreamsim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "dreamsim is not installed; install it with `pip install dreamsim==0.2.1`"
        )
    import ast

    path = os.path.join(next(iter(spec.submodule_search_locations)), "config.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "dreamsim_weights" for t in node.targets
        ):
            return ast.literal_eval(node.value)[dreamsim_type]
    raise ImportError("dreamsim_weights not found in %s" % path)


def dreamsim_expected_files(cache_dir=None):
    """Paths ``dreamsim(pretrained=True, cache_dir=...)`` reads for the
    default "ensemble" model; each entry is a tuple of alternatives."""
    d = dreamsim_cache_dir(cache_dir)
    files = [(os.path.join(d, f),) for f in _DREAMSIM_ENSEMBLE_FILES]
    files.append(tuple(os.path.join(d, "ensemble_lora", f) for f in _PEFT_WEIGHTS))
    files.append((os.path.join(d, _DINO_REPO_DIR, "hubconf.py"),))
    files.append((os.path.join(d, "checkpoints", _url_filename(_DINO_VITB16_URL)),))
    return files


def check_dreamsim(cache_dir=None):
    """Checks the files of the DreamSim "ensemble" model in ``cache_dir``
    (see :func:`dreamsim_cache_dir`).

    Returns:
        the list of files found

    Raises:
        MissingWeightsError: if any file is missing
    """
    d = dreamsim_cache_dir(cache_dir)
    found, missing = [], []
    for alternatives in dreamsim_expected_files(d):
        hit = [p for p in alternatives if os.path.isfile(p)]
        if hit:
            found.append(hit[0])
        else:
            missing.append(" or ".join(alternatives))
    if missing:
        url = _dreamsim_checkpoint_url("ensemble")
        raise MissingWeightsError(
            "DreamSim (ensemble, dreamsim 0.2.1)",
            _join_paths(missing),
            'On a machine with internet run `python -c "from dreamsim import '
            "dreamsim; dreamsim(pretrained=True, device='cpu', "
            "cache_dir='dreamsim_cache')\"` (it downloads %s and the DINO "
            "torch.hub repo and weights into that folder), then copy the "
            "whole folder's contents to %s, or point $%s at the copy."
            % (url, d, DREAMSIM_DIR_ENV),
        )
    return found


# ----------------------------------------------------------------- pyiqa


def pyiqa_cache_dir():
    """The directory pyiqa downloads arch checkpoints to.

    pyiqa freezes it at import as ``torch.hub.get_dir()/pyiqa``; the module's
    value is used when pyiqa is already imported.
    """
    import sys

    mod = sys.modules.get("pyiqa.utils.download_util")
    if mod is not None:
        return mod.DEFAULT_CACHE_DIR
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "pyiqa")


def pyiqa_metric_config(metric):
    """pyiqa's default config of ``metric``; raises ValueError if unknown or
    not no-reference."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    if metric not in DEFAULT_CONFIGS:
        raise ValueError(
            "Unknown pyiqa metric %r; no-reference metrics include %s"
            % (metric, ", ".join(_some_nr_metrics(DEFAULT_CONFIGS)))
        )
    cfg = DEFAULT_CONFIGS[metric]
    if cfg.get("metric_mode") != "NR":
        raise ValueError(
            "pyiqa metric %r is full-reference (needs a reference image); a "
            "quality score needs a no-reference metric such as %s"
            % (metric, ", ".join(_some_nr_metrics(DEFAULT_CONFIGS)))
        )
    return cfg


def _some_nr_metrics(configs, limit=12):
    """A few higher-is-better, per-image no-reference pyiqa metrics."""
    names = [
        k
        for k, c in configs.items()
        if c.get("metric_mode") == "NR"
        and not c.get("lower_better")
        and "-" not in k
        and c["metric_opts"]["type"] not in ("FID", "InceptionScore", "CLIPScore")
    ]
    preferred = [n for n in ("maniqa", "musiq", "clipiqa", "topiq_nr") if n in names]
    rest = [n for n in sorted(names) if n not in preferred]
    return preferred + rest[: max(0, limit - len(preferred))]


def _hf_cached(repo_id, filenames):
    """Returns (found path or None, expected-path hint) in the HF cache."""
    import huggingface_hub
    import huggingface_hub.constants as hfc

    cache = hfc.HF_HUB_CACHE
    for name in filenames:
        hit = huggingface_hub.try_to_load_from_cache(repo_id, name, cache_dir=cache)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit, None
    folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    hint = " or ".join(
        os.path.join(folder, "snapshots", "<revision>", n) for n in filenames
    )
    return None, hint


def _timm_requirement(model_name):
    """(HF repo id, filenames) timm reads for ``create_model(model_name,
    pretrained=True)``."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(model_name)
    # timm's load_state_dict_from_hf tries model.safetensors, then the .bin
    return cfg.hf_hub_id, ("model.safetensors", "pytorch_model.bin")


def _maniqa_files(opts):
    from pyiqa.archs import maniqa_arch

    url = maniqa_arch.default_model_urls[opts.get("train_dataset", "pipal")]
    return [url], ["vit_base_patch8_224"]


# Metrics whose weight files were traced in pyiqa 0.1.16's sources:
# arch type -> function(metric_opts) -> ([pyiqa checkpoint URLs], [timm
# models created with pretrained=True]).
_PYIQA_REQUIREMENTS = {
    "MANIQA": _maniqa_files,
    "Entropy": lambda opts: ([], []),
}


def check_pyiqa(metric):
    """Checks the files ``pyiqa.create_metric(metric)`` loads.

    Verified for the MANIQA family (``maniqa``, ``maniqa-kadid``,
    ``maniqa-pipal``: the pyiqa checkpoint and timm's
    ``vit_base_patch8_224`` ImageNet weights) and the weight-free
    ``entropy``. For other metrics the files are not traced here and the
    loader reports a failed download instead.

    Returns:
        the list of files found, or ``None`` if ``metric`` is not traced

    Raises:
        ValueError: if ``metric`` is unknown or not no-reference
        MissingWeightsError: if a file is missing
    """
    cfg = pyiqa_metric_config(metric)
    opts = cfg["metric_opts"]
    req = _PYIQA_REQUIREMENTS.get(opts["type"])
    if req is None:
        return None
    urls, timm_models = req(opts)
    cache = pyiqa_cache_dir()
    found, missing, sources = [], [], []
    for url in urls:
        path = os.path.join(cache, _url_filename(url))
        if os.path.isfile(path):
            found.append(path)
        else:
            missing.append(path)
            sources.append(url)
    for name in timm_models:
        repo_id, filenames = _timm_requirement(name)
        hit, hint = _hf_cached(repo_id, filenames)
        if hit:
            found.append(hit)
        else:
            missing.append(hint)
            sources.append("https://huggingface.co/%s" % repo_id)
    if missing:
        raise MissingWeightsError(
            "pyiqa metric %r" % metric,
            _join_paths(missing),
            'On a machine with internet run `python -c "import pyiqa; '
            "pyiqa.create_metric('%s', device='cpu')\"` (it downloads %s), "
            "then copy the pyiqa checkpoint(s) into %s and any "
            "models--timm--* folder from that machine's Hugging Face cache "
            "(~/.cache/huggingface/hub) into this machine's (%s); set "
            "HF_HUB_OFFLINE=1 so the hub is not contacted."
            % (metric, _join_paths(sources), cache, _hf_cache_dir()),
        )
    return found


def _hf_cache_dir():
    import huggingface_hub.constants as hfc

    return hfc.HF_HUB_CACHE


# ------------------------------------------------------- FiftyOne zoo


def _torchvision_weights_url(config):
    """The torchvision weights URL a TorchvisionImageModel config loads, or
    ``None``."""
    args = config.get("entrypoint_args") or {}
    weights = args.get("weights")
    if not isinstance(weights, str) or "." not in weights:
        return None
    import torchvision.models

    enum_name, member = weights.split(".", 1)
    enum = getattr(torchvision.models, enum_name, None)
    if enum is None:
        return None
    return enum[member].url if member in enum.__members__ else None


def zoo_model_expected_files(name):
    """Paths loading the FiftyOne zoo model ``name`` reads.

    The zoo file lives in ``fo.config.model_zoo_dir``. For torchvision zoo
    models FiftyOne also calls the torchvision builder with ``weights=...``:
    with fiftyone 1.22.1 and torchvision 0.29 its redirect of
    ``load_state_dict_from_url`` to the zoo dir does not reach
    ``torchvision.models._api`` (verified: loading ``vgg16-imagenet-torch``
    with only the zoo file tries to download into the torch hub cache), so
    the same file is also needed in ``torch.hub.get_dir()/checkpoints``.

    Returns:
        a list of ``(path, url)``
    """
    import fiftyone as fo
    import fiftyone.zoo.models as fozm

    model = fozm.get_zoo_model(name)  # ValueError if unknown
    zoo_path = model.get_path_in_dir(fo.config.model_zoo_dir)
    url = None
    manager = getattr(model, "manager", None)
    if manager is not None:
        url = getattr(manager.config, "url", None)
    files = [(zoo_path, url)]
    deploy = model.default_deployment_config_dict or {}
    if str(deploy.get("type", "")).endswith("TorchvisionImageModel"):
        tv_url = _torchvision_weights_url(deploy.get("config") or {})
        if tv_url is not None:
            files.append((hub_checkpoint_path(tv_url), tv_url))
    return files


def check_zoo_model(name):
    """Checks the files loading FiftyOne zoo model ``name`` needs (see
    :func:`zoo_model_expected_files`).

    Returns:
        the list of files found

    Raises:
        ValueError: if ``name`` is not a zoo model
        MissingWeightsError: if a file is missing
    """
    files = zoo_model_expected_files(name)
    missing = [(p, u) for p, u in files if not os.path.exists(p)]
    if missing:
        urls = sorted({u for _, u in files if u})
        raise MissingWeightsError(
            "FiftyOne zoo model %r" % name,
            _join_paths(p for p, _ in missing),
            'On a machine with internet run `python -c "import fiftyone.zoo '
            "as foz; foz.download_zoo_model('%s')\"`%s, then copy the file(s) "
            "to the path(s) above (%s; one file may serve several paths via a "
            "symlink). Set FIFTYONE_MODEL_ZOO_DIR / TORCH_HOME to use other "
            "directories."
            % (
                name,
                " (or download %s directly)" % _join_paths(urls) if urls else "",
                (
                    "the zoo dir is fo.config.model_zoo_dir, the torch hub "
                    "checkpoints dir is $TORCH_HOME/hub/checkpoints"
                ),
            ),
        )
    return [p for p, _ in files]
