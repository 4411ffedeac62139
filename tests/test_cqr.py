"""Chained quantile regression: the zero-peak treatment against known fractions and shapes, the
split-sample variations, TorchScript export, chunking independence, and a small train-and-apply."""

from __future__ import annotations

import dataclasses

import awkward as ak
import dask
import numpy as np
import pytest
import torch
from scipy.special import logit, ndtri
from torch import nn

import egproc
from egproc import cli, cqr, engine, quantiles, toy, training
from egproc.quantiles import LEVELS

from conftest import flat, open_events

TINY = cqr.Settings(hidden=(16, 16), steps=10, classifier_hidden=(8,), classifier_steps=6)


class ConstantQuantiles(nn.Module):
    """Quantiles of N(location, scale²) whatever x: a stand-in for a trained network."""

    def __init__(self, location: float, scale: float):
        super().__init__()
        self.register_buffer("levels", torch.tensor(LEVELS, dtype=torch.float32))
        self.register_buffer("values", torch.tensor(location + scale * ndtri(np.asarray(LEVELS)), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values.unsqueeze(0).expand(x.shape[0], -1)


class ConstantLogit(nn.Module):
    def __init__(self, probability: float):
        super().__init__()
        self.logit = float(logit(probability))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), self.logit)


def zero_inflated(rng, n, peak, location):
    """Exactly zero with probability ``peak``, else log-normal with ln y ~ N(location, 1)."""
    return np.where(rng.random(n) < peak, 0.0, np.exp(rng.normal(location, 1.0, n))).astype(np.float32)


@pytest.mark.parametrize("p_mc, p_data", [(0.6, 0.4), (0.3, 0.55)])
def test_zero_peak_step_reaches_the_data_peak_fraction_and_tail(p_mc, p_data):
    """Peak fractions p_MC → p_data in expectation, zeros stay exact zeros, and the tail (ln y:
    N(0, 1) in MC, N(0.5, 1) in data) ends up as the data tail, including the objects moved out
    of the peak (drawn from the data tail) — with the step scripted as it is shipped."""
    rng = np.random.default_rng(1)
    n = 400_000
    y = zero_inflated(rng, n, p_mc, 0.0)
    step = torch.jit.script(
        cqr.ZeroPeakStep(ConstantLogit(p_mc), ConstantLogit(p_data), ConstantQuantiles(0.0, 1.0), ConstantQuantiles(0.5, 1.0), uniform=1)
    )
    uniforms = torch.from_numpy(rng.random((n, 2), dtype=np.float32))
    with torch.no_grad():
        corrected = step(torch.zeros(n, 3), torch.from_numpy(y), uniforms).numpy()
    peak = corrected == 0.0
    assert abs(peak.mean() - p_data) < 4 * np.sqrt(p_data * (1 - p_data) / n)
    if p_data < p_mc:
        assert not peak[y > 0].any(), "tail objects never join the peak when data has less of it"
    else:
        assert np.all(peak[y == 0]), "peak objects never leave it when data has more of it"
    tail = np.log(corrected[~peak])
    assert abs(tail.mean() - 0.5) < 0.01 and abs(tail.std() - 1.0) < 0.01
    assert np.all(corrected >= 0)


def test_follower_is_zero_exactly_where_its_leader_is():
    rng = np.random.default_rng(2)
    n = 50_000
    leader = zero_inflated(rng, n, 0.3, 0.0)
    follower = np.where(rng.random(n) < 0.5, 0.0, np.exp(rng.normal(0, 1, n))).astype(np.float32)
    step = cqr.FollowerZeroStep(ConstantQuantiles(0.0, 1.0), ConstantQuantiles(0.0, 1.0), uniform=0, leader=1)
    x = torch.from_numpy(np.stack([np.ones(n, np.float32), np.log1p(leader)], axis=1))
    with torch.no_grad():
        corrected = step(x, torch.from_numpy(follower), torch.from_numpy(rng.random((n, 1), dtype=np.float32))).numpy()
    assert np.array_equal(corrected == 0, leader == 0)
    both = (leader > 0) & (follower > 0)
    np.testing.assert_allclose(corrected[both], follower[both], rtol=1e-5)  # identical tails: identity


def test_split_variations_are_nominal_plus_minus_half_the_difference():
    def shifted_chain(shift):
        steps = [cqr.MorphStep(ConstantQuantiles(0.0, 1.0), ConstantQuantiles(shift, 1.0)),
                 cqr.MorphStep(ConstantQuantiles(0.0, 1.0), ConstantQuantiles(-shift, 1.0))]
        return cqr.Chain(cqr.ConditionFeatures(), steps, n_uniforms=0, compressed=[False, True])

    nominal, half_a, half_b = shifted_chain(0.0), shifted_chain(0.3), shifted_chain(0.1)
    up = torch.jit.script(cqr.SplitVariation(nominal, half_a, half_b, 1.0, zero_peak=[False, True]))
    down = torch.jit.script(cqr.SplitVariation(nominal, half_a, half_b, -1.0, zero_peak=[False, True]))
    inputs = torch.tensor([[40.0, 0.5, 0.1, 20.0, 1.0, 0.05], [40.0, 0.5, 0.1, 20.0, -1.0, 2.0]])
    with torch.no_grad():
        np.testing.assert_allclose(up(inputs).numpy(), [[1.1, 0.0], [-0.9, 1.9]], atol=1e-6)
        np.testing.assert_allclose(down(inputs).numpy(), [[0.9, 0.15], [-1.1, 2.1]], atol=1e-6)


def test_a_variable_above_another_is_corrected_as_its_excess():
    """y_1 ≥ y_0 by construction (ABOVE): the chain morphs d = y_1 − y_0 and adds the corrected y_0
    back, and the split variations keep the order even where their shifts would break it."""

    def chain(shift, scale):
        steps = [cqr.MorphStep(ConstantQuantiles(0.0, 1.0), ConstantQuantiles(shift, 1.0)),
                 cqr.MorphStep(ConstantQuantiles(0.0, 1.0), ConstantQuantiles(0.0, scale))]
        return cqr.Chain(cqr.ConditionFeatures(), steps, n_uniforms=0, compressed=[False, False], references=[-1, 0])

    y0 = np.array([-1.0, 0.5, 2.0], np.float32)
    excess = np.array([0.0, 0.25, 1.0], np.float32)
    inputs = torch.from_numpy(np.concatenate([np.tile([[40.0, 0.5, 0.1, 20.0]], (3, 1)), np.stack([y0, y0 + excess], 1)], 1).astype(np.float32))
    with torch.no_grad():
        out = torch.jit.script(chain(1.0, 2.0))(inputs).numpy()
    np.testing.assert_allclose(out[:, 0], y0 + 1.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 1], y0 + 1.0 + 2.0 * excess, atol=1e-5)
    # up = nominal + (A − B)/2 puts y_0 at y_0 + 2.5 and y_1 at y_0 + 2.5 − d, below it: held at y_0.
    up = torch.jit.script(cqr.SplitVariation(chain(1.0, 2.0), chain(4.0, 2.0), chain(1.0, 8.0), 1.0, zero_peak=[False, False]))
    with torch.no_grad():
        shifted = up(inputs).numpy()
    np.testing.assert_allclose(shifted[:, 0], y0 + 2.5, atol=1e-5)
    np.testing.assert_allclose(shifted[:, 1], y0 + 2.5, atol=1e-5)


def test_corrected_values_stay_in_the_range_data_covered_in_training():
    steps = [cqr.MorphStep(ConstantQuantiles(0.0, 1.0), ConstantQuantiles(1.0, 1.0)),
             cqr.MorphStep(ConstantQuantiles(0.0, 1.0), ConstantQuantiles(0.0, 2.0))]
    chain = torch.jit.script(cqr.Chain(
        cqr.ConditionFeatures(), steps, n_uniforms=0, compressed=[False, False], references=[-1, 0],
        ranges=[(-1.5, 2.5), (0.0, 1.0)],
    ))
    y0 = np.array([-1.0, 0.5, 2.0], np.float32)
    excess = np.array([0.0, 0.25, 1.0], np.float32)
    inputs = torch.from_numpy(np.concatenate([np.tile([[40.0, 0.5, 0.1, 20.0]], (3, 1)), np.stack([y0, y0 + excess], 1)], 1).astype(np.float32))
    with torch.no_grad():
        out = chain(inputs).numpy()
    np.testing.assert_allclose(out[:, 0], [0.0, 1.5, 2.5], atol=1e-6)  # y0 + 1, the last clamped
    np.testing.assert_allclose(out[:, 1], out[:, 0] + [0.0, 0.5, 1.0], atol=1e-6)  # excess 2d, clamped at 1


def test_condition_features_know_the_ecal_geometry():
    features = cqr.ConditionFeatures()
    conditions = torch.tensor(
        [[40.0, 0.44, np.deg2rad(20.0), 10.0], [40.0, -1.0, np.deg2rad(30.0), 10.0], [40.0, 2.0, np.deg2rad(-41.0), 10.0]]
    )
    out = features(conditions).numpy()
    np.testing.assert_allclose(out[:, 0], np.log(40.0), rtol=1e-6)
    np.testing.assert_allclose(out[:, 4], [0.0, 10.0, 1.0], atol=1e-4)  # degrees to a 20° boundary
    np.testing.assert_allclose(out[:, 5], [0.005, 0.131, 0.869], atol=1e-5)  # |η| to a module edge


# --------------------------------------------------------------------------------------------
# Trained on a tiny toy
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cqr-samples")
    paths = toy.generate_samples(folder, 40_000, seed=21, samples=("data", "mc"), workers=1)
    return {p.stem: p for p in paths}


@pytest.fixture(scope="module")
def trained(samples, tmp_path_factory):
    """A bundle trained through the command line, as a user does."""
    out = tmp_path_factory.mktemp("cqr-bundle") / "tiny-cqr"
    cli.main([
        "train", "cqr", "--data", str(samples["data"]), "--mc", str(samples["mc"]), "--out", str(out),
        "--name", "tiny-cqr", "--seed", "5", "--device", "cpu", "--steps", "100", "--classifier-steps", "100", "--batch-size", "1024",
        "--hidden", "16", "16", "--provenance", "toy_seed=21",
    ])
    return egproc.load(out, device="cpu")



def test_bundle_holds_one_module_per_region_and_variation(trained):
    manifest = trained.manifest
    assert manifest.method == "cqr" and manifest.provenance["toy_seed"] == "21"
    assert set(trained.variations) == {"nominal", "up", "down", "half_a", "half_b"}
    for variation in trained.variations:
        models = [s for s in trained.steps(variation) if s.kind == "torchscript"]
        assert sorted(s.region for s in models) == ["EB", "EE"]
        for step in models:
            chain = cqr.CHAINS[step.region]
            assert step.outputs == tuple(f"Photon_{v}" for v in chain)
            zero_peak = [v for v in chain if v in cqr.ZERO_PEAK]
            assert step.inputs == (*cqr.CONDITIONS, *step.outputs, *(f"Photon_cqrUniform_{v}" for v in zero_peak))
            # Loads with plain torch.jit.load (what libtorch users do) and takes the declared columns.
            module = torch.jit.load(str(trained.path / step.model.file))
            assert module.original_name == ("FusedChain" if variation in ("nominal", *cqr.HALVES) else "SplitVariation")
            assert module(torch.rand(3, len(step.inputs)) + 0.5).shape == (3, len(chain))


def test_exported_module_equals_the_trained_chain(samples, tmp_path):
    data, mc, _ = cqr.read_samples([samples["data"]], [samples["mc"]])
    chain = cqr.train_chain(data["EE"], mc["EE"], cqr.CHAINS["EE"], settings=TINY, seed=3, label="EE")
    inputs = torch.from_numpy(np.concatenate([
        mc["EE"].conditions,
        np.stack([mc["EE"].values[v] for v in cqr.CHAINS["EE"]], axis=1),
        np.random.default_rng(0).random((len(mc["EE"]), sum(v in cqr.ZERO_PEAK for v in cqr.CHAINS["EE"])), dtype=np.float32),
    ], axis=1))
    torch.jit.save(torch.jit.script(chain), str(tmp_path / "chain.pt"))
    loaded = torch.jit.load(str(tmp_path / "chain.pt"))
    with torch.no_grad():
        eager, scripted = chain(inputs).numpy(), loaded(inputs).numpy()
    assert np.all(np.isfinite(eager))
    np.testing.assert_allclose(scripted, eager, rtol=1e-6, atol=1e-9)
    # What the engine runs (the frozen module) gives the floats of the plain loaded file.
    frozen = engine.load_artefact(tmp_path / "chain.pt", engine.sha256_of((tmp_path / "chain.pt").read_bytes()))
    with torch.no_grad():
        np.testing.assert_array_equal(frozen(inputs).numpy(), scripted)
    # Deterministic for a seed: a second training gives the same correction.
    again = cqr.train_chain(data["EE"], mc["EE"], cqr.CHAINS["EE"], settings=TINY, seed=3, label="EE")
    with torch.no_grad():
        np.testing.assert_array_equal(again(inputs).numpy(), eager)


def test_held_out_events_choose_the_weights_and_never_train():
    """One event in 20 (by event number over 2, both parities alike) is held out; a network never
    trains on it, and its loss there picks the weights: held-out targets far out (100, where the
    training rows are standard normal) would drag the 99 % quantile to 100 if they were trained on."""
    events = np.arange(40_000)
    held_out = training.held_out_events(events)
    assert held_out.mean() == pytest.approx(0.05)
    assert held_out[events % 2 == 0].mean() == held_out[events % 2 == 1].mean() == pytest.approx(0.05)
    np.testing.assert_array_equal(np.flatnonzero(held_out[:60]), [14, 15, 54, 55])

    rng = np.random.default_rng(4)
    x = rng.normal(size=(len(events), 3)).astype(np.float32)
    y = np.where(held_out, 100.0, rng.normal(size=len(events)))
    settings = cqr.Settings(hidden=(16, 16), steps=400, batch_size=1024, evaluate_every=50, patience=2)
    fits = cqr._Regressors("nn", settings, "cpu", lambda _: None)
    network = fits.quantiles(x, y, np.ones(len(y)), held_out, seed=1, label="noise")
    with torch.no_grad():
        q = network(torch.from_numpy(x[:2000])).numpy()
    assert np.median(q[:, -1]) == pytest.approx(2.33, abs=0.3)  # N(0, 1)'s 99 % quantile, not 100
    best, ran = fits.best_steps["noise"]
    assert 50 <= best <= ran <= 400 and best % 50 == 0
    # Without held-out events (evaluate_every=0) every row trains and nothing is recorded.
    plain = cqr._Regressors("nn", cqr.Settings(hidden=(16, 16), steps=400, batch_size=1024, evaluate_every=0), "cpu", lambda _: None)
    dragging = plain.quantiles(x, y, np.ones(len(y)), held_out, seed=1, label="noise")
    with torch.no_grad():
        dragged = dragging(torch.from_numpy(x[:2000])).numpy()
    assert np.median(dragged[:, -1]) > 10 and not plain.best_steps


def test_each_kind_of_network_trains_at_its_own_learning_rate(samples):
    """Continuous variables' quantile networks, zero-peak tail networks and peak classifiers take
    ``learning_rate``, ``tail_learning_rate`` and ``classifier_learning_rate``: a rate of zero
    leaves exactly that kind at its seeded initial weights."""
    data, mc, _ = cqr.read_samples([samples["data"]], [samples["mc"]])

    def parameters(**rates: float) -> dict[str, dict[str, list[torch.Tensor]]]:
        settings = dataclasses.replace(TINY, **{"learning_rate": 0.0, "tail_learning_rate": 0.0, "classifier_learning_rate": 0.0, **rates})
        chain = cqr.train_chain(data["EE"], mc["EE"], cqr.CHAINS["EE"], settings=settings, seed=3, label="EE")
        kinds: dict[str, dict[str, list[torch.Tensor]]] = {"continuous": {}, "tail": {}, "classifier": {}}
        for variable, step in zip(cqr.CHAINS["EE"], chain.steps):
            for name, module in step.named_children():
                if isinstance(module, cqr.ZeroClassifier):
                    kind = "classifier"
                elif isinstance(module, quantiles.QuantileNetwork):
                    kind = "continuous" if isinstance(step, cqr.MorphStep) else "tail"
                else:
                    continue
                kinds[kind][f"{variable}/{name}"] = [p.detach().clone() for p in module.parameters()]
        return kinds

    def moved(a: dict[str, list[torch.Tensor]], b: dict[str, list[torch.Tensor]]) -> set[str]:
        assert a.keys() == b.keys() and a
        return {key for key in a if not all(torch.equal(x, y) for x, y in zip(a[key], b[key]))}

    frozen = parameters()
    for rate, kind in (("learning_rate", "continuous"), ("tail_learning_rate", "tail"), ("classifier_learning_rate", "classifier")):
        trained = parameters(**{rate: 1e-2})
        for other in frozen:
            changed = moved(frozen[other], trained[other])
            # Every network of the kind moved; no network of another kind did.
            assert changed == (set(frozen[other]) if other == kind else set()), (rate, other, changed)


def test_training_the_data_side_in_a_second_thread_gives_the_same_chain(samples):
    """The data models trained ahead in a second thread: the same chain, bit for bit, as one
    thread training everything in turn (both on one torch thread, so that no matrix product
    changes its summation order); a failure on the data side surfaces in the caller."""
    data, mc, _ = cqr.read_samples([samples["data"]], [samples["mc"]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        chains = {
            mode: cqr.train_chain(data["EE"], mc["EE"], cqr.CHAINS["EE"], settings=TINY, seed=3, label="EE", concurrent=mode)
            for mode in (False, True)
        }
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    sequential, concurrent = chains[False].state_dict(), chains[True].state_dict()
    assert sequential.keys() == concurrent.keys()
    for name, tensor in sequential.items():
        torch.testing.assert_close(concurrent[name], tensor, rtol=0, atol=0, msg=name)

    no_tail = cqr.TrainingSample(
        data["EE"].conditions, {**data["EE"].values, "pfPhoIso03": np.zeros(len(data["EE"]), np.float32)},
        data["EE"].weight, data["EE"].event,
    )
    with pytest.raises(RuntimeError, match="training a data model of the chain failed") as failure:
        cqr.train_chain(no_tail, mc["EE"], cqr.CHAINS["EE"], settings=TINY, seed=3, label="EE", concurrent=True)
    assert "EE/pfPhoIso03: no data probe has pfPhoIso03 > 0" in str(failure.value.__cause__)
    assert torch.get_num_threads() == threads


@pytest.fixture(scope="module")
def tiny_chains(samples):
    """Tiny EE chains (nominal and the two halves), with every kind of step: quantile morphs, zero
    peaks, a follower (esEnergyOverRawE) and an excess (pfChargedIsoWorstVtx); and MC inputs."""
    data, mc, _ = cqr.read_samples([samples["data"]], [samples["mc"]])
    variables = cqr.CHAINS["EE"]
    chains = {
        variant: cqr.train_chain(
            data["EE"] if variant == "nominal" else data["EE"].half(variant),
            mc["EE"] if variant == "nominal" else mc["EE"].half(variant),
            variables, settings=TINY, seed=3, label=f"{variant}/EE",
        )
        for variant in ("nominal", *cqr.HALVES)
    }
    kinds = {type(step) for step in chains["nominal"].steps}
    assert kinds == {cqr.MorphStep, cqr.ZeroPeakStep, cqr.FollowerZeroStep}
    assert max(chains["nominal"].references) >= 0
    n_uniforms = sum(v in cqr.ZERO_PEAK for v in variables)
    inputs = torch.from_numpy(np.concatenate([
        mc["EE"].conditions,
        np.stack([mc["EE"].values[v] for v in variables], axis=1),
        np.random.default_rng(1).random((len(mc["EE"]), n_uniforms), dtype=np.float32),
    ], axis=1))
    return chains, inputs


def assert_same_correction(got, expected):
    """Float32 re-association at most: the same peak/tail decisions, values within 1e-4
    relative or 1e-6 absolute. A matmul over another number of rows may round a predicted quantile
    differently in the last bit; the morph scales that by its local slope, and a zero-peak tail,
    morphed in ln y, turns it into a relative error (1.2e-5 seen on an AMD EPYC CPU, on one
    isolation of 32 k values)."""
    np.testing.assert_array_equal(got == 0, expected == 0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_fused_export_equals_the_trained_chain(tiny_chains):
    """The exported (fused) form of a chain and of the split variations gives the trained chain's
    corrections, scripted, and frozen in the engine's micro-batches (smaller than the sample, so
    the tail networks also run on row subsets of other sizes)."""
    chains, inputs = tiny_chains
    zero_peak = [v in cqr.ZERO_PEAK for v in cqr.CHAINS["EE"]]
    pairs = [(chains["nominal"], cqr.fuse(chains["nominal"]))]
    for sign in (1.0, -1.0):
        pairs.append((
            cqr.SplitVariation(chains["nominal"], chains["half_a"], chains["half_b"], sign, zero_peak),
            cqr.SplitVariation(*(cqr.fuse(chains[v]) for v in ("nominal", *cqr.HALVES)), sign, zero_peak),
        ))
    for trained_form, fused in pairs:
        scripted = torch.jit.script(fused)
        with torch.no_grad():
            expected = trained_form(inputs).numpy()
            assert_same_correction(scripted(inputs).numpy(), expected)
        frozen = torch.jit.freeze(scripted.eval())
        assert_same_correction(engine.run_batched(frozen, inputs.numpy(), expected.shape[1], batch_size=1000), expected)
    assert np.mean(expected == 0) > 0.1  # the comparison covers peaks


@pytest.mark.parametrize("fused", [False, True], ids=["trained form", "fused"])
def test_a_chain_is_rebuilt_with_its_weights_from_its_exported_file(tiny_chains, tmp_path, fused):
    chains, inputs = tiny_chains
    chain = chains["nominal"]
    path = tmp_path / "chain.pt"
    torch.jit.save(torch.jit.script(cqr.fuse(chain) if fused else chain), str(path))
    rebuilt = cqr.chain_from_torchscript(torch.jit.load(str(path)))
    expected = chain.state_dict()
    assert rebuilt.state_dict().keys() == expected.keys()
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert (rebuilt.lows, rebuilt.highs, rebuilt.references, rebuilt.compressed) == (chain.lows, chain.highs, chain.references, chain.compressed)
    with torch.no_grad():
        np.testing.assert_array_equal(rebuilt(inputs).numpy(), chain(inputs).numpy())


def test_reexport_keeps_the_correction(trained, samples, tmp_path):
    """A bundle re-exported from its weights in the trained form corrects as the (fused) trained
    bundle, and re-exported back to the fused form it is the trained bundle byte for byte;
    manifest steps, correctionlib file and provenance are kept, the previous checksums recorded."""
    from egproc.bundle import Manifest

    unfused = cqr.reexport(trained.path, tmp_path / "unfused", fused=False)
    fused = cqr.reexport(unfused, tmp_path / "fused", note="round trip")
    manifests = {path: Manifest.model_validate_json((path / "bundle.json").read_text()) for path in (unfused, fused)}
    for path, manifest in manifests.items():
        files = {s.model.file for s in manifest.steps if s.kind == "torchscript"}
        kinds = {torch.jit.load(str(path / file)).original_name for file in files}
        assert kinds == ({"Chain", "SplitVariation"} if path == unfused else {"FusedChain", "SplitVariation"})
        assert manifest.corrections == trained.manifest.corrections
        provenance = dict(manifest.provenance)
        history = provenance.pop("reexported")
        assert provenance == trained.manifest.provenance
    assert [entry["note"] for entry in history] == ["", "round trip"]
    assert history[0]["previous_sha256"] == {a.file: a.sha256 for a in trained.manifest.artefacts()}
    assert manifests[fused].steps == trained.manifest.steps  # same files, same checksums

    events = open_events(samples["mc"])
    expected = trained.apply(events.Photon, events)
    got = egproc.load(unfused, device="cpu", check_models=False).apply(events.Photon, events)  # checked when written
    for field in ("r9", "sieie", "esEffSigmaRR", "esEnergyOverRawE", "pfPhoIso03", "pfChargedIsoWorstVtx"):
        assert_same_correction(flat(got[field]), flat(expected[field]))

def test_corrected_mc_moves_towards_data(trained, samples):
    """Even a 100-step chain of 16-unit networks on 40 k events moves the barrel sieie mean and
    the pfPhoIso03 zero fraction (the toy MC has more zeros) of the probes most of the way to data
    (MC weighted by genWeight × the bundle's ρ weights, as in training)."""
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
    for field in ("pfPhoIso03", "pfChargedIsoPFPV", "esEffSigmaRR"):
        assert np.all(flat(mc[field])[mc_keep] >= 0)


def test_up_and_down_bracket_nominal(trained, samples):
    events = open_events(samples["mc"])
    nominal, up, down = (trained.apply(events.Photon, events, variation=v) for v in ("nominal", "up", "down"))
    ok = flat(nominal.egproc_ok)
    assert ok.mean() > 0.6  # photons below 20 GeV and in the transition are not covered
    for field in ("r9", "sieie", "etaWidth"):
        centre = 0.5 * (flat(up[field]) + flat(down[field]))
        np.testing.assert_allclose(centre[ok], flat(nominal[field])[ok], rtol=1e-5, atol=1e-7)
        assert np.mean(flat(up[field])[ok] != flat(nominal[field])[ok]) > 0.9
    endcap = ok & (np.abs(flat(events.Photon.superclusterEta)) > 1.566)
    for corrected in (nominal, up, down):  # the worst vertex includes the primary one (cqr.ABOVE)
        assert np.all(flat(corrected.pfChargedIsoWorstVtx)[ok] >= flat(corrected.pfChargedIsoPFPV)[ok])
        # The preshower pair shares its zero peak (cqr.FOLLOWS), in the variations too.
        np.testing.assert_array_equal(flat(corrected.esEnergyOverRawE)[endcap] == 0, flat(corrected.esEffSigmaRR)[endcap] == 0)


def test_isolation_treatment_does_not_depend_on_chunking_or_selection(trained, samples):
    """The peak/tail migration draws hashprng uniforms: the same peak/tail decisions and the same
    corrected values whether the file is processed whole, in two eager chunks, in dask partitions,
    or after a pT selection. Values agree to float32 rounding, not bit for bit: a matrix product
    over a different number of rows may round its last bit differently (MKL blocking)."""

    def assert_same(got, expected):
        np.testing.assert_array_equal(got == 0, expected == 0)
        # A last-bit difference in a tail network is amplified by exp() of the ln-y morph.
        np.testing.assert_allclose(got, expected, rtol=5e-5, atol=0)

    path = samples["mc"]
    fields = ("pfPhoIso03", "pfChargedIsoPFPV", "pfChargedIsoWorstVtx", "esEffSigmaRR", "esEnergyOverRawE", "r9")
    whole_events = open_events(path)
    whole = trained.apply(whole_events.Photon, whole_events)
    reference = {f: flat(whole[f]) for f in fields}
    assert np.mean(reference["pfPhoIso03"][flat(whole.egproc_ok)] != flat(whole.raw_pfPhoIso03)[flat(whole.egproc_ok)]) > 0.3

    half = len(whole_events) // 2
    pieces = [open_events(path, entry_start=0, entry_stop=half), open_events(path, entry_start=half)]
    chunked = [trained.apply(e.Photon, e) for e in pieces]
    for f in fields:
        assert_same(np.concatenate([flat(c[f]) for c in chunked]), reference[f])

    lazy = open_events(path, mode="dask", steps_per_file=3)
    (computed,) = dask.compute(trained.apply(lazy.Photon, lazy), scheduler="sync")
    for f in fields:
        assert_same(flat(computed[f]), reference[f])

    selected = whole_events.Photon[whole_events.Photon.pt > 30]
    subset = trained.apply(selected, whole_events)
    keep = flat(whole_events.Photon.pt) > 30
    for f in fields:
        assert_same(flat(subset[f]), reference[f][keep])


def test_objects_outside_the_training_domain_pass_through_flagged(trained, samples):
    events = open_events(samples["mc"])
    photons = trained.apply(events.Photon, events)
    pt, ok, status = flat(photons.pt), flat(photons.egproc_ok), flat(photons.egproc_status)
    eta = np.abs(flat(photons.superclusterEta))
    pt_low, pt_high = trained.manifest.provenance["validity"]["pt"]
    outside = ((pt < pt_low) | (pt >= pt_high)) & ((eta < 1.4442) | ((eta > 1.566) & (eta < 2.5)))
    assert outside.sum() > 10
    assert not ok[outside].any() and np.all(status[outside] & engine.STATUS_NOT_COVERED)
    np.testing.assert_array_equal(flat(photons.r9)[outside], flat(photons.raw_r9)[outside])
    crack = (eta > 1.4442) & (eta < 1.566)
    assert not ok[crack].any()
