"""Core fits against analytic answers: a Gaussian core with a one-sided exponential tail."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from egproc.corefit import CoreFit, fit_core, fit_core_binned

MU, SIGMA = 0.010, 0.001  # a σ_iηiη-like scale, to check the fit does not care about units
TAIL_FRACTION, TAIL_START, TAIL_SCALE = 0.15, 2.0, 3.0  # tail: μ + (2 + Exp(3))·σ

# Mixture moments: the tail adds f·(2 + 3)σ to the mean, and variance f·9σ² + f(1 − f)(5σ)²
# on top of (1 − f)σ² (law of total variance; the tail's own variance is its scale squared).
TRUE_MEAN = MU + TAIL_FRACTION * (TAIL_START + TAIL_SCALE) * SIGMA
TRUE_RMS = SIGMA * math.sqrt(
    (1 - TAIL_FRACTION) + TAIL_FRACTION * TAIL_SCALE**2
    + TAIL_FRACTION * (1 - TAIL_FRACTION) * (TAIL_START + TAIL_SCALE) ** 2
)


def core_with_tail(rng: np.random.Generator, n: int) -> np.ndarray:
    core = rng.normal(MU, SIGMA, n)
    tail = MU + (TAIL_START + rng.exponential(TAIL_SCALE, n)) * SIGMA
    return np.where(rng.uniform(size=n) < TAIL_FRACTION, tail, core)


def pull(value: float, truth: float, error: float) -> float:
    return abs(value - truth) / error


def test_core_fit_finds_the_core_while_the_tail_pulls_the_mean():
    fit = fit_core(core_with_tail(np.random.default_rng(0), 50_000))
    assert fit.converged
    assert pull(fit.peak, MU, fit.peak_error) < 3
    assert pull(fit.core_width, SIGMA, fit.core_width_error) < 3
    # The moments see the whole distribution: the mixture's analytic mean and RMS...
    assert pull(fit.mean, TRUE_MEAN, fit.mean_error) < 4
    assert pull(fit.rms, TRUE_RMS, fit.rms_error) < 4
    # ...so the mean is pulled far off the peak (0.75σ, ~70 standard errors), the peak is not.
    assert fit.mean - MU > 20 * fit.mean_error
    assert fit.rms > 2 * fit.core_width


def test_errors_of_a_pure_gaussian_are_the_textbook_ones():
    n = 40_000
    fit = fit_core(np.random.default_rng(2).normal(0.0, 1.0, n))
    assert fit.n_effective == n
    assert fit.mean_error == pytest.approx(fit.rms / math.sqrt(n), rel=1e-12)
    # σ(RMS) = σ/√(2n) for a Gaussian (m₄ = 3σ⁴); the 4th moment is itself estimated, hence 5%.
    assert fit.rms_error == pytest.approx(1.0 / math.sqrt(2 * n), rel=0.05)


def test_error_estimates_match_the_scatter_over_toys():
    rng = np.random.default_rng(3)
    fits = [fit_core(core_with_tail(rng, 20_000)) for _ in range(30)]
    assert all(f.converged for f in fits)
    for value in ("peak", "core_width", "mean", "rms"):
        error = f"{value}_error"
        scatter = np.std([getattr(f, value) for f in fits], ddof=1)
        quoted = np.mean([getattr(f, error) for f in fits])
        # 30 toys know the scatter to ~13%: a loose band that still catches a factor √2 either way.
        assert 0.72 < scatter / quoted < 1.38, (value, scatter / quoted)
    # Nor is the core fit biased at this level: the mean of 30 peaks is within 3 errors of μ.
    peaks = np.array([f.peak for f in fits])
    assert pull(peaks.mean(), MU, peaks.std(ddof=1) / math.sqrt(len(peaks))) < 3


def test_binned_and_unbinned_fits_agree():
    values = core_with_tail(np.random.default_rng(4), 50_000)
    edges = np.linspace(0.0, 0.08, 801)  # 0.1σ bins, wide enough to hold the tail
    counts, _ = np.histogram(values, edges)
    unbinned, binned = fit_core(values), fit_core_binned(counts, counts.astype(float), edges)
    assert binned.converged and unbinned.converged
    assert binned.n_effective == unbinned.n_effective
    # Same events: the moments differ only by the position within the bins...
    assert binned.mean == pytest.approx(unbinned.mean, abs=0.05 * unbinned.mean_error)
    assert binned.rms == pytest.approx(unbinned.rms, abs=0.05 * unbinned.rms_error)
    # ...and the fits by the binning of the core (fine vs 0.1σ): well within the errors.
    assert binned.peak == pytest.approx(unbinned.peak, abs=0.5 * unbinned.peak_error)
    assert binned.core_width == pytest.approx(unbinned.core_width, abs=0.5 * unbinned.core_width_error)
    assert binned.peak_error == pytest.approx(unbinned.peak_error, rel=0.2)
    # variances=None means unweighted counts.
    assert fit_core_binned(counts, None, edges) == binned


def test_coarse_bins_do_not_bias_the_bin_integrated_model():
    # 1σ bins, off-centre: a Gaussian evaluated at bin centres would fit σ·√(1 + 1/12) ≈ 1.04σ,
    # ten standard errors off at this statistics; the bin-integrated model is exact.
    values = np.random.default_rng(5).normal(MU, SIGMA, 200_000)
    edges = MU + SIGMA * np.arange(-8.3, 8.0, 1.0)
    counts, _ = np.histogram(values, edges)
    fit = fit_core_binned(counts, counts.astype(float), edges, window=3.0)
    assert fit.converged
    assert pull(fit.peak, MU, fit.peak_error) < 3
    assert pull(fit.core_width, SIGMA, fit.core_width_error) < 3


def test_weights_are_honoured():
    # Importance weights turn N(0, 1.5²) into N(0.3, 1): the fit must see the target.
    rng = np.random.default_rng(6)
    x = rng.normal(0.0, 1.5, 200_000)
    weights = np.exp(scipy.stats.norm(0.3, 1.0).logpdf(x) - scipy.stats.norm(0.0, 1.5).logpdf(x))
    fit = fit_core(x, weights)
    assert fit.converged
    assert fit.n_effective < 0.9 * x.size
    assert pull(fit.peak, 0.3, fit.peak_error) < 3
    assert pull(fit.core_width, 1.0, fit.core_width_error) < 3
    assert pull(fit.mean, 0.3, fit.mean_error) < 3
    assert pull(fit.rms, 1.0, fit.rms_error) < 3
    # A common scale of the weights changes nothing, errors included (Kish n_eff is invariant).
    scaled = fit_core(x, 7.0 * weights)
    for field in ("peak", "peak_error", "core_width", "core_width_error", "mean_error", "rms_error", "n_effective"):
        assert getattr(scaled, field) == pytest.approx(getattr(fit, field), rel=1e-6)


def assert_failed_core(fit: CoreFit) -> None:
    assert not fit.converged
    assert all(np.isnan([fit.peak, fit.peak_error, fit.core_width, fit.core_width_error]))


def test_sparse_and_empty_inputs_give_nan_not_exceptions():
    few = fit_core([0.010, 0.011, 0.0105])
    assert_failed_core(few)
    assert few.mean == pytest.approx(0.0105) and few.n_effective == 3

    empty = fit_core(np.array([]))
    assert_failed_core(empty)
    assert np.isnan(empty.mean) and np.isnan(empty.rms) and empty.n_effective == 0

    spike = fit_core(np.full(100, 0.01))
    assert_failed_core(spike)
    assert spike.mean == pytest.approx(0.01) and spike.rms == 0.0

    edges = np.linspace(0, 1, 11)
    assert_failed_core(fit_core_binned(np.zeros(10), np.zeros(10), edges))
    # A histogram that does not resolve the core: everything in one bin.
    one_bin = np.zeros(10)
    one_bin[4] = 1000.0
    coarse = fit_core_binned(one_bin, None, edges)
    assert_failed_core(coarse)
    assert coarse.mean == pytest.approx(0.45)
