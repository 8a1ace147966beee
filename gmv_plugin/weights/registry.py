"""Every model the plugin can use: its files, where each one lives and where
it comes from.

Read from the installed libraries (torchvision 0.29's weights enums, the
FiftyOne zoo manifest, pyiqa 0.1.16's arch URLs, timm's pretrained configs,
dreamsim 0.2.1's config), so the URLs and file names are the ones those
libraries use themselves.

A :class:`Source` is one download: a file (``kind="file"``), a zip unpacked
into a folder (``"zip"``), a GitHub zipball whose top folder becomes a
folder (``"zipball"``, what ``torch.hub.load`` fetches) or a file of a
Hugging Face repo stored the way ``huggingface_hub`` caches it (``"hf"``).
A :class:`FileSpec` is one file a model reads, with the source it comes
from. Checksums: torchvision's URLs carry a sha256 prefix in the file name
(``vgg16-397923af.pth``), verified like ``torch.hub`` does; Hugging Face
serves each LFS file's sha256 in its ``X-Linked-Etag`` header, verified at
download time; DreamSim's and DINO's sources publish none (only the length
the server announces and, for zips, the zip's own CRCs are checked).
``$GMV_WEIGHTS_CHECKSUMS`` may name a JSON file ``{"<url or file name>":
"<sha256>"}`` (or ``{"sha256": ..., "size": ...}``) pinning the file to
accept, for sources that publish nothing or a site's own builds; a pin
replaces the published checksum and size.
"""

import json
import os
import re
from dataclasses import dataclass

from gmv_plugin.weights.locations import root_dir, url_filename

CHECKSUMS_ENV = "GMV_WEIGHTS_CHECKSUMS"

# torch.hub's HASH_REGEX: the sha256 prefix in a checkpoint's file name
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")

# The models the plugin offers by name (status/download/bundle default to these)
KNOWN_MODELS = (
    "vgg16-imagenet-torch",
    "lpips-alex",
    "lpips-vgg",
    "lpips-squeeze",
    "dreamsim",
    "maniqa",
    "maniqa-kadid",
    "maniqa-pipal",
)


@dataclass(frozen=True)
class Source:
    """One download (see the module docstring)."""

    url: str
    root: str
    path: str
    kind: str = "file"
    sha256: str = None
    size: int = None
    approx_size: int = None
    also: tuple = ()
    hf_repo: str = None

    @property
    def checksum(self):
        """How the download is verified, in words."""
        if self.sha256:
            full = len(self.sha256) == 64
            return "sha256" if full else "sha256 prefix %s" % self.sha256
        if self.kind == "hf":
            return "sha256 from the hub"
        if self.url.startswith("https://huggingface.co/"):
            return "sha256 from the hub"
        return "none published (size checked)"

    @property
    def expected_size(self):
        return self.size or self.approx_size


@dataclass(frozen=True)
class FileSpec:
    """A file a model reads: ``root``/``path`` or one of ``alternatives``
    (for ``root="huggingface"``, ``path`` is a file name in ``hf_repo``)."""

    root: str
    path: str
    alternatives: tuple = ()
    source: Source = None
    hf_repo: str = None

    def candidates(self, overrides=None):
        """Absolute paths that would serve (Hugging Face: ``<revision>``
        stands for the snapshot folder)."""
        base = root_dir(self.root, overrides)
        names = (self.path,) + tuple(self.alternatives)
        if self.hf_repo:
            folder = os.path.join(base, hf_repo_folder(self.hf_repo))
            return [os.path.join(folder, "snapshots", "<revision>", n) for n in names]
        return [os.path.join(base, *n.split("/")) for n in names]

    def find(self, overrides=None):
        """The absolute path of the file present on this machine, or None."""
        if self.hf_repo:
            return hf_cached(self.hf_repo, (self.path,) + tuple(self.alternatives), overrides)
        for p in self.candidates(overrides):
            if os.path.isfile(p):
                return p
        return None


@dataclass(frozen=True)
class Model:
    """A model: its files, and what a bundle of it holds (``bundle``:
    ``(root, relative path)`` of files or folders; default the files)."""

    name: str
    label: str
    files: tuple
    kind: str = "zoo"  # lpips | dreamsim | pyiqa | zoo
    bundle: tuple = None
    traced: bool = True
    note: str = ""

    @property
    def sources(self):
        out = []
        for f in self.files:
            if f.source is not None and f.source not in out:
                out.append(f.source)
        return out


def hf_repo_folder(repo_id):
    return "models--" + repo_id.replace("/", "--")


def hf_cached(repo_id, filenames, overrides=None):
    """Path of the first of ``filenames`` in the Hugging Face cache, or None."""
    import huggingface_hub

    cache = root_dir("huggingface", overrides)
    for name in filenames:
        hit = huggingface_hub.try_to_load_from_cache(repo_id, name, cache_dir=cache)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def hf_url(repo_id, filename, revision="main"):
    return "https://huggingface.co/%s/resolve/%s/%s" % (repo_id, revision, filename)


def _pins():
    path = os.environ.get(CHECKSUMS_ENV)
    if not path:
        return {}
    with open(path) as f:
        pins = json.load(f)
    if not isinstance(pins, dict):
        raise ValueError("%s must name a JSON object {url or file name: sha256}" % CHECKSUMS_ENV)
    out = {}
    for k, v in pins.items():
        v = v if isinstance(v, dict) else {"sha256": v}
        out[k] = {"sha256": str(v["sha256"]).lower(), "size": v.get("size")}
    return out


def _source(url, root, path, **kwargs):
    """A :class:`Source`, with the sha256 prefix in torchvision-style names
    and any pin from ``$GMV_WEIGHTS_CHECKSUMS``."""
    sha = kwargs.pop("sha256", None)
    if sha is None and kwargs.get("kind", "file") == "file" and url.startswith(
        "https://download.pytorch.org/models/"
    ):
        m = _HASH_IN_NAME.search(url_filename(url))
        sha = m.group(1) if m else None
    pins = _pins()
    pin = pins.get(url) or pins.get(url_filename(url))
    if pin:
        sha = pin["sha256"]
        kwargs["size"] = pin["size"]
    return Source(url=url, root=root, path=path, sha256=sha, **kwargs)


# ------------------------------------------------------------ torchvision


def torchvision_weights(enum_member):
    """``(url, approximate size in bytes)`` of e.g. ``"VGG16_Weights.IMAGENET1K_V1"``."""
    import torchvision.models

    enum_name, member = enum_member.split(".", 1)
    weights = getattr(torchvision.models, enum_name)[member]
    mb = weights.meta.get("_file_size")
    return weights.url, (int(mb * 1024 * 1024) if mb else None)


def _hub_checkpoint_source(enum_member, **kwargs):
    url, approx = torchvision_weights(enum_member)
    return _source(url, "torch_hub", "checkpoints/" + url_filename(url),
                   approx_size=approx, **kwargs)


# ------------------------------------------------------------------ LPIPS

# LPIPS 0.1.4 builds its trunks with ``torchvision.models.<fn>(pretrained=
# True)``, which torchvision maps to these weights.
LPIPS_TRUNKS = {
    "alex": ("alexnet", "AlexNet_Weights.IMAGENET1K_V1"),
    "vgg": ("vgg16", "VGG16_Weights.IMAGENET1K_V1"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights.IMAGENET1K_V1"),
}


def lpips_model(net="alex", version="0.1", backbone=True):
    if net not in LPIPS_TRUNKS:
        raise ValueError(
            "Unknown LPIPS net %r; allowed values are %s" % (net, tuple(LPIPS_TRUNKS))
        )
    fn, member = LPIPS_TRUNKS[net]
    files = [FileSpec("lpips", "weights/v%s/%s.pth" % (version, net))]
    if backbone:
        src = _hub_checkpoint_source(member)
        files.append(FileSpec("torch_hub", src.path, source=src))
    return Model(
        name="lpips-%s" % net,
        kind="lpips",
        label="LPIPS (net=%r, v%s)" % (net, version),
        files=tuple(files),
        note="trunk: torchvision %s" % fn,
    )


# --------------------------------------------------------------- DreamSim

# dreamsim 0.2.1, model.download_weights(): what the "ensemble" checkpoint
# zip unpacks into cache_dir.
DREAMSIM_ENSEMBLE_FILES = (
    "dino_vitb16_pretrain.pth",
    "open_clip_vitb16_pretrain.pth.tar",
    "clip_vitb16_pretrain.pth.tar",
    "ensemble_lora/adapter_config.json",
)
# PeftModel.from_pretrained reads one of these (safetensors first).
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# DreamSim calls torch.hub.set_dir(cache_dir) then
# torch.hub.load("facebookresearch/dino:main", "dino_vitb16"): torch.hub
# fetches the repo's zipball into <cache_dir>/facebookresearch_dino_main and
# its hubconf downloads this URL into <cache_dir>/checkpoints.
DINO_REPO_DIR = "facebookresearch_dino_main"
DINO_REPO_URL = "https://github.com/facebookresearch/dino/zipball/main"
DINO_VITB16_URL = (
    "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/"
    "dino_vitbase16_pretrain.pth"
)


def dreamsim_checkpoint_url(dreamsim_type="ensemble"):
    """Reads the checkpoint URL from dreamsim's config module without
    importing the (slow) package."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("dreamsim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "dreamsim is not installed; install it with `pip install dreamsim==0.2.1`"
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), "config.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "dreamsim_weights" for t in node.targets
        ):
            return ast.literal_eval(node.value)[dreamsim_type]
    raise ImportError("dreamsim_weights not found in %s" % path)


def dreamsim_model():
    zip_src = _source(dreamsim_checkpoint_url("ensemble"), "dreamsim", "", kind="zip")
    repo_src = _source(DINO_REPO_URL, "dreamsim", DINO_REPO_DIR, kind="zipball")
    dino_src = _source(DINO_VITB16_URL, "dreamsim", "checkpoints/" + url_filename(DINO_VITB16_URL))
    files = [FileSpec("dreamsim", f, source=zip_src) for f in DREAMSIM_ENSEMBLE_FILES]
    files.append(FileSpec("dreamsim", "ensemble_lora/" + PEFT_WEIGHTS[0],
                          alternatives=("ensemble_lora/" + PEFT_WEIGHTS[1],), source=zip_src))
    files.append(FileSpec("dreamsim", DINO_REPO_DIR + "/hubconf.py", source=repo_src))
    files.append(FileSpec("dreamsim", dino_src.path, source=dino_src))
    bundle = tuple(("dreamsim", f) for f in DREAMSIM_ENSEMBLE_FILES[:3]) + (
        ("dreamsim", "ensemble_lora"),
        ("dreamsim", DINO_REPO_DIR),
        ("dreamsim", dino_src.path),
    )
    return Model(name="dreamsim", kind="dreamsim", label="DreamSim (ensemble, dreamsim 0.2.1)",
                 files=tuple(files), bundle=bundle)


# ------------------------------------------------------------------ pyiqa


def timm_hf_files(model_name):
    """(HF repo id, file names) timm reads for ``create_model(model_name,
    pretrained=True)``; timm tries model.safetensors, then the .bin."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(model_name)
    return cfg.hf_hub_id, ("model.safetensors", "pytorch_model.bin")


def _maniqa_files(opts):
    from pyiqa.archs import maniqa_arch

    url = maniqa_arch.default_model_urls[opts.get("train_dataset", "pipal")]
    return [url], ["vit_base_patch8_224"]


# Metrics whose weight files were traced in pyiqa 0.1.16's sources:
# arch type -> function(metric_opts) -> ([pyiqa checkpoint URLs], [timm
# models created with pretrained=True]).
PYIQA_REQUIREMENTS = {
    "MANIQA": _maniqa_files,
    "Entropy": lambda opts: ([], []),
}


def pyiqa_model(metric, config):
    opts = config["metric_opts"]
    req = PYIQA_REQUIREMENTS.get(opts["type"])
    label = "pyiqa metric %r" % metric
    if req is None:
        return Model(name=metric, label=label, files=(), traced=False, kind="pyiqa",
                     note="files not traced; pyiqa downloads them itself")
    urls, timm_models = req(opts)
    files = []
    for url in urls:
        src = _source(url, "pyiqa", url_filename(url))
        files.append(FileSpec("pyiqa", src.path, source=src))
    for name in timm_models:
        repo, names = timm_hf_files(name)
        src = _source(hf_url(repo, names[0]), "huggingface", names[0], kind="hf", hf_repo=repo)
        files.append(FileSpec("huggingface", names[0], alternatives=names[1:], source=src,
                              hf_repo=repo))
    return Model(name=metric, label=label, files=tuple(files), kind="pyiqa")


# ----------------------------------------------------------- FiftyOne zoo


def _torchvision_zoo_weights(config):
    """The torchvision weights (``Enum.MEMBER``) a TorchvisionImageModel
    config loads, or None."""
    args = config.get("entrypoint_args") or {}
    weights = args.get("weights")
    if not isinstance(weights, str) or "." not in weights:
        return None
    import torchvision.models

    enum_name, member = weights.split(".", 1)
    enum = getattr(torchvision.models, enum_name, None)
    if enum is None or member not in enum.__members__:
        return None
    return "%s.%s" % (enum_name, enum[member].name)


def zoo_model(name):
    """The files of FiftyOne zoo model ``name``.

    The zoo file lives in ``fo.config.model_zoo_dir``. For torchvision zoo
    models FiftyOne also calls the torchvision builder with ``weights=...``:
    with fiftyone 1.22.1 and torchvision 0.29 its redirect of
    ``load_state_dict_from_url`` to the zoo dir does not reach
    ``torchvision.models._api`` (verified: loading ``vgg16-imagenet-torch``
    with only the zoo file tries to download into the torch hub cache), so
    the same file is also needed in ``torch.hub.get_dir()/checkpoints``; one
    download serves both.
    """
    import fiftyone.zoo.models as fozm

    model = fozm.get_zoo_model(name)  # ValueError if unknown
    manager = getattr(model, "manager", None)
    url = getattr(manager.config, "url", None) if manager is not None else None
    label = "FiftyOne zoo model %r" % name
    if model.base_filename is None or manager is None:
        return Model(name=name, label=label, files=(), traced=False,
                     note="no weights file in the zoo dir")
    zoo_rel = model.filename
    hub = None
    deploy = model.default_deployment_config_dict or {}
    if str(deploy.get("type", "")).endswith("TorchvisionImageModel"):
        member = _torchvision_zoo_weights(deploy.get("config") or {})
        if member is not None:
            hub = _hub_checkpoint_source(member)
    size = getattr(model, "size_bytes", None)
    files = []
    if url and hub is not None and hub.url == url:
        src = _source(url, "fiftyone_zoo", zoo_rel, size=size, also=(("torch_hub", hub.path),))
        files = [FileSpec("fiftyone_zoo", zoo_rel, source=src), FileSpec("torch_hub", hub.path, source=src)]
    else:
        src = _source(url, "fiftyone_zoo", zoo_rel, size=size) if url else None
        files = [FileSpec("fiftyone_zoo", zoo_rel, source=src)]
        if hub is not None:
            files.append(FileSpec("torch_hub", hub.path, source=hub))
    return Model(name=name, label=label, files=tuple(files))


# ----------------------------------------------------------------- lookup


def get_model(name):
    """The :class:`Model` ``name``: ``lpips-<net>``, ``dreamsim``, a pyiqa
    metric or a FiftyOne zoo model name.

    Raises:
        ValueError: if ``name`` is none of these
    """
    if not isinstance(name, str):
        raise ValueError("A model name must be a string; got %r" % (name,))
    if name.startswith("lpips-"):
        return lpips_model(name[len("lpips-"):])
    if name == "dreamsim":
        return dreamsim_model()
    try:
        from pyiqa.default_model_configs import DEFAULT_CONFIGS
    except ImportError:
        DEFAULT_CONFIGS = {}
    if name in DEFAULT_CONFIGS:
        return pyiqa_model(name, DEFAULT_CONFIGS[name])
    import fiftyone.zoo as foz

    if name in foz.list_zoo_models():
        return zoo_model(name)
    raise ValueError(
        "Unknown model %r; use one of %s, another pyiqa metric or a FiftyOne "
        "zoo model name" % (name, ", ".join(KNOWN_MODELS))
    )


def resolve_models(names=None):
    """:class:`Model` objects for ``names`` (default :data:`KNOWN_MODELS`)."""
    names = KNOWN_MODELS if names is None else names
    if isinstance(names, str):
        names = [names]
    return [get_model(n) for n in names]
