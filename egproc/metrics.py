"""Distances between two binned distributions (as in the ATLAS shower-shape studies).

All functions take weighted histogram contents ``p`` and ``q`` over the same bins, normalise them to
unit sum along the last axis, and reduce over that axis, so a stack of (pT, |η|) categories is
handled in one call:

* L1 distance   L1 = Σ_i |p_i − q_i|                         (0 … 2)
* Hellinger     H = (1/√2) · sqrt(Σ_i (√p_i − √q_i)²)        (0 … 1)
* Wasserstein   W₁ = ∫ |F(x) − G(x)| dx = Σ_i |F_i − G_i| Δx_i  (in the variable's unit)

with F, G the binned CDFs at the upper bin edges.
"""

from __future__ import annotations

import numpy as np

__all__ = ["normalise", "l1_distance", "hellinger_distance", "wasserstein_distance"]


def normalise(counts: np.ndarray) -> np.ndarray:
    """Divide by the sum over the last axis; empty histograms stay all-zero."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def l1_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.abs(normalise(p) - normalise(q)).sum(axis=-1)


def hellinger_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    # Negative weighted contents (possible with MC weights) have no probability meaning: clip them.
    root_p = np.sqrt(np.clip(normalise(p), 0.0, None))
    root_q = np.sqrt(np.clip(normalise(q), 0.0, None))
    return np.sqrt(((root_p - root_q) ** 2).sum(axis=-1) / 2.0)


def wasserstein_distance(p: np.ndarray, q: np.ndarray, edges: np.ndarray) -> np.ndarray:
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    cdf_gap = np.abs(np.cumsum(normalise(p), axis=-1) - np.cumsum(normalise(q), axis=-1))
    return (cdf_gap * widths).sum(axis=-1)
