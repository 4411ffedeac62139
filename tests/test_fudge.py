"""Fudge factors against exact answers: an affine map per bin reproduces the data moments exactly."""

from __future__ import annotations

import correctionlib
import correctionlib.schemav2 as cs
import numpy as np

from egproc import fudge
from egproc.probes import ProbeTable
from egproc.variables import ABS_ETA_EDGES, PT_EDGES


def gaussian_table(rng, n, mean_of, width_of, is_mc, zero_fraction=0.0):
    pt = rng.uniform(20, 120, n)
    sc_eta = rng.uniform(-2.5, 2.5, n)
    columns = {"Photon_pt": pt, "Photon_superclusterEta": sc_eta}
    for field in ("sieie", "esEffSigmaRR"):
        values = rng.normal(mean_of(pt, sc_eta), width_of(pt, sc_eta), size=n)
        if field == "esEffSigmaRR":
            values = np.where(rng.uniform(size=n) < zero_fraction, 0.0, np.abs(values) + 1.0)
        columns[f"Photon_{field}"] = values
    weight = rng.uniform(0.5, 1.5, n) if is_mc else np.ones(n)
    return ProbeTable(columns, weight, is_mc)


def bin_of(table, pt_edges=PT_EDGES, eta_edges=ABS_ETA_EDGES):
    i = np.clip(np.searchsorted(pt_edges, table["Photon_pt"], "right") - 1, 0, len(pt_edges) - 2)
    j = np.clip(np.searchsorted(eta_edges, np.abs(table["Photon_superclusterEta"]), "right") - 1, 0, len(eta_edges) - 2)
    return i, j


def test_corrected_mc_has_the_data_mean_and_width_in_every_bin():
    rng = np.random.default_rng(3)
    data = gaussian_table(rng, 200_000, lambda pt, eta: 0.010 + 0.004 * np.abs(eta), lambda pt, eta: 0.001 + 0.00001 * pt, False)
    mc = gaussian_table(rng, 200_000, lambda pt, eta: 0.009 + 0.005 * np.abs(eta), lambda pt, eta: 0.0008 * np.ones_like(pt), True)
    (factors,) = fudge.derive(data, mc, mc.weight, variables=["sieie"])
    corrected = factors.apply(mc["Photon_pt"], mc["Photon_superclusterEta"], mc["Photon_sieie"])

    i_d, j_d = bin_of(data)
    i_m, j_m = bin_of(mc)
    checked = 0
    for i in range(len(PT_EDGES) - 1):
        for j in range(len(ABS_ETA_EDGES) - 1):
            if not factors.applied[i, j]:
                continue
            d = data["Photon_sieie"][(i_d == i) & (j_d == j)]
            sel = (i_m == i) & (j_m == j)
            w = mc.weight[sel]
            mean = np.average(corrected[sel], weights=w)
            width = np.sqrt(np.average((corrected[sel] - mean) ** 2, weights=w))
            assert abs(mean - d.mean()) < 1e-12
            assert abs(width - d.std()) < 1e-12
            checked += 1
    assert checked == 24  # 6 pT bins × the 4 |η| bins outside the transition region
    assert not factors.applied[:, 2].any()  # the transition bin is left alone


def test_zero_peak_stays_at_zero_and_low_statistics_bins_are_identity():
    rng = np.random.default_rng(4)
    data = gaussian_table(rng, 60_000, lambda pt, eta: 3.0, lambda pt, eta: 1.0, False, zero_fraction=0.3)
    mc = gaussian_table(rng, 60_000, lambda pt, eta: 2.5, lambda pt, eta: 0.7, True, zero_fraction=0.4)
    keep = ~((mc["Photon_pt"] > 65) & (np.abs(mc["Photon_superclusterEta"]) > 2.0))
    thin = np.flatnonzero(~keep)[:50]  # leave 50 MC probes in one bin: below the minimum
    selected = np.sort(np.concatenate([np.flatnonzero(keep), thin]))
    mc = ProbeTable({k: v[selected] for k, v in mc.columns.items()}, mc.weight[selected], True)
    (factors,) = fudge.derive(data, mc, mc.weight, variables=["esEffSigmaRR"])
    values = mc["Photon_esEffSigmaRR"]
    corrected = factors.apply(mc["Photon_pt"], mc["Photon_superclusterEta"], values)
    assert np.array_equal(corrected[values == 0], values[values == 0])
    assert not np.allclose(corrected[values > 0], values[values > 0])
    assert not factors.applied[5, 4] and factors.applied[5, 3]
    identity = (mc["Photon_pt"] > 65) & (np.abs(mc["Photon_superclusterEta"]) > 2.0)
    np.testing.assert_array_equal(corrected[identity], values[identity])
    assert "pt[65,200) |eta|[2,2.5)" in fudge.to_correction(factors).description


def test_correctionlib_form_equals_the_numpy_reference():
    rng = np.random.default_rng(5)
    data = gaussian_table(rng, 50_000, lambda pt, eta: 0.01, lambda pt, eta: 0.001, False, zero_fraction=0.2)
    mc = gaussian_table(rng, 50_000, lambda pt, eta: 0.011, lambda pt, eta: 0.0012, True, zero_fraction=0.3)
    for factors in fudge.derive(data, mc, mc.weight, variables=["sieie", "esEffSigmaRR"]):
        correction = fudge.to_correction(factors)
        cset = correctionlib.CorrectionSet.from_string(
            cs.CorrectionSet(schema_version=2, corrections=[correction]).model_dump_json(exclude_unset=True)
        )
        pt = rng.uniform(5, 500, 10_000)  # beyond the edges too: clamp
        eta = rng.uniform(-3, 3, 10_000)
        values = mc[f"Photon_{factors.variable.field}"][:10_000]
        np.testing.assert_allclose(
            cset[correction.name].evaluate(pt, eta, values), factors.apply(pt, eta, values), rtol=1e-12, atol=0
        )
