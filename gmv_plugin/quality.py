"""Quality scores q_j of generated images.

- ``"none"``: every generated image has quality 1 (no calibration).
- ``"realism"``: weight-free; how well a generated image sits inside the
  training manifold in embedding space (see :func:`realism_scores`).
- ``"maniqa"`` (the paper's choice) or any other higher-is-better pyiqa
  no-reference metric by name.
"""

import numpy as np

QUALITY_BUILTINS = ("none", "realism")


class QualityScorer(object):
    """Base class for image-quality models scoring image files."""

    name = None

    def check(self):
        """Raises before any work if the model cannot run here."""

    def config(self):
        """JSON-serializable parameters recorded with the run."""
        return {"name": self.name}

    def scores(self, paths):
        """Returns a float array of non-negative scores, one per path."""
        raise NotImplementedError


def get_quality(quality, **params):
    """Returns ``None`` for "none", ``"realism"`` for the built-in realism
    score, or a :class:`QualityScorer` for a pyiqa metric name or instance.
    """
    if isinstance(quality, QualityScorer):
        return quality
    if quality is None or quality == "none":
        return None
    if quality == "realism":
        return "realism"
    if not isinstance(quality, str):
        raise ValueError(
            "quality must be one of %s, a pyiqa metric name such as 'maniqa', "
            "or a QualityScorer; got %r" % (QUALITY_BUILTINS, quality)
        )
    from gmv_plugin.iqa import PyiqaQuality

    return PyiqaQuality(metric=quality, **params)


def realism_scores(gen_dists, cand_radii):
    """Realism of generated images relative to their nearest training images.

    Following the realism score of Kynkaanniemi et al. (2019): each training
    image ``x_i`` has a radius ``r_i``, the distance to its k-th nearest
    training neighbour; a generated image ``g`` has realism
    ``max_i r_i / d(g, x_i)`` over its recalled candidates. Values >= 1 mean
    ``g`` lies inside some training image's neighbourhood. The score is
    clipped to ``[0, 1]``, so in-manifold generations keep full credit and
    off-manifold ones hand out proportionally less.

    Args:
        gen_dists: ``(N, K)`` embedding distances from each generated image to
            its candidates
        cand_radii: ``(N, K)`` k-NN radii of those candidates

    Returns:
        a float32 array of N scores in ``[0, 1]``
    """
    ratio = cand_radii / np.maximum(gen_dists, 1e-12)
    return np.clip(ratio.max(axis=1), 0.0, 1.0).astype(np.float32)


def quality_from_config(config):
    """Rebuilds what :func:`get_quality` returned from a run's recorded
    quality config."""
    name = config.get("name", "none")
    if name in QUALITY_BUILTINS:
        return get_quality(name)
    from gmv_plugin.iqa import PyiqaQuality
    from gmv_plugin.rerank import accepted_params

    return PyiqaQuality(**accepted_params(PyiqaQuality, config))
