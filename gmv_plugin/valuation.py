"""GMValuator's value equations (METHOD.md, Eq. 3 and Eq. 4)."""

import numpy as np


def resolve_temperature(distances, temperature):
    """Returns ``temperature`` as a float; ``"auto"`` is the median spread
    (standard deviation) of each generated image's contributor distances, so
    that credit concentrates the same way whatever the distance's scale."""
    if temperature == "auto":
        d = np.asarray(distances, dtype=np.float64)
        spread = float(np.median(d.std(axis=1))) if d.size else 0.0
        return spread if spread > 0 else 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
        raise ValueError("temperature must be a number > 0 or 'auto'; got %r" % (temperature,))
    if not temperature > 0:
        raise ValueError("temperature must be a number > 0 or 'auto'; got %r" % (temperature,))
    return float(temperature)


def contribution_scores(distances, quality=None, temperature=1.0):
    """Eq. 4: the credit each generated image gives its top-k contributors.

    ``V(x_i, g_j) = q_j * exp(-d_ij / tau) / sum_{i' in P_j} exp(-d_i'j / tau)``

    Args:
        distances: ``(m, k)`` distances from each generated image to its
            contributors
        quality (None): ``(m,)`` quality scores ``q_j``; 1 when None
        temperature (1.0): ``tau > 0``, 1 being the paper's definition, or
            ``"auto"`` (see :func:`resolve_temperature`)

    Returns:
        an ``(m, k)`` float64 array whose rows sum to ``q_j``
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError("distances must be an (m, k) array")
    logits = -d / resolve_temperature(d, temperature)
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)
    if quality is not None:
        q = np.asarray(quality, dtype=np.float64)
        if (q < 0).any():
            raise ValueError("quality scores must be >= 0")
        w *= q[:, None]
    return w


def accumulate_values(contributors, scores, num_train):
    """Eq. 3: sums credit over generated images per training image.

    Args:
        contributors: ``(m, k)`` training row indices (distinct per row)
        scores: ``(m, k)`` credits from :func:`contribution_scores`
        num_train: the number of training images

    Returns:
        ``(values, hits)``: float64 values and int64 counts of the generated
        images each training image contributes to
    """
    idx = np.asarray(contributors).ravel()
    values = np.bincount(idx, weights=np.asarray(scores).ravel(), minlength=num_train)
    hits = np.bincount(idx, minlength=num_train)
    return values, hits
