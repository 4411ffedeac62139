"""Tests of the toy NanoAOD generator (egproc.toy): format, cross-references, determinism, physics."""

from __future__ import annotations

import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from egproc.toy import (
    MVA_WP80,
    MVA_WP90,
    SHOWER_VARIABLES,
    ClusterKinematics,
    EventTruth,
    Origin,
    SampleTruth,
    ShowerTruth,
    branch_types,
    generate_sample,
    generate_samples,
    sample_showers,
    toy_mva_id,
)
from egproc.toy.events import simulate_chunk
from egproc.toy.truth import LATENTS, showering_probability

N_EVENTS = 20_000
SEED = 20240611

# ROOT leaf types as written by CMSSW for NanoAOD v12+ (see egproc/toy/schema.py for the sources).
EXPECTED_EVENT_TYPES = {
    "run": "uint32_t",
    "luminosityBlock": "uint32_t",
    "event": "uint64_t",
    "HLT_Ele32_WPTight_Gsf": "bool",
    "PV_npvs": "uint8_t",
    "PV_npvsGood": "uint8_t",
    "PV_x": "float",
    "PV_y": "float",
    "PV_z": "float",
    "Rho_fixedGridRhoAll": "float",
    "Rho_fixedGridRhoFastjetAll": "float",
    "Rho_fixedGridRhoFastjetCentral": "float",
    "nElectron": "int32_t",
    "nPhoton": "int32_t",
}
EXPECTED_ELECTRON_TYPES = {
    "pt": "float",
    "eta": "float",
    "phi": "float",
    "mass": "float",
    "charge": "int32_t",
    "pdgId": "int32_t",
    "cutBased": "uint8_t",
    "deltaEtaSC": "float",
    "photonIdx": "int16_t",
    "r9": "float",
    "sieie": "float",
    "hoe": "float",
    "pfRelIso03_all": "float",
    "dxy": "float",
    "dz": "float",
    "convVeto": "bool",
    "lostHits": "uint8_t",
    "mvaIso": "float",
    "mvaIso_WP80": "bool",
    "mvaIso_WP90": "bool",
    "energyErr": "float",
    "scEtOverPt": "float",
    "seedGain": "uint8_t",
}
EXPECTED_PHOTON_TYPES = {
    "pt": "float",
    "eta": "float",
    "phi": "float",
    "energyRaw": "float",
    "energyErr": "float",
    "superclusterEta": "float",
    "isScEtaEB": "bool",
    "isScEtaEE": "bool",
    "r9": "float",
    "s4": "float",
    "sieie": "float",
    "sieip": "float",
    "etaWidth": "float",
    "phiWidth": "float",
    "pfPhoIso03": "float",
    "pfChargedIsoPFPV": "float",
    "pfChargedIsoWorstVtx": "float",
    "esEffSigmaRR": "float",
    "esEnergyOverRawE": "float",
    "hoe": "float",
    "mvaID": "float",
    "mvaID_WP80": "bool",
    "mvaID_WP90": "bool",
    "cutBased": "uint8_t",
    "electronIdx": "int16_t",
    "electronVeto": "bool",
    "pixelSeed": "bool",
    "seedGain": "uint8_t",
}
EXPECTED_MC_TYPES = {
    "genWeight": "float",
    "Pileup_nTrueInt": "float",
    "Pileup_nPU": "int32_t",
    "nGenPart": "int32_t",
    "GenPart_pt": "float[]",
    "GenPart_eta": "float[]",
    "GenPart_phi": "float[]",
    "GenPart_mass": "float[]",
    "GenPart_pdgId": "int32_t[]",
    "GenPart_status": "int32_t[]",
    "GenPart_statusFlags": "uint16_t[]",
    "GenPart_genPartIdxMother": "int16_t[]",
    "Electron_genPartIdx": "int16_t[]",
    "Electron_genPartFlav": "uint8_t[]",
    "Photon_genPartIdx": "int16_t[]",
    "Photon_genPartFlav": "uint8_t[]",
}


def _expected(kind: str) -> dict[str, str]:
    out = dict(EXPECTED_EVENT_TYPES)
    out.update({f"Electron_{k}": v + "[]" for k, v in EXPECTED_ELECTRON_TYPES.items()})
    out.update({f"Photon_{k}": v + "[]" for k, v in EXPECTED_PHOTON_TYPES.items()})
    if kind == "mc":
        out.update(EXPECTED_MC_TYPES)
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    outdir = tmp_path_factory.mktemp("toy")
    paths = generate_samples(outdir, N_EVENTS, SEED, workers=1)
    return {p.stem: p for p in paths}


def _arrays(path: Path, branches: list[str] | None = None) -> dict[str, np.ndarray]:
    with uproot.open(path) as f:
        return f["Events"].arrays(branches, library="np")


def _flat(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    values = arrays[name]
    return np.concatenate(values) if values.dtype == object else values


def _events(path: Path) -> tuple[ak.Array, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        events = NanoEventsFactory.from_root(
            {str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager"
        ).events()
    return events, [str(w.message) for w in caught]


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize("stem", ["data", "data2", "mc"])
def test_branch_names_and_types(samples: dict[str, Path], stem: str) -> None:
    kind = "mc" if stem == "mc" else "data"
    with uproot.open(samples[stem]) as f:
        tree = f["Events"]
        written = {name: branch.typename for name, branch in tree.items()}
        assert tree.num_entries == N_EVENTS
    assert written == _expected(kind)
    # The schema module agrees with the literal table above.
    numpy_types = branch_types(kind)
    assert set(numpy_types) == set(written)
    arrays = _arrays(samples[stem])
    for name, dtype in numpy_types.items():
        assert _flat(arrays, name).dtype == dtype, name
    assert not any(name.endswith("jetIdx") for name in written)


@pytest.mark.parametrize("stem", ["data", "mc"])
def test_nanoevents_cross_references(samples: dict[str, Path], stem: str) -> None:
    events, messages = _events(samples[stem])
    # Only indices of collections the toy does not write (Jet, Muon, ...) may be reported missing;
    # every index the toy writes must resolve to a target it writes.
    written = set(branch_types("mc" if stem == "mc" else "data"))
    missing = [m.split(" for ")[1].split(" => ")[0] for m in messages if "cross-reference" in m]
    assert missing and not [m for m in missing if m in written]
    assert not [m for m in messages if "cross-reference target" in m]
    assert len(events) == N_EVENTS

    photons = events.Photon[events.Photon.electronIdx >= 0]
    matched = photons.matched_electron
    # Against a hand-made lookup of the flat arrays.
    flat = _arrays(samples[stem], ["nElectron", "Electron_pt", "Photon_electronIdx", "nPhoton"])
    e_offsets = np.concatenate([[0], np.cumsum(flat["nElectron"])])
    p_evt = np.repeat(np.arange(N_EVENTS), flat["nPhoton"])
    idx = _flat(flat, "Photon_electronIdx")
    has = idx >= 0
    expected = _flat(flat, "Electron_pt")[e_offsets[p_evt[has]] + idx[has]]
    np.testing.assert_array_equal(ak.to_numpy(ak.flatten(matched.pt)), expected)
    # Electron <-> Photon references are mutual, and the cluster is shared.
    local = ak.local_index(events.Photon)[events.Photon.electronIdx >= 0]
    assert ak.all(matched.photonIdx == local)
    for var in ("r9", "sieie", "hoe"):
        assert ak.all(matched[var] == photons[var])
    assert ak.mean(events.Photon.electronIdx >= 0) > 0.6
    assert ak.all(ak.num(events.Electron) <= 2)
    # Collections are pT-ordered as in NanoAOD.
    assert ak.all(events.Electron.pt[:, :-1] >= events.Electron.pt[:, 1:])
    assert ak.all(events.Photon.pt[:, :-1] >= events.Photon.pt[:, 1:])


def test_mc_truth_matching(samples: dict[str, Path]) -> None:
    events, _ = _events(samples["mc"])
    ele = events.Electron[events.Electron.genPartIdx >= 0]
    gen = ele.matched_gen
    assert ak.all(abs(gen.pdgId) == 11) and ak.all(gen.status == 1)
    assert ak.all(ele.genPartFlav == 1)
    assert ak.all(events.Electron.genPartFlav[events.Electron.genPartIdx < 0] == 0)
    assert ak.mean(ele.delta_r(gen)) < 0.01
    pho = events.Photon[events.Photon.genPartIdx >= 0]
    pgen = pho.matched_gen
    assert ak.all(ak.where(pho.genPartFlav == 11, abs(pgen.pdgId) == 11, pgen.pdgId == 22))
    assert ak.all(pho.delta_r(pgen) < 0.3)
    assert ak.all(abs(pho.pt - pgen.pt) < 0.5 * pgen.pt)
    # Final-state electrons descend from the hard-process electrons of a Z.
    final = events.GenPart[(events.GenPart.status == 1) & (abs(events.GenPart.pdgId) == 11)]
    parents = final.parent
    from_z = ~ak.is_none(parents.parent, axis=1)
    assert ak.all(parents.pdgId[from_z] == final.pdgId[from_z])
    assert ak.all(parents.parent.pdgId[from_z] == 23)
    assert ak.sum(from_z) > 0.8 * ak.sum(ak.num(final))


# --------------------------------------------------------------------------- determinism


def test_determinism(tmp_path: Path, samples: dict[str, Path]) -> None:
    again = generate_sample(tmp_path / "mc.root", "mc", N_EVENTS, SEED)
    a, b = _arrays(samples["mc"]), _arrays(again)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(_flat(a, name), _flat(b, name), err_msg=name)
    other = _arrays(generate_sample(tmp_path / "other.root", "mc", N_EVENTS, SEED + 1), ["Photon_r9", "nPhoton"])
    assert not np.array_equal(other["nPhoton"], a["nPhoton"])


def test_data_replicas_are_independent(samples: dict[str, Path]) -> None:
    d1, d2 = _arrays(samples["data"]), _arrays(samples["data2"])
    assert not np.intersect1d(d1["event"], d2["event"]).size
    assert not np.array_equal(d1["nPhoton"], d2["nPhoton"])
    # Same truth: the means agree within statistics.
    for name in ("Rho_fixedGridRhoAll", "Photon_sieie", "Photon_r9"):
        x, y = _flat(d1, name).astype(np.float64), _flat(d2, name).astype(np.float64)
        err = np.hypot(x.std() / np.sqrt(x.size), y.std() / np.sqrt(y.size))
        assert abs(x.mean() - y.mean()) < 5 * err, name


def test_event_ids(samples: dict[str, Path]) -> None:
    data, mc = _arrays(samples["data"]), _arrays(samples["mc"])
    assert np.unique(data["event"]).size == N_EVENTS
    assert np.unique(data["run"]).size >= 3
    assert np.unique(data["luminosityBlock"]).size > 100
    key = data["run"].astype(np.uint64) << np.uint64(32) | data["luminosityBlock"]
    assert np.all(np.diff(key.astype(np.int64)) >= 0)  # sorted by (run, lumi) like a real file
    assert np.all(mc["run"] == 1)
    assert "genWeight" not in data and "Pileup_nTrueInt" not in data


def test_split_files_in_parallel(tmp_path: Path) -> None:
    paths = generate_samples(tmp_path, 3001, SEED, files_per_sample=2, workers=2)
    assert [p.name for p in paths] == [
        "data_0.root", "data_1.root", "data2_0.root", "data2_1.root", "mc_0.root", "mc_1.root",
    ]
    for stem in ("data", "data2", "mc"):
        parts = [_arrays(p, ["event"])["event"] for p in paths if p.name.startswith(stem + "_")]
        events = np.concatenate(parts)
        assert events.size == 3001 and np.unique(events).size == 3001


# --------------------------------------------------------------------------- physics content


def test_preshower_and_isolation_structure(samples: dict[str, Path]) -> None:
    a = _arrays(samples["data"])
    abs_eta = np.abs(_flat(a, "Photon_superclusterEta"))
    rr, frac = _flat(a, "Photon_esEffSigmaRR"), _flat(a, "Photon_esEnergyOverRawE")
    outside = abs_eta < 1.653
    assert np.all(rr[outside] == 0) and np.all(frac[outside] == 0)
    inside = abs_eta > 1.7
    assert np.mean(rr[inside] > 0) > 0.95 and np.all((rr[inside] > 0) == (frac[inside] > 0))
    # Correlated with each other and with the lateral shower shape (prompt-like photons).
    prompt_like = inside & (rr > 0) & _flat(a, "Photon_mvaID_WP90")
    log_rr = np.log(rr[prompt_like])
    assert np.corrcoef(log_rr, np.log(frac[prompt_like]))[0, 1] > 0.1
    assert np.corrcoef(log_rr, np.log(_flat(a, "Photon_etaWidth")[prompt_like]))[0, 1] > 0.1

    pv, worst = _flat(a, "Photon_pfChargedIsoPFPV"), _flat(a, "Photon_pfChargedIsoWorstVtx")
    assert np.all(worst >= pv)
    assert np.mean(worst == 0) < np.mean(pv == 0)
    for name in ("Photon_pfPhoIso03", "Photon_pfChargedIsoPFPV", "Photon_hoe"):
        zeros = np.mean(_flat(a, name) == 0)
        assert 0.1 < zeros < 0.9, name
        assert np.all(_flat(a, name) >= 0)
    # Fewer exact zeros at high pileup.
    rho = np.repeat(a["Rho_fixedGridRhoAll"], a["nPhoton"])
    iso = _flat(a, "Photon_pfPhoIso03")
    assert np.mean(iso[rho > 25] == 0) < np.mean(iso[rho < 15] == 0) - 0.05

    r9, s4 = _flat(a, "Photon_r9"), _flat(a, "Photon_s4")
    assert np.all((r9 > 0) & (r9 < 1)) and np.all((s4 > 0) & (s4 < 1))
    eb = abs_eta < 1.479
    sieie = _flat(a, "Photon_sieie")
    assert 0.0085 < np.median(sieie[eb]) < 0.0105 and 0.024 < np.median(sieie[~eb]) < 0.031


def test_supercluster_geometry(samples: dict[str, Path]) -> None:
    a = _arrays(samples["data"])
    deta = _flat(a, "Electron_deltaEtaSC")
    eta = _flat(a, "Electron_eta")
    pv_z = np.repeat(a["PV_z"], a["nElectron"])
    # eta_SC - eta ~ v_z / (R cosh eta): strongly correlated with the vertex position.
    barrel = np.abs(eta) < 1.2
    assert np.corrcoef(deta[barrel] * np.cosh(eta[barrel]), pv_z[barrel])[0, 1] > 0.8
    sc = np.abs(eta + deta)
    assert np.any((sc > 1.4442) & (sc < 1.566))  # crack electrons exist
    assert sc.max() < 2.5 + 1e-5  # float32 rounding of eta + deltaEtaSC


def test_z_peak_and_scale(samples: dict[str, Path]) -> None:
    medians = {}
    for stem in ("data", "mc"):
        events, _ = _events(samples[stem])
        two = events[ak.num(events.Electron) == 2]
        e1, e2 = two.Electron[:, 0], two.Electron[:, 1]
        good = (e1.cutBased == 4) & (e2.cutBased == 4) & (e1.charge != e2.charge)
        mass = ak.to_numpy((e1 + e2).mass[good])
        assert np.mean((mass > 80) & (mass < 100)) > 0.75
        assert np.mean(mass < 80) > 0.03  # FSR / leakage tail
        medians[stem] = np.median(mass[(mass > 80) & (mass < 100)])
        same_sign = (e1.charge == e2.charge) & (e1.cutBased >= 1) & (e2.cutBased >= 1)
        assert ak.sum(same_sign) > 0
        assert ak.all(ak.any(events.Electron.pt[events.HLT.Ele32_WPTight_Gsf] > 25, axis=1))
    assert 90.5 < medians["mc"] < 91.2
    assert medians["data"] - medians["mc"] > 0.2  # data energy scale ~ +0.6%


def test_mc_differs_from_data_at_event_level(samples: dict[str, Path]) -> None:
    data, mc = _arrays(samples["data"]), _arrays(samples["mc"])
    rd, rm = data["Rho_fixedGridRhoAll"], mc["Rho_fixedGridRhoAll"]
    err = np.hypot(rd.std(), rm.std()) / np.sqrt(N_EVENTS)
    assert rd.mean() - rm.mean() > 10 * err
    assert abs(mc["Pileup_nTrueInt"].mean() - 32.0) < 0.5
    w = mc["genWeight"]
    assert np.all(w > 0) and 0.03 < w.std() < 0.07 and np.unique(w).size > N_EVENTS // 2


# --------------------------------------------------------------------------- truth model


def _fixed_kinematics(n: int, sc_eta: float, origin: Origin, rng: np.random.Generator) -> ClusterKinematics:
    return ClusterKinematics(
        pt=np.full(n, 40.0),
        sc_eta=np.full(n, sc_eta) + 0.05 * rng.standard_normal(n),
        phi=rng.uniform(-np.pi, np.pi, n),
        rho=np.full(n, 25.0),
        origin=np.full(n, origin, dtype=np.int8),
    )


def test_shower_truth_is_valid() -> None:
    for truth in (ShowerTruth.data(), ShowerTruth.mc()):
        for model in (truth.prompt, truth.fake):
            for loadings in (model.loadings_eb, model.loadings_ee):
                b = np.asarray(loadings)
                corr = b @ b.T + np.diag(1.0 - np.sum(b**2, axis=1))
                assert b.shape == (len(LATENTS), 4)
                np.testing.assert_allclose(np.diag(corr), 1.0)
                assert np.linalg.eigvalsh(corr).min() > 0


@pytest.mark.parametrize("sc_eta", [0.6, 2.0])
def test_mc_mismodelling_is_the_documented_one(sc_eta: float) -> None:
    n = 60_000
    out = {}
    for name, truth in (("data", ShowerTruth.data()), ("mc", ShowerTruth.mc())):
        rng = np.random.default_rng(5)
        kin = _fixed_kinematics(n, sc_eta, Origin.PROMPT_ELECTRON, rng)
        out[name] = sample_showers(kin, truth, rng)
        assert set(SHOWER_VARIABLES) <= set(out[name])
    d, m = out["data"], out["mc"]

    def mean_and_error(x: np.ndarray) -> tuple[float, float]:
        x = x.astype(np.float64)
        return x.mean(), x.std() / np.sqrt(x.size)

    # MC sieie narrower by a few per cent (more in the endcap).
    (md, ed), (mm, em) = mean_and_error(d["sieie"]), mean_and_error(m["sieie"])
    shift = 1.0 - mm / md
    assert shift > 0.01 + 5 * np.hypot(ed, em) / md
    assert m["sieie"].std() < d["sieie"].std()
    # MC r9 higher; exact-zero fractions of isolation and H/E higher in MC.
    assert np.median(m["r9"]) > np.median(d["r9"])
    for name in ("pfPhoIso03", "pfChargedIsoPFPV", "hoe"):
        zd, zm = np.mean(d[name] == 0), np.mean(m[name] == 0)
        assert zm - zd > 5 * np.sqrt(zd * (1 - zd) / n + zm * (1 - zm) / n), name
    # Correlations differ, not only means and widths.
    corr_d = np.corrcoef(d["r9"], d["sieie"])[0, 1]
    corr_m = np.corrcoef(m["r9"], m["sieie"])[0, 1]
    assert corr_m < corr_d - 0.02
    lw = {k: np.corrcoef(np.log(v["etaWidth"]), np.log(v["phiWidth"]))[0, 1] for k, v in out.items()}
    assert lw["data"] > lw["mc"] + 0.03
    # Showering (material) fraction lower in MC.
    assert d["showering"].mean() > m["showering"].mean()


def test_material_deficit_is_local() -> None:
    abs_eta = np.array([0.2, 1.6])
    origin = np.full(2, Origin.PROMPT_PHOTON, dtype=np.int8)
    p_data = showering_probability(abs_eta, origin, ShowerTruth.data())
    p_mc = showering_probability(abs_eta, origin, ShowerTruth.mc())
    rel = 1 - p_mc / p_data
    assert rel[1] > rel[0] > 0


def test_fakes_look_like_fakes() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    truth = ShowerTruth.data()
    prompt = sample_showers(_fixed_kinematics(n, 0.6, Origin.PROMPT_ELECTRON, rng), truth, rng)
    fake = sample_showers(_fixed_kinematics(n, 0.6, Origin.FAKE, rng), truth, rng)
    assert np.median(fake["sieie"]) > 1.2 * np.median(prompt["sieie"])
    assert np.median(fake["r9"]) < np.median(prompt["r9"]) - 0.1
    for name in ("pfPhoIso03", "pfChargedIsoPFPV", "hoe"):
        assert np.mean(fake[name]) > 3 * np.mean(prompt[name])


# --------------------------------------------------------------------------- photon ID


def test_mva_id_reevaluates_on_awkward_fields(samples: dict[str, Path]) -> None:
    events, _ = _events(samples["mc"])
    photons, rho = events.Photon, events.Rho.fixedGridRhoAll
    score = toy_mva_id(photons, rho)
    assert ak.max(abs(score - photons.mvaID)) < 2e-6
    assert ak.all((score >= -1) & (score <= 1)) and ak.mean(abs(score) < 1) > 0.9
    # Smooth and sensitive: lower r9 (with s4 fixed) lowers every score.
    fields = {name: photons[name] for name in ak.fields(photons)}
    fields["r9"] = photons.r9 * 0.97
    lowered = toy_mva_id(fields, rho)
    assert ak.all(lowered <= score) and ak.mean(lowered < score) > 0.99  # equal only where tanh saturates
    # NumPy evaluation agrees with awkward.
    flat = {name: ak.to_numpy(ak.flatten(photons[name])) for name in ("superclusterEta", *SHOWER_VARIABLES)}
    flat_rho = ak.to_numpy(ak.flatten(ak.broadcast_arrays(rho, photons.pt)[0]))
    np.testing.assert_allclose(toy_mva_id(flat, flat_rho), ak.to_numpy(ak.flatten(score)), atol=1e-6)


def test_mva_working_points_on_data_truth() -> None:
    # Data truth with MC-truth labels: the efficiency the working points were derived for.
    truth = SampleTruth("mc", ShowerTruth.data(), EventTruth.data())
    chunk = simulate_chunk(60_000, truth, np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(7,))))
    photon = chunk.collections["Photon"].fields
    prompt = (photon["genPartFlav"] == 11) & (photon["pt"] > 20)
    barrel = np.abs(photon["superclusterEta"]) < 1.479
    for region, mask in ((0, barrel), (1, ~barrel)):
        sel = prompt & mask
        for wp, thresholds, target in (("mvaID_WP80", MVA_WP80, 0.80), ("mvaID_WP90", MVA_WP90, 0.90)):
            eff = photon[wp][sel].mean()
            assert abs(eff - target) < 0.02, (region, wp, eff)
            np.testing.assert_array_equal(photon[wp][sel], photon["mvaID"][sel] > thresholds[region])
        fakes = (photon["genPartFlav"] == 0) & (photon["pt"] > 20) & mask
        assert photon["mvaID_WP90"][fakes].mean() < 0.3

    electron = chunk.collections["Electron"].fields
    prompt = (electron["genPartFlav"] == 1) & (electron["pt"] > 20)
    fakes = (electron["genPartFlav"] == 0) & (electron["pt"] > 20)
    assert abs(electron["mvaIso_WP80"][prompt].mean() - 0.80) < 0.02
    assert abs(electron["mvaIso_WP90"][prompt].mean() - 0.90) < 0.02
    # Fall17-V2-like tight ID: ~70% on Z electrons, rare for fakes; the working points are nested.
    assert 0.65 < np.mean(electron["cutBased"][prompt] == 4) < 0.80
    assert np.mean(electron["cutBased"][fakes] == 4) < 0.03
    assert np.all(electron["cutBased"] <= 4)


def test_background_normalisation_is_mismodelled() -> None:
    for f in (0.0, 0.15, 0.4):
        data, mc = SampleTruth.data(f).event, SampleTruth.mc(f).event
        assert data.background_fraction == f
        # MC background/signal ratio is 80% of the data one.
        if f > 0:
            ratio_mc = mc.background_fraction / (1 - mc.background_fraction)
            assert ratio_mc == pytest.approx(0.8 * f / (1 - f))
    with pytest.raises(ValueError):
        SampleTruth.data(1.0)
