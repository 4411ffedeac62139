"""Per-object random numbers from a correctionlib hashprng step: exact, and independent of chunking
and of which selection of the collection is corrected."""

from __future__ import annotations

import awkward as ak
import correctionlib
import correctionlib.schemav2 as cs
import dask
import numpy as np
import pytest
import torch

import egproc
from egproc import bundle as bundle_format

from conftest import flat, open_events

IDENTITY = ("run", "luminosityBlock", "event", "Photon_pt", "Photon_eta", "Photon_phi")


def uniform_correction() -> cs.Correction:
    types = ["int", "int", "int", "real", "real", "real"]
    names = ["run", "luminosityBlock", "event", "pt", "eta", "phi"]
    return cs.Correction(
        name="uniform_test", version=1,
        inputs=[cs.Variable(name=n, type=t) for n, t in zip(names, types)],
        output=cs.Variable(name="u", type="real"),
        data=cs.HashPRNG(nodetype="hashprng", inputs=names, distribution="stdflat"),
    )


class AddUniform(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] + x[:, 1]).unsqueeze(1)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("random")
    cset = cs.CorrectionSet(schema_version=2, corrections=[uniform_correction()])
    common = dict(method="test", collection="Photon", description="hashprng uniforms", correction_set=cset)
    visible = bundle_format.write(
        folder / "visible", name="visible", **common,
        steps=[{"kind": "correctionlib", "correction": "uniform_test", "inputs": IDENTITY, "output": "Photon_uniform"}],
    )
    chained = bundle_format.write(
        folder / "chained", name="chained", **common, models={"add.pt": torch.jit.script(AddUniform())},
        steps=[
            {"kind": "correctionlib", "correction": "uniform_test", "inputs": IDENTITY, "output": "Photon_uniform", "keep": False},
            {"kind": "torchscript", "model": "add.pt", "inputs": ("Photon_r9", "Photon_uniform"), "outputs": ("Photon_r9",)},
        ],
    )
    return egproc.load(visible, device="cpu"), egproc.load(chained, device="cpu")



def test_uniforms_are_the_hashprng_of_exact_event_ids(nano_file, bundles):
    visible, _ = bundles
    events = open_events(nano_file)
    photons = visible.apply(events.Photon, events)
    counts = ak.to_numpy(ak.num(events.Photon))
    ids = [np.repeat(ak.to_numpy(events[name]).astype(np.int64), counts) for name in ("run", "luminosityBlock", "event")]
    kinematics = [flat(events.Photon[name]).astype(np.float64) for name in ("pt", "eta", "phi")]
    cset = correctionlib.CorrectionSet.from_string(cs.CorrectionSet(schema_version=2, corrections=[uniform_correction()]).model_dump_json())
    expected = cset["uniform_test"].evaluate(*ids, *kinematics).astype(np.float32)
    np.testing.assert_array_equal(flat(photons.uniform), expected)
    assert 0.45 < expected.mean() < 0.55 and expected.min() > 0 and expected.max() < 1


def test_independent_of_chunking_and_of_selection(nano_file, bundles):
    visible, _ = bundles
    whole = flat(visible.apply(open_events(nano_file).Photon, open_events(nano_file)).uniform)
    halves = []
    for start, stop in ((0, 1234), (1234, None)):
        chunk = open_events(nano_file, entry_start=start, entry_stop=stop)
        halves.append(flat(visible.apply(chunk.Photon, chunk).uniform))
    np.testing.assert_array_equal(np.concatenate(halves), whole)

    lazy = open_events(nano_file, "dask", steps_per_file=4)
    (from_dask,) = dask.compute(visible.apply(lazy.Photon, lazy).uniform, scheduler="sync")
    np.testing.assert_array_equal(flat(from_dask), whole)

    events = open_events(nano_file)
    hard = events.Photon.pt > 30
    selected = flat(visible.apply(events.Photon[hard], events).uniform)
    np.testing.assert_array_equal(selected, whole[flat(hard)])


def test_intermediate_outputs_feed_later_steps_without_becoming_fields(nano_file, bundles):
    visible, chained = bundles
    events = open_events(nano_file)
    photons = chained.apply(events.Photon, events)
    assert "uniform" not in photons.fields
    uniforms = flat(visible.apply(events.Photon, events).uniform)
    inside = flat(photons.egproc_ok)
    np.testing.assert_allclose(flat(photons.r9), flat(events.Photon.r9) + uniforms, rtol=1e-6)
    assert inside.all()
    assert chained.step_branches() == (*IDENTITY, "Photon_r9")  # Photon_uniform is produced, not read
