"""Fudge factors: per-bin shift and stretch of MC shower shapes onto data (the ATLAS method).

In each (pT, |η_SC|) bin b and for each variable y, MC is moved so that its mean and width match
data:

    y' = μ_data,b + (σ_data,b / σ_MC,b) · (y − μ_MC,b)

with weighted means and standard deviations of the tag-and-probe probes (MC weighted by genWeight
and the ρ reweighting). This fixes the first two moments per bin and nothing else: tails, the
shape of multi-modal distributions, zero-peak fractions and correlations between variables stay as
simulated. That is the known limit of the method, and the fidelity report shows it.

Policies, stated once:

* variables with an exact-zero population (the preshower variables, zero where the preshower does
  not cover the supercluster) are corrected only where y > 0, and the moments use y > 0 only;
* a bin with fewer than :data:`MIN_EFFECTIVE_ENTRIES` effective entries in data or MC, and the
  barrel/endcap transition bin, get the identity (listed in the correction's description);
* outside the pT and |η| range the edge bins apply (``flow: clamp``);
* isolations are not fudged: shifting a distribution with an exact-zero peak moves the zeros.

The corrections are pure correctionlib (a ``transform`` to |η|, a ``multibinning`` in (pT, |η|),
one ``formularef`` per bin), so the JSON evaluates with plain correctionlib in Python or C++.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import correctionlib.schemav2 as cs
import numpy as np

from egproc import bundle as bundle_format
from egproc import engine, nano, probes, reweight
from egproc.variables import ABS_ETA_EDGES, PRESHOWER, PT_EDGES, SHOWER_SHAPES, Variable, variable

__all__ = [
    "DEFAULT_VARIABLES",
    "MIN_EFFECTIVE_ENTRIES",
    "FudgeFactors",
    "weighted_moments",
    "derive",
    "to_correction",
    "train",
]

DEFAULT_VARIABLES: tuple[str, ...] = tuple(v.field for v in SHOWER_SHAPES + PRESHOWER)
MIN_EFFECTIVE_ENTRIES = 200.0
RHO_BRANCH = "Rho_fixedGridRhoAll"


@dataclass(frozen=True)
class FudgeFactors:
    """Shift-and-stretch parameters of one variable, arrays of shape [n_pt_bins, n_abs_eta_bins]."""

    variable: Variable
    pt_edges: tuple[float, ...]
    abs_eta_edges: tuple[float, ...]
    mean_data: np.ndarray
    mean_mc: np.ndarray
    width_ratio: np.ndarray
    n_eff_data: np.ndarray
    n_eff_mc: np.ndarray
    applied: np.ndarray

    def apply(self, pt: np.ndarray, supercluster_eta: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The correction in numpy (the reference the correctionlib form is tested against)."""
        i_pt = _bin_index(pt, self.pt_edges)
        i_eta = _bin_index(np.abs(supercluster_eta), self.abs_eta_edges)
        corrected = self.mean_data[i_pt, i_eta] + self.width_ratio[i_pt, i_eta] * (
            values - self.mean_mc[i_pt, i_eta]
        )
        return np.where(values > 0, corrected, values) if self.variable.zero_peak else corrected


def _bin_index(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    # Same as correctionlib's clamp: values outside the range fall into the edge bins.
    index = np.searchsorted(np.asarray(edges), values, side="right") - 1
    return np.clip(index, 0, len(edges) - 2)


def weighted_moments(
    bins: np.ndarray, values: np.ndarray, weights: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted mean, standard deviation and Kish effective entries per bin index."""
    sum_w = np.bincount(bins, weights, n_bins)
    sum_w2 = np.bincount(bins, weights**2, n_bins)
    sum_wy = np.bincount(bins, weights * values, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sum_wy / sum_w
        centred = values - mean[bins]
        variance = np.bincount(bins, weights * centred**2, n_bins) / sum_w
        n_eff = np.where(sum_w2 > 0, sum_w**2 / sum_w2, 0.0)
    return mean, np.sqrt(variance), n_eff


def _moments(table: probes.ProbeTable, weight: np.ndarray, spec: Variable, pt_edges, eta_edges):
    values = table[f"Photon_{spec.field}"].astype(np.float64)
    i_pt = _bin_index(table["Photon_pt"], pt_edges)
    i_eta = _bin_index(np.abs(table["Photon_superclusterEta"]), eta_edges)
    n_eta = len(eta_edges) - 1
    use = np.isfinite(values) & (values > 0 if spec.zero_peak else True)
    flat_bins = (i_pt * n_eta + i_eta)[use]
    n_bins = (len(pt_edges) - 1) * n_eta
    mean, width, n_eff = weighted_moments(flat_bins, values[use], weight[use], n_bins)
    shape = (len(pt_edges) - 1, n_eta)
    return mean.reshape(shape), width.reshape(shape), n_eff.reshape(shape)


def derive(
    data: probes.ProbeTable,
    mc: probes.ProbeTable,
    mc_weight: np.ndarray,
    variables: Sequence[str] = DEFAULT_VARIABLES,
    pt_edges: tuple[float, ...] = PT_EDGES,
    abs_eta_edges: tuple[float, ...] = ABS_ETA_EDGES,
) -> list[FudgeFactors]:
    """Fudge factors of every variable from data and MC probe tables (MC with ``mc_weight``)."""
    centres = 0.5 * (np.asarray(abs_eta_edges[:-1]) + np.asarray(abs_eta_edges[1:]))
    in_crack = (centres > nano.ECAL_BARREL_MAX_ABS_ETA) & (centres < nano.ECAL_ENDCAP_MIN_ABS_ETA)
    results = []
    for field in variables:
        spec = variable(field)
        mean_d, width_d, n_d = _moments(data, data.weight, spec, pt_edges, abs_eta_edges)
        mean_m, width_m, n_m = _moments(mc, mc_weight, spec, pt_edges, abs_eta_edges)
        applied = (
            (n_d >= MIN_EFFECTIVE_ENTRIES)
            & (n_m >= MIN_EFFECTIVE_ENTRIES)
            & (width_m > 0)
            & ~in_crack[np.newaxis, :]
        )
        results.append(
            FudgeFactors(
                variable=spec,
                pt_edges=pt_edges,
                abs_eta_edges=abs_eta_edges,
                mean_data=np.where(applied, mean_d, 0.0),
                mean_mc=np.where(applied, mean_m, 0.0),
                width_ratio=np.where(applied, width_d / np.where(applied, width_m, 1.0), 1.0),
                n_eff_data=n_d,
                n_eff_mc=n_m,
                applied=applied,
            )
        )
    return results


def to_correction(factors: FudgeFactors) -> cs.Correction:
    """The correctionlib Correction ``fudge_<field>``: inputs pt, superclusterEta, value."""
    field = factors.variable.field
    expression = "[0]+[2]*(x-[1])"
    if factors.variable.zero_peak:
        expression = f"(x>0)*({expression})"
    identity_bins = [
        f"pt[{factors.pt_edges[i]:g},{factors.pt_edges[i + 1]:g}) |eta|[{factors.abs_eta_edges[j]:g},{factors.abs_eta_edges[j + 1]:g})"
        for i, j in zip(*np.nonzero(~factors.applied))
    ]
    return cs.Correction(
        name=f"fudge_{field}",
        description=(
            f"Fudge factor for Photon_{field}: y' = mu_data + (sigma_data/sigma_MC)*(y - mu_MC) per "
            f"(pt, |superclusterEta|) bin"
            + ("; applied where y > 0 only" if factors.variable.zero_peak else "")
            + ". Identity in: " + ("; ".join(identity_bins) or "none")
        ),
        version=1,
        inputs=[
            cs.Variable(name="pt", type="real", description="Photon_pt (GeV)"),
            cs.Variable(name="superclusterEta", type="real", description="Photon_superclusterEta"),
            cs.Variable(name="value", type="real", description=f"uncorrected Photon_{field}"),
        ],
        output=cs.Variable(name="corrected", type="real", description=f"corrected Photon_{field}"),
        generic_formulas=[
            cs.Formula(nodetype="formula", expression=expression, parser="TFormula", variables=["value"])
        ],
        data=cs.Transform(
            nodetype="transform",
            input="superclusterEta",
            rule=cs.Formula(
                nodetype="formula", expression="abs(x)", parser="TFormula", variables=["superclusterEta"]
            ),
            content=cs.MultiBinning(
                nodetype="multibinning",
                inputs=["pt", "superclusterEta"],
                edges=[list(map(float, factors.pt_edges)), list(map(float, factors.abs_eta_edges))],
                content=[
                    cs.FormulaRef(
                        nodetype="formularef",
                        index=0,
                        parameters=[float(mean_d), float(mean_m), float(ratio)],
                    )
                    for mean_d, mean_m, ratio in zip(
                        factors.mean_data.ravel(), factors.mean_mc.ravel(), factors.width_ratio.ravel()
                    )
                ],
                flow="clamp",
            ),
        ),
    )


def train(
    data_files: Sequence[str | Path],
    mc_files: Sequence[str | Path],
    out: str | Path,
    *,
    variables: Sequence[str] = DEFAULT_VARIABLES,
    name: str = "toy-fudge",
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Derive ρ weights and fudge factors from tag-and-probe probes and write a bundle.

    ``provenance`` adds entries (e.g. the toy seed) to what the bundle records: input file names
    and sha256, probe counts, the selection and the bins left uncorrected.
    """
    started = time.perf_counter()
    branches = ["Photon_pt", "Photon_superclusterEta", RHO_BRANCH, *(f"Photon_{v}" for v in variables)]
    data = probes.read_probes(data_files, branches)
    mc = probes.read_probes(mc_files, branches)
    if data.is_mc or not mc.is_mc:
        raise ValueError("train fudge needs data files (no genWeight) and MC files (with genWeight)")
    weights, empty = reweight.rho_weights(data[RHO_BRANCH], mc[RHO_BRANCH], data.weight, mc.weight)
    rho_correction = reweight.rho_weight_correction(weights, empty)
    mc_weight = mc.weight * reweight.lookup(weights, [mc[RHO_BRANCH]], [reweight.RHO_EDGES])
    factors = derive(data, mc, mc_weight, variables)

    correction_set = cs.CorrectionSet(
        schema_version=2,
        description=f"egproc fudge factors ({name}): per-bin shift and stretch of MC photon shower shapes",
        corrections=[rho_correction, *(to_correction(f) for f in factors)],
    )
    steps = [
        bundle_format.CorrectionlibStep(
            correction=f"fudge_{f.variable.field}",
            inputs=("Photon_pt", "Photon_superclusterEta", f"Photon_{f.variable.field}"),
            output=f"Photon_{f.variable.field}",
            region="EE" if f.variable.regions == ("EE",) else "EB+EE",
        )
        for f in factors
    ]
    return bundle_format.write(
        out,
        name=name,
        method="fudge",
        collection="Photon",
        description="Per-(pT, |eta_SC|) shift and stretch of MC shower shapes onto data (ATLAS fudge factors).",
        correction_set=correction_set,
        steps=steps,
        event_weights=[bundle_format.EventWeight(name="rho", correction="rho_reweighting", inputs=(RHO_BRANCH,))],
        provenance={
            **dict(provenance or {}),
            "data_files": {Path(f).name: engine.sha256_of(f) for f in data_files},
            "mc_files": {Path(f).name: engine.sha256_of(f) for f in mc_files},
            "data_probes": len(data),
            "mc_probes": len(mc),
            "mass_window": list(probes.MASS_WINDOW),
            "min_effective_entries": MIN_EFFECTIVE_ENTRIES,
            "bins_left_uncorrected": {
                f.variable.field: int((~f.applied).sum()) for f in factors
            },
            "training_wall_seconds": round(time.perf_counter() - started, 1),
        },
    )
