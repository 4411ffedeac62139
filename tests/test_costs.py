"""What a correction costs: training time from the provenance, throughput on real probes, and the
report rows that show them."""

from __future__ import annotations

import json

import awkward as ak
import pytest
import torch

import egproc
from egproc import costs, fudge, toy
from egproc.probes import tag_probe_pairs

from conftest import open_events
from test_shipped_bundles import REPOSITORY


@pytest.fixture(scope="module")
def toy_fudge(tmp_path_factory):
    folder = tmp_path_factory.mktemp("costs")
    paths = toy.generate_samples(folder, 20_000, seed=31, workers=1)
    data, mc = ([p for p in paths if p.name.startswith(f"{name}_") or p.name == f"{name}.root"] for name in ("data", "mc"))
    return egproc.load(fudge.train(data, mc, folder / "fudge"), device="cpu"), mc[0]


def test_training_time_comes_from_the_provenance():
    cqr_bundle = egproc.load(REPOSITORY / "corrections" / "toy-cqr", device="cpu")
    flow_bundle = egproc.load(REPOSITORY / "corrections" / "toy-flow", device="cpu")
    # CQR records each chain's time (trained one after the other); the flow its wall time, since
    # it trains two flows at a time.
    per_chain = cqr_bundle.manifest.provenance["training_seconds"]
    assert costs.training_seconds(cqr_bundle) == pytest.approx(sum(per_chain.values()))
    assert costs.training_seconds(flow_bundle) == flow_bundle.manifest.provenance["training_wall_seconds"]
    assert costs.training_seconds(flow_bundle) < sum(flow_bundle.manifest.provenance["training_seconds"].values())


def test_throughput_times_apply_on_the_files_probes(toy_fudge, known_bundle):
    bundle, mc_file = toy_fudge
    assert costs.training_seconds(bundle) == bundle.manifest.provenance["training_wall_seconds"] > 0
    threads = torch.get_num_threads()
    measured = costs.measure({"fudge": bundle}, mc_file, repeat=2)["fudge"]
    assert torch.get_num_threads() == threads  # restored after the one-thread timing
    events = open_events(mc_file)
    assert measured["probes"] == int(ak.sum(ak.num(tag_probe_pairs(events).probe, axis=1))) > 100
    assert measured["probes_per_second"] == pytest.approx(measured["probes"] / measured["seconds"])
    assert measured["device"] == "cpu" and measured["torch_threads"] == 1
    # A bundle that records no training time says so instead of guessing.
    assert costs.training_seconds(egproc.load(known_bundle, device="cpu")) is None


def test_costs_round_trip_through_the_output_folder(tmp_path):
    measured = {
        "fudge": {"training_seconds": 12.0, "probes": 1000, "seconds": 0.004, "probes_per_second": 250_000.0, "device": "cpu", "torch_threads": 1},
        "cqr": {"training_seconds": None, "probes": 1000, "seconds": 0.01, "probes_per_second": 100_000.0, "device": "cpu", "torch_threads": 1},
    }
    assert costs.read(tmp_path) is None
    costs.write(measured, tmp_path)
    assert costs.read(tmp_path) == measured
