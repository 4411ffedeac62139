"""Shared fixtures: a small hand-made NanoAOD file and a TorchScript bundle with a known answer."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import correctionlib.schemav2 as cs
import numpy as np
import pytest
import torch
import uproot
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from egproc import bundle as bundle_format

N_EVENTS = 3000


def open_events(path, mode: str = "eager", **kwargs):
    """The NanoEvents of one file, as a processor sees them (``mode="dask"`` for dask-awkward)."""
    return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode=mode, **kwargs).events()


def flat(array) -> np.ndarray:
    """A jagged array's contents, object by object."""
    return ak.to_numpy(ak.flatten(array))


class KnownShift(torch.nn.Module):
    """r9' = r9 · (1 + 0.01·tanh(ρ/20)) − 0.001; sieie' = sieie · 1.02 + 1e-5·pT/50; score = r9 − sieie."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r9, sieie, pt, rho = x[:, 0], x[:, 1], x[:, 2], x[:, 3]
        return torch.stack(
            [r9 * (1 + 0.01 * torch.tanh(rho / 20)) - 0.001, sieie * 1.02 + 1e-5 * pt / 50, r9 - sieie], dim=1
        )


def known_shift_numpy(r9, sieie, pt, rho):
    r9, sieie, pt, rho = (np.asarray(a, dtype=np.float32) for a in (r9, sieie, pt, rho))
    return (
        r9 * (1 + np.float32(0.01) * np.tanh(rho / np.float32(20))) - np.float32(0.001),
        sieie * np.float32(1.02) + np.float32(1e-5) * pt / np.float32(50),
        r9 - sieie,
    )


INPUTS = ("Photon_r9", "Photon_sieie", "Photon_pt", "Rho_fixedGridRhoAll")
OUTPUTS = ("Photon_r9", "Photon_sieie", "Photon_score")


def write_nano(path: Path, n_events: int = N_EVENTS, seed: int = 7, old_rho: bool = False) -> Path:
    """A NanoAOD-like file: some events have no photon, photons in EB, EE and the crack."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.2, n_events).astype(np.uint32)
    n = int(counts.sum())
    sc_eta = rng.uniform(-2.6, 2.6, n).astype(np.float32)
    photons = {
        "pt": rng.exponential(20, n).astype(np.float32) + 15,
        "eta": (sc_eta + rng.normal(0, 0.01, n)).astype(np.float32),
        "phi": rng.uniform(-np.pi, np.pi, n).astype(np.float32),
        "superclusterEta": sc_eta,
        "r9": rng.uniform(0.5, 1.0, n).astype(np.float32),
        "sieie": rng.uniform(0.005, 0.03, n).astype(np.float32),
        "electronIdx": np.full(n, -1, dtype=np.int16),
    }
    branches = {
        "run": np.full(n_events, 1, np.uint32),
        "luminosityBlock": (np.arange(n_events) // 1000 + 1).astype(np.uint32),
        "event": np.arange(1, n_events + 1, dtype=np.uint64),
        "Photon": ak.zip({k: ak.unflatten(v, counts) for k, v in photons.items()}),
    }
    rho = rng.gamma(9, 2.5, n_events).astype(np.float32)
    branches["fixedGridRhoFastjetAll" if old_rho else "Rho_fixedGridRhoAll"] = rho
    with uproot.recreate(path) as handle:
        handle.mktree("Events", branches)  # a TTree, as NanoAOD (plain assignment writes an RNTuple)
    return path


@pytest.fixture(scope="session")
def nano_file(tmp_path_factory) -> Path:
    return write_nano(tmp_path_factory.mktemp("nano") / "nano.root")


def write_known_bundle(folder: Path, region: str = "EB+EE") -> Path:
    cset = cs.CorrectionSet(
        schema_version=2,
        corrections=[
            cs.Correction(
                name="unit_weight",
                version=1,
                inputs=[cs.Variable(name="rho", type="real")],
                output=cs.Variable(name="weight", type="real"),
                data=1.0,
            )
        ],
    )
    return bundle_format.write(
        folder,
        name="known-shift",
        method="test",
        collection="Photon",
        description="a TorchScript correction with a closed-form answer",
        correction_set=cset,
        models={"known_shift.pt": torch.jit.script(KnownShift())},
        steps=[{"kind": "torchscript", "model": "known_shift.pt", "inputs": INPUTS, "outputs": OUTPUTS, "region": region}],
        event_weights=[bundle_format.EventWeight(name="rho", correction="unit_weight", inputs=("Rho_fixedGridRhoAll",))],
        provenance={"purpose": "tests"},
    )


@pytest.fixture(scope="session")
def known_bundle(tmp_path_factory) -> Path:
    return write_known_bundle(tmp_path_factory.mktemp("bundles") / "known-shift")
