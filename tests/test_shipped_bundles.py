"""The bundles shipped in corrections/: valid correctionlib, verified checksums, and they correct."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import awkward as ak
import correctionlib
import numpy as np
import pytest
import torch

import egproc
from egproc import cqr, engine, probes, toy
from egproc.bundle import Manifest

REPOSITORY = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.parent for p in (REPOSITORY / "corrections").glob("*/bundle.json"))


def test_a_fudge_bundle_is_shipped():
    assert REPOSITORY / "corrections" / "toy-fudge" in SHIPPED


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_correction_validate_passes(folder):
    result = subprocess.run(
        [sys.executable, "-m", "correctionlib.cli", "validate", str(folder / "corrections.json.gz")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_manifest_checksums_and_provenance(folder):
    manifest = Manifest.model_validate_json((folder / "bundle.json").read_text())
    for artefact in manifest.artefacts():
        assert engine.sha256_of(folder / artefact.file) == artefact.sha256
    assert manifest.egproc_version and manifest.provenance
    payload = json.loads(gzip.decompress((folder / "corrections.json.gz").read_bytes()))
    assert payload["schema_version"] == 2
    assert all(c["version"] >= 1 for c in payload["corrections"])
    egproc.load(folder, device="cpu")


def test_fudge_json_evaluates_with_plain_correctionlib_and_awkward():
    cset = correctionlib.CorrectionSet.from_file(str(REPOSITORY / "corrections/toy-fudge/corrections.json.gz"))
    pt = ak.Array([[25.0, 40.0], [], [60.0]])
    eta = ak.Array([[0.3, -2.1], [], [1.0]])
    sieie = ak.Array([[0.0095, 0.027], [], [0.0101]])
    corrected = cset["fudge_sieie"].evaluate(pt, eta, sieie)
    assert ak.num(corrected).tolist() == [2, 0, 1]
    assert not np.allclose(ak.to_numpy(ak.flatten(corrected)), ak.to_numpy(ak.flatten(sieie)))
    weights = cset["rho_reweighting"].evaluate(np.array([5.0, 20.0, 35.0, 200.0]))
    assert np.all(weights > 0)


def probe_columns(path, bundle=None):
    """Probes in the correction mass window, flat: the fields, and weights (MC: genWeight × ρ)."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    events = NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    pairs = probes.tag_probe_pairs(events, probes.MASS_WINDOW)
    probe = pairs.probe if bundle is None else bundle.apply(pairs.probe, events)
    weight = np.ones(len(events)) if bundle is None else events.genWeight * bundle.event_weight("rho", events)
    flat = {f: ak.to_numpy(ak.flatten(probe[f])) for f in probe.fields if f in {"superclusterEta", "sieie", "raw_sieie", "etaWidth", "raw_etaWidth", "egproc_ok"}}
    flat["weight"] = ak.to_numpy(ak.flatten(ak.broadcast_arrays(weight, pairs.mass)[0]))
    return flat


def test_shipped_fudge_moves_independent_mc_means_onto_data(tmp_path):
    """On fresh samples (a seed the bundle never saw), the barrel means of the corrected shower
    shapes are much closer to data than the raw ones."""
    paths = toy.generate_samples(tmp_path, 80_000, seed=777, samples=("data", "mc"), workers=1)
    bundle = egproc.load(REPOSITORY / "corrections/toy-fudge", device="cpu")
    data = probe_columns(paths[0])
    mc = probe_columns(paths[1], bundle)
    in_barrel_data = np.abs(data["superclusterEta"]) < 1.4442
    in_barrel_mc = (np.abs(mc["superclusterEta"]) < 1.4442) & mc["egproc_ok"]
    for field in ("sieie", "etaWidth"):
        target = data[field][in_barrel_data].mean()
        raw = np.average(mc[f"raw_{field}"][in_barrel_mc], weights=mc["weight"][in_barrel_mc])
        fixed = np.average(mc[field][in_barrel_mc], weights=mc["weight"][in_barrel_mc])
        assert abs(fixed - target) < 0.25 * abs(raw - target), (field, target, raw, fixed)


def test_shipped_cqr_modules_are_fused_and_equal_their_trained_form():
    """corrections/toy-cqr ships the fused export (egproc.cqr.FusedChain); the trained chain rebuilt
    from the weights in its files gives the same corrections: the same peak/tail decisions, values
    to float32 rounding."""
    folder = REPOSITORY / "corrections" / "toy-cqr"
    rng = np.random.default_rng(7)
    n = 3000
    for region, variables in cqr.CHAINS.items():
        module = torch.jit.load(str(folder / f"cqr_{region}_nominal.pt"))
        assert module.original_name == "FusedChain"
        trained = cqr.chain_from_torchscript(module)
        # Raw values across each variable's range in training, a third of them exactly 0 for the
        # zero-peak variables, and uniforms.
        lows, highs = np.asarray(trained.lows), np.asarray(trained.highs)
        values = rng.uniform(lows, highs, (n, len(variables)))
        zero_peak = np.array([v in cqr.ZERO_PEAK for v in variables])
        values[:, zero_peak] = np.where(rng.random((n, zero_peak.sum())) < 0.3, 0.0, values[:, zero_peak])
        eta = rng.uniform(0.0, 1.44, n) if region == "EB" else rng.uniform(1.57, 2.5, n)
        conditions = np.column_stack([rng.uniform(20, 150, n), eta * rng.choice([-1, 1], n), rng.uniform(-np.pi, np.pi, n), rng.uniform(0, 45, n)])
        inputs = torch.from_numpy(np.column_stack([conditions, values, rng.random((n, zero_peak.sum()))]).astype(np.float32))
        with torch.no_grad():
            fused, expected = module(inputs).numpy(), trained(inputs).numpy()
        assert np.all(np.isfinite(expected))
        np.testing.assert_array_equal(fused == 0, expected == 0)
        np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-6)
