"""The check before work, and first-use downloads.

Each ``check_*`` function looks where the owning library looks. When files
are missing it either

- raises :class:`MissingWeightsError` naming the model, the expected paths
  and how to provide the files offline: when downloads are disabled
  (``GMV_OFFLINE=1``, ``HF_HUB_OFFLINE=1``), when the source (or mirror)
  cannot be reached, or when the file ships with a package; or
- logs what will be downloaded and how large, and returns (``download=
  False``, the check before work), or downloads it with a progress bar
  (``download=True``, first use, called by the loaders).
"""

import logging
import os

from gmv_plugin.weights import fetching as dl
from gmv_plugin.weights import registry as reg
from gmv_plugin.weights.locations import (  # noqa: F401 (public API)
    DREAMSIM_DIR_ENV,
    MissingWeightsError,
    dreamsim_cache_dir,
    hf_cache_dir,
    hub_checkpoint_path,
    pyiqa_cache_dir,
    url_filename,
)

logger = logging.getLogger(__name__)

LPIPS_NETS = tuple(reg.LPIPS_TRUNKS)

BUNDLE_HOW = (
    "Or, on a machine with internet, run `python -m gmv_plugin.weights bundle "
    "--models %s --to gmv-weights.tar` and here `python -m gmv_plugin.weights "
    "install gmv-weights.tar`."
)


def _join_paths(paths):
    return ", ".join(str(p) for p in paths)


def _expected(specs, overrides=None):
    return _join_paths(" or ".join(s.candidates(overrides)) for s in specs)


def format_bytes(n):
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def missing_files(model, overrides=None):
    """``(found paths, missing FileSpecs)`` of a registry model."""
    found, missing = [], []
    for spec in model.files:
        hit = spec.find(overrides)
        if hit:
            found.append(hit)
        else:
            missing.append(spec)
    return found, missing


def needed_sources(missing):
    out = []
    for spec in missing:
        if spec.source is not None and spec.source not in out:
            out.append(spec.source)
    return out


def _require(model, how, overrides=None, download=False, progress=None, probe=True,
             label=None):
    """Returns the files of ``model`` found, downloading the missing ones when
    ``download``; see the module docstring."""
    label = label or model.label
    found, missing = missing_files(model, overrides)
    if not missing:
        return found
    expected = _expected(missing, overrides)
    how = how + " " + BUNDLE_HOW % model.name
    reason = dl.downloads_disabled()
    if reason:
        raise MissingWeightsError(label, expected, reason + " " + how)
    sources = needed_sources(missing)
    sizes = []
    for src in sources:
        size = src.expected_size
        if probe and not _local_copy(src, overrides):
            ok, remote, err = dl.probe(src.url)
            if not ok:
                raise MissingWeightsError(
                    label, expected,
                    "Downloading is allowed but %s cannot be reached (%s). %s"
                    % (dl.effective_url(src.url), err, how))
            size = src.size or remote or src.approx_size  # exact sizes first
        sizes.append(size)
    total = None if None in sizes else sum(sizes)
    logger.info(
        "%s: %s will be downloaded (%s) into %s", label,
        ", ".join(dl.effective_url(s.url) for s in sources), format_bytes(total), expected)
    if not download:
        return found
    download_sources(sources, progress=progress, overrides=overrides, label=label,
                     total=total)
    found, missing = missing_files(model, overrides)
    if missing:
        raise MissingWeightsError(
            label, _expected(missing, overrides),
            "The download finished but these files are still missing. " + how)
    return found


def _local_copy(source, overrides):
    """Whether a "file" source is already present at one of its places (it
    is then copied, not downloaded)."""
    if source.kind != "file":
        return False
    places = [(source.root, source.path)] + list(source.also)
    for root, rel in places:
        if os.path.isfile(os.path.join(reg.root_dir(root, overrides), *rel.split("/"))):
            return True
    return False


def download_sources(sources, progress=None, overrides=None, label="weights", total=None):
    """Fetches ``sources`` (see :func:`gmv_plugin.weights.fetching.fetch`)
    with one progress bar in bytes.

    Args:
        progress (None): like FiftyOne's ``progress`` arguments: True/False,
            None (FiftyOne's default) or a callback taking the progress bar

    Raises:
        MissingWeightsError: a download failed or did not verify (nothing
            is left at the destination)
    """
    import fiftyone.core.utils as fou

    with fou.ProgressBar(total=total, progress=progress, use_bytes=True,
                         iters_str="bytes") as pb:
        for src in sources:
            try:
                dl.fetch(src, on_bytes=pb.update, overrides=overrides)
            except dl.DownloadError as e:
                raise MissingWeightsError(
                    label, _expected([reg.FileSpec(src.root, src.path)], overrides)
                    if src.kind != "hf" else reg.hf_repo_folder(src.hf_repo),
                    "Downloading failed: %s" % e) from e


# ---------------------------------------------------------------- LPIPS


def lpips_lin_path(net, version="0.1"):
    """The linear-layer weights file that ``lpips.LPIPS`` loads."""
    spec = reg.lpips_model(net, version, backbone=False).files[0]
    return spec.candidates()[0]


def lpips_trunk_url(net):
    """URL of the torchvision ImageNet weights of an LPIPS trunk."""
    if net not in reg.LPIPS_TRUNKS:
        raise ValueError("Unknown LPIPS net %r; allowed values are %s" % (net, LPIPS_NETS))
    return reg.torchvision_weights(reg.LPIPS_TRUNKS[net][1])[0]


def check_lpips(net="alex", version="0.1", backbone=True, download=False, progress=None,
                probe=True):
    """Checks the files ``lpips.LPIPS(net=net, version=version)`` loads.

    Args:
        net ("alex"): one of :data:`LPIPS_NETS`
        version ("0.1"): the LPIPS linear-layer version
        backbone (True): whether to check the ImageNet trunk too (``False``
            for a random trunk, ``pnet_rand=True``)
        download (False): download a missing trunk (first use)
        progress (None): the download's progress (see :func:`download_sources`)
        probe (True): check that the download source answers

    Returns:
        the list of files found

    Raises:
        ValueError: if ``net`` is unknown
        MissingWeightsError: if a file is missing and cannot be downloaded
    """
    model = reg.lpips_model(net, version, backbone)
    lin = model.files[0]
    found = lin.find()
    if not found:
        raise MissingWeightsError(
            model.label + " linear layers",
            lin.candidates()[0],
            "These files ship inside the lpips package; reinstall it from a "
            "wheel: on a machine with internet run `pip download lpips==0.1.4 "
            "--no-deps`, copy the .whl here and run `pip install "
            "--force-reinstall --no-deps <wheel>`.",
        )
    if not backbone:
        return [found]
    fn = reg.LPIPS_TRUNKS[net][0]
    url = lpips_trunk_url(net)
    path = hub_checkpoint_path(url)
    how = (
        'On a machine with internet run `python -c "import torchvision; '
        "torchvision.models.%s(weights='IMAGENET1K_V1')\"` (or download "
        "%s), then copy %s into %s. Alternatively set TORCH_HOME to a "
        "directory whose hub/checkpoints/ holds that file."
        % (fn, url, url_filename(url), os.path.dirname(path))
    )
    return _require(model, how, download=download, progress=progress, probe=probe,
                    label=model.label + " torchvision trunk %s" % fn)


# ------------------------------------------------------------- DreamSim


def _dreamsim_checkpoint_url(dreamsim_type="ensemble"):
    return reg.dreamsim_checkpoint_url(dreamsim_type)


def dreamsim_expected_files(cache_dir=None):
    """Paths ``dreamsim(pretrained=True, cache_dir=...)`` reads for the
    default "ensemble" model; each entry is a tuple of alternatives."""
    overrides = {"dreamsim": dreamsim_cache_dir(cache_dir)}
    return [tuple(s.candidates(overrides)) for s in reg.dreamsim_model().files]


def check_dreamsim(cache_dir=None, download=False, progress=None, probe=True):
    """Checks the files of the DreamSim "ensemble" model in ``cache_dir``
    (see :func:`dreamsim_cache_dir`); arguments as :func:`check_lpips`.

    Returns:
        the list of files found

    Raises:
        MissingWeightsError: if a file is missing and cannot be downloaded
    """
    d = dreamsim_cache_dir(cache_dir)
    how = (
        'On a machine with internet run `python -c "from dreamsim import '
        "dreamsim; dreamsim(pretrained=True, device='cpu', "
        "cache_dir='dreamsim_cache')\"` (it downloads %s and the DINO "
        "torch.hub repo and weights into that folder), then copy the "
        "whole folder's contents to %s, or point $%s at the copy."
        % (_dreamsim_checkpoint_url("ensemble"), d, DREAMSIM_DIR_ENV)
    )
    return _require(reg.dreamsim_model(), how, overrides={"dreamsim": d},
                    download=download, progress=progress, probe=probe)


# ----------------------------------------------------------------- pyiqa


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


def check_pyiqa(metric, download=False, progress=None, probe=True):
    """Checks the files ``pyiqa.create_metric(metric)`` loads; arguments as
    :func:`check_lpips`.

    Verified for the MANIQA family (``maniqa``, ``maniqa-kadid``,
    ``maniqa-pipal``: the pyiqa checkpoint and timm's
    ``vit_base_patch8_224`` ImageNet weights) and the weight-free
    ``entropy``. For other metrics the files are not traced here and the
    loader reports a failed download instead.

    Returns:
        the list of files found, or ``None`` if ``metric`` is not traced

    Raises:
        ValueError: if ``metric`` is unknown or not no-reference
        MissingWeightsError: if a file is missing and cannot be downloaded
    """
    cfg = pyiqa_metric_config(metric)
    model = reg.pyiqa_model(metric, cfg)
    if not model.traced:
        return None
    found, missing = missing_files(model)
    sources = _join_paths(s.url for s in needed_sources(missing))
    how = (
        'On a machine with internet run `python -c "import pyiqa; '
        "pyiqa.create_metric('%s', device='cpu')\"` (it downloads %s), "
        "then copy the pyiqa checkpoint(s) into %s and any "
        "models--timm--* folder from that machine's Hugging Face cache "
        "(~/.cache/huggingface/hub) into this machine's (%s); set "
        "HF_HUB_OFFLINE=1 so the hub is not contacted."
        % (metric, sources, pyiqa_cache_dir(), hf_cache_dir())
    )
    return _require(model, how, download=download, progress=progress, probe=probe)


# ------------------------------------------------------- FiftyOne zoo


def zoo_model_expected_files(name):
    """Paths loading the FiftyOne zoo model ``name`` reads, as a list of
    ``(path, url)`` (see :func:`gmv_plugin.weights.registry.zoo_model`)."""
    model = reg.zoo_model(name)
    return [(s.candidates()[0], s.source.url if s.source else None) for s in model.files]


def check_zoo_model(name, download=False, progress=None, probe=True):
    """Checks the files loading FiftyOne zoo model ``name`` needs (see
    :func:`zoo_model_expected_files`); arguments as :func:`check_lpips`.

    Returns:
        the list of files found

    Raises:
        ValueError: if ``name`` is not a zoo model
        MissingWeightsError: if a file is missing and cannot be downloaded
    """
    model = reg.zoo_model(name)
    urls = sorted({s.url for s in model.sources})
    how = (
        'On a machine with internet run `python -c "import fiftyone.zoo '
        "as foz; foz.download_zoo_model('%s')\"`%s, then copy the file(s) "
        "to the path(s) above (the zoo dir is fo.config.model_zoo_dir, the "
        "torch hub checkpoints dir is $TORCH_HOME/hub/checkpoints; one file "
        "may serve several paths via a symlink). Set FIFTYONE_MODEL_ZOO_DIR "
        "/ TORCH_HOME to use other directories."
        % (name, " (or download %s directly)" % _join_paths(urls) if urls else "")
    )
    return _require(model, how, download=download, progress=progress, probe=probe)


def check_model(name, download=False, progress=None, probe=True):
    """Checks a registry model by name (``lpips-alex``, ``dreamsim``,
    ``maniqa``, a zoo model name, ...); see :data:`registry.KNOWN_MODELS`."""
    if name.startswith("lpips-"):
        return check_lpips(name[len("lpips-"):], download=download, progress=progress,
                           probe=probe)
    if name == "dreamsim":
        return check_dreamsim(download=download, progress=progress, probe=probe)
    model = reg.get_model(name)
    if model.kind == "pyiqa":
        return check_pyiqa(name, download=download, progress=progress, probe=probe)
    return check_zoo_model(name, download=download, progress=progress, probe=probe)
