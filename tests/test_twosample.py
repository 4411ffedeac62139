"""Classifier two-sample test against the analytic optimal AUC of two Gaussians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from egproc.twosample import TwoSampleResult, _weighted_auc, classifier_auc

N = 20_000


@pytest.fixture(autouse=True)
def one_openmp_thread():
    # On a shared, oversubscribed runner the OpenMP spin-waits of gradient boosting cost 10–50×;
    # one thread keeps each test near a second (the fits are small) without changing what is tested.
    with threadpool_limits(1, user_api="openmp"):
        yield

SHIFT = 0.5  # in units of σ, in the first of three features


def gaussians(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    sample = rng.normal(size=(n, 3))
    sample[:, 0] += shift
    return sample


def optimal_auc(shift: float) -> float:
    # Unit-variance Gaussians: the best score is x₀ itself, and x₀(b) − x₀(a) ~ N(Δ, 2).
    return float(scipy.stats.norm.cdf(shift / math.sqrt(2.0)))


def test_one_distribution_gives_one_half():
    rng = np.random.default_rng(1)
    result = classifier_auc(gaussians(rng, N), gaussians(rng, N))
    assert isinstance(result, TwoSampleResult)
    assert abs(result.auc - 0.5) < 0.02
    assert len(result.aucs) == 3 and result.auc == pytest.approx(np.mean(result.aucs))
    assert 0 < result.auc_std < 0.02
    assert (result.n_a, result.n_b) == (N, N)


def test_a_shift_gives_the_optimal_auc():
    rng = np.random.default_rng(2)
    result = classifier_auc(gaussians(rng, N), gaussians(rng, N, SHIFT))
    assert optimal_auc(SHIFT) == pytest.approx(0.638, abs=1e-3)
    assert result.auc == pytest.approx(optimal_auc(SHIFT), abs=0.02)


def test_weights_are_honoured():
    # w(x) = p_a(x)/p_b(x) = exp(−Δ·x₀ + Δ²/2) turns the shifted sample b back into a.
    rng = np.random.default_rng(3)
    a, b = gaussians(rng, N), gaussians(rng, N, SHIFT)
    weights_b = np.exp(-SHIFT * b[:, 0] + 0.5 * SHIFT**2)
    assert abs(classifier_auc(a, b, weights_b=weights_b).auc - 0.5) < 0.02
    # And the converse, which only a classifier trained with the weights passes: weighting a to
    # the shifted distribution makes it separable from an unshifted sample.
    weights_a = np.exp(SHIFT * a[:, 0] - 0.5 * SHIFT**2)
    assert classifier_auc(gaussians(rng, N), a, weights_b=weights_a).auc == pytest.approx(optimal_auc(SHIFT), abs=0.03)


def test_subsampling_is_deterministic_per_seed():
    rng = np.random.default_rng(4)
    a, b = gaussians(rng, 12_000), gaussians(rng, 9_000, SHIFT)
    first = classifier_auc(a, b, seeds=(5, 6), max_rows_per_sample=4_000, max_iter=50)
    again = classifier_auc(a, b, seeds=(5, 6), max_rows_per_sample=4_000, max_iter=50)
    assert (first.n_a, first.n_b) == (4_000, 4_000)
    assert first == again
    # Different seeds draw different subsamples and splits, hence a spread.
    assert first.aucs[0] != first.aucs[1]
    single = classifier_auc(a, b, seeds=(5,), max_rows_per_sample=4_000, max_iter=50)
    assert single.aucs == first.aucs[:1] and math.isnan(single.auc_std)


def test_weighted_auc_matches_sklearn_and_accepts_signed_weights():
    rng = np.random.default_rng(5)
    score = np.round(rng.uniform(size=2_000), 2)  # many ties
    is_b = rng.uniform(size=2_000) < 0.4
    weight = rng.uniform(0.1, 3.0, 2_000)
    expected = roc_auc_score(is_b, score, sample_weight=weight)
    assert _weighted_auc(score, is_b, weight) == pytest.approx(expected, rel=1e-12)
    # Hand-computed, signed: b at score 1 (w 1); a at 0 (w 2), 0.5 (w −1) and 2 (w 1), W_a = 2.
    # b is above the a-weight 2 − 1 = 1 of W_a = 2: AUC = 1/2 (|w| would give 3/4, clipping 2/3).
    score, is_b = np.array([1.0, 0.0, 0.5, 2.0]), np.array([True, False, False, False])
    assert _weighted_auc(score, is_b, np.array([1.0, 2.0, -1.0, 1.0])) == pytest.approx(0.5)


def test_invalid_input_is_refused():
    a = np.zeros((10, 3))
    with pytest.raises(ValueError):
        classifier_auc(a, np.zeros((10, 2)))
    with pytest.raises(ValueError):
        classifier_auc(a, a, weights_a=np.ones(9))
    with pytest.raises(ValueError):
        classifier_auc(a, a, test_fraction=1.0)
