"""The fidelity report on a small toy: files, structure, and that it tells raw MC from data honestly."""

from __future__ import annotations

import json
import subprocess
import sys

import correctionlib
import numpy as np
import pytest

import egproc
from egproc import fudge, histio, pipeline, report, toy
from egproc.processors import TagAndProbeProcessor


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-toy")
    groups = pipeline.group_samples(toy.generate_samples(folder, 60_000, seed=21, workers=2))
    bundle = egproc.load(fudge.train(groups["data"], groups["mc"], folder / "fudge"), device="cpu")
    result = pipeline.run_with_runner(TagAndProbeProcessor(bundle), groups, executor="iterative", chunksize=60_000)
    histio.save(result, folder / "output")
    return histio.read(folder / "output")  # through the on-disk format, as `egproc report` reads it


#: What egproc.costs would measure for the fudge stage (the raw stage has no bundle).
COSTS = {"fudge": {"training_seconds": 90.0, "probes": 1000, "seconds": 0.004, "probes_per_second": 250_000.0,
                   "device": "cpu", "torch_threads": 1}}


@pytest.fixture(scope="module")
def written(output, tmp_path_factory):
    return report.write(output, tmp_path_factory.mktemp("report"), costs=COSTS)


def test_output_round_trips_through_disk(output):
    assert set(output) == {"data", "data2", "mc"}
    probes = output["mc"]["probes"]
    assert {"pt", "weight", "raw/sieie", "fudge/sieie", "fudge/mvaID"} <= set(probes)
    assert len(probes["pt"]) == int(output["mc"]["counts"]["pairs"]) > 1000
    assert list(output["mc"]["histograms"]["id"].axes["stage"]) == ["raw", "fudge"]


def test_kinematic_reweighting_brings_mc_to_data_kinematics_in_probes_and_histograms(output):
    from egproc.variables import ABS_ETA_EDGES, PT_EDGES

    def binned(probes, weight, clamp=True):
        pt = np.clip(probes["pt"], PT_EDGES[0], np.nextafter(PT_EDGES[-1], 0)) if clamp else probes["pt"]
        return np.histogram2d(pt, np.abs(probes["superclusterEta"]), [PT_EDGES, ABS_ETA_EDGES], weights=weight)[0]

    before = output["mc"]["probes"]["weight"].copy()
    compared, table = report.kinematically_reweighted(output)
    mc, data = compared["mc"]["probes"], output["data"]["probes"]
    np.testing.assert_array_equal(output["mc"]["probes"]["weight"], before)  # the input is not modified
    assert table.shape == (len(PT_EDGES) - 1, len(ABS_ETA_EDGES) - 1)
    # The toy's MC pT spectrum differs from data's (energy scale, resolution, background mix)...
    p_data = binned(data, data["weight"]) / binned(data, data["weight"]).sum()
    p_raw = binned(mc, before) / binned(mc, before).sum()
    assert np.max(np.abs(p_raw / p_data - 1)) > 0.05
    # ...and reweighted MC has data's (pT, |η|) distribution, with its total weight kept.
    p_mc = binned(mc, mc["weight"]) / binned(mc, mc["weight"]).sum()
    np.testing.assert_allclose(p_mc, p_data, rtol=1e-9)
    assert mc["weight"].sum() == pytest.approx(before.sum(), rel=1e-9)
    # Every MC histogram carries the same weights as its probes: per (pT, |η|) bin, its sum over
    # the values (flow included) is the probes' Σw, and its variance their Σw².
    for field in ("sieie", "pfPhoIso03"):
        for name, source in (("reweighted", compared), ("original", output)):
            weight = source["mc"]["probes"]["weight"]
            view = source["mc"]["histograms"][field][{"stage": "raw"}].view(flow=True)
            np.testing.assert_allclose(view["value"].sum(axis=-1)[1:-1, 1:-1], binned(mc, weight, clamp=False), rtol=1e-9, err_msg=f"{field} {name}")
            np.testing.assert_allclose(view["variance"].sum(axis=-1)[1:-1, 1:-1], binned(mc, weight**2, clamp=False), rtol=1e-9, err_msg=f"{field} {name}")


def test_report_files_and_headline_figures(written):
    folder = written
    summary = json.loads((folder / "summary.json").read_text())
    html = (folder / "index.html").read_text()
    assert "<table>" in html and "uncorrected MC" in html and "fudge" in html
    for name in ("distribution_sieie_EB.png", "distance_sieie.png", "parameters_sieie.png", "correlations_EE.png",
                 "photon_id_profiles.png", "efficiency_wp80.png"):
        assert (folder / name).stat().st_size > 10_000, name

    methods, floor = summary["methods"], summary["noise_floor"]
    # Uncorrected MC is far from data; two data samples are not.
    assert methods["raw"]["worst_W1_ratio"] > 5
    assert methods["raw"]["classifier_auc"]["auc"] > floor["classifier_auc"]["auc"] + 0.05
    assert abs(floor["classifier_auc"]["auc"] - 0.5) < 0.03
    # MC kinematics alone separate less than the photon variables do, before and after the
    # (pT, |η|) reweighting, which leaves what differs within the bins (and in φ).
    for kinematics in (floor["classifier_auc_kinematics"], floor["classifier_auc_kinematics_rho_only"]):
        assert floor["classifier_auc"]["auc"] - 0.03 < kinematics["auc"] < methods["raw"]["classifier_auc"]["auc"]
    # Fudge factors fix means and widths, so sieie moves towards data; isolations are untouched.
    raw_sieie = methods["raw"]["variables"]["sieie"]["W1"]["ratio"]
    assert methods["fudge"]["variables"]["sieie"]["W1"]["ratio"] < raw_sieie / 2
    assert methods["fudge"]["variables"]["pfPhoIso03"]["W1"]["ratio"] == pytest.approx(methods["raw"]["variables"]["pfPhoIso03"]["W1"]["ratio"])
    # The W₁ floor is the expected data-vs-data distance: data2, scored against it like a stage,
    # sits near 1 in the typical bin (its worst bin is the perfect-correction reference).
    for field, perfect in floor["W1_data2"].items():
        assert 0.6 < perfect["median"] < 1.5, field
        assert perfect["worst"]["ratio"] >= perfect["median"]
        assert methods["raw"]["median_W1_ratio"][field] > perfect["median"], field
    # Bins above the W₁ target, per stage and for data2: the count reads against data2's.
    for field in floor["W1_data2"]:
        per_bin = summary["per_bin"][field]
        usable = np.asarray(per_bin["data_entries"], float) >= summary["min_bin_entries"]
        raw_ratio = np.asarray(per_bin["stages"]["raw"]["ratio_to_floor"]["W1"], float)
        usable &= np.isfinite(raw_ratio)
        assert floor["W1_usable_bins"][field] == int(usable.sum()), field
        assert methods["raw"]["W1_bins_above_target"][field] == int(np.sum(usable & (raw_ratio > report.W1_TARGET))), field
    total = sum(floor["W1_usable_bins"].values())
    above_raw = sum(methods["raw"]["W1_bins_above_target"].values())
    above_data2 = sum(floor["W1_data2_bins_above_target"].values())
    assert above_data2 < above_raw <= total and above_raw > total / 2
    # The ID score's L1 reads against what statistics alone give at each comparison's effective
    # entries: data2's L1 is one draw of its own expectation, raw MC is far above its own.
    for region in ("EB", "EE"):
        data2 = floor["photon_id_L1"][region]
        assert abs(data2["L1"] - data2["expected_L1"]) < 4 * data2["expected_L1_sd"], region
        raw, fudged = methods["raw"]["photon_id"][region], methods["fudge"]["photon_id"][region]
        assert raw["L1"] > raw["expected_L1"] + 5 * raw["expected_L1_sd"], region
        assert raw["ratio"] == pytest.approx(raw["L1"] / raw["expected_L1"])
        assert raw["expected_L1"] == fudged["expected_L1"]  # a correction does not change the weights
    # Correlation floors: the expected max |Δρ| of two samples at data's and MC's entries, which
    # data2's one draw (at data2's entries) does not exceed by much, and raw MC's Spearman does.
    for region in ("EB", "EE"):
        correlations = methods["raw"]["correlations"][region]
        assert correlations == methods["fudge"]["correlations"][region] | {
            k: v for k, v in correlations.items() if k.startswith("max_abs_delta")
        }
        for method in ("pearson", "spearman"):
            expected, spread = correlations[f"floor_{method}"], correlations[f"floor_{method}_sd"]
            assert 0 < spread < expected and correlations[f"floor_{method}_data2"] < expected + 3 * spread, (region, method)
        # (EE has a quarter of EB's probes in this small toy: raw MC is only 2σ above there.)
        sigmas = 5 if region == "EB" else 1
        assert correlations["max_abs_delta_spearman"] > correlations["floor_spearman"] + sigmas * correlations["floor_spearman_sd"], region
    assert set(summary["working_points"]) == {"wp80", "wp90"}
    # The printed headline carries the same numbers, one column per stage.
    lines = {line.split("  ")[0]: line.split() for line in report.headline(summary).splitlines()[1:]}
    assert lines["classifier AUC"][2:4] == [f"{methods[s]['classifier_auc']['auc']:.3f}" for s in ("raw", "fudge")]
    assert lines["W1/floor sieie"][2:4] == [f"{methods[s]['variables']['sieie']['W1']['ratio']:.2f}" for s in ("raw", "fudge")]
    assert lines["W1/floor sieie"][-1] == f"{floor['W1_data2']['sieie']['worst']['ratio']:.2f}"
    assert lines["W1 bins > 1.5"][4:6] == [str(above_raw), str(sum(methods["fudge"]["W1_bins_above_target"].values()))]
    assert lines["W1 bins > 1.5"][-3:] == [f"{total};", "data2", str(above_data2)]
    # Each correction's costs, "—" for the raw stage, which has none.
    assert summary["costs"] == COSTS
    assert lines["training time (min)"][3:5] == ["—", "1.5"]
    assert lines["apply (k probes/s, cpu)"][4:6] == ["—", "250"]
    assert "thousand probes/s" in html
    identity = methods["fudge"]["photon_id"]["EE"]
    assert lines["ID score L1 EE"][4:6] == [f"{methods[s]['photon_id']['EE']['L1']:.3f}" for s in ("raw", "fudge")]
    assert lines["ID score L1 EE"][10:13] == [f"{identity['expected_L1']:.3f}", "±", f"{identity['expected_L1_sd']:.3f};"]
    spearman = methods["raw"]["correlations"]["EB"]
    assert lines["max |Δρ| Spearman EB"][-5:] == [
        f"{spearman['floor_spearman']:.3f}", "±", f"{spearman['floor_spearman_sd']:.3f};", "data2", f"{spearman['floor_spearman_data2']:.3f}"
    ]


def test_scale_factor_json_validates_and_evaluates(written):
    import awkward as ak

    path = written / "scale_factors_fudge.json"
    result = subprocess.run([sys.executable, "-m", "correctionlib.cli", "validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    correction = correctionlib.CorrectionSet.from_file(str(path))["Photon-ID-SF"]
    eta = ak.Array([[0.3, -1.9], [], [2.2]])
    pt = ak.Array([[35.0, 45.0], [], [60.0]])
    nominal = correction.evaluate("sf", "wp80", eta, pt)
    up = correction.evaluate("sfup", "wp80", eta, pt)
    assert ak.num(nominal).tolist() == [2, 0, 1]
    assert ak.all(up >= nominal) and ak.all(np.abs(nominal - 1) < 0.3)
