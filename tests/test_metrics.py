"""Distances and correlations against hand-computed and analytic answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from egproc import metrics


# --- binned distances -------------------------------------------------------------------------


def test_identical_histograms_are_at_distance_zero():
    p = np.array([3.0, 1.0, 0.0, 7.5, 2.0])
    edges = np.array([0.0, 1.0, 2.5, 3.0, 5.0, 6.0])
    assert metrics.l1_distance(p, p) == 0.0
    assert metrics.hellinger_distance(p, p) == pytest.approx(0.0, abs=1e-12)
    assert metrics.wasserstein_distance(p, p, edges) == 0.0


def test_disjoint_histograms_are_at_maximal_distance():
    p, q = np.array([2.0, 1.0, 0.0, 0.0]), np.array([0.0, 0.0, 4.0, 1.0])
    assert metrics.l1_distance(p, q) == pytest.approx(2.0)
    assert metrics.hellinger_distance(p, q) == pytest.approx(1.0)


def test_hand_computed_small_cases():
    # p = (1/2, 1/4, 1/4), q = (1/4, 1/4, 1/2) on bins of widths (1, 2, 1).
    p, q, edges = np.array([2.0, 1.0, 1.0]), np.array([1.0, 1.0, 2.0]), np.array([0.0, 1.0, 3.0, 4.0])
    assert metrics.l1_distance(p, q) == pytest.approx(0.25 + 0.0 + 0.25)
    # CDFs (1/2, 3/4, 1) and (1/4, 1/2, 1): gaps 1/4, 1/4, 0 times widths 1, 2, 1.
    assert metrics.wasserstein_distance(p, q, edges) == pytest.approx(0.25 * 1 + 0.25 * 2)
    # H² = 1 − Bhattacharyya coefficient; for (1, 0) vs (1/2, 1/2) the coefficient is √(1/2).
    assert metrics.hellinger_distance(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(
        np.sqrt(1.0 - np.sqrt(0.5))
    )
    # All mass moved by two bins of unit width.
    moved = metrics.wasserstein_distance(np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), np.arange(4.0))
    assert moved == pytest.approx(2.0)


def test_distances_do_not_depend_on_normalisation():
    rng = np.random.default_rng(1)
    p, q, edges = rng.uniform(0, 5, 20), rng.uniform(0, 5, 20), np.sort(rng.uniform(0, 10, 21))
    for distance in (metrics.l1_distance, metrics.hellinger_distance):
        assert distance(7.0 * p, 0.01 * q) == pytest.approx(distance(p, q), rel=1e-12)
    assert metrics.wasserstein_distance(7.0 * p, 0.01 * q, edges) == pytest.approx(
        metrics.wasserstein_distance(p, q, edges), rel=1e-12
    )


def test_stacked_categories_reduce_along_the_last_axis_only():
    rng = np.random.default_rng(2)
    p, q = rng.uniform(0, 5, (3, 4, 10)), rng.uniform(0, 5, (3, 4, 10))
    edges = np.linspace(0, 1, 11)
    distances = (
        metrics.l1_distance,
        metrics.hellinger_distance,
        lambda p, q: metrics.wasserstein_distance(p, q, edges),
    )
    for distance in distances:
        stacked = distance(p, q)
        assert stacked.shape == (3, 4)
        one_by_one = [[distance(p[i, j], q[i, j]) for j in range(4)] for i in range(3)]
        np.testing.assert_allclose(stacked, one_by_one, rtol=1e-12)


def test_shifted_gaussians_have_w1_equal_to_the_shift():
    # Same σ, means 0 and Δ: F(t) − G(t) = Φ(t) − Φ(t − Δ) integrates to exactly Δ.
    rng = np.random.default_rng(3)
    shift, n = 0.3, 200_000
    x, y = rng.normal(0.0, 1.0, n), rng.normal(shift, 1.0, n)
    edges = np.linspace(-7, 7, 561)
    binned = metrics.wasserstein_distance(np.histogram(x, edges)[0], np.histogram(y, edges)[0], edges)
    assert binned == pytest.approx(shift, abs=0.01)
    assert metrics.wasserstein_samples(x, y) == pytest.approx(shift, abs=0.01)


# --- unbinned W₁ ------------------------------------------------------------------------------


def test_wasserstein_samples_hand_computed():
    assert metrics.wasserstein_samples([0.0], [1.0]) == pytest.approx(1.0)
    # Half the mass moves from 1 to 3.
    assert metrics.wasserstein_samples([0.0, 1.0], [0.0, 3.0]) == pytest.approx(1.0)
    # Weights 3:1 put a quarter of the mass at 1; the other sample is all at 0.
    assert metrics.wasserstein_samples([0.0, 1.0], [0.0], x_weights=[3.0, 1.0]) == pytest.approx(0.25)
    assert metrics.wasserstein_samples([1.0, 2.0], [1.0, 2.0]) == 0.0


def test_wasserstein_samples_matches_scipy_for_positive_weights():
    rng = np.random.default_rng(4)
    x, y = rng.gamma(2.0, 1.0, 500), rng.normal(2.0, 1.5, 700)
    wx, wy = rng.uniform(0.1, 2.0, 500), rng.uniform(0.1, 2.0, 700)
    # Ties across the samples exercise the pooled step function.
    y[:50] = x[:50]
    assert metrics.wasserstein_samples(x, y, wx, wy) == pytest.approx(
        scipy.stats.wasserstein_distance(x, y, wx, wy), rel=1e-12
    )


def test_integer_weights_equal_repeated_entries():
    x, y = np.array([0.0, 1.0, 4.0]), np.array([0.5, 2.0])
    assert metrics.wasserstein_samples(x, y, x_weights=[2.0, 1.0, 3.0]) == pytest.approx(
        metrics.wasserstein_samples(np.repeat(x, [2, 1, 3]), y)
    )


def test_signed_weights_are_a_signed_measure():
    y = np.array([0.5, 2.0])
    # NLO MC: +1 and −1 at the same place is no event at all.
    assert metrics.wasserstein_samples([0.0, 1.0, 4.0, 9.0, 9.0], y, x_weights=[2, 1, 3, 1, -1]) == pytest.approx(
        metrics.wasserstein_samples([0.0, 1.0, 4.0], y, x_weights=[2, 1, 3])
    )
    # Weights (2, −1) at (0, 2): F = 2 on [0, 2) against G = 1, so W₁ = |2 − 1|·2.
    assert metrics.wasserstein_samples([0.0, 2.0], [0.0], x_weights=[2.0, -1.0]) == pytest.approx(2.0)


def test_wasserstein_samples_of_nothing_is_nan():
    assert np.isnan(metrics.wasserstein_samples([], [1.0]))
    assert np.isnan(metrics.wasserstein_samples([1.0, 2.0], [1.0], x_weights=[1.0, -1.0]))


# --- noise floor ------------------------------------------------------------------------------


def test_effective_entries_of_unit_and_unequal_weights():
    # Unit weights: the count itself; weights (1, 1, 2, 2): (6)² / 10 = 3.6.
    assert metrics.effective_entries(np.array([4.0, 3.0]), np.array([4.0, 3.0])) == pytest.approx(7.0)
    assert metrics.effective_entries(np.array([2.0, 4.0]), np.array([2.0, 8.0])) == pytest.approx(3.6)
    np.testing.assert_array_equal(metrics.effective_entries(np.zeros((2, 3)), np.zeros((2, 3))), [0.0, 0.0])


@pytest.mark.parametrize("n_a, n_b, weighted", [(400, 400, False), (3000, 800, False), (2000, 2000, True)])
def test_expected_w1_is_the_mean_distance_of_independent_samples(n_a, n_b, weighted):
    """The floor against its definition: the mean binned W₁ of many pairs of independent samples
    from one skewed distribution (a gamma with an exact-zero peak, like an isolation)."""
    rng = np.random.default_rng(11)
    edges = np.linspace(0.0, 10.0, 41)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        values = np.where(rng.random(n) < 0.4, 0.0, rng.gamma(1.5, 1.2, n))
        weights = rng.uniform(0.2, 1.8, n) if weighted else np.ones(n)
        clipped = np.clip(values, edges[0], edges[-1] - 1e-9)
        return np.histogram(clipped, edges, weights=weights)[0], np.histogram(clipped, edges, weights=weights**2)[0]

    pairs = [(draw(n_a), draw(n_b)) for _ in range(600)]
    distances = [metrics.wasserstein_distance(a[0], b[0], edges) for a, b in pairs]
    truth = draw(2_000_000)[0]
    # The entries of the first pair stand in for those of any pair (the weights are i.i.d.).
    (a_counts, a_squares), (b_counts, b_squares) = pairs[0]
    expected = metrics.expected_wasserstein_distance(
        truth, edges, metrics.effective_entries(a_counts, a_squares), metrics.effective_entries(b_counts, b_squares)
    )
    # 600 pairs: the mean is known to ~1.5 %; the normal approximation of each edge adds ~2 %.
    assert float(np.mean(distances)) == pytest.approx(float(expected), rel=0.05)
    # And the ratio scales like 1/√n: four times the entries, half the floor.
    quarter = metrics.expected_wasserstein_distance(truth, edges, 4 * n_a, 4 * n_b)
    assert quarter == pytest.approx(metrics.expected_wasserstein_distance(truth, edges, n_a, n_b) / 2)


def test_expected_w1_of_stacked_categories_and_empty_ones():
    p = np.array([[1.0, 1.0], [0.0, 0.0]])
    # F = (1/2, 1) at the upper edges of unit bins: √(2/π) · √(1/4 · (1/4 + 1/4)) · 1.
    expected = metrics.expected_wasserstein_distance(p, np.array([0.0, 1.0, 2.0]), np.array([4.0, 0.0]), 4.0)
    assert expected[0] == pytest.approx(np.sqrt(2 / np.pi) * np.sqrt(0.125))
    assert np.isnan(expected[1])


def test_expected_l1_against_exact_and_large_sample_answers():
    # One entry each: L1 is 0 when both land in the same bin, 2 otherwise: E = 2 (1 − Σ p²).
    mean, spread = metrics.expected_l1_distance(np.full(10, 3.0), 1, 1, draws=20_000, seed=1)
    assert mean == pytest.approx(1.8, abs=0.02)
    assert spread == pytest.approx(2 * np.sqrt(0.9 * 0.1), rel=0.03)  # 2 × Bernoulli(0.9)
    # Two equal bins, n entries each: L1 = 2|d|/n with d ~ N(0, n/2), so E = 2/√(πn) and
    # sd = E·√(π/2 − 1); four times the entries halve both.
    n = 10_000
    mean, spread = metrics.expected_l1_distance(np.array([1.0, 1.0]), n, n, draws=20_000, seed=2)
    assert mean == pytest.approx(2 / np.sqrt(np.pi * n), rel=0.02)
    assert spread == pytest.approx(2 / np.sqrt(np.pi * n) * np.sqrt(np.pi / 2 - 1), rel=0.03)
    quarter, _ = metrics.expected_l1_distance(np.array([1.0, 1.0]), 4 * n, 4 * n, draws=20_000, seed=2)
    assert quarter == pytest.approx(mean / 2, rel=0.03)
    # Reproducible for a seed, and a clear error for what is not one histogram.
    assert metrics.expected_l1_distance(np.arange(1.0, 6.0), 50, 80) == metrics.expected_l1_distance(np.arange(1.0, 6.0), 50, 80)
    with pytest.raises(ValueError, match="one histogram"):
        metrics.expected_l1_distance(np.ones((2, 3)), 10, 10)


def test_expected_l1_is_the_mean_distance_of_weighted_samples():
    """Weighted samples enter with their effective entries: the L1 between histograms of
    independent weighted samples scatters around the floor at their Kish entries."""
    rng = np.random.default_rng(8)
    truth = np.array([1.0, 4.0, 9.0, 6.0, 3.0, 1.0, 0.2])
    edges = np.arange(len(truth) + 1.0)
    n = 3000
    distances, entries = [], []
    for _ in range(400):
        a = rng.choice(len(truth), n, p=truth / truth.sum()) + 0.5
        b = rng.choice(len(truth), n, p=truth / truth.sum()) + 0.5
        w = rng.exponential(1.0, n)  # Kish entries n / 2
        p, _ = np.histogram(a, edges)
        q, _ = np.histogram(b, edges, weights=w)
        distances.append(metrics.l1_distance(p, q))
        entries.append(w.sum() ** 2 / (w**2).sum())
    mean, spread = metrics.expected_l1_distance(truth, n, float(np.mean(entries)))
    assert float(np.mean(distances)) == pytest.approx(mean, rel=0.05)
    assert float(np.std(distances)) == pytest.approx(spread, rel=0.15)
    unweighted, _ = metrics.expected_l1_distance(truth, n, n)
    assert mean > 1.1 * unweighted


def test_ratio_to_floor_policy():
    ratio = metrics.ratio_to_floor(np.array([2.0, 0.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(ratio, [2.0, 0.0, np.inf, np.nan])
    # Broadcasts: a per-category floor against a stack of distances.
    np.testing.assert_allclose(metrics.ratio_to_floor(np.ones((2, 3)), np.array([1.0, 2.0, 4.0])), [[1, 0.5, 0.25]] * 2)


# --- correlations -----------------------------------------------------------------------------


def bivariate(rng, rho, n, k=3):
    """k standard normals with corr(x0, x1) = rho and the rest independent."""
    covariance = np.eye(k)
    covariance[0, 1] = covariance[1, 0] = rho
    return rng.multivariate_normal(np.zeros(k), covariance, size=n)


def test_pearson_recovers_a_known_correlation_and_matches_numpy():
    rng = np.random.default_rng(5)
    sample = bivariate(rng, 0.6, 50_000)
    matrix = metrics.pearson_matrix(sample)
    np.testing.assert_allclose(matrix, np.corrcoef(sample, rowvar=False), atol=1e-12)
    # Statistical error of r: (1 − ρ²)/√n ≈ 0.003.
    assert matrix[0, 1] == pytest.approx(0.6, abs=0.015)
    assert abs(matrix[0, 2]) < 0.015


def test_weighted_pearson_recovers_the_target_of_importance_weights():
    # Draw independent wide normals and weight them to the ρ = 0.6 bivariate normal.
    rng = np.random.default_rng(6)
    n, spread, rho = 400_000, 1.5, 0.6
    x = rng.normal(0, spread, (n, 2))
    target = scipy.stats.multivariate_normal([0, 0], [[1, rho], [rho, 1]]).logpdf(x)
    proposal = scipy.stats.norm(0, spread).logpdf(x).sum(axis=1)
    weights = np.exp(target - proposal)
    assert abs(metrics.pearson_matrix(x)[0, 1]) < 0.01
    assert metrics.pearson_matrix(x, weights)[0, 1] == pytest.approx(rho, abs=0.02)


def test_integer_weights_equal_repeated_rows():
    rng = np.random.default_rng(7)
    sample = bivariate(rng, 0.4, 200)
    sample[:20, 2] = sample[20:40, 2]  # ties, which the weighted ranks must share
    repeats = rng.integers(1, 4, 200)
    repeated = np.repeat(sample, repeats, axis=0)
    for matrix in (metrics.pearson_matrix, metrics.spearman_matrix):
        np.testing.assert_allclose(matrix(sample, repeats.astype(float)), matrix(repeated), atol=1e-12)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(8)
    sample = np.round(bivariate(rng, 0.5, 2000), 1)  # rounding makes many ties
    np.testing.assert_allclose(metrics.spearman_matrix(sample), scipy.stats.spearmanr(sample).statistic, atol=1e-12)


def test_spearman_of_a_monotone_transform_is_pearson_of_the_ranks():
    rng = np.random.default_rng(9)
    sample = bivariate(rng, 0.6, 5000)
    transformed = np.column_stack([np.exp(sample[:, 0]), sample[:, 1] ** 3, np.arctan(sample[:, 2])])
    ranks = np.column_stack([scipy.stats.rankdata(c) for c in transformed.T])
    np.testing.assert_allclose(metrics.spearman_matrix(transformed), metrics.pearson_matrix(ranks), atol=1e-12)
    # ...and invariant under the transform, unlike Pearson.
    np.testing.assert_allclose(metrics.spearman_matrix(transformed), metrics.spearman_matrix(sample), atol=1e-12)
    assert abs(metrics.pearson_matrix(transformed)[0, 1] - metrics.pearson_matrix(sample)[0, 1]) > 0.05


def test_spearman_of_a_bivariate_normal_is_the_analytic_value():
    rng = np.random.default_rng(10)
    rho = 0.6
    assert metrics.spearman_matrix(bivariate(rng, rho, 100_000))[0, 1] == pytest.approx(
        6 / np.pi * np.arcsin(rho / 2), abs=0.01
    )


def test_correlation_difference_is_noise_for_one_distribution_and_the_gap_otherwise():
    rng = np.random.default_rng(11)
    a, a_again, b = bivariate(rng, 0.6, 50_000), bivariate(rng, 0.6, 50_000), bivariate(rng, 0.3, 50_000)
    for method in ("pearson", "spearman"):
        delta, max_abs = metrics.correlation_difference(a, a_again, method=method)
        assert delta.shape == (3, 3)
        assert max_abs < 0.02
        delta, max_abs = metrics.correlation_difference(a, b, method=method)
        expected = 0.3 if method == "pearson" else 6 / np.pi * (np.arcsin(0.3) - np.arcsin(0.15))
        assert delta[0, 1] == pytest.approx(expected, abs=0.02)
        assert max_abs == pytest.approx(expected, abs=0.02)
    assert metrics.correlation_difference(a[:, :1], b[:, :1])[1] == 0.0


def test_undefined_correlations_are_nan_not_zero():
    sample = np.column_stack([np.arange(10.0), np.ones(10)])
    matrix = metrics.pearson_matrix(sample)
    assert matrix[0, 0] == pytest.approx(1.0)
    assert np.isnan(matrix[0, 1]) and np.isnan(matrix[1, 1])
    assert np.isnan(metrics.correlation_difference(sample, sample)[1])
    with pytest.raises(ValueError):
        metrics.correlation_difference(sample, sample, method="kendall")


def test_expected_correlation_difference_against_the_large_sample_answer():
    """Two columns: max |Δρ| = |r_a − r_b|, and for a bivariate normal r is normal about ρ with
    σ² = (1 − ρ²)²/n (Pearson), 1/n for independent columns (Spearman), so E|r_a − r_b| is
    √(2/π) times σ_a ⊕ σ_b. The bootstrap is also reproducible and scales as 1/√n."""
    rng = np.random.default_rng(12)
    rho, n_a, n_b = 0.6, 4_000, 2_500
    population = bivariate(rng, rho, 200_000)[:, :2]
    mean, spread = metrics.expected_correlation_difference(population, n_a, n_b, draws=300)
    analytic = np.sqrt(2 / np.pi) * (1 - rho**2) * np.sqrt(1 / n_a + 1 / n_b)
    assert mean == pytest.approx(analytic, rel=0.08)
    assert spread == pytest.approx(np.sqrt(1 - 2 / np.pi) / np.sqrt(2 / np.pi) * analytic, rel=0.15)  # half-normal
    independent = rng.normal(size=(200_000, 2))
    mean, _ = metrics.expected_correlation_difference(independent, n_a, n_b, method="spearman", draws=300)
    assert mean == pytest.approx(np.sqrt(2 / np.pi) * np.sqrt(1 / n_a + 1 / n_b), rel=0.08)

    again = metrics.expected_correlation_difference(population, 16 * n_a, 16 * n_b, draws=100)
    assert again == metrics.expected_correlation_difference(population, 16 * n_a, 16 * n_b, draws=100)
    assert again[0] == pytest.approx(analytic / 4, rel=0.15)


def test_expected_correlation_difference_draws_with_the_rows_weights():
    """Weighted rows stand for the population they are weighted to: rows of two correlations,
    weighted so that only the ρ = 0.3 ones count, give the floor of ρ = 0.3 alone."""
    rng = np.random.default_rng(13)
    strong, weak = bivariate(rng, 0.95, 100_000)[:, :2], bivariate(rng, 0.3, 100_000)[:, :2]
    rows = np.concatenate([strong, weak])
    weights = np.concatenate([np.zeros(len(strong)), np.ones(len(weak))])
    mean, _ = metrics.expected_correlation_difference(rows, 3_000, 3_000, weights, draws=300)
    assert mean == pytest.approx(np.sqrt(2 / np.pi) * (1 - 0.3**2) * np.sqrt(2 / 3_000), rel=0.1)
    with pytest.raises(ValueError, match="positive total weight"):
        metrics.expected_correlation_difference(rows, 10, 10, np.zeros(len(rows)))
