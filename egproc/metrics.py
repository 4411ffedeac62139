"""Distances and correlations between data and (corrected) MC, as in the ATLAS shower-shape studies.

Binned distances take weighted histogram contents ``p`` and ``q`` over the same bins, normalise
them to unit sum along the last axis, and reduce over that axis, so a stack of (pT, |η|)
categories is handled in one call:

* L1 distance   L1 = Σ_i |p_i − q_i|                         (0 … 2)
* Hellinger     H = (1/√2) · sqrt(Σ_i (√p_i − √q_i)²)        (0 … 1)
* Wasserstein   W₁ = ∫ |F(x) − G(x)| dx = Σ_i |F_i − G_i| Δx_i  (in the variable's unit)

with F, G the binned CDFs at the upper bin edges. :func:`wasserstein_samples` is the unbinned W₁
of two weighted samples.

A distance alone does not say whether MC is good: two independent data samples of finite size
are at a non-zero distance too. Every distance is therefore read against that data-vs-data noise
floor, :func:`ratio_to_floor` (≈ 1: MC indistinguishable from data at this statistics). For W₁ the
floor is its expectation, :func:`expected_wasserstein_distance`, rather than one draw of it: the
distance between two particular data samples scatters by tens of per cent from bin to bin, so the
worst bin of ratios to single draws is mostly the bin whose draw fell low — an independent data
sample, i.e. a perfect correction, reached worst-bin ratios of 1.6–4.1 that way.

Correlations between shower-shape variables are compared as matrices: weighted Pearson
(:func:`pearson_matrix`), weighted Spearman (:func:`spearman_matrix`, Pearson of weighted
mid-ranks) and their difference between two samples (:func:`correlation_difference`), whose floor
is again an expectation (:func:`expected_correlation_difference`): the largest of some 50
off-diagonal differences is dominated by the noisiest pair, for heavy-tailed isolations a few
extreme objects, so one data-vs-data draw of it moved by almost a factor 2 between toy seeds.

Reference: ATLAS Collaboration, shower-shape corrections for photons with ML morphing of MC
onto data; the distances above are the figures of merit used there.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "normalise",
    "l1_distance",
    "hellinger_distance",
    "wasserstein_distance",
    "expected_wasserstein_distance",
    "expected_l1_distance",
    "effective_entries",
    "wasserstein_samples",
    "ratio_to_floor",
    "pearson_matrix",
    "spearman_matrix",
    "correlation_difference",
    "expected_correlation_difference",
]


def normalise(counts: np.ndarray) -> np.ndarray:
    """Divide by the sum over the last axis; empty histograms stay all-zero."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def l1_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """L1 = Σ_i |p_i − q_i| of the normalised histograms: 0 for identical, 2 for disjoint shapes."""
    return np.abs(normalise(p) - normalise(q)).sum(axis=-1)


def hellinger_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """H = (1/√2)·sqrt(Σ_i (√p_i − √q_i)²) = sqrt(1 − Σ_i √(p_i q_i)): 0 identical, 1 disjoint."""
    # Negative weighted contents (possible with MC weights) have no probability meaning: clip them.
    root_p = np.sqrt(np.clip(normalise(p), 0.0, None))
    root_q = np.sqrt(np.clip(normalise(q), 0.0, None))
    return np.sqrt(((root_p - root_q) ** 2).sum(axis=-1) / 2.0)


def wasserstein_distance(p: np.ndarray, q: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """W₁ = Σ_i |F_i − G_i|·Δx_i with F, G the CDFs at the upper edges; ``edges`` has one more entry."""
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    cdf_gap = np.abs(np.cumsum(normalise(p), axis=-1) - np.cumsum(normalise(q), axis=-1))
    return (cdf_gap * widths).sum(axis=-1)


def effective_entries(counts: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Kish's effective number of entries (Σw)² / Σw² over the last axis, from a weighted
    histogram's contents (Σw per bin) and variances (Σw² per bin); 0 where the sum of squares is 0."""
    total = np.asarray(counts, dtype=np.float64).sum(axis=-1)
    squares = np.asarray(variances, dtype=np.float64).sum(axis=-1)
    return np.divide(total**2, squares, out=np.zeros_like(total), where=squares > 0)


def expected_wasserstein_distance(
    p: np.ndarray, edges: np.ndarray, entries_a: np.ndarray | float, entries_b: np.ndarray | float
) -> np.ndarray:
    """E[W₁] between the binned CDFs of two independent samples of ``entries_a`` and ``entries_b``
    (effective) entries drawn from the distribution with histogram ``p`` (normalised over the last
    axis): the data-vs-data noise floor of :func:`wasserstein_distance` at a given statistics.

    At each upper bin edge the empirical CDFs differ by F̂_a − F̂_b ≈ N(0, σ_i²) with
    σ_i² = F_i (1 − F_i) (1/n_a + 1/n_b) (binomial counts; for weighted samples n is Kish's
    effective number, :func:`effective_entries`), and E|N(0, σ²)| = σ √(2/π), so

        E[W₁] = √(2/π) · Σ_i √(F_i (1 − F_i) (1/n_a + 1/n_b)) · Δx_i,

    exact but for the normal approximation of each edge's count (by linearity of the expectation,
    correlations between edges do not enter). Scales as 1/√n like a real floor; a category with
    no entries on either side gives NaN.
    """
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    cdf = np.clip(np.cumsum(normalise(p), axis=-1), 0.0, 1.0)
    n_a = np.asarray(entries_a, dtype=np.float64)
    n_b = np.asarray(entries_b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where((n_a > 0) & (n_b > 0), 1.0 / n_a + 1.0 / n_b, np.nan)
    spread = (np.sqrt(cdf * (1.0 - cdf)) * widths).sum(axis=-1)
    return np.sqrt(2.0 / np.pi) * spread * np.sqrt(inverse)


def expected_l1_distance(
    p: np.ndarray, entries_a: float, entries_b: float, draws: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard deviation of :func:`l1_distance` between two independent samples of
    ``entries_a`` and ``entries_b`` (effective, :func:`effective_entries`) entries drawn from the
    distribution with histogram ``p`` (one histogram): the data-vs-data noise floor of L1 at a
    given statistics, and how far one draw of it scatters.

    By simulation (``draws`` pairs of multinomial samples, a fixed ``seed``, so the floor is
    reproducible): L1 sums |p̂_i − q̂_i| over bins, and the normal approximation
    E|p̂_i − q̂_i| ≈ √(2/π)·σ_i that :func:`expected_wasserstein_distance` uses per CDF edge
    overestimates bins with a few expected entries, where the count is mostly 0. Weighted MC
    enters with its Kish effective entries, so an MC sample with spread-out weights has a higher
    floor than the data sample it is compared with — the reason a second data sample's L1 alone
    is not the floor of a data-vs-MC comparison.
    """
    probability = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    if probability.ndim != 1 or probability.sum() <= 0:
        raise ValueError(f"expected_l1_distance needs one histogram with positive content, got shape {probability.shape}")
    probability = probability / probability.sum()
    n_a, n_b = (max(1, int(round(float(n)))) for n in (entries_a, entries_b))
    rng = np.random.default_rng(seed)
    a = rng.multinomial(n_a, probability, size=draws) / n_a
    b = rng.multinomial(n_b, probability, size=draws) / n_b
    distances = np.abs(a - b).sum(axis=-1)
    return float(distances.mean()), float(distances.std())


def _sample_weights(values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.ones(values.shape[0], dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (values.shape[0],):
        raise ValueError(f"weights have shape {weights.shape}, expected ({values.shape[0]},)")
    return weights


def wasserstein_samples(
    x: np.ndarray,
    y: np.ndarray,
    x_weights: np.ndarray | None = None,
    y_weights: np.ndarray | None = None,
) -> float:
    """Unbinned W₁ = ∫ |F(t) − G(t)| dt of two weighted 1-D samples.

    F and G are the weighted empirical CDFs, F(t) = Σ_{x_i ≤ t} w_i / Σ w_i; both are step functions,
    so the integral is exact as a sum over the gaps between the pooled sorted values. For
    non-negative weights this equals ``scipy.stats.wasserstein_distance``; unlike scipy, signed
    weights (NLO MC) are allowed, the CDFs then being those of a signed measure — the total
    weight of each sample must be positive. An empty sample, or one with non-positive total
    weight, gives NaN: there is no distribution to compare.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    x_weights, y_weights = _sample_weights(x, x_weights), _sample_weights(y, y_weights)
    x_total, y_total = x_weights.sum(), y_weights.sum()
    if x.size == 0 or y.size == 0 or not (x_total > 0 and y_total > 0):
        return float("nan")
    x_order, y_order = np.argsort(x), np.argsort(y)
    x_sorted, y_sorted = x[x_order], y[y_order]
    pooled = np.sort(np.concatenate([x_sorted, y_sorted]))
    # Both CDFs are constant on each gap [pooled_k, pooled_{k+1}): evaluate them at its left end.
    x_cumulative = np.concatenate([[0.0], np.cumsum(x_weights[x_order])]) / x_total
    y_cumulative = np.concatenate([[0.0], np.cumsum(y_weights[y_order])]) / y_total
    x_cdf = x_cumulative[np.searchsorted(x_sorted, pooled[:-1], side="right")]
    y_cdf = y_cumulative[np.searchsorted(y_sorted, pooled[:-1], side="right")]
    return float(np.sum(np.abs(x_cdf - y_cdf) * np.diff(pooled)))


def ratio_to_floor(value: np.ndarray | float, floor: np.ndarray | float) -> np.ndarray:
    """``value / floor``: a distance in units of the data-vs-data noise floor, elementwise.

    The policy for a zero floor follows IEEE division and is deliberate: a positive distance
    where two data samples agree exactly (floor 0) is infinitely significant (``inf``), and a zero
    distance over a zero floor carries no information (``nan``, not 1 — an empty category must
    not pass as a perfect one). Broadcasts like any numpy operation.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(np.asarray(value, dtype=np.float64), np.asarray(floor, dtype=np.float64))


def _as_columns(columns: np.ndarray) -> np.ndarray:
    columns = np.asarray(columns, dtype=np.float64)
    if columns.ndim != 2:
        raise ValueError(f"columns must be a 2-D array [n, k], got shape {columns.shape}")
    return columns


def pearson_matrix(columns: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted Pearson correlation matrix [k, k] of ``columns`` [n, k].

    ρ_jl = C_jl / sqrt(C_jj C_ll), C_jl = Σ_i w_i (x_ij − x̄_j)(x_il − x̄_l) / Σ_i w_i,
    x̄_j = Σ_i w_i x_ij / Σ_i w_i. Integer weights give exactly the matrix of the sample with rows
    repeated. A constant column has no correlation (NaN in its row and column); an empty sample
    or non-positive total weight gives all NaN.
    """
    columns = _as_columns(columns)
    weights = _sample_weights(columns, weights)
    k = columns.shape[1]
    total = weights.sum()
    if not total > 0:
        return np.full((k, k), np.nan)
    centred = columns - (weights @ columns) / total
    covariance = (centred * weights[:, None]).T @ centred / total
    scale = np.sqrt(np.diag(covariance))
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = covariance / np.outer(scale, scale)
    # Rounding can push the diagonal a few ulp past 1; NaNs pass through np.clip untouched.
    return np.clip(correlation, -1.0, 1.0)


def _weighted_midranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mid-rank of each value in the weighted empirical CDF: (W(< v) + W(≤ v)) / 2 / W."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    cumulative = np.concatenate([[0.0], np.cumsum(weights[order])])
    below = cumulative[np.searchsorted(sorted_values, values, side="left")]
    through = cumulative[np.searchsorted(sorted_values, values, side="right")]
    ranks = 0.5 * (below + through) / cumulative[-1]
    # A NaN has no rank; let it poison its column as it does for Pearson.
    return np.where(np.isnan(values), np.nan, ranks)


def spearman_matrix(columns: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted Spearman rank-correlation matrix [k, k]: Pearson of weighted mid-ranks.

    Each value's rank is its mid-rank in the weighted empirical CDF of its column,
    r(v) = (W(x < v) + W(x ≤ v)) / (2 W), so tied values share a rank and an entry of weight w
    counts as w tied copies. Unweighted, r = (R − ½)/n with R the usual average rank, an affine
    map, so the result equals the textbook Spearman ρ (``scipy.stats.spearmanr``) including ties.
    The ranks are then correlated with the same weights (:func:`pearson_matrix`). Invariant under
    any strictly increasing transform of a column; for a bivariate normal, ρ_S = (6/π)·arcsin(ρ/2).
    """
    columns = _as_columns(columns)
    weights = _sample_weights(columns, weights)
    if not weights.sum() > 0:
        return np.full((columns.shape[1], columns.shape[1]), np.nan)
    ranks = np.column_stack([_weighted_midranks(columns[:, j], weights) for j in range(columns.shape[1])])
    return pearson_matrix(ranks, weights)


def correlation_difference(
    a: np.ndarray,
    b: np.ndarray,
    weights_a: np.ndarray | None = None,
    weights_b: np.ndarray | None = None,
    method: Literal["pearson", "spearman"] = "pearson",
) -> tuple[np.ndarray, float]:
    """Δ = ρ(a) − ρ(b) [k, k] and max_{j≠l} |Δ_jl|, the largest mismodelled correlation.

    The diagonal is excluded from the maximum (it is 1 − 1 by construction); with a single
    column there is no off-diagonal and the maximum is 0. A NaN correlation (a constant column)
    propagates to the maximum rather than being skipped: an undefined correlation must not read
    as a well-modelled one.
    """
    matrix = {"pearson": pearson_matrix, "spearman": spearman_matrix}.get(method)
    if matrix is None:
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    a, b = _as_columns(a), _as_columns(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} columns and b has {b.shape[1]}")
    delta = matrix(a, weights_a) - matrix(b, weights_b)
    off_diagonal = ~np.eye(delta.shape[0], dtype=bool)
    max_abs = float(np.max(np.abs(delta[off_diagonal]))) if off_diagonal.any() else 0.0
    return delta, max_abs


def expected_correlation_difference(
    columns: np.ndarray,
    entries_a: float,
    entries_b: float,
    weights: np.ndarray | None = None,
    method: Literal["pearson", "spearman"] = "pearson",
    draws: int = 20,
    seed: int = 0,
) -> tuple[float, float]:
    """Mean and standard deviation of max |Δρ| (:func:`correlation_difference`) between two
    independent samples of ``entries_a`` and ``entries_b`` (effective, :func:`effective_entries`)
    objects from the population that the rows of ``columns`` (weighted by ``weights``) represent:
    the data-vs-data noise floor of a correlation comparison at a given statistics.

    By bootstrap (B. Efron, "Bootstrap methods: another look at the jackknife", Ann. Statist. 7,
    1979): each of ``draws`` pairs draws the two samples' rows with replacement, with probabilities
    ∝ the rows' weights. A maximum over pairs has no closed form, and the spread of a Pearson
    coefficient depends on the fourth moments of the columns, which the bootstrap carries and a
    normal approximation does not. Resampling the rows treats them as the population, so they
    should outnumber the samples (the report pools both data samples); a fixed ``seed`` keeps the
    floor reproducible.
    """
    columns = _as_columns(columns)
    probability = _sample_weights(columns, weights)
    if not probability.sum() > 0:
        raise ValueError("expected_correlation_difference needs rows with positive total weight")
    probability = probability / probability.sum()
    n_a, n_b = (max(2, int(round(float(n)))) for n in (entries_a, entries_b))
    rng = np.random.default_rng(seed)

    def sample(n: int) -> np.ndarray:
        return columns[rng.choice(len(columns), size=n, p=probability)]

    # A loop over bootstrap draws; each is vectorised over its rows.
    maxima = [correlation_difference(sample(n_a), sample(n_b), method=method)[1] for _ in range(draws)]
    return float(np.mean(maxima)), float(np.std(maxima))
