"""Sideband-subtracted ID efficiencies and scale factors against known answers.

Synthetic "id" histograms are filled with Z→ee-like pairs: a Breit–Wigner ⊗ Gaussian signal whose
probe mvaID is 2·Beta(a, 1) − 1 (pass probability at threshold t: 1 − ((t + 1)/2)^a, a = 4 in EB and
3 in EE), on a linearly falling background whose mvaID is 2·Beta(1, 3) − 1 (mostly failing).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import awkward as ak
import correctionlib
import hist
import numpy as np
import pytest

from egproc import efficiency
from egproc.variables import ABS_ETA_EDGES, PT_EDGES

SIGNAL_SHAPE = {"EB": 4.0, "EE": 3.0}
BACKGROUND_SHAPE = 3.0
TRANSITION = 2  # index of the 1.4442–1.566 |η| bin


def new_id_hist() -> hist.Hist:
    return hist.Hist(
        hist.axis.StrCategory(["raw", "fudge"], name="stage"),
        hist.axis.Regular(30, 60, 120, name="mass"),
        hist.axis.Variable(PT_EDGES, name="pt"),
        hist.axis.Variable(ABS_ETA_EDGES, name="abseta"),
        hist.axis.Regular(100, -1, 1, name="mvaID"),
        storage=hist.storage.Weight(),
    )


def true_signal_efficiency(threshold: float, region: str) -> float:
    return 1.0 - ((threshold + 1.0) / 2.0) ** SIGNAL_SHAPE[region]


def generate(rng, n_signal: int, n_background: int, *, peak_only: bool = False):
    """Pairs (mass, pt, abseta, mvaID): signal in 60–120 GeV (or only 85–95 with ``peak_only``) plus background."""
    mass = 91.1876 + 1.2476 * rng.standard_cauchy(3 * n_signal) + rng.normal(0, 1.5, 3 * n_signal)
    low, high = (85.0, 95.0) if peak_only else (60.0, 120.0)
    mass = mass[(mass > low) & (mass < high)][:n_signal]
    abseta = rng.uniform(0, 2.5, n_signal)
    shape = np.where(abseta < 1.5, SIGNAL_SHAPE["EB"], SIGNAL_SHAPE["EE"])
    signal = (mass, 20 + rng.exponential(25, n_signal), abseta, 2 * rng.beta(shape, 1.0) - 1)
    # Linear density ∝ 150 − m on 60–120 GeV: x = 150 − m has density ∝ x on [30, 90].
    background_mass = 150 - np.sqrt(30**2 + rng.uniform(size=n_background) * (90**2 - 30**2))
    background = (
        background_mass,
        20 + rng.exponential(12, n_background),
        rng.uniform(0, 2.5, n_background),
        2 * rng.beta(1.0, BACKGROUND_SHAPE, n_background) - 1,
    )
    return tuple(np.concatenate(pair) for pair in zip(signal, background))


def fill(h: hist.Hist, pairs, stage: str = "raw", weight=None) -> hist.Hist:
    mass, pt, abseta, mva = pairs
    weight = np.ones_like(mass) if weight is None else weight
    h.fill(stage=stage, mass=mass, pt=pt, abseta=abseta, mvaID=mva, weight=weight)
    return h


@pytest.fixture(scope="module")
def data_hist() -> hist.Hist:
    return fill(new_id_hist(), generate(np.random.default_rng(11), 400_000, 300_000))


@pytest.fixture(scope="module")
def mc_hist() -> hist.Hist:
    rng = np.random.default_rng(12)
    pairs = generate(rng, 400_000, 300_000)
    return fill(new_id_hist(), pairs, "fudge", rng.uniform(0.5, 1.5, len(pairs[0])))


@pytest.fixture(scope="module")
def thresholds(data_hist) -> dict[str, dict[str, float]]:
    return efficiency.working_point_thresholds(data_hist)


def region_of_bin(j: int) -> str | None:
    return None if j == TRANSITION else ("EB" if ABS_ETA_EDGES[j + 1] <= 1.4442 else "EE")


def test_sideband_coefficients_remove_a_linear_background_exactly():
    edges = np.linspace(60, 120, 31)
    c = efficiency.sideband_coefficients(edges)
    assert c.sum() == pytest.approx(0.0)  # a flat background cancels
    centres = 0.5 * (edges[1:] + edges[:-1])
    assert (c * centres).sum() == pytest.approx(0.0, abs=1e-9)  # so does a slope
    assert set(np.unique(c)) == {-1.0, 0.0, 1.0}
    with pytest.raises(ValueError, match="not an edge"):
        efficiency.sideband_coefficients(edges, window=(81.0, 100.0))
    with pytest.raises(ValueError, match="window centre"):
        efficiency.sideband_coefficients(edges, sidebands=((60.0, 70.0), (100.0, 120.0)))


def test_sideband_subtraction_recovers_the_signal_efficiency_and_the_window_count_does_not(data_hist):
    threshold = 0.4
    cuts = {"cut": {"EB": threshold, "EE": threshold}}
    table = efficiency.efficiencies(data_hist, cuts, "raw")
    eff, err = table.efficiency["cut"], table.error["cut"]
    assert eff.shape == err.shape == (len(PT_EDGES) - 1, len(ABS_ETA_EDGES) - 1)
    assert np.isnan(eff[:, TRANSITION]).all() and np.isnan(err[:, TRANSITION]).all()
    pulls = [
        (eff[i, j] - true_signal_efficiency(threshold, region_of_bin(j))) / err[i, j]
        for i in range(eff.shape[0])
        for j in range(eff.shape[1])
        if j != TRANSITION
    ]
    assert np.all(np.isfinite(pulls)) and len(pulls) == 24
    assert np.max(np.abs(pulls)) < 4
    assert 0.3 < np.mean(np.square(pulls)) < 2.0

    inclusive = efficiency.inclusive_efficiencies(data_hist, cuts)["cut"]
    for region in ("EB", "EE"):
        measured, error = inclusive[region]
        truth = true_signal_efficiency(threshold, region)
        assert abs(measured - truth) < 3 * error
        # The naive count of the window, background included, is far off.
        lo, hi = (0.0, 1.4442) if region == "EB" else (1.566, 2.5)
        window = data_hist[{"stage": "raw", "mass": slice(hist.loc(80), hist.loc(100), sum), "pt": sum}]
        window = window[{"abseta": slice(hist.loc(lo), hist.loc(hi), sum)}]
        naive = window[{"mvaID": slice(hist.loc(threshold), None, sum)}].value / window[{"mvaID": sum}].value
        assert truth - naive > 20 * error


def test_without_background_the_uncertainty_is_binomial():
    rng = np.random.default_rng(5)
    h = fill(new_id_hist(), generate(rng, 20_000, 0, peak_only=True))
    table = efficiency.efficiencies(h, {"cut": {"EB": 0.2, "EE": 0.2}})
    n = table.signal[:, [0, 1, 3, 4]]
    eff = table.efficiency["cut"][:, [0, 1, 3, 4]]
    np.testing.assert_allclose(table.error["cut"][:, [0, 1, 3, 4]], np.sqrt(eff * (1 - eff) / n), rtol=1e-12)


def test_stated_uncertainty_covers_toy_fluctuations():
    rng = np.random.default_rng(8)
    threshold = 0.4
    pulls = []
    for _ in range(150):
        h = fill(new_id_hist(), generate(rng, 3000, 3000))
        measured, error = efficiency.inclusive_efficiencies(h, {"cut": {"EB": threshold}})["cut"]["EB"]
        pulls.append((measured - true_signal_efficiency(threshold, "EB")) / error)
    assert abs(np.mean(pulls)) < 0.25
    assert 0.8 < np.std(pulls) < 1.2


def test_working_points_reach_their_target_efficiency_in_data(data_hist, thresholds):
    mva_edges = data_hist.axes["mvaID"].edges
    assert set(thresholds) == {"wp80", "wp90"}
    achieved = efficiency.inclusive_efficiencies(data_hist, thresholds)
    for wp, target in (("wp80", 0.80), ("wp90", 0.90)):
        assert set(thresholds[wp]) == {"EB", "EE"}
        for region, cut in thresholds[wp].items():
            assert np.isclose(mva_edges, cut).any()
            measured, error = achieved[wp][region]
            assert abs(measured - target) < 0.01
            assert abs(true_signal_efficiency(cut, region) - target) < 0.015
            # No neighbouring edge does better.
            index = int(np.argmin(np.abs(mva_edges - cut)))
            for neighbour in (mva_edges[index - 1], mva_edges[index + 1]):
                other, _ = efficiency.inclusive_efficiencies(data_hist, {wp: {region: neighbour}})[wp][region]
                assert abs(other - target) >= abs(measured - target)
        assert thresholds[wp]["EB"] != thresholds[wp]["EE"]  # different signal shapes
    assert thresholds["wp90"]["EB"] < thresholds["wp80"]["EB"]


def test_identical_data_and_mc_give_unit_scale_factors(data_hist, thresholds):
    table = efficiency.efficiencies(data_hist, thresholds, "raw")
    sfs = efficiency.scale_factors(table, table)
    for wp in thresholds:
        measured = np.isfinite(sfs.sf[wp])
        assert np.isnan(sfs.sf[wp][:, TRANSITION]).all() and measured.sum() == 24
        np.testing.assert_array_equal(sfs.sf[wp][measured], 1.0)
        relative = table.error[wp] / table.efficiency[wp]
        np.testing.assert_allclose(sfs.error[wp][measured], np.sqrt(2) * relative[measured], rtol=1e-12)


def test_scale_factors_of_statistically_equivalent_mc_are_one_within_errors(data_hist, mc_hist, thresholds):
    sfs = efficiency.scale_factors(
        efficiency.efficiencies(data_hist, thresholds, "raw"), efficiency.efficiencies(mc_hist, thresholds, "fudge")
    )
    assert (sfs.data_stage, sfs.mc_stage) == ("raw", "fudge")
    for wp in thresholds:
        measured = np.isfinite(sfs.sf[wp])
        pulls = (sfs.sf[wp][measured] - 1.0) / sfs.error[wp][measured]
        assert np.max(np.abs(pulls)) < 4 and np.mean(pulls**2) < 2.0


def test_inconsistent_inputs_are_refused(data_hist, thresholds):
    with pytest.raises(ValueError, match="not an edge"):
        efficiency.efficiencies(data_hist, {"wp": {"EB": 0.4321, "EE": 0.4}})
    with pytest.raises(KeyError, match="stage"):
        efficiency.efficiencies(data_hist, thresholds, "corrected")
    table = efficiency.efficiencies(data_hist, thresholds)
    other = efficiency.efficiencies(data_hist, {"wp80": {"EB": 0.0, "EE": 0.0}, "wp90": thresholds["wp90"]})
    with pytest.raises(ValueError, match="thresholds"):
        efficiency.scale_factors(table, other)


@pytest.fixture(scope="module")
def sf_file(tmp_path_factory, data_hist, mc_hist, thresholds):
    sfs = efficiency.scale_factors(
        efficiency.efficiencies(data_hist, thresholds, "raw"), efficiency.efficiencies(mc_hist, thresholds, "fudge")
    )
    correction = efficiency.scale_factor_correction(sfs, "Photon-ID-SF")
    path = efficiency.write_scale_factors(tmp_path_factory.mktemp("sf") / "photon_id.json", [correction])
    return sfs, path


def expected(sfs, wp, valtype, eta, pt):
    i = np.clip(np.searchsorted(PT_EDGES, pt, "right") - 1, 0, len(PT_EDGES) - 2)
    j = np.clip(np.searchsorted(ABS_ETA_EDGES, np.abs(eta), "right") - 1, 0, len(ABS_ETA_EDGES) - 2)
    sf, err = sfs.sf[wp][i, j], sfs.error[wp][i, j]
    value = {"sf": sf, "sfup": sf + err, "sfdown": np.maximum(sf - err, 0)}[valtype]
    return np.where(j == TRANSITION, {"sf": 1.0, "sfup": 2.0, "sfdown": 0.0}[valtype], value)


def test_json_validates_and_follows_the_egm_layout(sf_file):
    _, path = sf_file
    result = subprocess.run(
        [sys.executable, "-m", "correctionlib.cli", "validate", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = path.read_text()
    assert "\n  " in text  # indented, human-readable
    json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} in the JSON"))
    correction = correctionlib.CorrectionSet.from_file(str(path))["Photon-ID-SF"]
    assert [v.name for v in correction.inputs] == ["ValType", "WorkingPoint", "eta", "pt"]
    assert correction.output.name == "weight" and correction.version >= 1
    assert "clamp" in correction.description and "1.4442-1.566" in correction.description


def test_json_evaluates_to_the_table_symmetric_in_eta_and_clamped(sf_file):
    sfs, path = sf_file
    correction = correctionlib.CorrectionSet.from_file(str(path))["Photon-ID-SF"]
    rng = np.random.default_rng(2)
    eta = rng.uniform(-2.49, 2.49, 5000)
    pt = rng.uniform(20, 199, 5000)
    for wp in ("wp80", "wp90"):
        values = {v: correction.evaluate(v, wp, eta, pt) for v in ("sf", "sfup", "sfdown")}
        for valtype, value in values.items():
            np.testing.assert_allclose(value, expected(sfs, wp, valtype, eta, pt), rtol=1e-12)
            np.testing.assert_array_equal(value, correction.evaluate(valtype, wp, -eta, pt))
        assert np.all(values["sfup"] >= values["sf"]) and np.all(values["sf"] >= values["sfdown"])
        assert np.all(values["sfup"] > values["sfdown"])

        transition = correction.evaluate("sf", wp, np.array([1.5, -1.5]), np.array([40.0, 40.0]))
        np.testing.assert_array_equal(transition, 1.0)
        assert correction.evaluate("sfup", wp, 1.5, 40.0) == 2.0
        assert correction.evaluate("sfdown", wp, -1.5, 40.0) == 0.0

        for inside, outside in (((0.3, 150.0), (0.3, 1000.0)), ((0.3, 25.0), (0.3, 5.0)), ((-2.3, 40.0), (-3.0, 40.0))):
            assert correction.evaluate("sf", wp, *outside) == correction.evaluate("sf", wp, *inside)

    jagged_eta = ak.unflatten(eta, [3, 0, 2, 4995])
    jagged_pt = ak.unflatten(pt, [3, 0, 2, 4995])
    jagged = correction.evaluate("sf", "wp80", jagged_eta, jagged_pt)
    assert ak.to_list(ak.num(jagged)) == [3, 0, 2, 4995]
    np.testing.assert_array_equal(ak.to_numpy(ak.flatten(jagged)), correction.evaluate("sf", "wp80", eta, pt))


def test_bins_without_a_scale_factor_ship_one_with_full_uncertainty_and_are_listed(sf_file):
    sfs, _ = sf_file
    missing = np.array(sfs.sf["wp80"])
    missing[0, 0] = np.nan  # e.g. no background-subtracted probes in MC
    with_gap = dataclasses.replace(sfs, sf={**sfs.sf, "wp80": missing})
    correction = efficiency.scale_factor_correction(with_gap, "Photon-ID-SF", version=2)
    assert "wp80: pt 20-30 |eta| 0-0.8; wp90: none" in correction.description
    evaluator = correctionlib.CorrectionSet.from_string(
        json.dumps({"schema_version": 2, "corrections": [json.loads(correction.model_dump_json(exclude_unset=True))]})
    )["Photon-ID-SF"]
    assert [evaluator.evaluate(v, "wp80", -0.5, 25.0) for v in ("sf", "sfup", "sfdown")] == [1.0, 2.0, 0.0]
    assert evaluator.evaluate("sf", "wp90", -0.5, 25.0) == pytest.approx(sfs.sf["wp90"][0, 0], rel=1e-12)
