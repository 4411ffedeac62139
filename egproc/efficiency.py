"""Photon ID efficiencies, working points and data/MC scale factors from Z→ee tag and probe.

Input: the tag-and-probe ``"id"`` histogram, a weighted ``hist.Hist`` with axes ``stage``
(StrCategory: ``"raw"`` or the correction after which the ID was re-evaluated), ``mass`` (pair mass,
GeV), ``pt`` and ``abseta`` (probe pT and |η_SC|) and ``mvaID`` (probe photon MVA score), with
``Weight`` storage. Everything is computed from the histogram's ``values()`` and ``variances()``
arrays, vectorised over all (pT, |η|, mvaID) bins at once.

Background subtraction
----------------------
Probes that pass the ID are those with mvaID ≥ t, for a threshold t that is an edge of the mvaID axis
(for a continuous score the same as the ``mvaID > t`` an analysis applies); mvaID under- and overflow
count as fail and pass. For each (pT, |η|) bin and each candidate t the signal yields of passing and
failing probes are

    N_sig = N(window) − (W_window / W_sidebands) · N(sidebands)

with the window 80–100 GeV (:data:`SIGNAL_WINDOW`), the sidebands 60–70 and 110–120 GeV
(:data:`SIDEBANDS`), N the sums of weights over the mass bins inside them and W their total widths
(20 GeV and 20 GeV: the scale is 1). For a background linear in mass, B(m) = a + b·m, the integral
over a set of intervals is a·W + b·W·c̄ with c̄ the width-weighted centre; the sidebands' c̄
(90 GeV) is the window centre, so B(window)/B(sidebands) = W_window/W_sidebands for every a and b and
the subtraction removes a linear background exactly, in expectation. Other windows are accepted
only with that symmetry, and only on mass-axis bin edges (a pair is in the window when its mass bin
is). The efficiency is

    ε = P / (P + F),   P, F = background-subtracted pass and fail yields,

the same as (pass_window − pass_bkg) / (all_window − all_bkg). Z tails in the sidebands (a
Breit–Wigner puts ≈1% of the signal there) are subtracted along with the background: they lower the
yields, but cancel in ε as long as the pass probability does not depend on the pair mass.

Statistical uncertainty
-----------------------
Pass and fail probes are disjoint sets of pairs, so their weight sums are statistically independent
(Poisson in the number of pairs; per-bin variance Σw², which is N for data); the all-probe count is
not independent of the pass count, so it is not propagated as if it were. With c_i the mass-bin
coefficients above (+1 in the window, −W_window/W_sidebands in the sidebands, 0 elsewhere),
Var P = Σ c_i² Var P_i (and the same for F), and linear propagation through ε = P/(P+F) gives

    σ_ε² = (F² Var P + P² Var F) / (P + F)⁴,

which for unweighted probes without background is the binomial ε(1 − ε)/N, and otherwise adds the
sideband fluctuations, scaled by (W_window/W_sidebands)², to both yields. It is a normal
approximation: at ε = 0 or 1 it is zero, and no interval that respects [0, 1] is defined for
background-subtracted weighted counts. Subtracted yields are not clipped: in a bin with few probes ε
may fall outside [0, 1], which is what an unbiased estimate does. A bin whose subtracted total
P + F is not positive has no efficiency (NaN).

Regions and working points
--------------------------
Working points are defined per region from the inclusive data efficiency: EB is the |η| bins inside
0–1.4442 and EE those inside 1.566–2.5 (:data:`REGIONS`). Bins of the barrel/endcap transition,
1.4442–1.566, belong to neither: their efficiencies are NaN, and their scale factors are shipped as
"unmeasured" (see :func:`scale_factor_correction`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import correctionlib.schemav2 as cs
import hist
import numpy as np

from egproc.nano import ECAL_BARREL_MAX_ABS_ETA, ECAL_ENDCAP_MAX_ABS_ETA, ECAL_ENDCAP_MIN_ABS_ETA

__all__ = [
    "SIGNAL_WINDOW",
    "SIDEBANDS",
    "REGIONS",
    "DEFAULT_TARGETS",
    "UNMEASURED_UNCERTAINTY",
    "EfficiencyTable",
    "ScaleFactorTable",
    "sideband_coefficients",
    "inclusive_efficiencies",
    "working_point_thresholds",
    "efficiencies",
    "scale_factors",
    "scale_factor_correction",
    "write_scale_factors",
]

#: Pair-mass window of the Z peak (GeV).
SIGNAL_WINDOW: tuple[float, float] = (80.0, 100.0)
#: Pair-mass sidebands (GeV) from which the background under the window is estimated.
SIDEBANDS: tuple[tuple[float, float], ...] = ((60.0, 70.0), (110.0, 120.0))
#: |η_SC| ranges of the regions in which working points are defined.
REGIONS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"EB": (0.0, ECAL_BARREL_MAX_ABS_ETA), "EE": (ECAL_ENDCAP_MIN_ABS_ETA, ECAL_ENDCAP_MAX_ABS_ETA)}
)
#: Working points and their inclusive signal efficiency in data.
DEFAULT_TARGETS: Mapping[str, float] = MappingProxyType({"wp80": 0.80, "wp90": 0.90})
#: Uncertainty shipped with the SF = 1 of bins without a measurement (100%).
UNMEASURED_UNCERTAINTY = 1.0
#: Axes the "id" histogram must have, in the order this module works in after selecting a stage.
_AXES = ("mass", "pt", "abseta", "mvaID")
_VALTYPES = ("sf", "sfup", "sfdown")


@dataclass(frozen=True)
class EfficiencyTable:
    """Background-subtracted ID efficiencies of one histogram stage, per working point.

    ``efficiency[wp]`` and ``error[wp]`` have shape [n_pt, n_abseta] (bins of ``pt_edges`` and
    ``abs_eta_edges``); they are NaN in the transition region and where the subtracted probe yield
    is not positive. ``signal`` is that background-subtracted yield of all probes (sum of weights).
    ``thresholds[wp][region]`` is the mvaID cut applied (pass: mvaID ≥ threshold). Arrays are
    read-only.
    """

    stage: str
    pt_edges: tuple[float, ...]
    abs_eta_edges: tuple[float, ...]
    thresholds: Mapping[str, Mapping[str, float]]
    efficiency: Mapping[str, np.ndarray]
    error: Mapping[str, np.ndarray]
    signal: np.ndarray
    window: tuple[float, float]
    sidebands: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ScaleFactorTable:
    """Data/MC efficiency ratios per working point, arrays [n_pt, n_abseta] (NaN: not measured).

    ``error`` is the statistical uncertainty from the data and MC efficiencies, which are
    independent samples.
    """

    data_stage: str
    mc_stage: str
    pt_edges: tuple[float, ...]
    abs_eta_edges: tuple[float, ...]
    thresholds: Mapping[str, Mapping[str, float]]
    sf: Mapping[str, np.ndarray]
    error: Mapping[str, np.ndarray]
    window: tuple[float, float]
    sidebands: tuple[tuple[float, float], ...]


class _Scan(NamedTuple):
    """Subtracted pass/fail yields and variances at every mvaID edge, arrays [n_pt, n_abseta, n_edges]."""

    passing: np.ndarray
    passing_var: np.ndarray
    failing: np.ndarray
    failing_var: np.ndarray
    mva_edges: np.ndarray
    pt_edges: tuple[float, ...]
    abs_eta_edges: tuple[float, ...]


def sideband_coefficients(
    mass_edges: Sequence[float] | np.ndarray,
    window: tuple[float, float] = SIGNAL_WINDOW,
    sidebands: Sequence[tuple[float, float]] = SIDEBANDS,
) -> np.ndarray:
    """Per-mass-bin coefficients c with N_sig = Σ c_i N_i: +1 in the window, −W_window/W_sidebands in the sidebands.

    Raises ``ValueError`` unless every window and sideband boundary is a bin edge, the sidebands
    do not overlap the window or each other, and their width-weighted centre is the window centre
    (the condition under which the width ratio removes a linear background exactly).
    """
    edges = np.asarray(mass_edges, dtype=np.float64)
    tolerance = 1e-6 * float(np.min(np.diff(edges)))
    ranges = [tuple(map(float, window)), *(tuple(map(float, band)) for band in sidebands)]
    for low, high in ranges:
        if not high > low:
            raise ValueError(f"mass range {low}–{high} GeV is empty")
        for boundary in (low, high):
            if not np.any(np.abs(edges - boundary) <= tolerance):
                raise ValueError(f"mass boundary {boundary} GeV is not an edge of the mass axis {edges.tolist()}")
    ordered = sorted(ranges)
    if any(first[1] > second[0] + tolerance for first, second in zip(ordered, ordered[1:])):
        raise ValueError(f"window {window} and sidebands {list(sidebands)} overlap")
    sideband_width = sum(high - low for low, high in ranges[1:])
    sideband_centre = sum((high - low) * (high + low) / 2 for low, high in ranges[1:]) / sideband_width
    if abs(sideband_centre - (window[0] + window[1]) / 2) > tolerance:
        raise ValueError(
            f"sidebands {list(sidebands)} are centred at {sideband_centre:g} GeV, not at the window centre "
            f"{(window[0] + window[1]) / 2:g} GeV: scaling by the width ratio would not remove a linear background"
        )

    low_edges, high_edges = edges[:-1], edges[1:]

    def inside(low: float, high: float) -> np.ndarray:
        return (low_edges >= low - tolerance) & (high_edges <= high + tolerance)

    coefficients = np.where(inside(*ranges[0]), 1.0, 0.0)
    in_sidebands = np.logical_or.reduce([inside(*band) for band in ranges[1:]])
    return np.where(in_sidebands, -(window[1] - window[0]) / sideband_width, coefficients)


def _scan(h: hist.Hist, stage: str, window: tuple[float, float], sidebands: Sequence[tuple[float, float]]) -> _Scan:
    """Background-subtract the stage's histogram and accumulate pass/fail yields at every mvaID edge."""
    names = tuple(axis.name for axis in h.axes)
    if sorted(names) != sorted(("stage", *_AXES)):
        raise ValueError(f"expected an 'id' histogram with axes {('stage', *_AXES)}, got {names}")
    if not issubclass(h.storage_type, hist.storage.Weight):
        raise ValueError("the 'id' histogram needs Weight storage (sum of weights and of squared weights)")
    stages = list(h.axes["stage"])
    if stage not in stages:
        raise KeyError(f"stage {stage!r} is not in the histogram; it has {stages}")
    selected = h[{"stage": stage}]
    order = [tuple(axis.name for axis in selected.axes).index(name) for name in _AXES]
    values = np.transpose(selected.values(flow=True), order)
    variances = np.transpose(selected.variances(flow=True), order)

    # Mass, pT and |η|: in-range bins only. mvaID: flow bins kept (underflow fails, overflow passes).
    in_range = tuple(
        slice(int(h.axes[name].traits.underflow), int(h.axes[name].traits.underflow) + h.axes[name].size)
        for name in _AXES[:3]
    )
    values, variances = values[in_range], variances[in_range]
    coefficients = sideband_coefficients(h.axes["mass"].edges, window, sidebands)
    signal = np.tensordot(coefficients, values, axes=(0, 0))  # [n_pt, n_abseta, n_mva_with_flow]
    signal_var = np.tensordot(coefficients**2, variances, axes=(0, 0))

    mva = h.axes["mvaID"]
    first = int(mva.traits.underflow)  # flow index of the first in-range mvaID bin (edge 0)
    edge_index = first + np.arange(mva.size + 1)

    def below(array: np.ndarray) -> np.ndarray:  # sum over flow bins < edge k
        cumulative = np.concatenate([np.zeros_like(array[..., :1]), np.cumsum(array, axis=-1)], axis=-1)
        return cumulative[..., edge_index]

    def at_or_above(array: np.ndarray) -> np.ndarray:  # sum over flow bins ≥ edge k
        padded = np.concatenate([array, np.zeros_like(array[..., :1])], axis=-1)
        return np.cumsum(padded[..., ::-1], axis=-1)[..., ::-1][..., edge_index]

    return _Scan(
        passing=at_or_above(signal),
        passing_var=at_or_above(signal_var),
        failing=below(signal),
        failing_var=below(signal_var),
        mva_edges=np.asarray(mva.edges, dtype=np.float64),
        pt_edges=tuple(map(float, h.axes["pt"].edges)),
        abs_eta_edges=tuple(map(float, h.axes["abseta"].edges)),
    )


def _efficiency(
    passing: np.ndarray, passing_var: np.ndarray, failing: np.ndarray, failing_var: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ε = P/(P+F) and σ_ε² = (F² Var P + P² Var F)/(P+F)⁴; NaN where P + F ≤ 0."""
    total = passing + failing
    valid = total > 0
    safe_total = np.where(valid, total, 1.0)
    efficiency = np.where(valid, passing / safe_total, np.nan)
    variance = (failing**2 * passing_var + passing**2 * failing_var) / safe_total**4
    return efficiency, np.where(valid, np.sqrt(variance), np.nan)


def _region_masks(abs_eta_edges: Sequence[float]) -> dict[str, np.ndarray]:
    """Which |η| bins lie entirely inside each region (transition-region bins are in none)."""
    edges = np.asarray(abs_eta_edges, dtype=np.float64)
    tolerance = 1e-9
    return {
        region: (edges[:-1] >= low - tolerance) & (edges[1:] <= high + tolerance)
        for region, (low, high) in REGIONS.items()
    }


def _edge_index(mva_edges: np.ndarray, threshold: float) -> int:
    """Index of the mvaID edge equal to ``threshold`` (to 10⁻⁶ of a bin width)."""
    distance = np.abs(mva_edges - threshold)
    index = int(np.argmin(distance))
    if distance[index] > 1e-6 * float(np.min(np.diff(mva_edges))):
        raise ValueError(f"mvaID threshold {threshold} is not an edge of the histogram's mvaID axis")
    return index


def _inclusive_scan(scan: _Scan, region: str) -> tuple[np.ndarray, np.ndarray]:
    """Efficiency and error at every mvaID edge for the region's probes summed over pT and |η| bins."""
    mask = _region_masks(scan.abs_eta_edges)[region]
    if not mask.any():
        raise ValueError(f"no |eta| bin of {scan.abs_eta_edges} lies inside region {region} {REGIONS[region]}")
    return _efficiency(*(array[:, mask].sum(axis=(0, 1)) for array in scan[:4]))


def inclusive_efficiencies(
    h: hist.Hist,
    thresholds: Mapping[str, Mapping[str, float]],
    stage: str = "raw",
    *,
    window: tuple[float, float] = SIGNAL_WINDOW,
    sidebands: Sequence[tuple[float, float]] = SIDEBANDS,
) -> dict[str, dict[str, tuple[float, float]]]:
    """(efficiency, error) per working point and region, for all the region's probes in the pT range.

    Yields are summed over the region's (pT, |η|) bins before the ratio is taken. On data at the
    thresholds of :func:`working_point_thresholds` this is the achieved working-point efficiency;
    on MC, the MC efficiency of the data-defined working point.
    """
    scan = _scan(h, stage, window, sidebands)
    curves = {region: _inclusive_scan(scan, region) for region in {r for cuts in thresholds.values() for r in cuts}}
    result: dict[str, dict[str, tuple[float, float]]] = {}
    for wp, cuts in thresholds.items():
        result[wp] = {}
        for region, threshold in cuts.items():
            efficiency, error = curves[region]
            index = _edge_index(scan.mva_edges, threshold)
            result[wp][region] = (float(efficiency[index]), float(error[index]))
    return result


def working_point_thresholds(
    h_data: hist.Hist,
    targets: Mapping[str, float] = DEFAULT_TARGETS,
    stage: str = "raw",
    *,
    window: tuple[float, float] = SIGNAL_WINDOW,
    sidebands: Sequence[tuple[float, float]] = SIDEBANDS,
) -> dict[str, dict[str, float]]:
    """mvaID thresholds ``{wp: {"EB": t, "EE": t}}`` giving each target signal efficiency in data.

    For each region the background-subtracted inclusive data efficiency (see
    :func:`inclusive_efficiencies`) is evaluated at every edge of the mvaID axis, and the edge whose
    efficiency is closest to the target is taken (the lower edge on a tie). The thresholds are
    thus quantised to the mvaID binning: the achieved efficiency differs from the target by up to
    half the efficiency change across one bin, plus its statistical uncertainty; read it back with
    :func:`inclusive_efficiencies`.
    """
    for wp, target in targets.items():
        if not 0.0 < target < 1.0:
            raise ValueError(f"target efficiency of {wp} must be in (0, 1), got {target}")
    scan = _scan(h_data, stage, window, sidebands)
    present = [region for region, mask in _region_masks(scan.abs_eta_edges).items() if mask.any()]
    curves = {region: _inclusive_scan(scan, region)[0] for region in present}
    thresholds: dict[str, dict[str, float]] = {}
    for wp, target in targets.items():
        thresholds[wp] = {}
        for region, curve in curves.items():
            distance = np.where(np.isfinite(curve), np.abs(curve - target), np.inf)
            if not np.isfinite(distance).any():
                raise ValueError(f"region {region} of stage {stage!r} has no background-subtracted probes")
            thresholds[wp][region] = float(scan.mva_edges[int(np.argmin(distance))])
    return thresholds


def efficiencies(
    h: hist.Hist,
    thresholds: Mapping[str, Mapping[str, float]],
    stage: str = "raw",
    *,
    window: tuple[float, float] = SIGNAL_WINDOW,
    sidebands: Sequence[tuple[float, float]] = SIDEBANDS,
) -> EfficiencyTable:
    """Background-subtracted efficiency and error per (pT, |η|) bin of each working point.

    Each |η| bin uses its region's threshold; transition-region bins (in no region) are NaN.
    ``thresholds`` must hold every region that has bins, with values on mvaID-axis edges.
    """
    scan = _scan(h, stage, window, sidebands)
    masks = _region_masks(scan.abs_eta_edges)
    measured = np.logical_or.reduce(list(masks.values()))
    efficiency_by_wp: dict[str, np.ndarray] = {}
    error_by_wp: dict[str, np.ndarray] = {}
    for wp, cuts in thresholds.items():
        index = np.zeros(len(scan.abs_eta_edges) - 1, dtype=np.intp)
        for region, mask in masks.items():
            if mask.any():
                if region not in cuts:
                    raise KeyError(f"working point {wp} has no threshold for region {region}")
                index[mask] = _edge_index(scan.mva_edges, cuts[region])
        picked = [np.take_along_axis(array, index[np.newaxis, :, np.newaxis], axis=-1)[..., 0] for array in scan[:4]]
        efficiency, error = _efficiency(*picked)
        efficiency_by_wp[wp] = _frozen(np.where(measured, efficiency, np.nan))
        error_by_wp[wp] = _frozen(np.where(measured, error, np.nan))
    return EfficiencyTable(
        stage=stage,
        pt_edges=scan.pt_edges,
        abs_eta_edges=scan.abs_eta_edges,
        thresholds=MappingProxyType({wp: MappingProxyType(dict(cuts)) for wp, cuts in thresholds.items()}),
        efficiency=MappingProxyType(efficiency_by_wp),
        error=MappingProxyType(error_by_wp),
        signal=_frozen(scan.passing[..., 0] + scan.failing[..., 0]),
        window=tuple(map(float, window)),
        sidebands=tuple(tuple(map(float, band)) for band in sidebands),
    )


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=np.float64)
    array.flags.writeable = False
    return array


def scale_factors(data: EfficiencyTable, mc: EfficiencyTable) -> ScaleFactorTable:
    """sf = ε_data/ε_MC per bin and working point, with σ_sf² = (σ_data/ε_MC)² + (ε_data σ_MC/ε_MC²)².

    Data and MC are independent samples, so their efficiency uncertainties add in quadrature
    (the form above also holds at ε_data = 0). Bins where ε_MC is zero or either efficiency is NaN
    are NaN. Both tables must share binning, working points, thresholds and mass windows: a ratio of
    efficiencies of different cuts is not a scale factor.
    """
    for attribute in ("pt_edges", "abs_eta_edges", "window", "sidebands"):
        if getattr(data, attribute) != getattr(mc, attribute):
            raise ValueError(f"data and MC efficiency tables differ in {attribute}")
    data_cuts = {wp: dict(cuts) for wp, cuts in data.thresholds.items()}
    mc_cuts = {wp: dict(cuts) for wp, cuts in mc.thresholds.items()}
    if data_cuts != mc_cuts:
        raise ValueError(f"data and MC use different working-point thresholds: {data_cuts} vs {mc_cuts}")
    sf: dict[str, np.ndarray] = {}
    error: dict[str, np.ndarray] = {}
    for wp in data.thresholds:
        eff_data, err_data = data.efficiency[wp], data.error[wp]
        eff_mc, err_mc = mc.efficiency[wp], mc.error[wp]
        valid = np.isfinite(eff_data) & np.isfinite(eff_mc) & (eff_mc != 0)
        safe_mc = np.where(valid, eff_mc, 1.0)
        ratio = eff_data / safe_mc
        uncertainty = np.sqrt((err_data / safe_mc) ** 2 + (eff_data * err_mc / safe_mc**2) ** 2)
        sf[wp] = _frozen(np.where(valid, ratio, np.nan))
        error[wp] = _frozen(np.where(valid, uncertainty, np.nan))
    return ScaleFactorTable(
        data_stage=data.stage,
        mc_stage=mc.stage,
        pt_edges=data.pt_edges,
        abs_eta_edges=data.abs_eta_edges,
        thresholds=data.thresholds,
        sf=MappingProxyType(sf),
        error=MappingProxyType(error),
        window=data.window,
        sidebands=data.sidebands,
    )


def _signed_eta(abs_eta_edges: Sequence[float], per_abs_bin: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Mirror |η| edges to signed edges −max…max and the [n_pt, n_abseta] values to [n_eta, n_pt]."""
    edges = [float(edge) for edge in abs_eta_edges]
    if edges[0] != 0.0:
        raise ValueError(f"|eta| edges must start at 0 to mirror to signed eta, got {edges}")
    signed_edges = [-edge for edge in reversed(edges[1:])] + edges
    signed_values = np.concatenate([per_abs_bin[:, ::-1], per_abs_bin], axis=1).T
    return signed_edges, signed_values


def _range(edges: Sequence[float]) -> str:
    return f"{edges[0]:g}-{edges[-1]:g}"


def scale_factor_correction(
    sfs: ScaleFactorTable,
    name: str = "Photon-ID-SF",
    *,
    version: int = 1,
    unmeasured_uncertainty: float = UNMEASURED_UNCERTAINTY,
    description: str | None = None,
) -> cs.Correction:
    """The scale factors as a correctionlib Correction in the CMS EGM SF layout.

    Inputs ``ValType`` ("sf", "sfup", "sfdown"), ``WorkingPoint`` (the table's working points),
    ``eta`` (signed supercluster η) and ``pt``; output ``weight``. Category nodes select ValType and
    WorkingPoint (unknown keys are an evaluation error), then a MultiBinning in (eta, pt) whose eta
    edges are the |η| edges mirrored to −2.5…2.5, with the same value at η and −η.
    sfup/sfdown = sf ± σ_stat, sfdown floored at 0.

    Policies, written into the description:

    * bins without a finite SF (the 1.4442–1.566 transition region, and bins with no
      background-subtracted probes in data or MC) ship sf = 1 with sfup/sfdown = 1 ± ``unmeasured_uncertainty``
      (default 100%, sfdown floored at 0), so that the JSON never holds NaN and an analysis that
      uses such photons carries a conservative uncertainty;
    * ``flow: clamp``: outside the measured pT and η range the edge bin applies. Z→ee probes run
      out above the last pT edge while the ID efficiency has long reached its plateau, so the last
      bin is the best estimate there, and an evaluation at η = ±2.5 from rounding must not fail;
      the clamped value carries no extrapolation uncertainty, which an analysis outside the range
      has to add.
    """
    if version < 1:
        raise ValueError(f"correction version must be >= 1, got {version}")
    if unmeasured_uncertainty < 0:
        raise ValueError(f"unmeasured_uncertainty must be >= 0, got {unmeasured_uncertainty}")
    pt_edges = [float(edge) for edge in sfs.pt_edges]
    abs_eta_edges = [float(edge) for edge in sfs.abs_eta_edges]

    in_region = np.logical_or.reduce(list(_region_masks(abs_eta_edges).values()))
    working_points: dict[str, dict[str, np.ndarray]] = {}
    unmeasured_bins: list[str] = []
    for wp in sfs.sf:
        unmeasured = ~(np.isfinite(sfs.sf[wp]) & np.isfinite(sfs.error[wp]))
        central = np.where(unmeasured, 1.0, sfs.sf[wp])
        uncertainty = np.where(unmeasured, unmeasured_uncertainty, sfs.error[wp])
        working_points[wp] = {
            "sf": central,
            "sfup": central + uncertainty,
            "sfdown": np.maximum(central - uncertainty, 0.0),
        }
        cells = [
            f"pt {pt_edges[i]:g}-{pt_edges[i + 1]:g} |eta| {abs_eta_edges[j]:g}-{abs_eta_edges[j + 1]:g}"
            for i, j in zip(*np.nonzero(unmeasured & in_region))
        ]
        unmeasured_bins.append(f"{wp}: " + (", ".join(cells) or "none"))

    if description is None:
        cuts = "; ".join(
            f"{wp}: " + ", ".join(f"{region} mvaID >= {cut:g}" for region, cut in regions.items())
            for wp, regions in sfs.thresholds.items()
        )
        sidebands = " and ".join(f"{low:g}-{high:g}" for low, high in sfs.sidebands)
        description = (
            f"Photon MVA ID data/MC scale factor eff_data/eff_MC from Z->ee tag and probe (data stage "
            f"'{sfs.data_stage}', MC stage '{sfs.mc_stage}'); efficiencies in the "
            f"{sfs.window[0]:g}-{sfs.window[1]:g} GeV "
            f"mass window with the background subtracted from the {sidebands} GeV sidebands assuming a linear "
            f"mass spectrum. Working points (thresholds chosen for the target signal efficiency in data): {cuts}. "
            f"sfup/sfdown = sf +- statistical uncertainty of data and MC (sfdown floored at 0). "
            f"Binned in signed supercluster eta (|eta| bins mirrored, {_range(abs_eta_edges)}) and pt "
            f"{_range(pt_edges)} GeV; flow clamp: outside that range the edge bin applies, with no added "
            f"uncertainty. Bins without a measurement have sf = 1, sfup/sfdown = 1 +- {unmeasured_uncertainty:g} "
            f"(sfdown floored at 0): the |eta| {ECAL_BARREL_MAX_ABS_ETA:g}-{ECAL_ENDCAP_MIN_ABS_ETA:g} transition "
            f"region, and bins without background-subtracted probes in data or MC: " + "; ".join(unmeasured_bins)
        )

    def binning(values: np.ndarray) -> cs.MultiBinning:
        eta_edges, signed = _signed_eta(abs_eta_edges, values)
        return cs.MultiBinning(
            nodetype="multibinning",
            inputs=["eta", "pt"],
            edges=[eta_edges, pt_edges],
            content=[float(value) for value in signed.ravel()],
            flow="clamp",
        )

    return cs.Correction(
        name=name,
        description=description,
        version=version,
        inputs=[
            cs.Variable(
                name="ValType",
                type="string",
                description="sf: scale factor; sfup/sfdown: sf +- statistical uncertainty",
            ),
            cs.Variable(
                name="WorkingPoint", type="string", description="photon mvaID working point: " + ", ".join(sfs.sf)
            ),
            cs.Variable(
                name="eta", type="real", description="photon supercluster eta (Photon_superclusterEta), signed"
            ),
            cs.Variable(name="pt", type="real", description="photon pT (GeV)"),
        ],
        output=cs.Variable(name="weight", type="real", description="photon ID scale factor (or its variation)"),
        data=cs.Category(
            nodetype="category",
            input="ValType",
            content=[
                cs.CategoryItem(
                    key=valtype,
                    value=cs.Category(
                        nodetype="category",
                        input="WorkingPoint",
                        content=[
                            cs.CategoryItem(key=wp, value=binning(values[valtype]))
                            for wp, values in working_points.items()
                        ],
                    ),
                )
                for valtype in _VALTYPES
            ],
        ),
    )


def write_scale_factors(
    path: str | Path,
    corrections: Sequence[cs.Correction],
    *,
    description: str = "egproc photon ID data/MC scale factors from Z->ee tag and probe",
) -> Path:
    """Write the corrections as an indented correctionlib CorrectionSet (schema v2) JSON file.

    ``path`` must end in ``.json``; parent folders are created. Returns the path written.
    """
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"{path}: scale factors are written as .json")
    names = [correction.name for correction in corrections]
    if len(set(names)) != len(names):
        raise ValueError(f"correction names must be unique, got {names}")
    correction_set = cs.CorrectionSet(schema_version=2, description=description, corrections=list(corrections))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(correction_set.model_dump_json(exclude_unset=True, indent=2) + "\n")
    return path
