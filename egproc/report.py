"""The fidelity report: how close (corrected) MC is to data, measured against the noise floor.

Input: a tag-and-probe processor output (:mod:`egproc.histio`) with the datasets ``data``, ``data2``
(an independent data sample of the same size: the statistical noise floor) and ``mc``, whose stages
are ``raw`` and one per correction method. Every figure of a method is computed the same way as for
``data2``, so each distance is also given as a ratio to what two data samples of this size differ by.

**MC at data's kinematics.** The corrections morph the photon variables at given (pT, η_SC, φ, ρ);
they do not change the kinematics, and MC comes weighted by ``genWeight`` and the ρ reweighting
only. Its probe pT and |η_SC| spectra still differ from data's (energy scale and resolution,
background composition), which every inclusive comparison would mix into the figures of the
corrections. So, as in a CMS Z→ee validation, MC is reweighted to data's probe (pT, |η_SC|)
distribution on the report's own bins (:data:`egproc.variables.PT_EDGES` ×
:data:`~egproc.variables.ABS_ETA_EDGES`; :func:`kinematically_reweighted`): per-bin figures are
unchanged by a constant weight per bin, and the inclusive ones (correlations, the classifier, the
ID score, the figures summed over bins) compare like with like. The weights are in
``summary["kinematic_weights"]``, and the classifier's kinematics-alone floor is given with and
without them.

What is measured, per method (``raw`` included, as the "before"):

* per variable and (pT, |η_SC|) bin: L1, Hellinger and W₁ distances of the normalised histograms to
  data (:mod:`egproc.metrics`), and their ratios to the noise floor (W₁: the expected data-vs-data
  distance at the comparison's statistics; L1, H: the data-vs-data2 distance); the headline is the
  worst bin's W₁ ratio over bins with at least :data:`MIN_BIN_ENTRIES` data probes, beside the
  worst bin data2 itself reaches (a perfect correction's score);
* parameter evolution: mean, RMS, and the Gaussian-core peak and width per bin (:mod:`egproc.corefit`),
  for the variables without an exact-zero peak (the core of an isolation is its zero peak);
* correlations: Pearson and Spearman matrices of the variables per region, their difference to data,
  max |Δρ| and its floor: the expected max |Δρ| of two samples at data's and MC's effective entries
  (:func:`egproc.metrics.expected_correlation_difference`, bootstrapping both data samples
  pooled), beside its spread and data2's one draw;
* the classifier two-sample AUC, all variables jointly plus (pT, η_SC, φ, ρ), barrel and endcap
  together (:mod:`egproc.twosample`);
* the photon ID score re-evaluated on corrected variables: the L1 distance of its distribution per
  region, read against the L1 that statistics alone give at data's and the stage's effective
  entries (:func:`egproc.metrics.expected_l1_distance`; data2's L1 is one draw of that at data2's
  entries), and profiles in pT, η_SC and ρ;
* with ``costs`` (:mod:`egproc.costs`; ``egproc run`` measures them): each correction's training time
  and how many probes per second its bundle applies;
* ID efficiencies from the sideband-subtracted mass spectra, working points at 80 % and 90 % data
  efficiency, and the data/MC scale factors as CMS-EGM-style correctionlib JSON
  (:mod:`egproc.efficiency`).

:func:`build` computes everything into a JSON-able summary; :func:`write` renders the report
directory (PNG figures, ``index.html``, ``summary.json``, ``scale_factors_<method>.json``).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from egproc import corefit, efficiency, metrics, reweight, twosample
from egproc.nano import region_mask
from egproc.variables import ABS_ETA_EDGES, PT_EDGES, REGION_ETA_BINS, variable

__all__ = ["MIN_BIN_ENTRIES", "REGIONS", "W1_TARGET", "Report", "build", "headline", "kinematically_reweighted", "write"]

#: (pT, |η|) bins with fewer data probes are shown but do not enter the worst-bin headline.
MIN_BIN_ENTRIES = 500
#: The per-bin W₁ / floor the correction issues ask for. With some 200 (variable, bin) pairs, even
#: an independent data sample exceeds it in a few: the report counts the bins above it for every
#: stage and for data2, so that a count reads against what statistics alone give.
W1_TARGET = 1.5
#: Bootstrap pairs behind each correlation floor: its mean to about a fifth of its spread.
CORRELATION_FLOOR_DRAWS = 25
#: Regions and their |η| bins; the transition bin belongs to neither.
REGIONS: Mapping[str, tuple[int, ...]] = REGION_ETA_BINS
KINEMATICS = ("pt", "superclusterEta", "phi", "rho")
#: Classifier-test budget: rows per sample and seeds (the spread over seeds is reported).
CLASSIFIER_ROWS = 30_000
CLASSIFIER_ITERATIONS = 100
CLASSIFIER_SEEDS = (0, 1, 2)


@dataclass
class Report:
    """Everything measured, JSON-able in :attr:`summary`; arrays for the figures in :attr:`arrays`;
    :attr:`compared`, the processor output as compared (:func:`kinematically_reweighted`)."""

    summary: dict[str, Any]
    arrays: dict[str, Any]
    scale_factor_sets: dict[str, Any]
    compared: Mapping[str, Any]


def _kinematic_columns(probes: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return [probes["pt"], np.abs(probes["superclusterEta"])]


def kinematically_reweighted(output: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """``output`` with MC reweighted to data's probe (pT, |η_SC|) distribution, and the weights
    [pT, |η|] (module docstring).

    The weights are p_data / p_MC of the probes on the report's (pT, |η_SC|) bins (under- and
    overflow in the edge bins; bins without MC keep weight 1). MC probes' ``weight`` is multiplied
    by their bin's weight, and every MC histogram with ``pt`` and ``abseta`` axes (the processor's
    bins) has its values scaled by it and its variances by its square. ``output`` is not modified."""
    edges = (PT_EDGES, ABS_ETA_EDGES)
    data, mc = output["data"]["probes"], output["mc"]["probes"]
    table, _ = reweight.binned_ratio(_kinematic_columns(data), _kinematic_columns(mc), edges, data["weight"], mc["weight"])
    probes = dict(mc)
    probes["weight"] = mc["weight"] * reweight.lookup(table, _kinematic_columns(mc), edges)
    histograms = {name: _scaled(h, table) for name, h in output["mc"]["histograms"].items()}
    return {**output, "mc": {**output["mc"], "probes": probes, "histograms": histograms}}, table


def _scaled(h: Any, table: np.ndarray) -> Any:
    """A copy of ``h`` with each (pT, |η|) bin's values scaled by ``table`` and variances by its
    square; the flow bins take the weight of the edge bins beside them, as the probes do."""
    names = [axis.name for axis in h.axes]
    if "pt" not in names or "abseta" not in names:
        return h
    for name, edges in (("pt", PT_EDGES), ("abseta", ABS_ETA_EDGES)):
        if len(h.axes[name].edges) != len(edges) or not np.allclose(h.axes[name].edges, edges):
            raise ValueError(f"histogram axis {name!r} has edges {list(h.axes[name].edges)}, the report's bins are {list(edges)}")
    factor = table
    for position, name in enumerate(("pt", "abseta")):
        traits = h.axes[name].traits
        pad = [(0, 0), (0, 0)]
        pad[position] = (int(traits.underflow), int(traits.overflow))
        factor = np.pad(factor, pad, mode="edge")
    shape = [1] * len(names)
    shape[names.index("pt")], shape[names.index("abseta")] = factor.shape
    factor = factor.reshape(shape) if names.index("pt") < names.index("abseta") else factor.T.reshape(shape)
    scaled = h.copy()
    view = scaled.view(flow=True)
    view["value"] *= factor
    view["variance"] *= factor**2
    return scaled


def _variables(output: Mapping[str, Any]) -> list[str]:
    return [name for name in output["mc"]["histograms"] if name != "id"]


def _stages(output: Mapping[str, Any]) -> list[str]:
    return list(output["mc"]["histograms"]["id"].axes["stage"])


def _binned(output: Mapping[str, Any], dataset: str, field: str, stage: str) -> np.ndarray:
    """Weighted counts [pT, |η|, value] of one stage."""
    return output[dataset]["histograms"][field][{"stage": stage}].values()


def _entries(output: Mapping[str, Any], dataset: str, field: str, stage: str) -> np.ndarray:
    """Effective entries [pT, |η|] of one stage (Kish: MC weights count less than data entries)."""
    selected = output[dataset]["histograms"][field][{"stage": stage}]
    return metrics.effective_entries(selected.values(), selected.variances())


def _worst(ratio: np.ndarray, usable: np.ndarray) -> dict[str, Any]:
    masked = np.where(usable, ratio, -np.inf)
    index = np.unravel_index(np.argmax(masked), masked.shape)
    return {
        "ratio": float(masked[index]) if usable.any() else None,
        "pt": [PT_EDGES[index[0]], PT_EDGES[index[0] + 1]],
        "abseta": [ABS_ETA_EDGES[index[1]], ABS_ETA_EDGES[index[1] + 1]],
    }


def _distances(output: Mapping[str, Any], field: str, stages: Sequence[str]) -> dict[str, Any]:
    """Per (pT, |η|) bin: each stage's distances to data and their ratios to the noise floor.

    The W₁ floor is the expected data-vs-data distance at the statistics of the comparison
    (:func:`egproc.metrics.expected_wasserstein_distance` with data's entries and the stage's
    effective entries). ``data2`` is scored against it like a stage: its worst bin is what a
    perfect correction scores, the reference the ≤ 1.5 target reads against. L1 and Hellinger are
    read against their data-vs-data2 draws."""
    h = output["mc"]["histograms"][field]
    edges = h.axes["value"].edges
    data = _binned(output, "data", field, "raw")
    data2 = _binned(output, "data2", field, "raw")
    data_entries = _entries(output, "data", field, "raw")
    spec = variable(field)
    entries = data.sum(axis=-1)
    usable = entries >= MIN_BIN_ENTRIES
    defined = np.zeros(entries.shape, dtype=bool)
    for region in spec.regions:
        defined[:, list(REGIONS[region])] = True
    usable &= defined
    floor = {
        "L1": metrics.l1_distance(data, data2),
        "H": metrics.hellinger_distance(data, data2),
        "W1": metrics.expected_wasserstein_distance(data, edges, data_entries, _entries(output, "data2", field, "raw")),
        "W1_data2": metrics.wasserstein_distance(data, data2, edges),
    }
    data2_ratio = metrics.ratio_to_floor(floor["W1_data2"], floor["W1"])
    result: dict[str, Any] = {
        "floor": floor, "usable": usable, "entries": entries, "stages": {},
        "data2": {"ratio": data2_ratio, "worst": _worst(data2_ratio, usable)},
    }
    for stage in stages:
        mc = _binned(output, "mc", field, stage)
        values = {
            "L1": metrics.l1_distance(data, mc),
            "H": metrics.hellinger_distance(data, mc),
            "W1": metrics.wasserstein_distance(data, mc, edges),
        }
        stage_floor = {
            **floor,
            "W1": metrics.expected_wasserstein_distance(data, edges, data_entries, _entries(output, "mc", field, stage)),
        }
        ratios = {k: metrics.ratio_to_floor(v, stage_floor[k]) for k, v in values.items()}
        worst = {name: _worst(ratio, usable) for name, ratio in ratios.items()}
        result["stages"][stage] = {"values": values, "W1_floor": stage_floor["W1"], "ratios": ratios, "worst": worst}
    return result


def _core_parameters(output: Mapping[str, Any], field: str, stages: Sequence[str]) -> dict[str, Any]:
    """Mean, RMS, core peak and width per (pT, |η|) bin for data and each MC stage."""
    h = output["mc"]["histograms"][field]
    edges = h.axes["value"].edges
    samples = {"data": ("data", "raw"), **{f"MC {s}": ("mc", s) for s in stages}}
    parameters: dict[str, dict[str, np.ndarray]] = {}
    for label, (dataset, stage) in samples.items():
        selected = output[dataset]["histograms"][field][{"stage": stage}]
        counts, variances = selected.values(), selected.variances()
        table = {k: np.full(counts.shape[:2], np.nan) for k in ("mean", "mean_error", "rms", "rms_error", "peak", "peak_error", "core_width", "core_width_error")}
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                if counts[i, j].sum() < MIN_BIN_ENTRIES / 5:
                    continue
                fit = corefit.fit_core_binned(counts[i, j], variances[i, j], edges)
                for key in table:
                    table[key][i, j] = getattr(fit, key)
        parameters[label] = table
    return parameters


def _columns(output: Mapping[str, Any], dataset: str, stage: str, fields: Sequence[str], region: str):
    probes = output[dataset]["probes"]
    keep = region_mask(probes["superclusterEta"], region)
    matrix = np.stack([probes[f"{stage}/{f}"][keep] for f in fields], axis=1).astype(np.float64)
    kinematics = np.stack([probes[k][keep] for k in KINEMATICS], axis=1).astype(np.float64)
    return matrix, kinematics, probes["weight"][keep].astype(np.float64)


def _correlations(output: Mapping[str, Any], stages: Sequence[str], fields_by_region: Mapping[str, list[str]]):
    result: dict[str, Any] = {}
    for region, fields in fields_by_region.items():
        data, _, _ = _columns(output, "data", "raw", fields, region)
        data2, _, _ = _columns(output, "data2", "raw", fields, region)
        _, _, mc_weight = _columns(output, "mc", stages[0], fields, region)
        # The floor of a data-vs-MC comparison: two samples at data's and MC's (Kish) entries from
        # the population both data samples represent. Every stage has MC's weights.
        mc_entries = float(metrics.effective_entries(mc_weight, mc_weight**2))
        entry: dict[str, Any] = {"fields": fields, "stages": {}}
        for method in ("pearson", "spearman"):
            _, drawn = metrics.correlation_difference(data, data2, method=method)
            floor, spread = metrics.expected_correlation_difference(
                np.concatenate([data, data2]), len(data), mc_entries, method=method, draws=CORRELATION_FLOOR_DRAWS
            )
            entry.update({f"{method}_floor": floor, f"{method}_floor_sd": spread, f"{method}_floor_data2": float(drawn)})
        entry["data_pearson"] = metrics.pearson_matrix(data)
        for stage in stages:
            mc, _, weight = _columns(output, "mc", stage, fields, region)
            stage_entry = {}
            for method in ("pearson", "spearman"):
                delta, worst = metrics.correlation_difference(mc, data, weight, None, method=method)  # ρ_MC − ρ_data
                stage_entry[method] = {"delta": delta, "max_abs_delta": float(worst)}
            entry["stages"][stage] = stage_entry
        result[region] = entry
    return result


def _classifier(
    output: Mapping[str, Any], stages: Sequence[str], fields: Sequence[str], rho_only: Mapping[str, Any]
) -> dict[str, Any]:
    """One classifier per comparison over barrel and endcap together: η_SC is a feature, and the
    preshower variables are exactly zero in the barrel in every sample, so they carry no spurious
    separation.

    ``kinematics`` is data against MC on (pT, η_SC, φ, ρ) alone: what separates them within the
    kinematic bins (and in φ) is a floor no correction of the photon variables can go below;
    ``kinematics_rho_only`` is the same on ``rho_only``, the output before the kinematic
    reweighting."""

    def features(dataset: str, stage: str, fields: Sequence[str], source: Mapping[str, Any] = output) -> tuple[np.ndarray, np.ndarray]:
        probes = source[dataset]["probes"]
        keep = region_mask(probes["superclusterEta"], "EB") | region_mask(probes["superclusterEta"], "EE")
        columns = [probes[f"{stage}/{f}"] for f in fields] + [probes[k] for k in KINEMATICS]
        return np.stack(columns, axis=1)[keep].astype(np.float64), probes["weight"][keep].astype(np.float64)

    candidates = {
        "data2": ("data2", "raw", fields), "kinematics": ("mc", "raw", ()), "kinematics_rho_only": ("mc", "raw", ()),
        **{stage: ("mc", stage, fields) for stage in stages},
    }
    result = {}
    for name, (dataset, stage, compared) in candidates.items():
        source = rho_only if name == "kinematics_rho_only" else output
        data, data_weight = features("data", "raw", compared, source)
        other, other_weight = features(dataset, stage, compared, source)
        outcome = twosample.classifier_auc(
            data, other, data_weight, other_weight,
            seeds=CLASSIFIER_SEEDS, max_rows_per_sample=CLASSIFIER_ROWS, max_iter=CLASSIFIER_ITERATIONS,
        )
        result[name] = {"auc": outcome.auc, "auc_std": outcome.auc_std, "rows_per_sample": max(outcome.n_a, outcome.n_b)}
    return result


def _photon_id(output: Mapping[str, Any], stages: Sequence[str]) -> dict[str, Any]:
    """ID score distance to data per region, and profiles in pT, η_SC and ρ."""
    edges = np.linspace(-1.0, 1.0, 41)
    profile_edges = {
        "pt": np.asarray(PT_EDGES),
        "superclusterEta": np.linspace(-2.5, 2.5, 21),
        "rho": np.linspace(0.0, 60.0, 13),
    }
    samples = {"data": ("data", "raw"), "data2": ("data2", "raw"), **{f"MC {s}": ("mc", s) for s in stages}}
    result: dict[str, Any] = {"edges": edges, "profile_edges": profile_edges, "histograms": {}, "profiles": {}, "distance": {}}
    entries: dict[tuple[str, str], float] = {}
    for label, (dataset, stage) in samples.items():
        probes = output[dataset]["probes"]
        score, weight = probes[f"{stage}/mvaID"], probes["weight"]
        for region in REGIONS:
            keep = region_mask(probes["superclusterEta"], region)
            result["histograms"][(label, region)] = np.histogram(np.clip(score[keep], -1, 1), edges, weights=weight[keep])[0]
            entries[(label, region)] = float(metrics.effective_entries(weight[keep], weight[keep] ** 2))
        for name, bins in profile_edges.items():
            index = np.digitize(probes[name], bins) - 1
            valid = (index >= 0) & (index < len(bins) - 1)
            sum_w = np.bincount(index[valid], weight[valid], len(bins) - 1)
            sum_wx = np.bincount(index[valid], (weight * score)[valid], len(bins) - 1)
            sum_wxx = np.bincount(index[valid], (weight * score**2)[valid], len(bins) - 1)
            sum_w2 = np.bincount(index[valid], (weight**2)[valid], len(bins) - 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = sum_wx / sum_w
                spread = np.sqrt(np.maximum(sum_wxx / sum_w - mean**2, 0.0))
                error = spread / np.sqrt(sum_w**2 / sum_w2)
            result["profiles"][(label, name)] = (mean, error)
    for region in REGIONS:
        data = result["histograms"][("data", region)]
        # Data's score distribution, best known from both data samples, is what the expected
        # distances are drawn from.
        truth = data + result["histograms"][("data2", region)]
        data2_floor, data2_spread = metrics.expected_l1_distance(truth, entries[("data", region)], entries[("data2", region)])
        result["distance"][region] = {
            "data2_L1": float(metrics.l1_distance(data, result["histograms"][("data2", region)])),
            "data2_expected_L1": data2_floor, "data2_expected_L1_sd": data2_spread,
        }
        for stage in stages:
            label = f"MC {stage}"
            value = float(metrics.l1_distance(data, result["histograms"][(label, region)]))
            floor, spread = metrics.expected_l1_distance(truth, entries[("data", region)], entries[(label, region)])
            result["distance"][region][stage] = {
                "L1": value, "expected_L1": floor, "expected_L1_sd": spread,
                "ratio": float(metrics.ratio_to_floor(value, floor)),
            }
    return result


def _scale_factors(output: Mapping[str, Any], stages: Sequence[str]):
    data_hist = output["data"]["histograms"]["id"]
    thresholds = efficiency.working_point_thresholds(data_hist, stage="raw")
    data_table = efficiency.efficiencies(data_hist, thresholds, stage="raw")
    tables = {"data": data_table}
    correction_sets = {}
    for stage in stages:
        mc_table = efficiency.efficiencies(output["mc"]["histograms"]["id"], thresholds, stage=stage)
        tables[f"MC {stage}"] = mc_table
        sf = efficiency.scale_factors(data_table, mc_table)
        correction_sets[stage] = efficiency.scale_factor_correction(
            sf, name="Photon-ID-SF", description=(
                f"Toy photon MVA ID scale factors, data / MC ({stage}); working points at 80% and 90% "
                "data efficiency per region; statistical uncertainty in sfup/sfdown."
            ),
        )
    return thresholds, tables, correction_sets


def build(output: Mapping[str, Any], *, classifier: bool = True, costs: Mapping[str, Mapping[str, Any]] | None = None) -> Report:
    """Compute every figure of the report from a processor output; ``costs`` (:mod:`egproc.costs`,
    per stage) adds each correction's training time and throughput to the comparison."""
    for dataset in ("data", "data2", "mc"):
        if dataset not in output:
            raise KeyError(f"the report needs the datasets data, data2 and mc; {dataset!r} is missing")
    clock = time.perf_counter()
    rho_only = output
    output, kinematic_weights = kinematically_reweighted(output)
    stages = _stages(output)
    fields = _variables(output)
    fields_by_region = {region: [f for f in fields if region in variable(f).regions] for region in REGIONS}
    distances = {field: _distances(output, field, stages) for field in fields}
    # A Gaussian core is meaningless for a variable whose core is an exact-zero peak.
    parameters = {field: _core_parameters(output, field, stages) for field in fields if not variable(field).zero_peak}
    correlations = _correlations(output, stages, fields_by_region)
    auc = _classifier(output, stages, fields, rho_only) if classifier else {}
    photon_id = _photon_id(output, stages)
    thresholds, efficiency_tables, correction_sets = _scale_factors(output, stages)

    methods: dict[str, Any] = {}
    for stage in stages:
        per_variable = {
            field: {
                name: distances[field]["stages"][stage]["worst"][name] for name in ("W1", "L1", "H")
            }
            for field in fields
        }
        methods[stage] = {
            "variables": per_variable,
            "worst_W1_ratio": max(
                (v["W1"]["ratio"] for v in per_variable.values() if v["W1"]["ratio"] is not None), default=None
            ),
            "W1_bins_above_target": {
                field: _above(distances[field]["stages"][stage]["ratios"]["W1"], distances[field]["usable"]) for field in fields
            },
            "median_W1_ratio": {
                field: _median(distances[field]["stages"][stage]["ratios"]["W1"], distances[field]["usable"]) for field in fields
            },
            "correlations": {
                region: {
                    "max_abs_delta_pearson": correlations[region]["stages"][stage]["pearson"]["max_abs_delta"],
                    "floor_pearson": correlations[region]["pearson_floor"],
                    "floor_pearson_sd": correlations[region]["pearson_floor_sd"],
                    "floor_pearson_data2": correlations[region]["pearson_floor_data2"],
                    "max_abs_delta_spearman": correlations[region]["stages"][stage]["spearman"]["max_abs_delta"],
                    "floor_spearman": correlations[region]["spearman_floor"],
                    "floor_spearman_sd": correlations[region]["spearman_floor_sd"],
                    "floor_spearman_data2": correlations[region]["spearman_floor_data2"],
                }
                for region in REGIONS
            },
            "classifier_auc": auc.get(stage),
            "photon_id": {region: photon_id["distance"][region][stage] for region in REGIONS},
        }
    summary = {
        "datasets": {name: {k: float(v) for k, v in part["counts"].items()} for name, part in output.items()},
        "min_bin_entries": MIN_BIN_ENTRIES,
        "methods": methods,
        "noise_floor": {
            "W1_data2": {
                field: {
                    "worst": distances[field]["data2"]["worst"],
                    "median": _median(distances[field]["data2"]["ratio"], distances[field]["usable"]),
                }
                for field in fields
            },
            "W1_data2_bins_above_target": {
                field: _above(distances[field]["data2"]["ratio"], distances[field]["usable"]) for field in fields
            },
            "W1_usable_bins": {field: int(distances[field]["usable"].sum()) for field in fields},
            "classifier_auc": auc.get("data2"),
            "classifier_auc_kinematics": auc.get("kinematics"),
            "classifier_auc_kinematics_rho_only": auc.get("kinematics_rho_only"),
            "photon_id_L1": {
                region: {k: photon_id["distance"][region][f"data2_{k}"] for k in ("L1", "expected_L1", "expected_L1_sd")}
                for region in REGIONS
            },
        },
        "working_points": thresholds,
        "bins": {"pt": list(PT_EDGES), "abseta": list(ABS_ETA_EDGES)},
        "kinematic_weights": kinematic_weights,
        "costs": {stage: dict(costs[stage]) for stage in methods if costs and stage in costs},
        "per_bin": {
            field: {
                "data_entries": distances[field]["entries"],
                "floor": distances[field]["floor"],
                "data2_W1_ratio": distances[field]["data2"]["ratio"],
                "stages": {
                    stage: {"distance": part["values"], "W1_floor": part["W1_floor"], "ratio_to_floor": part["ratios"]}
                    for stage, part in distances[field]["stages"].items()
                },
                "parameters": parameters.get(field),
            }
            for field in fields
        },
        "efficiencies": {
            label: {"efficiency": table.efficiency, "error": table.error} for label, table in efficiency_tables.items()
        },
        "seconds": None,
    }
    summary["seconds"] = round(time.perf_counter() - clock, 1)
    arrays = {
        "distances": distances,
        "parameters": parameters,
        "correlations": correlations,
        "photon_id": photon_id,
        "efficiencies": efficiency_tables,
        "stages": stages,
        "fields": fields,
    }
    return Report(summary=summary, arrays=arrays, scale_factor_sets=correction_sets, compared=output)


def _above(ratio: np.ndarray, usable: np.ndarray) -> int:
    """Usable bins whose W₁ / floor exceeds :data:`W1_TARGET`."""
    return int(np.sum(usable & (np.nan_to_num(ratio, nan=0.0) > W1_TARGET)))


def _median(ratio: np.ndarray, usable: np.ndarray) -> float | None:
    return float(np.median(ratio[usable])) if usable.any() else None


def headline(summary: Mapping[str, Any]) -> str:
    """The report's main figures as a text table, one column per MC stage: classifier AUC, worst-bin
    W₁ ratio per variable, max |Δρ| (Spearman) per region and the ID score's L1 per region, each
    with its data-vs-data2 floor."""
    methods = summary["methods"]
    stages = list(methods)
    floor = summary["noise_floor"]

    def number(value: float | None, fmt: str = ".3f") -> str:
        return "—" if value is None else format(value, fmt)

    rows = []
    auc = floor["classifier_auc"]
    kinematics = floor.get("classifier_auc_kinematics")
    rho_only = floor.get("classifier_auc_kinematics_rho_only")
    rows.append(("classifier AUC", [number((methods[s]["classifier_auc"] or {}).get("auc")) for s in stages],
                 f"data2 {number(auc['auc'] if auc else None)}, MC kinematics alone "
                 f"{number(kinematics['auc'] if kinematics else None)} "
                 f"(before the (pT, |η|) reweighting {number(rho_only['auc'] if rho_only else None)})"))
    for field in methods[stages[0]]["variables"]:
        ratios = [methods[s]["variables"][field]["W1"]["ratio"] for s in stages]
        perfect = floor.get("W1_data2", {}).get(field, {}).get("worst", {}).get("ratio")
        rows.append((f"W1/floor {field}", [number(r, ".2f") for r in ratios], f"target ≤ {W1_TARGET}, data2 {number(perfect, '.2f')}"))
    if "W1_bins_above_target" in methods[stages[0]]:
        counts = [sum(methods[s]["W1_bins_above_target"].values()) for s in stages]
        rows.append((f"W1 bins > {W1_TARGET}", [str(c) for c in counts],
                     f"of {sum(floor['W1_usable_bins'].values())}; data2 {sum(floor['W1_data2_bins_above_target'].values())}"))
    for region in REGIONS:
        correlations = [methods[s]["correlations"][region] for s in stages]
        rows.append((f"max |Δρ| Spearman {region}", [number(c["max_abs_delta_spearman"]) for c in correlations],
                     f"floor {number(correlations[0]['floor_spearman'])} ± {number(correlations[0]['floor_spearman_sd'])}; "
                     f"data2 {number(correlations[0]['floor_spearman_data2'])}"))
    for region in REGIONS:
        identity = [methods[s]["photon_id"][region] for s in stages]
        data2 = floor["photon_id_L1"][region]
        rows.append((f"ID score L1 {region}", [number(i["L1"]) for i in identity],
                     f"expected at MC's statistics {number(identity[-1]['expected_L1'])} ± {number(identity[-1]['expected_L1_sd'])}; "
                     f"data2 {number(data2['L1'])} (expected {number(data2['expected_L1'])} ± {number(data2['expected_L1_sd'])})"))
    costs = summary.get("costs") or {}
    if costs:
        rows.append(("training time (min)", [_minutes(costs.get(s, {}).get("training_seconds")) for s in stages],
                     "from each bundle's provenance"))
        device = next(iter(costs.values()))["device"]
        rows.append((f"apply (k probes/s, {device})", [_thousands(costs.get(s, {}).get("probes_per_second")) for s in stages],
                     "Bundle.apply on one MC file's probes" + (", one torch thread" if device == "cpu" else "")))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'':<{width}}" + "".join(f"{s:>12}" for s in stages)]
    lines += [f"{label:<{width}}" + "".join(f"{c:>12}" for c in cells) + f"   {note}" for label, cells, note in rows]
    return "\n".join(lines)


def _json_ready(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write(
    output: Mapping[str, Any], folder: str | Path, *, classifier: bool = True, costs: Mapping[str, Mapping[str, Any]] | None = None
) -> Path:
    """Build the report and write ``folder``: figures, ``index.html``, ``summary.json`` and one
    ``scale_factors_<method>.json`` per MC stage."""

    from egproc import plots

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = build(output, classifier=classifier, costs=costs)
    figures = plots.render(report.compared, report, folder)
    for stage, correction in report.scale_factor_sets.items():
        efficiency.write_scale_factors(folder / f"scale_factors_{stage}.json", [correction])
    report.summary["scale_factor_files"] = {stage: f"scale_factors_{stage}.json" for stage in report.scale_factor_sets}
    (folder / "summary.json").write_text(json.dumps(_json_ready(report.summary), indent=2) + "\n")
    (folder / "index.html").write_text(_html(report, figures))
    return folder


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds / 60:.2f}" if seconds < 60 else f"{seconds / 60:.3g}"  # fudge factors take seconds


def _thousands(rate: float | None) -> str:
    return "—" if rate is None else f"{rate / 1000:.0f}"


def _cell(value: float | None, floor: float | None = None, fmt: str = ".3g") -> str:
    if value is None or not np.isfinite(value):
        return "<td>–</td>"
    good = floor is not None and value <= floor
    return f'<td class="{"good" if good else ""}">{value:{fmt}}</td>'


def _html(report: Report, figures: Mapping[str, Sequence[str]]) -> str:
    summary = report.summary
    stages = list(summary["methods"])
    fields = report.arrays["fields"]
    rows = []
    perfect = summary["noise_floor"]["W1_data2"]
    for field in fields:
        cells = "".join(_cell(summary["methods"][s]["variables"][field]["W1"]["ratio"], W1_TARGET) for s in stages)
        cells += _cell(perfect[field]["worst"]["ratio"], W1_TARGET)
        rows.append(f"<tr><th>{html.escape(field)}</th>{cells}</tr>")
    by_chance = sum(summary["noise_floor"]["W1_data2_bins_above_target"].values())
    cells = "".join(_cell(sum(summary["methods"][s]["W1_bins_above_target"].values()), by_chance, "d") for s in stages)
    rows.append(
        f"<tr><th>bins with W₁ / floor > {W1_TARGET} (of {sum(summary['noise_floor']['W1_usable_bins'].values())})</th>"
        f"{cells}<td>{by_chance}</td></tr>"
    )
    for method in ("pearson", "spearman"):
        for region in REGIONS:
            entry = summary["methods"][stages[0]]["correlations"][region]
            floor, spread, drawn = entry[f"floor_{method}"], entry[f"floor_{method}_sd"], entry[f"floor_{method}_data2"]
            cells = "".join(
                _cell(summary["methods"][s]["correlations"][region][f"max_abs_delta_{method}"], 2 * floor) for s in stages
            )
            rows.append(
                f"<tr><th>max |Δρ| {method.title()} {region} (floor {floor:.3g} ± {spread:.2g})</th>{cells}<td>{drawn:.3g}</td></tr>"
            )
    floor = summary["noise_floor"]["classifier_auc"]
    if floor is not None:
        cells = "".join(
            f"<td>{summary['methods'][s]['classifier_auc']['auc']:.3f} ± {summary['methods'][s]['classifier_auc']['auc_std']:.3f}</td>"
            for s in stages
        )
        kinematics = summary["noise_floor"].get("classifier_auc_kinematics")
        rho_only = summary["noise_floor"].get("classifier_auc_kinematics_rho_only")
        alone = "" if kinematics is None else f"; MC kinematics alone: {kinematics['auc']:.3f}"
        if kinematics is not None and rho_only is not None:
            alone += f", before the (pT, |η|) reweighting {rho_only['auc']:.3f}"
        rows.append(f"<tr><th>classifier AUC (data vs data2: {floor['auc']:.3f}{alone})</th>{cells}<td></td></tr>")
    for region in REGIONS:
        data2 = summary["noise_floor"]["photon_id_L1"][region]
        identity = [summary["methods"][s]["photon_id"][region] for s in stages]
        # Green within two standard deviations of what statistics alone give at MC's entries.
        cells = "".join(_cell(i["L1"], i["expected_L1"] + 2 * i["expected_L1_sd"]) for i in identity)
        rows.append(
            f"<tr><th>ID score L1 {region} (expected at MC's statistics {identity[-1]['expected_L1']:.3g} ± "
            f"{identity[-1]['expected_L1_sd']:.2g})</th>{cells}<td>{data2['L1']:.3g} (expected {data2['expected_L1']:.3g})</td></tr>"
        )
    costs = summary.get("costs") or {}
    if costs:
        device = next(iter(costs.values()))["device"]
        cells = "".join(f"<td>{_minutes(costs.get(s, {}).get('training_seconds'))}</td>" for s in stages)
        rows.append(f"<tr><th>training time (min, from the bundle's provenance)</th>{cells}<td></td></tr>")
        cells = "".join(f"<td>{_thousands(costs.get(s, {}).get('probes_per_second'))}</td>" for s in stages)
        threads = ", one torch thread" if device == "cpu" else ""
        rows.append(f"<tr><th>apply: thousand probes/s ({html.escape(device)}{threads})</th>{cells}<td></td></tr>")
    header = "".join(f"<th>{html.escape('uncorrected MC' if s == 'raw' else s)}</th>" for s in stages) + "<th>data2</th>"
    sections = []
    for title, paths in figures.items():
        images = "".join(f'<a href="{p}"><img src="{p}" loading="lazy"></a>' for p in paths)
        sections.append(f"<h2>{html.escape(title)}</h2><div class='grid'>{images}</div>")
    sf_links = " ".join(
        f'<a href="{p}">{html.escape(s)}</a>' for s, p in summary.get("scale_factor_files", {}).items()
    )
    wp = ", ".join(
        f"{name}: " + ", ".join(f"{r} mvaID ≥ {t:.2f}" for r, t in regions.items())
        for name, regions in summary["working_points"].items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>egproc fidelity report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1400px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 4px 10px; text-align: right; }}
th:first-child {{ text-align: left; }}
td.good {{ background: #d8f0d8; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.grid img {{ width: 420px; }}
</style></head><body>
<h1>egproc fidelity report</h1>
<p>Distances of MC to data, each relative to the noise floor: for W₁ the expected distance between
two independent data samples at the statistics of the comparison (data's entries and the MC stage's
effective entries), for the others the data-vs-data2 distance. Per variable: the worst (pT, |η_SC|)
bin's W₁ / floor, over bins with at least {summary["min_bin_entries"]} data probes (green: ≤ {W1_TARGET}); the
data2 column scores the independent data sample the same way, i.e. what a perfect correction
reaches, and the count of bins above {W1_TARGET} reads against data2's (green: no more). Correlations: max |Δρ| of the Pearson
and Spearman matrices (green: ≤ 2 × floor; Pearson is sensitive to the isolation tails, so its floor is
large where they are sparse). Classifier: ROC AUC of a gradient-boosted classifier separating MC from
data with all variables and (pT, η_SC, φ, ρ), on a held-out split, mean ± spread of
{len(CLASSIFIER_SEEDS)} seeds (0.5 = indistinguishable). MC is weighted by genWeight, the ρ reweighting
and a reweighting to data's probe (pT, |η_SC|) distribution on the bins above, which leaves every
per-bin figure unchanged. Details in <a href="summary.json">summary.json</a>.</p>
<table><tr><th></th>{header}</tr>{''.join(rows)}</table>
<p>Working points (80 % and 90 % data efficiency, sideband-subtracted): {html.escape(wp)}.
Scale factors (CMS EGM JSON: ValType, WorkingPoint, eta, pt): {sf_links}.</p>
{''.join(sections)}
<p>Report computed in {summary["seconds"]} s.</p>
</body></html>
"""
