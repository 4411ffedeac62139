"""MC→data reweighting in ρ (pileup), as a correctionlib correction.

Shower widths and isolations grow with pileup, so MC and data must be compared — and corrections
derived — at the same ρ distribution. The weight is the ratio of the normalised, weighted ρ
histograms of the selected probes, w(ρ) = p_data(ρ) / p_MC(ρ), binned; outside the histogram range
the edge bins apply (``flow: clamp``), and bins where MC is empty keep weight 1 (MC cannot be
reweighted where it has no events; such bins are listed in the correction's description).
"""

from __future__ import annotations

import numpy as np
import correctionlib.schemav2 as cs

__all__ = ["RHO_EDGES", "rho_weights", "rho_weight_correction"]

#: ρ bins (GeV): 1 GeV wide over the bulk of Run-3 pileup, wider in the sparse tail.
RHO_EDGES: tuple[float, ...] = tuple(np.concatenate([np.arange(0.0, 50.0, 1.0), np.arange(50.0, 81.0, 5.0)]))


def rho_weights(
    rho_data: np.ndarray,
    rho_mc: np.ndarray,
    weight_data: np.ndarray | None = None,
    weight_mc: np.ndarray | None = None,
    edges: tuple[float, ...] = RHO_EDGES,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin weights p_data/p_MC and a mask of the bins where MC is empty (weight set to 1)."""
    clipped_edges = np.asarray(edges)
    # Clamp into the range so that the edge bins hold the under- and overflow, as the lookup does.
    data = np.clip(rho_data, clipped_edges[0], np.nextafter(clipped_edges[-1], -np.inf))
    mc = np.clip(rho_mc, clipped_edges[0], np.nextafter(clipped_edges[-1], -np.inf))
    hist_data, _ = np.histogram(data, clipped_edges, weights=weight_data)
    hist_mc, _ = np.histogram(mc, clipped_edges, weights=weight_mc)
    p_data = hist_data / hist_data.sum()
    p_mc = hist_mc / hist_mc.sum()
    empty = p_mc <= 0
    weights = np.where(empty, 1.0, p_data / np.where(empty, 1.0, p_mc))
    return weights, empty


def rho_weight_correction(
    weights: np.ndarray, empty: np.ndarray, edges: tuple[float, ...] = RHO_EDGES, name: str = "rho_reweighting"
) -> cs.Correction:
    """The correctionlib form of :func:`rho_weights`' result (input ``rho``, output ``weight``)."""
    empty_bins = [f"[{edges[i]:g}, {edges[i + 1]:g})" for i in np.flatnonzero(empty)]
    note = f" Bins without MC (weight 1): {', '.join(empty_bins)}." if empty_bins else ""
    return cs.Correction(
        name=name,
        description="MC→data event weight in ρ = Rho_fixedGridRhoAll, ratio of normalised probe "
        "ρ distributions; clamped outside the range." + note,
        version=1,
        inputs=[cs.Variable(name="rho", type="real", description="Rho_fixedGridRhoAll (GeV)")],
        output=cs.Variable(name="weight", type="real"),
        data=cs.Binning(
            nodetype="binning",
            input="rho",
            edges=[float(e) for e in edges],
            content=[float(w) for w in weights],
            flow="clamp",
        ),
    )
