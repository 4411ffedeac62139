"""Parameter evolution of a shower-shape distribution: moments and the Gaussian core.

Shower shapes have a narrow core and a one-sided tail (conversions, pileup, overlapping
showers). The ATLAS shower-shape study follows two kinds of parameters across (pT, |η|) bins,
for data, MC and corrected MC:

* the weighted **mean** and **RMS** (standard deviation Σ w (x − x̄)² / Σ w, ROOT's convention,
  no Bessel factor), which the tail pulls, with uncertainties from the Kish effective number of
  entries n_eff = (Σ w)² / Σ w²:

      σ(x̄) = RMS / √n_eff,        σ(RMS) = sqrt(m₄ − m₂²) / (2 · RMS · √n_eff)

  (m_k the central moments; the second is the delta method on Var(m₂) ≈ (m₄ − m₂²)/n, which for a
  Gaussian reduces to RMS / √(2 n));
* the **peak** μ and **core width** σ of a Gaussian fitted to the core only, by weighted least
  squares to a histogram with per-bin variances Σ w², iterated in a window μ ± window·σ around
  the previous fit. The tail hardly enters the window, so μ and σ describe the core and are not
  pulled. The model is the Gaussian *integrated* over each bin,
  N·[Φ((hi − μ)/σ) − Φ((lo − μ)/σ)], exact for any bin width, so coarse histograms
  (:func:`fit_core_binned`) are not biased by the bin width. Errors are from the fit covariance
  (``absolute_sigma``: the per-bin variances are real uncertainties, not relative ones).

The first window is centred on the weighted median with width IQR/1.349 (the Gaussian σ from the
interquartile range), robust against the tail where the mean and RMS are not.

:func:`fit_core` works on a sample (re-histogramming the window finely at each iteration);
:func:`fit_core_binned` on a histogram, e.g. one (pT, |η|) slice of a processor's ``hist``
output. Both share the moment and fitting code. Neither raises on sparse or empty input: a fit
that cannot be done gives ``converged=False`` and NaN peak and width.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import ndtr

__all__ = ["CoreFit", "fit_core", "fit_core_binned"]

#: IQR of a unit Gaussian, 2·Φ⁻¹(3/4): IQR / this estimates σ.
_GAUSSIAN_IQR = 1.3489795003921634
#: Fewest non-empty bins in the window for a 3-parameter fit with at least one degree of freedom.
_MIN_FILLED_BINS = 4

# (counts, variances, edges) of the entries in the window [lo, hi].
_Histogram = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class CoreFit:
    """Moments and Gaussian-core parameters of one distribution (NaN where not determinable).

    ``converged`` is true when every iteration of the core fit succeeded with a finite covariance
    and a peak inside its window; mean and RMS are filled whenever there are entries.
    """

    mean: float
    mean_error: float
    rms: float
    rms_error: float
    peak: float
    peak_error: float
    core_width: float
    core_width_error: float
    n_effective: float
    converged: bool


def _moments(values: np.ndarray, weights: np.ndarray, n_effective: float) -> tuple[float, float, float, float]:
    """Weighted mean, its error, RMS and its error (see the module docstring)."""
    total = weights.sum()
    if not (total > 0 and n_effective > 0):
        return (np.nan,) * 4
    mean = float(weights @ values / total)
    deviation = values - mean
    m2 = float(weights @ deviation**2 / total)
    m4 = float(weights @ deviation**4 / total)
    rms = np.sqrt(max(m2, 0.0))
    if n_effective < 2 or rms == 0:
        # One effective entry (or a spike) has a spread but no measurable uncertainty on it.
        return mean, np.nan, rms, np.nan
    mean_error = rms / np.sqrt(n_effective)
    rms_error = np.sqrt(max(m4 - m2**2, 0.0) / n_effective) / (2.0 * rms)
    return mean, float(mean_error), float(rms), float(rms_error)


def _start(points: np.ndarray, cumulative: np.ndarray) -> tuple[float, float]:
    """Median and IQR/1.349 from a CDF given at ``points`` (cumulative weight, not normalised)."""
    # Negative weights can make the cumulative sum dip; a monotone envelope is fine for a start value.
    cumulative = np.maximum.accumulate(np.clip(cumulative, 0.0, None))
    if not cumulative[-1] > 0:
        return np.nan, np.nan
    q25, q50, q75 = np.interp([0.25, 0.5, 0.75], cumulative / cumulative[-1], points)
    return float(q50), float((q75 - q25) / _GAUSSIAN_IQR)


def _binned_gaussian(edges: np.ndarray, norm: float, mu: float, sigma: float) -> np.ndarray:
    """N·[Φ(z_hi) − Φ(z_lo)] per bin, z = (edge − μ)/σ."""
    return norm * np.diff(ndtr((edges - mu) / sigma))


def _binned_gaussian_jacobian(edges: np.ndarray, norm: float, mu: float, sigma: float) -> np.ndarray:
    """∂/∂(N, μ, σ) of :func:`_binned_gaussian`, [bins, 3].

    Analytic rather than finite differences: MINPACK's step is relative to |μ|, and μ ≈ 0 in the
    standardised units once the window is centred on the previous fit, which made the numerical
    derivative, hence the covariance, garbage.
    """
    z = (edges - mu) / sigma
    density = np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)
    return np.column_stack(
        [np.diff(ndtr(z)), -norm * np.diff(density) / sigma, -norm * np.diff(density * z) / sigma]
    )


def _fit_gaussian(histogram: _Histogram, centre: float, width: float) -> tuple[float, float, float, float] | None:
    """One weighted least-squares fit of the bin-integrated Gaussian: (μ, σ(μ), σ, σ(σ)) or None."""
    counts, variances, edges = histogram
    total = counts.sum()
    if np.count_nonzero(counts > 0) < _MIN_FILLED_BINS or not total > 0:
        return None
    positive = variances > 0
    if not positive.any():
        return None
    # An empty bin has observed variance 0, which would give it infinite weight; it is given the
    # smallest variance seen, that of about one entry, so that it still says "little is here".
    variances = np.where(positive, variances, variances[positive].min())
    # Fit in standardised units u = (x − centre)/width with unit total, so that the three
    # parameters are O(1) whatever the variable's scale (σ_ieie ~ 1e-2, isolations ~ 1 GeV).
    u_edges = (edges - centre) / width
    norm_start = 1.0 / max(ndtr(u_edges[-1]) - ndtr(u_edges[0]), 1e-3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            parameters, covariance = curve_fit(
                _binned_gaussian,
                u_edges,
                counts / total,
                p0=(norm_start, 0.0, 1.0),
                sigma=np.sqrt(variances) / total,
                absolute_sigma=True,
                jac=_binned_gaussian_jacobian,
                maxfev=2000,
            )
    except (RuntimeError, ValueError):
        return None
    errors = np.sqrt(np.diag(covariance))
    _, mu, sigma = parameters
    if not (np.all(np.isfinite(errors)) and np.isfinite(sigma) and sigma != 0):
        return None
    # A peak outside the window means the window holds no core (e.g. a monotone slope was fitted).
    if not u_edges[0] <= mu <= u_edges[-1]:
        return None
    return centre + width * mu, width * errors[1], width * abs(sigma), width * errors[2]


def _iterate(
    histogram_in: Callable[[float, float], _Histogram],
    centre: float,
    width: float,
    window: float,
    iterations: int,
) -> tuple[float, float, float, float, bool]:
    """Fit, re-centre the window μ ± window·σ on the result, repeat ``iterations`` times."""
    failed = (np.nan, np.nan, np.nan, np.nan, False)
    if not (np.isfinite(centre) and np.isfinite(width) and width > 0) or iterations < 1:
        return failed
    for _ in range(iterations):
        result = _fit_gaussian(histogram_in(centre - window * width, centre + window * width), centre, width)
        if result is None:
            return failed
        centre, centre_error, width, width_error = result
    return centre, centre_error, width, width_error, True


def _result(
    moments: tuple[float, float, float, float],
    core: tuple[float, float, float, float, bool],
    n_effective: float,
) -> CoreFit:
    mean, mean_error, rms, rms_error = moments
    peak, peak_error, core_width, core_width_error, converged = core
    return CoreFit(
        mean=float(mean),
        mean_error=float(mean_error),
        rms=float(rms),
        rms_error=float(rms_error),
        peak=float(peak),
        peak_error=float(peak_error),
        core_width=float(core_width),
        core_width_error=float(core_width_error),
        n_effective=float(n_effective),
        converged=bool(converged),
    )


def fit_core(
    values: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    window: float = 1.5,
    bins: int = 60,
    iterations: int = 3,
) -> CoreFit:
    """Moments and Gaussian core of a weighted sample (see the module docstring).

    Each iteration histograms the entries in μ ± window·σ into ``bins`` equal bins (per-bin
    variance Σ w²) and fits them; non-finite values are dropped.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if weights.shape != values.shape:
        raise ValueError(f"weights have shape {weights.shape}, values {values.shape}")
    finite = np.isfinite(values) & np.isfinite(weights)
    values, weights = values[finite], weights[finite]

    sum_w2 = float(weights @ weights)
    n_effective = weights.sum() ** 2 / sum_w2 if sum_w2 > 0 else 0.0
    moments = _moments(values, weights, n_effective)
    if values.size == 0:
        return _result(moments, (np.nan, np.nan, np.nan, np.nan, False), n_effective)

    order = np.argsort(values)
    # Mid-point CDF convention: each entry sits at half its own weight.
    cumulative_weights = np.cumsum(weights[order]) - 0.5 * weights[order]
    centre, width = _start(values[order], cumulative_weights)

    def histogram_in(lo: float, hi: float) -> _Histogram:
        counts, edges = np.histogram(values, bins=bins, range=(lo, hi), weights=weights)
        variances, _ = np.histogram(values, bins=edges, weights=weights**2)
        return counts, variances, edges

    return _result(moments, _iterate(histogram_in, centre, width, window, iterations), n_effective)


def fit_core_binned(
    counts: np.ndarray,
    variances: np.ndarray | None,
    edges: np.ndarray,
    *,
    window: float = 1.5,
    iterations: int = 3,
) -> CoreFit:
    """Moments and Gaussian core of a 1-D weighted histogram (``hist``: ``h.values()``,
    ``h.variances()``, ``h.axes[0].edges``); ``variances=None`` means unweighted counts.

    The moments use bin centres, so the RMS carries the usual w²/12 binning term (not subtracted:
    Sheppard's correction assumes a smooth density across each bin, which a tail does not
    guarantee); over- and underflow are not seen. The window takes the bins whose centres lie in
    μ ± window·σ, so the histogram must resolve the core: fewer than 4 filled bins in the window
    gives ``converged=False``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    variances = counts.copy() if variances is None else np.asarray(variances, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if counts.ndim != 1 or variances.shape != counts.shape or edges.shape != (counts.size + 1,):
        raise ValueError(
            f"need 1-D counts and variances of one shape and one more edge: got {counts.shape}, "
            f"{variances.shape}, {edges.shape}"
        )
    centres = 0.5 * (edges[:-1] + edges[1:])
    sum_variances = variances.sum()
    n_effective = counts.sum() ** 2 / sum_variances if sum_variances > 0 else 0.0
    moments = _moments(centres, counts, n_effective)
    centre, width = _start(edges, np.concatenate([[0.0], np.cumsum(counts)]))

    def histogram_in(lo: float, hi: float) -> _Histogram:
        inside = np.flatnonzero((centres >= lo) & (centres <= hi))
        if inside.size == 0:
            return np.zeros(0), np.zeros(0), edges[:1]
        # Centres are increasing, so the selected bins are contiguous.
        first, last = inside[0], inside[-1]
        return counts[first : last + 1], variances[first : last + 1], edges[first : last + 2]

    return _result(moments, _iterate(histogram_in, centre, width, window, iterations), n_effective)
