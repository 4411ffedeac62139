"""Figures of the fidelity report (matplotlib + mplhep, CMS style), one function per kind of figure.

Every function draws from a :class:`egproc.report.Report` (and the processor output for the
distributions) and returns the path of the PNG it wrote; :func:`render` writes them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on workers or CI

import matplotlib.pyplot as plt
import matplotlib.ticker
import mplhep as hep
import numpy as np

from egproc import metrics
from egproc.variables import ABS_ETA_EDGES, PT_EDGES, variable
from egproc.variables import REGION_ETA_BINS as REGION_BINS

__all__ = ["render"]

DATA_STYLE = {"color": "black", "marker": "o", "markersize": 3, "linestyle": "none"}
STAGE_COLOURS = ["#e42536", "#5790fc", "#f89c20", "#964a8b", "#9c9ca1", "#7a21dd"]


def _label(ax: Any) -> None:
    # A plain corner label: these are toy studies, not CMS results, and mplhep's experiment label
    # re-draws the figure to place itself (half a second per figure).
    ax.text(0.0, 1.005, "egproc", fontweight="bold", transform=ax.transAxes, va="bottom", ha="left", fontsize=13)
    ax.text(0.135, 1.005, "toy", fontstyle="italic", transform=ax.transAxes, va="bottom", ha="left", fontsize=13)


def _pt_axis(ax: Any) -> None:
    """Logarithmic pT axis with plain-number ticks at the round values the bins span."""
    ax.set_xscale("log")
    ax.set_xticks([20, 30, 50, 100, 200])
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _stage_label(stage: str) -> str:
    return "MC uncorrected" if stage == "raw" else f"MC {stage}"


def _colour(stages: list[str], stage: str) -> str:
    return STAGE_COLOURS[stages.index(stage) % len(STAGE_COLOURS)]


def _save(fig: Any, folder: Path, name: str) -> str:
    fig.savefig(folder / name, dpi=80)
    plt.close(fig)
    return name


def distribution(output: Mapping[str, Any], stages: list[str], field: str, region: str, folder: Path) -> str:
    """Normalised inclusive distribution in one region: data, MC per stage, and MC/data."""
    spec = variable(field)
    h = output["data"]["histograms"][field]
    edges = h.axes["value"].edges
    columns = list(REGION_BINS[region])

    def counts(dataset: str, stage: str) -> tuple[np.ndarray, np.ndarray]:
        selected = output[dataset]["histograms"][field][{"stage": stage}]
        return selected.values()[:, columns].sum(axis=(0, 1)), selected.variances()[:, columns].sum(axis=(0, 1))

    data, data_var = counts("data", "raw")
    norm = data.sum() or 1.0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, layout="constrained")
    centres = 0.5 * (edges[1:] + edges[:-1])
    top.errorbar(centres, data / norm, yerr=np.sqrt(data_var) / norm, label="data", **DATA_STYLE)
    for stage in stages:
        mc, _ = counts("mc", stage)
        mc_norm = mc / (mc.sum() or 1.0)
        colour = _colour(stages, stage)
        hep.histplot(mc_norm, edges, ax=top, label=_stage_label(stage), color=colour, linestyle="--" if stage == "raw" else "-")
        with np.errstate(invalid="ignore", divide="ignore"):
            bottom.step(edges[:-1], mc_norm / (data / norm), where="post", color=colour, linestyle="--" if stage == "raw" else "-")
    with np.errstate(invalid="ignore", divide="ignore"):
        bottom.fill_between(centres, 1 - np.sqrt(data_var) / data, 1 + np.sqrt(data_var) / data, step="mid", color="grey", alpha=0.3, label="data stat.")
    bottom.axhline(1.0, color="black", linewidth=0.8)
    bottom.set_ylim(0.5, 1.5)
    bottom.set_ylabel("MC / data")
    bottom.set_xlabel(spec.label)
    top.set_ylabel("fraction of probes")
    top.set_yscale("log" if spec.zero_peak else "linear")
    top.legend(title=f"{region}, Z→ee probes", fontsize=11)
    _label(top)
    return _save(fig, folder, f"distribution_{field}_{region}.png")


def distance_trends(output: Mapping[str, Any], stages: list[str], field: str, folder: Path) -> str:
    """W₁ to data versus pT (per region) and versus |η_SC| (all pT), with the noise floor: the
    expected data-vs-data2 distance at their statistics."""
    spec = variable(field)
    edges = output["data"]["histograms"][field].axes["value"].edges

    def counts(dataset: str, stage: str) -> np.ndarray:
        return output[dataset]["histograms"][field][{"stage": stage}].values()

    def variances(dataset: str) -> np.ndarray:
        return output[dataset]["histograms"][field][{"stage": "raw"}].variances()

    def expected_floor(axis: int, columns: list[int] | slice = slice(None)) -> np.ndarray:
        """Expected W₁ of data vs data2, the bins summed over ``axis`` (1: |η| in ``columns``; 0: pT)."""
        def summed(values: np.ndarray) -> np.ndarray:
            return values[:, columns].sum(1) if axis == 1 else values.sum(0)
        data_counts = summed(counts("data", "raw"))
        entries = [metrics.effective_entries(summed(counts(d, "raw")), summed(variances(d))) for d in ("data", "data2")]
        return metrics.expected_wasserstein_distance(data_counts, edges, *entries)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    pt_centres = 0.5 * (np.asarray(PT_EDGES[1:]) + np.asarray(PT_EDGES[:-1]))
    eta_centres = 0.5 * (np.asarray(ABS_ETA_EDGES[1:]) + np.asarray(ABS_ETA_EDGES[:-1]))
    data = counts("data", "raw")
    for region in spec.regions:
        columns = list(REGION_BINS[region])
        floor = expected_floor(1, columns)
        marker = "o" if region == "EB" else "s"
        left.fill_between(pt_centres, 0, floor, step="mid", alpha=0.15, color="grey" if region == "EB" else "olive", label=f"noise floor {region}")
        for stage in stages:
            value = metrics.wasserstein_distance(data[:, columns].sum(1), counts("mc", stage)[:, columns].sum(1), edges)
            left.plot(pt_centres, value, marker=marker, color=_colour(stages, stage), linestyle="--" if stage == "raw" else "-", label=f"{_stage_label(stage)} {region}")
    floor = expected_floor(0)
    right.fill_between(eta_centres, 0, floor, step="mid", alpha=0.2, color="grey", label="noise floor")
    for stage in stages:
        value = metrics.wasserstein_distance(data.sum(0), counts("mc", stage).sum(0), edges)
        right.plot(eta_centres, value, marker="o", color=_colour(stages, stage), linestyle="--" if stage == "raw" else "-", label=_stage_label(stage))
    _pt_axis(left)
    left.set_xlabel(r"probe $p_T$ (GeV)")
    right.set_xlabel(r"probe $|\eta_{SC}|$")
    for ax in (left, right):
        ax.set_ylabel(f"$W_1$ to data ({spec.label})")
        ax.set_yscale("log")
        ax.legend(fontsize=9)
        _label(ax)
    return _save(fig, folder, f"distance_{field}.png")


def parameter_evolution(report: Any, field: str, folder: Path) -> str:
    """Core peak and width (filled) and mean and RMS (open) versus pT, in the first |η_SC| bin of
    each region (every bin is in summary.json)."""
    spec = variable(field)
    parameters = report.arrays["parameters"][field]
    samples = list(parameters)
    rows = [(region, REGION_BINS[region][0]) for region in spec.regions]
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 3.6 * len(rows)), squeeze=False, layout="constrained")
    centres = 0.5 * (np.asarray(PT_EDGES[1:]) + np.asarray(PT_EDGES[:-1]))
    for row, (region, j) in enumerate(rows):
        for k, label in enumerate(samples):
            table = parameters[label]
            colour = "black" if label == "data" else STAGE_COLOURS[(k - 1) % len(STAGE_COLOURS)]
            shift = (k - len(samples) / 2) * 0.01
            x = centres * (1 + shift)
            axes[row, 0].errorbar(x, table["peak"][:, j], table["peak_error"][:, j], marker="o", color=colour, linestyle="none", label=f"{label} peak")
            axes[row, 0].errorbar(x, table["mean"][:, j], table["mean_error"][:, j], marker="o", mfc="none", color=colour, linestyle="none", label=f"{label} mean")
            axes[row, 1].errorbar(x, table["core_width"][:, j], table["core_width_error"][:, j], marker="s", color=colour, linestyle="none", label=f"{label} core σ")
            axes[row, 1].errorbar(x, table["rms"][:, j], table["rms_error"][:, j], marker="s", mfc="none", color=colour, linestyle="none", label=f"{label} RMS")
        eta_range = f"{ABS_ETA_EDGES[j]:g} < |η| < {ABS_ETA_EDGES[j + 1]:g}"
        axes[row, 0].set_ylabel(f"{spec.label} location")
        axes[row, 1].set_ylabel(f"{spec.label} width")
        for ax in axes[row]:
            _pt_axis(ax)
            ax.set_title(eta_range, fontsize=11)
    axes[-1, 0].set_xlabel(r"probe $p_T$ (GeV)")
    axes[-1, 1].set_xlabel(r"probe $p_T$ (GeV)")
    axes[0, 1].legend(fontsize=7, ncol=2)
    return _save(fig, folder, f"parameters_{field}.png")


def correlation_differences(report: Any, region: str, folder: Path) -> str:
    """ρ_MC − ρ_data (Pearson) before and after each correction."""
    entry = report.arrays["correlations"][region]
    stages = list(entry["stages"])
    fields = entry["fields"]
    fig, axes = plt.subplots(1, len(stages), figsize=(5.5 * len(stages), 5.5), squeeze=False, layout="constrained")
    limit = max(float(np.nanmax(np.abs(entry["stages"][s]["pearson"]["delta"]))) for s in stages) or 0.05
    for ax, stage in zip(axes[0], stages):
        delta = entry["stages"][stage]["pearson"]["delta"]
        image = ax.imshow(delta, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(fields)), fields, rotation=90, fontsize=8)
        ax.set_yticks(range(len(fields)), fields, fontsize=8)
        ax.set_title(f"{_stage_label(stage)} − data, {region}\nmax |Δρ| = {np.nanmax(np.abs(delta)):.3f} (floor {entry['pearson_floor']:.3f})", fontsize=10)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=r"$\Delta\rho$ (Pearson)")
    return _save(fig, folder, f"correlations_{region}.png")


def photon_id(report: Any, folder: Path) -> list[str]:
    """ID score distributions per region and profiles in pT, η_SC and ρ."""
    identity = report.arrays["photon_id"]
    stages = report.arrays["stages"]
    labels = ["data", *(f"MC {s}" for s in stages)]
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    for ax, region in zip(axes, ("EB", "EE")):
        for label in labels:
            counts = identity["histograms"][(label, region)]
            norm = counts / (counts.sum() or 1.0)
            if label == "data":
                centres = 0.5 * (identity["edges"][1:] + identity["edges"][:-1])
                ax.errorbar(centres, norm, np.sqrt(counts) / (counts.sum() or 1.0), label="data", **DATA_STYLE)
            else:
                stage = label.removeprefix("MC ")
                hep.histplot(norm, identity["edges"], ax=ax, label=_stage_label(stage), color=_colour(stages, stage), linestyle="--" if stage == "raw" else "-")
        ax.set_yscale("log")
        ax.set_xlabel("photon ID score (re-evaluated)")
        ax.legend(title=region, fontsize=9)
        _label(ax)
    paths.append(_save(fig, folder, "photon_id_distribution.png"))

    names = {"pt": r"probe $p_T$ (GeV)", "superclusterEta": r"probe $\eta_{SC}$", "rho": r"$\rho$ (GeV)"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), layout="constrained")
    for ax, (name, xlabel) in zip(axes, names.items()):
        edges = identity["profile_edges"][name]
        centres = 0.5 * (edges[1:] + edges[:-1])
        for label in labels:
            mean, error = identity["profiles"][(label, name)]
            style = DATA_STYLE if label == "data" else {"color": _colour(stages, label.removeprefix("MC ")), "marker": "s", "markersize": 3, "linestyle": "--" if label == "MC raw" else "-"}
            ax.errorbar(centres, mean, error, label=label if label == "data" else _stage_label(label.removeprefix("MC ")), **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean ID score")
        if name == "pt":
            _pt_axis(ax)
        ax.legend(fontsize=9)
        _label(ax)
    paths.append(_save(fig, folder, "photon_id_profiles.png"))
    return paths


def efficiencies(report: Any, folder: Path) -> list[str]:
    """ID efficiency versus pT per |η_SC| bin, data and MC stages, and the scale factors."""
    tables = report.arrays["efficiencies"]
    stages = report.arrays["stages"]
    data = tables["data"]
    centres = 0.5 * (np.asarray(PT_EDGES[1:]) + np.asarray(PT_EDGES[:-1]))
    paths = []
    for wp in data.efficiency:
        bins = [j for region in ("EB", "EE") for j in REGION_BINS[region]]
        fig, axes = plt.subplots(2, len(bins), figsize=(4.2 * len(bins), 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]}, layout="constrained")
        for column, j in enumerate(bins):
            top, bottom = axes[0, column], axes[1, column]
            top.errorbar(centres, data.efficiency[wp][:, j], data.error[wp][:, j], label="data", **DATA_STYLE)
            for stage in stages:
                table = tables[f"MC {stage}"]
                style = {"color": _colour(stages, stage), "marker": "s", "markersize": 3, "linestyle": "--" if stage == "raw" else "-"}
                top.errorbar(centres, table.efficiency[wp][:, j], table.error[wp][:, j], label=_stage_label(stage), **style)
                with np.errstate(invalid="ignore", divide="ignore"):
                    bottom.plot(centres, data.efficiency[wp][:, j] / table.efficiency[wp][:, j], **style)
            top.set_title(f"{wp}, {ABS_ETA_EDGES[j]:g} < |η| < {ABS_ETA_EDGES[j + 1]:g}", fontsize=10)
            top.set_ylim(0.4, 1.05)
            bottom.axhline(1.0, color="black", linewidth=0.8)
            bottom.set_ylim(0.85, 1.15)
            _pt_axis(bottom)
            bottom.set_xlabel(r"probe $p_T$ (GeV)")
        axes[0, 0].set_ylabel("ID efficiency")
        axes[1, 0].set_ylabel("data / MC")
        axes[0, 0].legend(fontsize=8)
        paths.append(_save(fig, folder, f"efficiency_{wp}.png"))
    return paths


def render(output: Mapping[str, Any], report: Any, folder: str | Path) -> dict[str, list[str]]:
    """Write every figure into ``folder``; return their file names by report section."""
    folder = Path(folder)
    stages = report.arrays["stages"]
    fields = report.arrays["fields"]
    hep.style.use("CMS")
    # CMS style sizes suit single 10×10 figures; these are smaller and often side by side.
    plt.rcParams.update({"font.size": 12, "axes.labelsize": 14, "xtick.labelsize": 11, "ytick.labelsize": 11, "legend.fontsize": 9})
    try:
        figures = {
            "Distributions": [
                distribution(output, stages, field, region, folder)
                for field in fields
                for region in variable(field).regions
            ],
            "Distance to data versus pT and |η|": [distance_trends(output, stages, f, folder) for f in fields],
            "Parameter evolution": [parameter_evolution(report, f, folder) for f in report.arrays["parameters"]],
            "Correlation differences": [correlation_differences(report, r, folder) for r in ("EB", "EE")],
            "Photon ID": photon_id(report, folder),
            "ID efficiencies and scale factors": efficiencies(report, folder),
        }
    finally:
        plt.rcdefaults()
    return figures
