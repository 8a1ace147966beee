"""Re-rankers: finer distances between a generated image and its candidates.

A re-ranker turns the K candidates recalled by the index into distances
``d_ij`` (smaller is more similar). Feature-based re-rankers embed each
distinct image once per chunk of generated images; only the candidates that
chunk needs are loaded.
"""

import inspect

import numpy as np

from gmv_plugin.images import read_images

RERANKERS = ("none", "l2", "lpips", "dreamsim")


class Reranker(object):
    """Base class: computes distances between images and their candidates."""

    name = None

    def check(self):
        """Raises before any work if the re-ranker cannot run here."""

    def config(self):
        """JSON-serializable parameters recorded with the run."""
        return {"name": self.name}

    def distances(self, gen_paths, cand_paths):
        """Returns a float32 ``(len(gen_paths), K)`` array of distances.

        Args:
            gen_paths: a list of generated image paths
            cand_paths: a list (one per generated image) of K candidate paths
        """
        raise NotImplementedError


class FeatureReranker(Reranker):
    """A re-ranker whose distance compares per-image feature vectors."""

    batch_size = 64

    def features(self, paths):
        """Returns an ``(N, D)`` float array of features for ``paths``."""
        raise NotImplementedError

    def pair_distances(self, gen_feats, cand_feats):
        """Distances between ``(N, D)`` and ``(N, K, D)`` features."""
        raise NotImplementedError

    def distances(self, gen_paths, cand_paths):
        unique = sorted({p for row in cand_paths for p in row})
        pos = {p: i for i, p in enumerate(unique)}
        feats = self._batched_features(unique)
        gen_feats = self._batched_features(list(gen_paths))
        idx = np.array([[pos[p] for p in row] for row in cand_paths])
        return self.pair_distances(gen_feats, feats[idx]).astype(np.float32)

    def _batched_features(self, paths):
        chunks = [
            self.features(paths[i : i + self.batch_size])
            for i in range(0, len(paths), self.batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0))


class L2Reranker(FeatureReranker):
    """Root-mean-square pixel difference at ``size x size``.

    Pixels are in ``[0, 1]``, so distances are in ``[0, 1]`` whatever the
    resolution; ``mode`` is ``"RGB"`` or ``"L"`` (grayscale).
    """

    name = "l2"

    def __init__(self, size=32, mode="RGB", batch_size=256):
        if mode not in ("RGB", "L"):
            raise ValueError("mode must be one of ('RGB', 'L'); got %r" % mode)
        self.size = int(size)
        self.mode = mode
        self.batch_size = batch_size

    def config(self):
        return {"name": self.name, "size": self.size, "mode": self.mode}

    def features(self, paths):
        return read_images(paths, self.size, self.mode).reshape(len(paths), -1)

    def pair_distances(self, gen_feats, cand_feats):
        diff = cand_feats - gen_feats[:, None, :]
        return np.sqrt(np.mean(diff * diff, axis=2))


def get_reranker(rerank, **params):
    """Returns a :class:`Reranker` for a name in :data:`RERANKERS` or an
    instance, or ``None`` for ``"none"``.

    ``params`` are passed to the re-ranker's constructor (e.g. ``size``,
    ``net``).
    """
    if isinstance(rerank, Reranker):
        return rerank
    if rerank == "none" or rerank is None:
        return None
    if rerank == "l2":
        return L2Reranker(**params)
    if rerank == "lpips":
        from gmv_plugin.perceptual import LPIPSReranker

        return LPIPSReranker(**params)
    if rerank == "dreamsim":
        from gmv_plugin.perceptual import DreamSimReranker

        return DreamSimReranker(**params)
    raise ValueError(
        "Unknown rerank %r; allowed values are %s or a Reranker instance"
        % (rerank, RERANKERS)
    )


def accepted_params(cls, params):
    """The entries of ``params`` that ``cls``'s constructor takes."""
    names = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in params.items() if k in names and k != "self"}


def reranker_from_config(config):
    """Rebuilds a re-ranker from its recorded :meth:`Reranker.config`, or
    returns None for ``"none"``."""
    name = config.get("name", "none")
    if name == "none":
        return None
    if name == "l2":
        cls = L2Reranker
    else:
        from gmv_plugin import perceptual

        cls = {"lpips": perceptual.LPIPSReranker, "dreamsim": perceptual.DreamSimReranker}[name]
    return cls(**accepted_params(cls, config))
