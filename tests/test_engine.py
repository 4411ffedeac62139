"""The columnar engine: known answers, identical results in every mode, and every kind of bad input."""

from __future__ import annotations

import pickle
import shutil

import awkward as ak
import dask
import numpy as np
import pytest
import torch

import egproc
from egproc import engine, nano
from egproc import bundle as bundle_format

from conftest import INPUTS, KnownShift, flat, known_shift_numpy, open_events, write_nano



def test_known_answer_and_pass_through_outside_regions(nano_file, known_bundle):
    events = open_events(nano_file)
    photons = egproc.load(known_bundle, device="cpu").apply(events.Photon, events)

    rho = flat(ak.broadcast_arrays(events.Rho.fixedGridRhoAll, events.Photon.pt)[0])
    raw = {name: flat(events.Photon[name]) for name in ("r9", "sieie", "pt", "superclusterEta")}
    expected_r9, expected_sieie, expected_score = known_shift_numpy(raw["r9"], raw["sieie"], raw["pt"], rho)
    abs_eta = np.abs(raw["superclusterEta"])
    inside = (abs_eta < 1.4442) | ((abs_eta > 1.566) & (abs_eta < 2.5))
    assert 0 < inside.sum() < inside.size  # the file has photons in the crack and beyond 2.5

    np.testing.assert_allclose(flat(photons.r9)[inside], expected_r9[inside], rtol=1e-6)
    np.testing.assert_allclose(flat(photons.sieie)[inside], expected_sieie[inside], rtol=1e-6)
    np.testing.assert_allclose(flat(photons.score)[inside], expected_score[inside], rtol=1e-6)
    # outside every region: raw values kept, new outputs undefined, flagged as not covered
    np.testing.assert_array_equal(flat(photons.r9)[~inside], raw["r9"][~inside])
    assert np.isnan(flat(photons.score)[~inside]).all()
    np.testing.assert_array_equal(flat(photons.egproc_ok), inside)
    np.testing.assert_array_equal(flat(photons.egproc_status), np.where(inside, 0, engine.STATUS_NOT_COVERED))
    np.testing.assert_array_equal(flat(photons.raw_r9), raw["r9"])
    assert ak.all(ak.num(photons) == ak.num(events.Photon))  # no object lost or added


def test_identical_in_eager_virtual_and_dask(nano_file, known_bundle):
    bundle = egproc.load(known_bundle, device="cpu")
    results = {}
    for mode in ("eager", "virtual"):
        events = open_events(nano_file, mode)
        results[mode] = bundle.apply(events.Photon, events)
    events = open_events(nano_file, "dask", steps_per_file=3)
    lazy = bundle.apply(events.Photon, events)
    assert lazy.npartitions == 3
    (results["dask"],) = dask.compute(lazy, scheduler="sync")
    for mode in ("virtual", "dask"):
        for field in ("r9", "sieie", "score", "raw_r9", "egproc_ok"):
            np.testing.assert_array_equal(flat(results[mode][field]), flat(results["eager"][field]), err_msg=f"{mode} {field}")
        np.testing.assert_array_equal(ak.num(results[mode]), ak.num(results["eager"]))


def test_dask_graph_carries_no_weights(nano_file, known_bundle):
    import cloudpickle

    events = open_events(nano_file, "dask")
    lazy = egproc.load(known_bundle, device="cpu").apply(events.Photon, events)
    graph = cloudpickle.dumps(dict(lazy.dask))
    model_bytes = (known_bundle / "known_shift.pt").read_bytes()
    windows = [model_bytes[i : i + 48] for i in range(0, len(model_bytes) - 48, len(model_bytes) // 16)]
    assert not any(window in graph for window in windows)
    assert str(known_bundle).encode() in graph  # the path travels, the content does not


def test_micro_batches_change_nothing(nano_file, known_bundle):
    events = open_events(nano_file)
    whole = egproc.load(known_bundle, device="cpu").apply(events.Photon, events)
    batched = egproc.load(known_bundle, device="cpu", batch_size=7).apply(events.Photon, events)
    np.testing.assert_array_equal(flat(batched.r9), flat(whole.r9))


def test_length_zero_chunk_and_events_without_objects(nano_file, known_bundle):
    bundle = egproc.load(known_bundle, device="cpu")
    empty = open_events(nano_file, entry_start=5, entry_stop=5)
    corrected = bundle.apply(empty.Photon, empty)
    assert len(corrected) == 0 and "egproc_ok" in corrected.fields

    events = open_events(nano_file)
    no_photons = events[ak.num(events.Photon) == 0]
    assert len(no_photons) > 0
    corrected = bundle.apply(no_photons.Photon, no_photons)
    assert len(corrected) == len(no_photons) and ak.sum(ak.num(corrected)) == 0


def photons_by_hand(r9, sieie, rho):
    n = len(r9)
    return ak.Array(
        {
            "Photon": [
                [{"r9": r9[i], "sieie": sieie[i], "pt": 40.0, "superclusterEta": 0.3}] for i in range(n)
            ],
            "Rho": [{"fixedGridRhoAll": value} for value in rho],
        }
    )


def test_non_finite_inputs_are_passed_through_and_flagged(known_bundle):
    events = photons_by_hand(
        r9=[0.9, np.nan, 0.95, 0.8, np.inf], sieie=[0.01, 0.01, -np.inf, 0.01, 0.01], rho=[20.0, 20.0, 20.0, np.nan, 20.0]
    )
    photons = egproc.load(known_bundle, device="cpu").apply(events.Photon, events)
    ok = flat(photons.egproc_ok)
    np.testing.assert_array_equal(ok, [True, False, False, False, False])
    np.testing.assert_array_equal(flat(photons.egproc_status), [0, 1, 1, 1, 1])
    r9 = flat(photons.r9)
    assert r9[0] == pytest.approx(known_shift_numpy(0.9, 0.01, 40.0, 20.0)[0])
    # pass-through keeps the value (NaN and inf included) as float32, the dtype of corrected fields
    np.testing.assert_array_equal(r9[1:], flat(events.Photon.r9)[1:].astype(np.float32))


def test_missing_values_stay_missing_in_every_written_field(known_bundle):
    """A missing object (one photon per event, ``ak.firsts``, in an event without one) gets
    missing fields; a missing value of a present object is flagged as not finite and its raw_*
    field stays missing, not NaN."""
    bundle = egproc.load(known_bundle, device="cpu")
    photon = {"sieie": 0.01, "pt": 40.0, "superclusterEta": 0.3}
    events = ak.Array({
        "Photon": [[{**photon, "r9": 0.9}], [], [{**photon, "r9": 0.8}]],
        "Rho": [{"fixedGridRhoAll": 20.0}] * 3,
    })
    first = bundle.apply(ak.firsts(events.Photon), events)
    for field in ("raw_r9", "r9", "egproc_ok", "egproc_status"):
        assert ak.is_none(first[field]).tolist() == [False, True, False], field
    assert ak.to_list(first.raw_r9) == pytest.approx([0.9, None, 0.8])
    assert ak.to_list(first.r9)[0] == pytest.approx(known_shift_numpy(0.9, 0.01, 40.0, 20.0)[0])

    events = ak.Array({"Photon": [[{**photon, "r9": 0.9}, {**photon, "r9": None}]], "Rho": [{"fixedGridRhoAll": 20.0}]})
    photons = bundle.apply(events.Photon, events)
    assert ak.to_list(photons.raw_r9[0]) == pytest.approx([0.9, None])
    assert ak.to_list(photons.egproc_status[0]) == [0, engine.STATUS_INPUT_NOT_FINITE]


class ReturnsNaN(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.log(x[:, 0] - 0.85), x[:, 1], x[:, 0]], dim=1)


def test_non_finite_outputs_are_flagged(tmp_path, known_bundle):
    folder = tmp_path / "nan-model"
    shutil.copytree(known_bundle, folder)
    manifest = bundle_format.Manifest.model_validate_json((folder / "bundle.json").read_text())
    bundle_format.write(
        folder, name="nan", method="test", collection="Photon", description="log of negative numbers",
        correction_set=_unit_cset(),
        models={"nan.pt": torch.jit.script(ReturnsNaN())},
        steps=[{"kind": "torchscript", "model": "nan.pt", "inputs": manifest.steps[0].inputs, "outputs": manifest.steps[0].outputs}],
    )
    events = photons_by_hand(r9=[0.9, 0.8], sieie=[0.01, 0.01], rho=[10.0, 10.0])
    photons = egproc.load(folder, device="cpu").apply(events.Photon, events)
    np.testing.assert_array_equal(flat(photons.egproc_status), [0, engine.STATUS_OUTPUT_NOT_FINITE])
    assert flat(photons.r9)[1] == np.float32(0.8)


class DoubleSieie(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x


def test_validity_gates_each_step_on_the_values_that_step_sees(tmp_path):
    """Steps share one validity evaluation until a step overwrites one of its inputs."""
    import correctionlib.schemav2 as cs

    def formula(name: str, variable: str, expression: str) -> cs.Correction:
        return cs.Correction(
            name=name, version=1, inputs=[cs.Variable(name=variable, type="real")], output=cs.Variable(name=variable, type="real"),
            data=cs.Formula(nodetype="formula", expression=expression, parser="TFormula", variables=[variable]),
        )

    below_50 = cs.Correction(
        name="pt_below_50", version=1, inputs=[cs.Variable(name="pt", type="real")], output=cs.Variable(name="valid", type="real"),
        data=cs.Binning(nodetype="binning", input="pt", edges=[0.0, 50.0, 1e6], content=[1.0, 0.0], flow=0.0),
    )
    gate = {"correction": "pt_below_50", "inputs": ["Photon_pt"]}
    bundle_format.write(
        tmp_path / "gated", name="gated", method="test", collection="Photon", description="a validity input rewritten mid-bundle",
        correction_set=cs.CorrectionSet(
            schema_version=2, corrections=[below_50, formula("pt_times_1p5", "pt", "1.5*x"), formula("r9_plus_1", "r9", "x+1")]
        ),
        models={"double.pt": torch.jit.script(DoubleSieie())},
        steps=[
            {"kind": "correctionlib", "correction": "r9_plus_1", "inputs": ["Photon_r9"], "output": "Photon_r9", "validity": gate},
            {"kind": "correctionlib", "correction": "pt_times_1p5", "inputs": ["Photon_pt"], "output": "Photon_pt", "keep": False},
            {"kind": "torchscript", "model": "double.pt", "inputs": ["Photon_sieie"], "outputs": ["Photon_sieie"], "validity": gate},
        ],
    )
    events = ak.Array({
        "Photon": [[{"r9": 0.5, "sieie": 0.01, "pt": pt, "superclusterEta": 0.3}] for pt in (20.0, 40.0, 60.0)],
        "Rho": [{"fixedGridRhoAll": 20.0}] * 3,
    })
    photons = egproc.load(tmp_path / "gated", device="cpu").apply(events.Photon, events)
    np.testing.assert_array_equal(flat(photons.r9), np.float32([1.5, 1.5, 0.5]))  # gated on the file's pT: 20, 40 < 50
    np.testing.assert_array_equal(flat(photons.sieie), np.float32([0.02, 0.01, 0.01]))  # on 1.5 pT: only 30 < 50
    np.testing.assert_array_equal(flat(photons.egproc_ok), [True, True, False])
    np.testing.assert_array_equal(flat(photons.pt), np.float32([20.0, 40.0, 60.0]))  # an internal column is not written


def test_a_validity_shared_by_regions_is_evaluated_inside_them_only(tmp_path):
    """EB and EE steps gate on one validity that correctionlib refuses beyond |η_SC| = 2.5: it is
    evaluated once, on the objects of both regions, and never on the crack or beyond."""
    import correctionlib.schemav2 as cs

    inside_tracker = cs.Correction(
        name="eta_gate", version=1, inputs=[cs.Variable(name="eta", type="real")], output=cs.Variable(name="valid", type="real"),
        data=cs.Binning(nodetype="binning", input="eta", edges=[-2.5, -2.0, 2.0, 2.5], content=[0.0, 1.0, 0.0], flow="error"),
    )
    plus_one = cs.Correction(
        name="r9_plus_1", version=1, inputs=[cs.Variable(name="r9", type="real")], output=cs.Variable(name="r9", type="real"),
        data=cs.Formula(nodetype="formula", expression="x+1", parser="TFormula", variables=["r9"]),
    )
    gate = {"correction": "eta_gate", "inputs": ["Photon_superclusterEta"]}
    bundle_format.write(
        tmp_path / "regions", name="regions", method="test", collection="Photon", description="one validity, two regions",
        correction_set=cs.CorrectionSet(schema_version=2, corrections=[inside_tracker, plus_one]),
        models={"double.pt": torch.jit.script(DoubleSieie())},
        steps=[
            {"kind": "correctionlib", "correction": "r9_plus_1", "inputs": ["Photon_r9"], "output": "Photon_r9", "region": "EB", "validity": gate},
            {"kind": "torchscript", "model": "double.pt", "inputs": ["Photon_sieie"], "outputs": ["Photon_sieie"], "region": "EE", "validity": gate},
        ],
    )
    eta = [0.3, 1.5, 1.8, 2.2, 2.8, -1.0]  # EB, crack, EE, EE outside the gate, beyond the endcaps, EB
    events = ak.Array({
        "Photon": [[{"r9": 0.5, "sieie": 0.01, "pt": 40.0, "superclusterEta": value} for value in eta]],
        "Rho": [{"fixedGridRhoAll": 20.0}],
    })
    photons = egproc.load(tmp_path / "regions", device="cpu").apply(events.Photon, events)
    np.testing.assert_array_equal(flat(photons.r9), np.float32([1.5, 0.5, 0.5, 0.5, 0.5, 1.5]))
    np.testing.assert_array_equal(flat(photons.sieie), np.float32([0.01, 0.01, 0.02, 0.01, 0.01, 0.01]))
    np.testing.assert_array_equal(flat(photons.egproc_ok), [True, False, True, False, False, True])


def _unit_cset():
    import correctionlib.schemav2 as cs

    return cs.CorrectionSet(schema_version=2, corrections=[])


def test_missing_branch_is_named_before_the_run(nano_file, known_bundle):
    bundle = egproc.load(known_bundle, device="cpu")
    events = open_events(nano_file)
    with pytest.raises(nano.MissingBranchError, match=r"'Photon_sieie' is missing from the Photon collection"):
        bundle.apply(events.Photon[["pt", "r9", "superclusterEta"]], events)

    lazy_events = open_events(nano_file, "dask")
    with pytest.raises(nano.MissingBranchError, match="Photon_sieie"):
        bundle.apply(lazy_events.Photon[["pt", "r9", "superclusterEta"]], lazy_events)  # at graph build

    with pytest.raises(nano.MissingBranchError, match="Rho_fixedGridRhoAll"):
        bundle.apply(events.Photon, events[["Photon", "run"]])
    with pytest.raises(nano.MissingBranchError, match="Rho_fixedGridRhoAll.*Photon_sieie|Photon_sieie"):
        bundle.check_file(_without_branch(nano_file, "Photon_sieie"))


def _without_branch(path, branch):
    import uproot

    target = path.parent / f"without_{branch}.root"
    with uproot.open(path) as source:
        tree = source["Events"]
        arrays = tree.arrays([k for k in tree.keys() if k != branch and not k.startswith("nPhoton")], library="np")
    photon = {k[len("Photon_"):]: v for k, v in arrays.items() if k.startswith("Photon_")}
    rest = {k: v for k, v in arrays.items() if not k.startswith("Photon_")}
    with uproot.recreate(target) as handle:
        handle.mktree("Events", {**rest, "Photon": ak.zip({k: ak.Array(list(v)) for k, v in photon.items()})})
    return target


def test_old_rho_name_falls_back_with_a_warning(tmp_path, nano_file, known_bundle):
    old = write_nano(tmp_path / "old.root", old_rho=True)  # same seed: same values, pre-v12 ρ name
    bundle = egproc.load(known_bundle, device="cpu")
    new_events, old_events = open_events(nano_file), open_events(old)
    with pytest.warns(nano.FallbackWarning, match="fixedGridRhoFastjetAll"):
        from_old = bundle.apply(old_events.Photon, old_events)
    np.testing.assert_array_equal(flat(from_old.r9), flat(bundle.apply(new_events.Photon, new_events).r9))
    assert bundle.check_file(old)["Rho_fixedGridRhoAll"] == "fixedGridRhoFastjetAll"


def test_wrong_input_type_is_a_clear_error(known_bundle):
    events = ak.Array(
        {
            "Photon": [[{"r9": 0.9, "sieie": [0.01, 0.02], "pt": 40.0, "superclusterEta": 0.3}]],
            "Rho": [{"fixedGridRhoAll": 20.0}],
        }
    )
    with pytest.raises(engine.InputTypeError, match="Photon_sieie: expected one number per Photon object"):
        egproc.load(known_bundle, device="cpu").apply(events.Photon, events)


def test_model_signature_is_checked_at_write_and_load(tmp_path):
    with pytest.raises(engine.ModelSignatureError, match=r"declares float32 \[n, 2\]"):
        bundle_format.write(
            tmp_path / "bad", name="bad", method="test", collection="Photon", description="3 outputs declared as 2",
            correction_set=_unit_cset(), models={"m.pt": torch.jit.script(KnownShift())},
            steps=[{"kind": "torchscript", "model": "m.pt", "inputs": INPUTS, "outputs": ("Photon_r9", "Photon_sieie")}],
        )
    with pytest.raises(engine.ModelSignatureError, match="does not accept float32 \\[n, 2\\]"):
        bundle_format.write(
            tmp_path / "bad2", name="bad", method="test", collection="Photon", description="2 inputs for 4",
            correction_set=_unit_cset(), models={"m.pt": torch.jit.script(KnownShift())},
            steps=[{"kind": "torchscript", "model": "m.pt", "inputs": INPUTS[:2], "outputs": ("Photon_r9", "Photon_sieie", "Photon_x")}],
        )


def test_tampered_model_is_refused_at_load_and_on_workers(tmp_path, known_bundle, nano_file):
    folder = tmp_path / "tampered"
    shutil.copytree(known_bundle, folder)
    bundle = egproc.load(folder, device="cpu")
    model = folder / "known_shift.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(engine.ChecksumError, match=r"known_shift\.pt has sha256 [0-9a-f]{64}, but bundle.json records"):
        egproc.load(folder)
    # A worker that has not loaded the model yet re-verifies the file it reads.
    engine.clear_cache()
    events = open_events(nano_file)
    with pytest.raises(engine.ChecksumError, match=r"known_shift\.pt: sha256 is"):
        bundle.apply(events.Photon, events)


def test_bundle_pickles_to_a_reference(known_bundle):
    bundle = egproc.load(known_bundle, device="cpu")
    payload = pickle.dumps(bundle)
    assert len(payload) < 1000
    restored = pickle.loads(payload)
    assert restored.manifest == bundle.manifest and restored.path == bundle.path


def test_devices():
    assert engine.resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert engine.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        engine.resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            engine.resolve_device("cuda:0")


class OutOfMemoryAbove:
    """Stands in for a model on a small GPU: batches above ``limit`` rows run out of memory."""

    def __init__(self, limit: int):
        self.limit = limit
        self.batch_sizes: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(batch.shape[0])
        if batch.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return batch[:, :1] * 2


def test_out_of_memory_halves_the_batch_and_retries():
    features = np.arange(100, dtype=np.float32).reshape(100, 1)
    model = OutOfMemoryAbove(limit=20)
    result = engine.run_batched(model, features, 1, batch_size=64)
    np.testing.assert_array_equal(result[:, 0], features[:, 0] * 2)
    assert model.batch_sizes[:3] == [64, 32, 16] and max(s for s in model.batch_sizes[3:]) == 16
    with pytest.raises(torch.cuda.OutOfMemoryError):
        engine.run_batched(OutOfMemoryAbove(limit=0), features, 1, batch_size=4)
