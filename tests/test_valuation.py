"""Eq. 3 / Eq. 4 against hand-computed cases."""

import numpy as np
import pytest

from gmv_plugin.valuation import accumulate_values, contribution_scores, resolve_temperature


def test_softmax_of_negative_distances_matches_hand_computation():
    d = np.array([[0.0, 1.0, 2.0]])
    e = np.exp([0.0, -1.0, -2.0])
    np.testing.assert_allclose(contribution_scores(d)[0], e / e.sum())


def test_each_generated_image_hands_out_exactly_its_quality():
    rng = np.random.default_rng(0)
    d = rng.random((50, 7)) * 5
    q = rng.random(50)
    s = contribution_scores(d, q, temperature=0.3)
    np.testing.assert_allclose(s.sum(axis=1), q)
    assert (s >= 0).all()


def test_temperature_limits():
    d = np.array([[0.1, 0.2, 0.9]])
    hot = contribution_scores(d, temperature=1e6)
    np.testing.assert_allclose(hot, np.full((1, 3), 1 / 3), atol=1e-6)
    cold = contribution_scores(d, temperature=1e-4)
    np.testing.assert_allclose(cold, [[1.0, 0.0, 0.0]], atol=1e-12)


def test_huge_distances_do_not_overflow():
    s = contribution_scores(np.array([[1e4, 1e4 + 1]]))
    assert np.isfinite(s).all()
    np.testing.assert_allclose(s.sum(), 1.0)


def test_auto_temperature_is_scale_free():
    rng = np.random.default_rng(1)
    d = rng.random((20, 5))
    np.testing.assert_allclose(
        contribution_scores(d, temperature="auto"),
        contribution_scores(d * 1000, temperature="auto"),
    )
    assert resolve_temperature(d, "auto") == pytest.approx(np.median(d.std(axis=1)))
    assert resolve_temperature(np.zeros((2, 3)), "auto") == 1.0


@pytest.mark.parametrize("tau", [0, -1.0, "hot", True])
def test_temperature_must_be_positive(tau):
    with pytest.raises(ValueError, match="temperature"):
        contribution_scores(np.zeros((1, 2)), temperature=tau)


def test_negative_quality_is_refused():
    with pytest.raises(ValueError, match="quality"):
        contribution_scores(np.zeros((1, 2)), quality=[-0.5])


def test_values_sum_credit_and_zero_outside_top_k():
    idx = np.array([[0, 1], [1, 2]])
    scores = np.array([[0.6, 0.4], [0.3, 0.2]])
    values, hits = accumulate_values(idx, scores, num_train=5)
    np.testing.assert_allclose(values, [0.6, 0.7, 0.2, 0.0, 0.0])
    np.testing.assert_array_equal(hits, [1, 2, 1, 0, 0])
    assert values.sum() == pytest.approx(scores.sum())
