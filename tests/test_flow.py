"""The normalizing-flow correction: encoding, known-answer corrections, export, bundle and processor use."""

from __future__ import annotations

import math

import awkward as ak
import dask
import numpy as np
import pytest
import torch

import egproc
from egproc import cli, cqr, engine, flow, toy

from conftest import flat, open_events

TINY = flow.Settings(transforms=2, bins=6, hidden=(16, 16), steps=150, batch_size=1024, learning_rate=3e-3, knots=41)


def sample(conditions: np.ndarray, values: dict[str, np.ndarray], event: np.ndarray | None = None) -> cqr.TrainingSample:
    n = len(conditions)
    return cqr.TrainingSample(
        conditions.astype(np.float32), {k: v.astype(np.float32) for k, v in values.items()}, np.ones(n),
        np.arange(n, dtype=np.int64) if event is None else event,
    )


def barrel_conditions(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.column_stack(
        [rng.uniform(25, 60, n), rng.uniform(-1.4, 1.4, n), rng.uniform(-np.pi, np.pi, n), rng.uniform(5, 40, n)]
    )


def module_inputs(s: cqr.TrainingSample, variables, uniforms: np.ndarray) -> torch.Tensor:
    raw = np.stack([s.values[v] for v in variables], axis=1)
    return torch.from_numpy(np.concatenate([s.conditions, raw, uniforms], axis=1).astype(np.float32))


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def test_encoding_dequantises_the_peak_and_decodes_it_to_exact_zeros():
    rng = np.random.default_rng(1)
    n = 20_000
    shape = rng.normal(0.9, 0.05, n)
    isolation = np.where(rng.random(n) < 0.4, 0.0, rng.exponential(2.0, n))
    values = np.column_stack([shape, isolation]).astype(np.float32)
    uniforms = rng.random((n, 1), dtype=np.float32)
    encoding = flow.Encoding.for_sample(values, [False, True], uniforms, n_knots=81)
    with torch.inference_mode():
        v = encoding.dequantise(torch.from_numpy(values), torch.from_numpy(uniforms)).numpy()
        encoded = encoding.encode(torch.from_numpy(values), torch.from_numpy(uniforms))
        decoded = encoding.decode(encoded).numpy()
    peak = isolation == 0
    # The peak becomes the block −w·u below zero, the tail ln(1 + y/s) above it.
    np.testing.assert_allclose(v[peak, 1], -flow.PEAK_WIDTH * uniforms[peak, 0], rtol=1e-6)
    assert np.all(v[~peak, 1] > 0)
    # Normal scores: the pooled marginals come out standard normal.
    np.testing.assert_allclose(encoded.mean(dim=0).numpy(), 0.0, atol=0.02)
    np.testing.assert_allclose(encoded.std(dim=0).numpy(), 1.0, atol=0.02)
    # Decoding restores continuous values and the tail, and maps the whole peak block to exactly 0.
    np.testing.assert_allclose(decoded[:, 0], values[:, 0], rtol=2e-6)
    np.testing.assert_allclose(decoded[~peak, 1], values[~peak, 1], rtol=2e-5, atol=1e-6)
    assert np.all(decoded[peak, 1] == 0.0)


@pytest.mark.parametrize("n, tail_objects", [(20_000, 100), (50_000, 7), (3_000, 100)])
def test_outer_knots_leave_the_asked_number_of_objects_beyond_them(n, tail_objects):
    """The outer scores are ±min(4, Φ⁻¹(1 − m/n)): m objects lie beyond each outer knot, or
    fewer where the range reaches 4 (its cap)."""
    from scipy.special import ndtri

    rng = np.random.default_rng(n)
    values = rng.lognormal(0.0, 1.0, (n, 1)).astype(np.float32)  # a heavy upper tail
    encoding = flow.Encoding.for_sample(values, [False], np.zeros((n, 0), np.float32), n_knots=81, tail_objects=tail_objects)
    outer = min(flow.SCORE_RANGE, float(ndtri(1.0 - tail_objects / n)))
    assert encoding.score_low == pytest.approx(-outer)
    assert encoding.score_low + 80 * encoding.score_step == pytest.approx(outer, rel=1e-6)
    knots = encoding.knots[0].numpy()
    beyond = int((values[:, 0] > knots[-1]).sum()), int((values[:, 0] < knots[0]).sum())
    if outer < flow.SCORE_RANGE:
        assert beyond == (tail_objects, tail_objects)
    else:  # 50 000 objects reach the cap with 1.6 beyond
        assert max(beyond) <= 2
    with pytest.raises(ValueError, match="too few"):
        flow.Encoding.for_sample(values[:400], [False], np.zeros((400, 0), np.float32), n_knots=81, tail_objects=100)


def test_decoding_finds_its_segment_on_the_score_grid_as_the_binary_search_does():
    """decode finds the segment of a normal score by arithmetic on the evenly spaced scores; it
    must be the interpolation the binary search gives: at and between the knots, continued
    linearly beyond the outer ones, and a NaN passed through rather than an index out of range."""
    rng = np.random.default_rng(3)
    scores = np.linspace(-flow.SCORE_RANGE, flow.SCORE_RANGE, 81)
    knots = np.sort(rng.standard_t(3, size=(3, 81)), axis=1)  # irregular knot spacing
    encoding = flow.Encoding([False, False, False], [1.0, 1.0, 1.0], knots, scores)
    features = torch.from_numpy(
        np.concatenate([rng.uniform(-7.0, 7.0, (2000, 3)), np.repeat(scores[:, None], 3, axis=1)]).astype(np.float32)
    )
    features[0] = torch.tensor([float("nan"), -9.5, 9.5])
    with torch.inference_mode():
        decoded = encoding.decode(features)
        expected = flow._piecewise_linear(features, encoding.scores, encoding.knots)
    assert torch.isnan(decoded[0, 0]) and not torch.isnan(decoded[1:]).any()
    torch.testing.assert_close(decoded, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert float((features.abs() > flow.SCORE_RANGE).float().mean()) > 0.3
    with pytest.raises(ValueError, match="evenly spaced"):
        flow.Encoding([False], [1.0], knots[:1, :3], np.array([-1.0, 0.0, 2.0]))


def test_an_untrained_flow_is_the_identity_correction():
    """f is the identity at initialisation for both switch values, so the correction must give
    back every raw value (within the float32 round trip of the encoding) and keep every zero."""
    rng = np.random.default_rng(2)
    n = 5000
    variables = ("r9", "pfChargedIsoPFPV", "pfChargedIsoWorstVtx")
    pfpv = np.where(rng.random(n) < 0.6, 0.0, rng.exponential(1.0, n))
    worst = pfpv + np.where(rng.random(n) < 0.3, 0.0, rng.exponential(2.0, n))
    mc = sample(barrel_conditions(rng, n), {"r9": rng.uniform(0.5, 1.0, n), "pfChargedIsoPFPV": pfpv, "pfChargedIsoWorstVtx": worst})
    correction, _ = flow.train_flow(mc, mc, variables, settings=flow.Settings(steps=1, learning_rate=0.0, transforms=2, hidden=(8,)), label="id")
    inputs = module_inputs(mc, variables, rng.random((n, 2), dtype=np.float32))
    with torch.inference_mode():
        out = correction(inputs).numpy()
    raw = inputs[:, 4:7].numpy()
    np.testing.assert_allclose(out, raw, rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(out[:, 1] == 0, raw[:, 1] == 0)
    assert np.all(out[:, 2] >= out[:, 1])


def randomised_switched_flow(sweep: bool, dtype: torch.dtype = torch.float32) -> flow.SwitchedFlow:
    """A switched flow of 3 features and 2 context columns plus the switch, far from the identity."""
    switched_flow = flow.SwitchedFlow(
        3, 3, transforms=4, bins=6, hidden=(16, 16), seed=4, sweep=sweep, sweep_hidden=(8,)
    ).to(dtype)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in switched_flow.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator, dtype=dtype))
    return switched_flow


def switch_contexts(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(6)
    x = 1.5 * torch.randn(n, 3, generator=generator, dtype=dtype)
    c = torch.randn(n, 2, generator=generator, dtype=dtype)
    return x, torch.cat([c, torch.zeros(n, 1, dtype=dtype)], 1), torch.cat([c, torch.ones(n, 1, dtype=dtype)], 1)


@pytest.mark.parametrize("sweep", [True, False])
def test_shared_layers_cancel_from_the_correction(sweep):
    """correct(x) leaves out the layers after the sweep; it must equal the full round trip
    f⁻¹(f(x | c, 0) | c, 1) through all of them, which it only does if those layers never see the
    switch. Without a sweep every layer is switched and none is left out."""
    # float64: in float32 the round trip through the shared layers alone differs by 2e-5.
    switched_flow = randomised_switched_flow(sweep, torch.float64)
    x, mc_context, data_context = switch_contexts(4000, torch.float64)
    with torch.no_grad():
        full = switched_flow.inverse(switched_flow.transform(x, mc_context)[0], data_context)
        fast = switched_flow.correct(x, mc_context, data_context)
        scripted = torch.jit.script(switched_flow).correct(x, mc_context, data_context)
    assert float((full - x).abs().max()) > 0.3  # the switch moves the objects
    torch.testing.assert_close(fast, full, rtol=0.0, atol=1e-10)
    torch.testing.assert_close(scripted, fast, rtol=0.0, atol=0.0)
    if sweep:  # one layer per feature, each transforming that feature alone, then the shared layers
        assert [layer.transform_index.tolist() for layer in switched_flow.switch.layers] == [[0], [1], [2]]
        assert len(switched_flow.shared[0].layers) == 4
    else:
        assert len(switched_flow.switch.layers) == 4 and len(switched_flow.shared) == 0


def test_switched_flow_log_density_is_the_change_of_variables_through_every_layer():
    switched_flow = randomised_switched_flow(sweep=True, dtype=torch.float64)
    x, mc_context, data_context = switch_contexts(10, torch.float64)
    for context in (mc_context, data_context):
        z, logdet = switched_flow.transform(x, context)
        jacobian = torch.autograd.functional.jacobian(lambda inputs: switched_flow.transform(inputs, context)[0], x)
        rows = torch.arange(len(x))
        expected = torch.linalg.slogdet(jacobian[rows, :, rows, :]).logabsdet
        torch.testing.assert_close(logdet, expected, rtol=0.0, atol=1e-10)
        standard_normal = -0.5 * (z * z).sum(dim=1) - 1.5 * math.log(2.0 * math.pi)
        torch.testing.assert_close(switched_flow.log_prob(x, context), logdet + standard_normal, rtol=0.0, atol=1e-10)
    with pytest.raises(ValueError, match="switch must be one of"):
        flow.Settings(switch="first-layer")
    with pytest.raises(ValueError, match="sweep_activation must be one of"):
        flow.Settings(sweep_activation="tanh")
    with pytest.raises(ValueError, match="tail_objects"):
        flow.Settings(tail_objects=0)


# --------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------


def test_joint_correction_matches_data_means_widths_and_correlation():
    """MC: two independent Gaussians whose mean depends on ρ. Data: the first shifted and
    stretched, the second correlated with the first (ρ = 0.6). One flow, no chain, must give the
    corrected MC data's moments and correlation."""
    rng = np.random.default_rng(3)
    n = 30_000

    def make(is_data: bool) -> cqr.TrainingSample:
        conditions = barrel_conditions(rng, n)
        a, b = rng.normal(size=n), rng.normal(size=n)
        if is_data:
            a, b = 0.5 + 1.3 * a, 0.6 * a + 0.8 * b
        a = 0.9 + 0.02 * (a + conditions[:, 3] / 20)
        return sample(conditions, {"r9": a, "sieie": 0.01 + 0.001 * b}, event=np.arange(n) + (n if is_data else 0))

    data, mc = make(True), make(False)
    settings = flow.Settings(transforms=4, bins=8, hidden=(32, 32), steps=600, batch_size=2048, learning_rate=3e-3)
    correction, facts = flow.train_flow(data, mc, ("r9", "sieie"), settings=settings, seed=4, label="gauss")
    with torch.inference_mode():
        out = correction(module_inputs(mc, ("r9", "sieie"), np.zeros((n, 0), np.float32))).numpy().astype(np.float64)
    target = np.column_stack([data.values["r9"], data.values["sieie"]]).astype(np.float64)
    raw = np.column_stack([mc.values["r9"], mc.values["sieie"]]).astype(np.float64)
    np.testing.assert_array_less(np.abs(out.mean(axis=0) - target.mean(axis=0)) / target.std(axis=0), 0.05)
    np.testing.assert_allclose(out.std(axis=0), target.std(axis=0), rtol=0.05)
    # MC had no correlation; data and corrected MC have 0.6 (ρ also shifts r9 alike in both).
    assert abs(np.corrcoef(raw.T)[0, 1]) < 0.03
    assert abs(np.corrcoef(out.T)[0, 1] - np.corrcoef(target.T)[0, 1]) < 0.04
    assert np.isfinite(facts["held_out_loss_data"]) and np.isfinite(facts["held_out_loss_mc"])


def test_zero_peak_fraction_and_tail_move_to_data():
    """MC: 55 % zeros and an exponential tail of mean 1; data: 35 % zeros and mean 1.5. The
    corrected MC keeps exact zeros, in data's fraction, and data's tail."""
    rng = np.random.default_rng(5)
    n = 30_000

    def make(zero_fraction: float, mean: float, offset: int) -> cqr.TrainingSample:
        y = np.where(rng.random(n) < zero_fraction, 0.0, rng.exponential(mean, n))
        return sample(barrel_conditions(rng, n), {"pfPhoIso03": y}, event=np.arange(n) + offset)

    data, mc = make(0.35, 1.5, 0), make(0.55, 1.0, n)
    settings = flow.Settings(transforms=2, bins=8, hidden=(16, 16), steps=500, batch_size=2048, learning_rate=3e-3)
    correction, _ = flow.train_flow(data, mc, ("pfPhoIso03",), settings=settings, seed=6, label="iso")
    with torch.inference_mode():
        out = correction(module_inputs(mc, ("pfPhoIso03",), rng.random((n, 1), dtype=np.float32))).numpy()[:, 0]
    assert np.all(out >= 0)
    assert abs(np.mean(out == 0) - 0.35) < 0.02
    assert abs(out[out > 0].mean() - 1.5) < 0.1
    assert np.max(out) <= data.values["pfPhoIso03"].max()  # clamped to data's training range


def test_coincidence_of_two_zero_peaks_moves_to_data():
    """MC: H/E and pfPhoIso03 zero in half the photons each, independently; data: the same
    fractions, but pfPhoIso03 is zero in 80 % of the photons whose H/E is (cov(1[a = 0], 1[b = 0])
    = 0.15 against 0). Only the coincidence differs, and the corrected MC must take it on."""
    rng = np.random.default_rng(11)
    n = 30_000
    variables = ("hoe", "pfPhoIso03")

    def make(coincident: bool, offset: int) -> cqr.TrainingSample:
        zero_a = rng.random(n) < 0.5
        zero_b = np.where(zero_a, rng.random(n) < 0.8, rng.random(n) < 0.2) if coincident else rng.random(n) < 0.5
        values = {
            "hoe": np.where(zero_a, 0.0, rng.exponential(0.02, n)),
            "pfPhoIso03": np.where(zero_b, 0.0, rng.exponential(2.0, n)),
        }
        return sample(barrel_conditions(rng, n), values, event=np.arange(n) + offset)

    data, mc = make(True, 0), make(False, n)
    settings = flow.Settings(transforms=2, bins=8, hidden=(16, 16), steps=500, batch_size=2048, learning_rate=3e-3)
    correction, _ = flow.train_flow(data, mc, variables, settings=settings, seed=6, label="coincidence")
    with torch.inference_mode():
        out = correction(module_inputs(mc, variables, rng.random((n, 2), dtype=np.float32))).numpy()
    zero_a, zero_b = out[:, 0] == 0, out[:, 1] == 0
    np.testing.assert_allclose([zero_a.mean(), zero_b.mean()], 0.5, atol=0.03)
    raw = np.mean((mc.values["hoe"] == 0) & (mc.values["pfPhoIso03"] == 0)) - 0.25
    assert abs(raw) < 0.01
    # Most of the way: a step in density is what a smooth flow approaches last (flow docstring,
    # "Peak indicators"); 500 steps closed 0.13 of the 0.15.
    assert np.mean(zero_a & zero_b) - zero_a.mean() * zero_b.mean() > 0.11


# --------------------------------------------------------------------------------------------
# Trained on a tiny toy, through the command line
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flow-samples")
    paths = toy.generate_samples(folder, 40_000, seed=22, samples=("data", "mc"), workers=1)
    return {p.stem: p for p in paths}


@pytest.fixture(scope="module")
def trained(samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow-bundle") / "tiny-flow"
    cli.main([
        "train", "flow", "--data", str(samples["data"]), "--mc", str(samples["mc"]), "--out", str(out),
        "--name", "tiny-flow", "--seed", "5", "--device", "cpu", "--steps", "300", "--transforms", "2",
        "--bins", "6", "--hidden", "16", "16", "--batch-size", "1024", "--learning-rate", "0.005",
        "--provenance", "toy_seed=22",
    ])
    return egproc.load(out, device="cpu")



def test_bundle_holds_one_module_per_region_and_variation_with_cqr_signature(trained):
    manifest = trained.manifest
    assert manifest.method == "flow" and manifest.provenance["toy_seed"] == "22"
    assert set(trained.variations) == {"nominal", "up", "down", "half_a", "half_b"}
    for variation in trained.variations:
        models = [s for s in trained.steps(variation) if s.kind == "torchscript"]
        assert sorted(s.region for s in models) == ["EB", "EE"]
        for step in models:
            variables = flow.VARIABLES[step.region]
            zero_peak = [v for v in variables if v in cqr.ZERO_PEAK]
            assert step.outputs == tuple(f"Photon_{v}" for v in variables)
            assert step.inputs == (*cqr.CONDITIONS, *step.outputs, *(f"Photon_flowUniform_{v}" for v in zero_peak))
            module = torch.jit.load(str(trained.path / step.model.file))
            assert module(torch.rand(3, len(step.inputs)) + 0.5).shape == (3, len(variables))
    for region, facts in manifest.provenance["losses"].items():
        assert np.isfinite(facts["held_out_loss_data"]), region


def test_exported_module_equals_the_eager_correction_and_training_is_deterministic(samples, tmp_path):
    data, mc, _ = cqr.read_samples([samples["data"]], [samples["mc"]])
    variables = flow.VARIABLES["EE"]
    correction, _ = flow.train_flow(data["EE"], mc["EE"], variables, settings=TINY, seed=3, label="EE")
    uniforms = np.random.default_rng(0).random((len(mc["EE"]), sum(v in cqr.ZERO_PEAK for v in variables)), dtype=np.float32)
    inputs = module_inputs(mc["EE"], variables, uniforms)
    path = tmp_path / "flow.pt"
    torch.jit.save(torch.jit.script(correction), str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        eager, scripted = correction(inputs).numpy(), loaded(inputs).numpy()
    assert np.all(np.isfinite(eager))
    np.testing.assert_allclose(scripted, eager, rtol=1e-6, atol=1e-9)
    frozen = engine.load_artefact(path, engine.sha256_of(path.read_bytes()))
    with torch.no_grad():
        np.testing.assert_array_equal(frozen(inputs).numpy(), scripted)
    again, _ = flow.train_flow(data["EE"], mc["EE"], variables, settings=TINY, seed=3, label="EE")
    with torch.no_grad():
        np.testing.assert_array_equal(again(inputs).numpy(), eager)


@pytest.mark.parametrize("switch", ["sweep", "every-layer"])
def test_a_scripted_correction_is_rebuilt_with_its_weights_and_settings(samples, switch):
    """correction_from_torchscript gives back the eager correction a module was scripted from:
    same state, same encoding grid, same floats (the endcap: followers, excesses, indicators)."""
    import dataclasses

    data, mc, _ = cqr.read_samples([samples["data"]], [samples["mc"]])
    variables = flow.VARIABLES["EE"]
    settings = dataclasses.replace(TINY, switch=switch, steps=40, sweep_hidden=(8, 4))
    correction, _ = flow.train_flow(data["EE"], mc["EE"], variables, settings=settings, seed=4, label="EE")
    rebuilt = flow.correction_from_torchscript(torch.jit.script(correction))
    original = correction.state_dict()
    assert rebuilt.state_dict().keys() == original.keys()
    for key, value in rebuilt.state_dict().items():
        torch.testing.assert_close(value, original[key], rtol=0.0, atol=0.0, msg=key)
    if switch == "sweep":
        assert any(len(layer.indicator_index) for layer in rebuilt.flow.switch.layers)
    uniforms = np.random.default_rng(1).random((len(mc["EE"]), sum(v in cqr.ZERO_PEAK for v in variables)), dtype=np.float32)
    inputs = module_inputs(mc["EE"], variables, uniforms)
    with torch.no_grad():
        np.testing.assert_array_equal(rebuilt(inputs).numpy(), correction(inputs).numpy())
    with pytest.raises(TypeError, match="expected a scripted FlowCorrection"):
        flow.correction_from_torchscript(torch.jit.script(correction.encoding))


def test_reexport_writes_the_bundle_again(trained, tmp_path):
    """A bundle exported by this code re-exports byte for byte (up/down included); the manifest
    keeps its steps, correctionlib file and provenance, and records the re-export."""
    out = flow.reexport(trained.path, tmp_path / "again", note="round trip")
    again = egproc.load(out, device="cpu")
    assert again.manifest.steps == trained.manifest.steps  # same files, same checksums
    assert again.manifest.corrections == trained.manifest.corrections
    provenance = dict(again.manifest.provenance)
    (entry,) = provenance.pop("reexported")
    assert provenance == trained.manifest.provenance
    assert entry["note"] == "round trip"
    assert entry["previous_sha256"] == {a.file: a.sha256 for a in trained.manifest.artefacts()}
    with pytest.raises(ValueError, match="a flow bundle, not cqr"):
        cqr.reexport(trained.path, tmp_path / "wrong")


def test_flows_trained_two_at_a_time_are_the_flows_trained_in_turn(samples, tmp_path):
    """Concurrent trainings (threads) give each flow exactly as training them one after the other
    does, both on one torch thread so that no matrix product changes its summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bundles = {
            mode: egproc.load(flow.train(
                [samples["data"]], [samples["mc"]], tmp_path / str(mode), settings=TINY, seed=4, device="cpu",
                splits=False, progress=False, concurrent=mode,
            ), device="cpu")
            for mode in (False, True)
        }
    finally:
        torch.set_num_threads(threads)
    assert [bundles[m].manifest.provenance["concurrent_trainings"] for m in (False, True)] == [1, 2]
    for region in flow.VARIABLES:
        modules = [torch.jit.load(str(bundles[m].path / f"flow_{region}_nominal.pt")) for m in (False, True)]
        sequential, concurrent = (m.state_dict() for m in modules)
        assert sequential.keys() == concurrent.keys()
        for name, tensor in sequential.items():
            torch.testing.assert_close(concurrent[name], tensor, rtol=0, atol=0, msg=f"{region} {name}")


def test_corrected_toy_keeps_its_structure_in_every_variation(trained, samples):
    events = open_events(samples["mc"])
    corrected = {v: trained.apply(events.Photon, events, variation=v) for v in ("nominal", "up", "down")}
    ok = flat(corrected["nominal"].egproc_ok)
    assert ok.mean() > 0.6
    endcap = ok & (np.abs(flat(events.Photon.superclusterEta)) > 1.566)
    for name, photons in corrected.items():
        for field in ("pfPhoIso03", "pfChargedIsoPFPV", "esEffSigmaRR", "esEnergyOverRawE"):
            assert np.all(flat(photons[field])[ok] >= 0), (name, field)
        assert np.all(flat(photons.pfChargedIsoWorstVtx)[ok] >= flat(photons.pfChargedIsoPFPV)[ok]), name
        # The preshower pair shares its zero peak (cqr.FOLLOWS).
        np.testing.assert_array_equal(
            flat(photons.esEnergyOverRawE)[endcap] == 0, flat(photons.esEffSigmaRR)[endcap] == 0, err_msg=name
        )
    for field in ("r9", "sieie", "etaWidth"):
        centre = 0.5 * (flat(corrected["up"][field]) + flat(corrected["down"][field]))
        np.testing.assert_allclose(centre[ok], flat(corrected["nominal"][field])[ok], rtol=1e-5, atol=1e-7)
        assert np.mean(flat(corrected["up"][field])[ok] != flat(corrected["nominal"][field])[ok]) > 0.9
    # Zero peaks are real: many corrected isolations are exactly 0, as in data.
    assert 0.2 < np.mean(flat(corrected["nominal"].pfPhoIso03)[ok] == 0) < 0.8


def test_dequantisation_does_not_depend_on_chunking_or_selection(trained, samples):
    """The dequantisation uniforms come from hashprng: the same corrected values whether the file
    is processed whole, in two eager chunks, in dask partitions, or after a pT selection (to
    float32 rounding: a matrix product over another number of rows may round its last bit
    differently, and the spline layers carry that to ~1e-6 absolute on a value just above an
    isolation's zero peak — a wrong uniform moves values by 0.1–10)."""

    def assert_same(got, expected):
        np.testing.assert_array_equal(got == 0, expected == 0)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    path = samples["mc"]
    fields = ("pfPhoIso03", "pfChargedIsoPFPV", "pfChargedIsoWorstVtx", "esEffSigmaRR", "r9")
    whole_events = open_events(path)
    whole = trained.apply(whole_events.Photon, whole_events)
    reference = {f: flat(whole[f]) for f in fields}

    half = len(whole_events) // 2
    chunked = [trained.apply(e.Photon, e) for e in (open_events(path, entry_stop=half), open_events(path, entry_start=half))]
    for f in fields:
        assert_same(np.concatenate([flat(c[f]) for c in chunked]), reference[f])

    lazy = open_events(path, mode="dask", steps_per_file=3)
    (computed,) = dask.compute(trained.apply(lazy.Photon, lazy), scheduler="sync")
    for f in fields:
        assert_same(flat(computed[f]), reference[f])

    selected = trained.apply(whole_events.Photon[whole_events.Photon.pt > 30], whole_events)
    keep = flat(whole_events.Photon.pt) > 30
    for f in fields:
        assert_same(flat(selected[f]), reference[f][keep])


def test_corrected_mc_moves_towards_data(trained, samples):
    """Even a 300-step two-layer flow on 40 k events moves the barrel sieie mean and the
    pfPhoIso03 zero fraction of the probes most of the way to data."""
    from egproc.probes import MASS_WINDOW, tag_probe_pairs

    def barrel_probes(path, bundle=None):
        events = open_events(path)
        pairs = tag_probe_pairs(events, MASS_WINDOW)
        probe = pairs.probe if bundle is None else bundle.apply(pairs.probe, events)
        weight = np.ones(len(events)) if bundle is None else events.genWeight * bundle.event_weight("rho", events)
        weight = flat(ak.broadcast_arrays(weight, pairs.mass)[0])
        keep = np.abs(flat(probe.superclusterEta)) < 1.4442
        if bundle is not None:
            keep &= flat(probe.egproc_ok)
        return probe, weight, keep

    data, data_weight, data_keep = barrel_probes(samples["data"])
    mc, mc_weight, mc_keep = barrel_probes(samples["mc"], trained)
    for field, statistic in (("sieie", lambda v, w: np.average(v, weights=w)), ("pfPhoIso03", lambda v, w: np.average(v == 0, weights=w))):
        target = statistic(flat(data[field])[data_keep], data_weight[data_keep])
        raw = statistic(flat(mc[f"raw_{field}"])[mc_keep], mc_weight[mc_keep])
        fixed = statistic(flat(mc[field])[mc_keep], mc_weight[mc_keep])
        assert abs(fixed - target) < 0.5 * abs(raw - target), (field, target, raw, fixed)


def test_flow_inverse_undoes_transform_for_the_trained_toy_flow(samples):
    """f⁻¹(f(x)) = x to 1e-5 for the flow of a trained correction, on the encoded toy probes."""
    data, mc, _ = cqr.read_samples([samples["data"]], [samples["mc"]])
    variables = flow.VARIABLES["EB"]
    correction, _ = flow.train_flow(data["EB"], mc["EB"], variables, settings=TINY, seed=8, label="EB")
    n_uniforms = sum(v in cqr.ZERO_PEAK for v in variables)
    inputs = module_inputs(mc["EB"], variables, np.random.default_rng(1).random((len(mc["EB"]), n_uniforms), dtype=np.float32))
    first_uniform = 4 + len(variables)
    with torch.inference_mode():
        encoded = correction.encoding.encode(flow.as_modelled(inputs[:, 4:first_uniform], correction.references), inputs[:, first_uniform:])
        context = correction.context(inputs[:, :4], 0.0)
        z, _ = correction.flow.transform(encoded, context)
        back = correction.flow.inverse(z, context)
    assert isinstance(correction.flow, flow.SwitchedFlow) and len(correction.flow.shared) == 1
    np.testing.assert_allclose(back.numpy(), encoded.numpy(), atol=1e-5)
