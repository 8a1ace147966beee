"""Perceptual re-rankers: LPIPS and DreamSim.

Both load their real pretrained models. Missing weights are downloaded on
first use where allowed; otherwise the check fails fast, before any image is
read (see :mod:`gmv_plugin.weights`).
"""

import contextlib
import warnings

import numpy as np

from gmv_plugin.images import ImageReadError, read_images
from gmv_plugin.rerank import FeatureReranker, Reranker
from gmv_plugin.weights import (
    LPIPS_NETS,
    check_dreamsim,
    check_lpips,
    dreamsim_cache_dir,
)


def default_device(device=None):
    """``device`` as a ``torch.device``; CUDA when available if ``None``."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


_PAIR_BYTES = 256 * 2**20  # working memory when combining pairs


class LPIPSReranker(Reranker):
    """LPIPS distance (Zhang et al. 2018) between each generated image and
    its candidates, with the ``lpips`` package's network (version 0.1).

    LPIPS of a pair is the sum over trunk layers of the spatial mean of the
    linearly weighted squared difference of channel-normalised features.
    The trunk features depend on one image only, so they are computed once
    per distinct image of a chunk and pairs are combined from them; this
    equals ``lpips.LPIPS.forward`` on the pair. Images are read as RGB at
    ``size x size`` (grayscale is replicated to 3 channels) and scaled to
    ``[-1, 1]``.

    Args:
        net ("alex"): the trunk, one of ``"alex"``, ``"vgg"``, ``"squeeze"``
        size (64): images are resized to ``size x size``
        device (None): torch device; CUDA when available, else CPU
        batch_size (64): images per trunk forward pass; pairs are combined
            ``8 * batch_size`` at a time at most (fewer for large features)
        random_backbone (False): TEST-ONLY wiring check: a randomly
            initialised trunk (``lpips.LPIPS(pnet_rand=True)``, fixed seed)
            with the real linear layers. Its distances are NOT a perceptual
            metric; never use it for a valuation.
        cache_mb (1024): memory budget for cached features; larger chunks
            are split
    """

    name = "lpips"
    version = "0.1"

    def __init__(
        self,
        net="alex",
        size=64,
        device=None,
        batch_size=64,
        random_backbone=False,
        cache_mb=1024,
    ):
        if net not in LPIPS_NETS:
            raise ValueError(
                "Unknown LPIPS net %r; allowed values are %s" % (net, LPIPS_NETS)
            )
        self.net = net
        self.size = int(size)
        self.device = device
        self.batch_size = int(batch_size)
        self.random_backbone = bool(random_backbone)
        self.cache_mb = float(cache_mb)
        self._model = None
        self._bytes_per_image = None

    def check(self):
        check_lpips(self.net, self.version, backbone=not self.random_backbone)

    def config(self):
        return {
            "name": self.name,
            "net": self.net,
            "size": self.size,
            "version": self.version,
            "random_backbone": self.random_backbone,
        }

    @property
    def model(self):
        """The loaded ``lpips.LPIPS`` module (loaded on first use)."""
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self):
        check_lpips(self.net, self.version, backbone=not self.random_backbone, download=True)
        import lpips
        import torch

        self.device = default_device(self.device)
        rng = torch.random.fork_rng(devices=[]) if self.random_backbone else None
        with rng or contextlib.nullcontext(), warnings.catch_warnings():
            # lpips passes torchvision's deprecated ``pretrained=`` argument
            warnings.simplefilter("ignore", UserWarning)
            if self.random_backbone:
                torch.manual_seed(0)
            model = lpips.LPIPS(
                net=self.net,
                version=self.version,
                pretrained=True,
                pnet_rand=self.random_backbone,
                verbose=False,
            )
        model = model.to(self.device).eval().requires_grad_(False)
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.size, self.size, device=self.device)
            feats = self._trunk(model, probe)
        self._bytes_per_image = sum(f.numel() * f.element_size() for f in feats)
        return model

    @staticmethod
    def _trunk(model, x):
        """Unit-normalised trunk features of ``x`` in ``[0, 1]``."""
        import lpips

        outs = model.net(model.scaling_layer(2 * x - 1))
        return [lpips.normalize_tensor(o) for o in outs]

    def image_features(self, paths):
        """Per-layer normalised trunk features of ``paths`` (torch tensors
        on the model's device)."""
        import torch

        model = self.model
        layers = None
        with torch.no_grad():
            for i in range(0, len(paths), self.batch_size):
                x = read_images(paths[i : i + self.batch_size], self.size, "RGB")
                feats = self._trunk(model, torch.from_numpy(x).to(self.device))
                if layers is None:
                    layers = [[f] for f in feats]
                else:
                    for acc, f in zip(layers, feats):
                        acc.append(f)
        return [torch.cat(acc) for acc in layers]

    def combine(self, feats, ia, ib):
        """LPIPS of the pairs ``(ia[p], ib[p])`` of rows of ``feats``."""
        import torch

        model = self.model
        ia = torch.as_tensor(ia, device=self.device)
        ib = torch.as_tensor(ib, device=self.device)
        out = torch.empty(len(ia), dtype=torch.float32, device=self.device)
        # each pair holds two gathered features and their squared difference
        step = max(
            1, min(8 * self.batch_size, _PAIR_BYTES // (3 * self._bytes_per_image))
        )
        with torch.no_grad():
            for s in range(0, len(ia), step):
                a, b = ia[s : s + step], ib[s : s + step]
                total = 0
                for lin, f in zip(model.lins, feats):
                    diff = (f[a] - f[b]) ** 2
                    total = total + lin(diff).mean(dim=(2, 3))
                out[s : s + step] = total[:, 0]
        return out.cpu().numpy()

    def distances(self, gen_paths, cand_paths):
        self.check()
        gen_paths = list(gen_paths)
        rows = [list(r) for r in cand_paths]
        if len(rows) != len(gen_paths):
            raise ValueError("gen_paths and cand_paths differ in length")
        k = len(rows[0]) if rows else 0
        if any(len(r) != k for r in rows):
            raise ValueError(
                "every generated image needs the same number K of candidates"
            )
        out = np.zeros((len(gen_paths), k), dtype=np.float32)
        if not gen_paths or k == 0:
            return out
        _ = self.model  # loads and measures the per-image feature size
        limit = max(1, int(self.cache_mb * 2**20 // self._bytes_per_image))
        for lo, hi in _chunks(gen_paths, rows, limit):
            unique = sorted(
                {gen_paths[j] for j in range(lo, hi)}.union(
                    p for r in rows[lo:hi] for p in r
                )
            )
            pos = {p: i for i, p in enumerate(unique)}
            feats = self.image_features(unique)
            ia = np.repeat([pos[gen_paths[j]] for j in range(lo, hi)], k)
            ib = np.array([pos[p] for r in rows[lo:hi] for p in r])
            out[lo:hi] = self.combine(feats, ia, ib).reshape(hi - lo, k)
        return out


def _chunks(gen_paths, rows, limit):
    """Consecutive row ranges whose distinct images number at most
    ``limit`` (a single row may exceed it)."""
    lo, seen = 0, set()
    for j, (g, r) in enumerate(zip(gen_paths, rows)):
        new = seen.union([g], r)
        if seen and len(new) > limit:
            yield lo, j
            lo, new = j, {g}.union(r)
        seen = new
    yield lo, len(rows)


@contextlib.contextmanager
def keep_torch_hub_dir():
    """Restores torch.hub's directory on exit.

    ``dreamsim()`` calls ``torch.hub.set_dir(cache_dir)``, a process-wide
    setting that would otherwise redirect later torchvision/pyiqa lookups.
    """
    import torch.hub

    saved = getattr(torch.hub, "_hub_dir", None)
    try:
        yield
    finally:
        torch.hub._hub_dir = saved


def read_images_bicubic(paths, size):
    """RGB images as float32 ``(N, 3, size, size)`` in ``[0, 1]``, resized
    with PIL bicubic (DreamSim's preprocessing: ``Resize(BICUBIC)`` then
    ``ToTensor``)."""
    import os

    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(paths), 3, size, size), dtype=np.float32)
    for i, path in enumerate(paths):
        if not os.path.isfile(path):
            raise ImageReadError("Image file not found: %s" % path)
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((size, size), Image.BICUBIC)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ImageReadError("Cannot read image %s: %s" % (path, e)) from e
        out[i] = arr.transpose(2, 0, 1)
    return out


class DreamSimReranker(FeatureReranker):
    """DreamSim distance (Fu et al. 2023), the paper's best re-ranker.

    Each image is embedded once with the DreamSim "ensemble" model (DINO,
    CLIP and OpenCLIP ViT-B/16 with LoRA, ``dreamsim 0.2.1``); the distance
    is ``1 - cosine similarity`` of the embeddings, exactly
    ``PerceptualModel.forward``.

    Args:
        size (224): images are resized (bicubic) to ``size x size``; 224 is
            DreamSim's resolution
        cache_dir (None): the weights folder; ``$GMV_DREAMSIM_DIR`` or
            ``~/.cache/dreamsim`` by default
        device (None): torch device; CUDA when available, else CPU
        batch_size (32): images per forward pass
    """

    name = "dreamsim"

    def __init__(self, size=224, cache_dir=None, device=None, batch_size=32):
        self.size = int(size)
        self.cache_dir = dreamsim_cache_dir(cache_dir)
        self.device = device
        self.batch_size = int(batch_size)
        self._model = None

    def check(self):
        check_dreamsim(self.cache_dir)

    def config(self):
        return {"name": self.name, "size": self.size, "dreamsim_type": "ensemble"}

    @property
    def model(self):
        """The loaded DreamSim model (loaded on first use)."""
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self):
        check_dreamsim(self.cache_dir, download=True)
        self.device = default_device(self.device)
        with keep_torch_hub_dir():
            from dreamsim import dreamsim

            model, _ = dreamsim(
                pretrained=True, device=str(self.device), cache_dir=self.cache_dir
            )
        return model

    def distances(self, gen_paths, cand_paths):
        self.check()
        rows = [list(r) for r in cand_paths]
        k = len(rows[0]) if rows else 0
        if not rows or k == 0:
            return np.zeros((len(rows), k), dtype=np.float32)
        return super().distances(list(gen_paths), rows)

    def features(self, paths):
        import torch

        model = self.model
        x = torch.from_numpy(read_images_bicubic(paths, self.size))
        with torch.no_grad():
            emb = model.embed(x.to(self.device))
        return emb.float().cpu().numpy().reshape(len(paths), -1)

    def pair_distances(self, gen_feats, cand_feats):
        g = gen_feats / np.maximum(
            np.linalg.norm(gen_feats, axis=-1, keepdims=True), 1e-8
        )
        c = cand_feats / np.maximum(
            np.linalg.norm(cand_feats, axis=-1, keepdims=True), 1e-8
        )
        return 1.0 - np.einsum("nd,nkd->nk", g, c)
