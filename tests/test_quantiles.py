"""Quantile regression building blocks: non-crossing quantiles, the pinball loss, exact morphing of
affine pairs, TorchScript equality, and a fit against analytic conditional quantiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import expon, norm

from egproc.quantiles import LEVELS, QuantileMorph, QuantileNetwork, fit, pinball_loss

TAUS = np.asarray(LEVELS)


def test_levels_are_the_21_of_the_cms_method():
    assert len(LEVELS) == 21 and LEVELS[0] == 0.01 and LEVELS[-1] == 0.99 and LEVELS[10] == 0.5
    assert np.all(np.diff(TAUS) > 0)


def test_quantiles_never_cross_even_far_from_the_training_range():
    torch.manual_seed(3)
    network = QuantileNetwork([0.0, 0.0], [1.0, 1.0], 0.0, 1.0, hidden=(16, 16))
    with torch.no_grad():
        assert torch.all(torch.diff(network(torch.randn(5000, 2)), dim=1) > 0)
    for layer in network.net:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=3.0)  # a wild network, not a trained one
    with torch.no_grad():
        wild = network(torch.cat([torch.randn(5000, 2), 1e3 * torch.randn(200, 2)]))
    # Quantiles of size 1e5 make float32 steps coarser than the 1e-4 floor, but never negative.
    assert torch.all(torch.diff(wild, dim=1) >= 0)


def test_pinball_loss_known_values_and_minimum_at_the_quantile():
    levels = torch.tensor([0.1, 0.5, 0.9])
    predicted = torch.tensor([[0.0, 0.0, 0.0]])
    # y = 1 above every prediction: τ·(y − q) per level = 0.1 + 0.5 + 0.9
    assert float(pinball_loss(predicted, torch.tensor([1.0]), levels)) == pytest.approx(1.5)
    # y = −2 below: (τ − 1)(y − q) = 0.9·2 + 0.5·2 + 0.1·2
    assert float(pinball_loss(predicted, torch.tensor([-2.0]), levels)) == pytest.approx(3.0)
    weights = torch.tensor([3.0, 1.0])
    two = pinball_loss(torch.zeros(2, 3), torch.tensor([1.0, -2.0]), levels, weights)
    assert float(two) == pytest.approx((3 * 1.5 + 1 * 3.0) / 4)

    sample = torch.from_numpy(np.random.default_rng(1).exponential(size=4001))
    level = torch.tensor([0.3], dtype=torch.float64)
    exact = torch.quantile(sample, 0.3)
    at_quantile = pinball_loss(exact.reshape(1, 1).expand(len(sample), 1), sample, level)
    for offset in (-0.05, 0.05):
        shifted = pinball_loss((exact + offset).reshape(1, 1).expand(len(sample), 1), sample, level)
        assert float(shifted) > float(at_quantile)


def gaussian_knots(mean, sigma):
    return mean + sigma * norm.ppf(TAUS)


@pytest.mark.parametrize("source, target", [((0.0, 1.0), (1.0, 2.0)), ((0.009, 0.0008), (0.0095, 0.0009))])
def test_morphing_is_exact_for_an_affine_pair_tails_included(source, target):
    y = np.concatenate([np.linspace(source[0] - 6 * source[1], source[0] + 6 * source[1], 2001)])
    knots_s = np.broadcast_to(gaussian_knots(*source), (len(y), len(TAUS)))
    knots_t = np.broadcast_to(gaussian_knots(*target), (len(y), len(TAUS)))
    morphed = QuantileMorph()(torch.from_numpy(y), torch.from_numpy(knots_s.copy()), torch.from_numpy(knots_t.copy()))
    expected = target[0] + target[1] * (y - source[0]) / source[1]
    np.testing.assert_allclose(morphed.numpy(), expected, rtol=1e-10, atol=1e-12 * target[1])


def test_morphing_a_non_affine_pair_follows_the_quantile_map_between_knots():
    # exponential(1) onto N(0, 1): Q_t(F_s(y)) = Φ⁻¹(1 − e^{−y}); exact at the knots, close between
    y = expon.ppf(np.linspace(0.02, 0.98, 500))
    knots_s = np.broadcast_to(expon.ppf(TAUS), (len(y), len(TAUS))).copy()
    knots_t = np.broadcast_to(norm.ppf(TAUS), (len(y), len(TAUS))).copy()
    morphed = QuantileMorph()(torch.from_numpy(y), torch.from_numpy(knots_s), torch.from_numpy(knots_t)).numpy()
    exact = norm.ppf(expon.cdf(y))
    assert np.all(np.diff(morphed) > 0)
    # Linear interpolation between knots: close where they are 0.05 apart, coarser between the
    # 0.01 and 0.05 knots, where this map is most curved.
    core = (expon.cdf(y) > 0.05) & (expon.cdf(y) < 0.95)
    assert np.max(np.abs(morphed - exact)[core]) < 0.03
    assert np.max(np.abs(morphed - exact)) < 0.15
    at_knots = QuantileMorph()(torch.from_numpy(expon.ppf(TAUS)), torch.from_numpy(knots_s[:21]), torch.from_numpy(knots_t[:21]))
    np.testing.assert_allclose(at_knots.numpy(), norm.ppf(TAUS), atol=1e-12)


def test_torchscript_export_gives_identical_outputs():
    torch.manual_seed(0)
    network = QuantileNetwork([1.0, -2.0, 0.5], [2.0, 1.0, 0.1], 0.01, 0.002, hidden=(8,))
    x = torch.randn(1000, 3)
    scripted_network = torch.jit.script(network)
    assert torch.equal(scripted_network(x), network(x))
    y = torch.randn(1000) * 0.002 + 0.01
    source, target = network(x), network(x + 0.1)
    assert torch.equal(torch.jit.script(QuantileMorph())(y, source, target), QuantileMorph()(y, source, target))


def test_fit_recovers_analytic_conditional_quantiles():
    """y | x ~ N(2x, (0.6 + 0.3x)²), a smooth heteroscedastic truth: predicted quantiles within
    0.06 of the truth (σ ≤ 0.9) for levels 0.05–0.95 and within 0.1 for 0.01 and 0.99, whose
    statistical error is larger."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, size=(30_000, 1))
    sigma = 0.6 + 0.3 * x[:, 0]
    y = 2 * x[:, 0] + sigma * rng.normal(size=len(x))
    network = QuantileNetwork.for_sample(x, y, hidden=(32, 32), seed=0)
    history = fit(network, x, y, epochs=20, batch_size=512, learning_rate=5e-3, seed=1)
    assert history[-1] < history[0]
    grid = np.linspace(-0.9, 0.9, 7)[:, None]
    with torch.no_grad():
        predicted = network(torch.from_numpy(grid.astype(np.float32))).numpy()
    truth = 2 * grid + (0.6 + 0.3 * grid) * norm.ppf(TAUS)[None, :]
    error = np.abs(predicted - truth)
    assert np.max(error[:, 1:-1]) < 0.06, error.max(axis=0)
    assert np.max(error) < 0.1, error.max(axis=0)


def test_untrained_network_predicts_the_gaussian_of_the_sample():
    rng = np.random.default_rng(0)
    y = rng.normal(3.0, 0.5, size=20_000)
    network = QuantileNetwork.for_sample(rng.normal(size=(20_000, 2)), y, seed=0)
    with torch.no_grad():
        quantiles = network(torch.zeros(1, 2)).numpy()[0]
    np.testing.assert_allclose(quantiles, 3.0 + 0.5 * norm.ppf(TAUS), atol=0.05)


def test_fit_is_deterministic_for_a_seed():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(3000, 2)), rng.normal(size=3000)
    first, second = QuantileNetwork.for_sample(x, y, hidden=(8,), seed=4), QuantileNetwork.for_sample(x, y, hidden=(8,), seed=4)
    fit(first, x, y, epochs=2, seed=5)
    fit(second, x, y, epochs=2, seed=5)
    probe = torch.from_numpy(x[:50].astype(np.float32))
    assert torch.equal(first(probe), second(probe))
