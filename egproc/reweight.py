"""MC→data reweighting: ratios of normalised, binned distributions of data and MC.

Shower widths and isolations grow with pileup, so MC and data must be compared — and corrections
derived — at the same ρ distribution: :func:`rho_weights` and its correctionlib form, the per-event
weight every correction bundle carries. The weight is the ratio of the normalised, weighted
histograms of the selected probes, w = p_data / p_MC, per bin; outside the histogram range the
edge bins apply (``flow: clamp``), and bins where MC is empty keep weight 1 (MC cannot be
reweighted where it has no events; such bins are listed in the correction's description).

:func:`binned_ratio` is the same ratio in any number of dimensions, and :func:`lookup` reads it
back per object; the fidelity report uses them to compare MC with data at data's probe (pT,
|η_SC|) distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import correctionlib.schemav2 as cs

__all__ = ["RHO_EDGES", "binned_ratio", "lookup", "rho_weights", "rho_weight_correction"]

#: ρ bins (GeV): 1 GeV wide over the bulk of Run-3 pileup, wider in the sparse tail.
RHO_EDGES: tuple[float, ...] = tuple(np.concatenate([np.arange(0.0, 50.0, 1.0), np.arange(50.0, 81.0, 5.0)]))


def _bin_indices(columns: Sequence[np.ndarray], edges: Sequence[Sequence[float]]) -> tuple[np.ndarray, ...]:
    """Per column, the bin of each value; values outside the edges go to the edge bins (clamp)."""
    if len(columns) != len(edges):
        raise ValueError(f"{len(columns)} columns but {len(edges)} sets of edges")
    indices = []
    for column, column_edges in zip(columns, edges):
        column_edges = np.asarray(column_edges, dtype=np.float64)
        index = np.searchsorted(column_edges, np.asarray(column, dtype=np.float64), side="right") - 1
        indices.append(np.clip(index, 0, len(column_edges) - 2))
    return tuple(indices)


def binned_ratio(
    data: Sequence[np.ndarray],
    mc: Sequence[np.ndarray],
    edges: Sequence[Sequence[float]],
    weight_data: np.ndarray | None = None,
    weight_mc: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin weights p_data / p_MC of the columns ``data`` and ``mc`` (one array per dimension,
    binned by ``edges``; under- and overflow in the edge bins; objects with a non-finite value do
    not enter), and the mask of bins where MC is empty (weight 1 there). The MC total is unchanged
    where no bin is empty: Σ w_MC·weight = Σ w_MC."""
    shape = tuple(len(e) - 1 for e in edges)

    def histogram(columns: Sequence[np.ndarray], weight: np.ndarray | None) -> np.ndarray:
        columns = [np.asarray(c, dtype=np.float64) for c in columns]
        finite = np.logical_and.reduce([np.isfinite(c) for c in columns])
        weight = np.ones(finite.shape) if weight is None else np.asarray(weight, dtype=np.float64)
        counts = np.zeros(shape)
        np.add.at(counts, _bin_indices([c[finite] for c in columns], edges), weight[finite])
        return counts

    hist_data = histogram(data, weight_data)
    hist_mc = histogram(mc, weight_mc)
    if not hist_data.sum() > 0 or not hist_mc.sum() > 0:
        raise ValueError("binned_ratio needs a positive total weight in data and in MC")
    p_data = hist_data / hist_data.sum()
    p_mc = hist_mc / hist_mc.sum()
    empty = p_mc <= 0
    return np.where(empty, 1.0, p_data / np.where(empty, 1.0, p_mc)), empty


def lookup(table: np.ndarray, columns: Sequence[np.ndarray], edges: Sequence[Sequence[float]]) -> np.ndarray:
    """Each object's entry of a :func:`binned_ratio` table (edge bins outside the range)."""
    return table[_bin_indices(columns, edges)]


def rho_weights(
    rho_data: np.ndarray,
    rho_mc: np.ndarray,
    weight_data: np.ndarray | None = None,
    weight_mc: np.ndarray | None = None,
    edges: tuple[float, ...] = RHO_EDGES,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin weights p_data/p_MC in ρ and a mask of the bins where MC is empty (weight set to 1)."""
    return binned_ratio([rho_data], [rho_mc], [edges], weight_data, weight_mc)


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
