"""The tag-and-probe processor: same histograms with every executor, models loaded once per worker."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
from dask.distributed import Client, LocalCluster

import egproc
from egproc import engine, fudge, pipeline, toy
from egproc.processors import TagAndProbeProcessor

from conftest import write_known_bundle

N_EVENTS = 16_000


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    paths = toy.generate_samples(folder, N_EVENTS, seed=99, files_per_sample=2, workers=2)
    groups = pipeline.group_samples(paths)
    return {kind: groups[kind] for kind in ("data", "mc")}


@pytest.fixture(scope="module")
def fudge_bundle(samples, tmp_path_factory):
    return egproc.load(fudge.train(samples["data"], samples["mc"], tmp_path_factory.mktemp("b") / "fudge"), device="cpu")


@pytest.fixture(scope="module")
def client():
    with pipeline.local_cluster(2) as cluster, Client(cluster) as c:
        yield c


def test_local_cluster_workers_start_with_the_malloc_setting(client):
    """pipeline.local_cluster adds WORKER_ENVIRONMENT to dask's own pre-spawn environment."""
    seen = client.run(lambda: (os.environ.get("MALLOC_MMAP_THRESHOLD_"), os.environ.get("MALLOC_TRIM_THRESHOLD_")))
    assert len(seen) == 2
    assert set(seen.values()) == {(pipeline.WORKER_ENVIRONMENT["MALLOC_MMAP_THRESHOLD_"], "65536")}


def assert_same_output(left, right):
    assert left.keys() == right.keys()
    for dataset in left:
        for name, h in left[dataset]["histograms"].items():
            other = right[dataset]["histograms"][name]
            np.testing.assert_allclose(h.values(flow=True), other.values(flow=True), rtol=1e-9, atol=1e-12, err_msg=f"{dataset} {name}")
            np.testing.assert_allclose(h.variances(flow=True), other.variances(flow=True), rtol=1e-9, atol=1e-12)
        for name, value in left[dataset]["counts"].items():
            assert float(value) == pytest.approx(float(right[dataset]["counts"][name]), rel=1e-9), (dataset, name)
        # Probe columns: same multiset of rows (chunks may arrive in another order).
        columns = left[dataset]["probes"]
        assert columns.keys() == right[dataset]["probes"].keys()
        order_left = np.lexsort([columns["pt"], columns["phi"]])
        order_right = np.lexsort([right[dataset]["probes"]["pt"], right[dataset]["probes"]["phi"]])
        for name, column in columns.items():
            np.testing.assert_array_equal(column[order_left], right[dataset]["probes"][name][order_right], err_msg=name)


def test_every_executor_gives_the_same_histograms(samples, fudge_bundle, client):
    processor = TagAndProbeProcessor(fudge_bundle)
    reference = pipeline.run_with_runner(processor, samples, executor="iterative", chunksize=5_000)
    assert int(reference["mc"]["counts"]["pairs"]) > 1000
    corrected = reference["mc"]["histograms"]["sieie"][{"stage": "fudge"}].values()
    raw = reference["mc"]["histograms"]["sieie"][{"stage": "raw"}].values()
    assert corrected.sum() == pytest.approx(raw.sum()) and not np.allclose(corrected, raw)

    futures = pipeline.run_with_runner(processor, samples, executor="futures", workers=2, chunksize=5_000)
    dask_runner = pipeline.run_with_runner(processor, samples, executor="dask", client=client, chunksize=5_000)
    dask_graph = pipeline.run_with_dask(processor, samples, step_size=5_000, scheduler=client)
    for other in (futures, dask_runner, dask_graph):
        assert_same_output(reference, other)


def test_mc_can_skip_its_raw_stage_without_changing_the_corrected_one(samples, fudge_bundle):
    full = pipeline.run_with_runner(TagAndProbeProcessor(fudge_bundle), {"mc": samples["mc"]}, executor="iterative", chunksize=8_000)
    lean = pipeline.run_with_runner(
        TagAndProbeProcessor(fudge_bundle, raw_mc=False), {"mc": samples["mc"]}, executor="iterative", chunksize=8_000
    )
    for name, h in full["mc"]["histograms"].items():
        np.testing.assert_array_equal(lean["mc"]["histograms"][name][{"stage": "fudge"}].values(), h[{"stage": "fudge"}].values())
        assert lean["mc"]["histograms"][name][{"stage": "raw"}].values().sum() == 0, name
    assert not any(k.startswith("raw/") for k in lean["mc"]["probes"])
    np.testing.assert_array_equal(lean["mc"]["probes"]["fudge/sieie"], full["mc"]["probes"]["fudge/sieie"])


def test_photon_id_is_evaluated_on_the_stage_fields_and_named_when_it_reads_an_undeclared_one(samples, fudge_bundle, client):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    events = NanoEventsFactory.from_root({samples["mc"][0]: "Events"}, schemaclass=NanoAODSchema, mode="eager").events()

    def r9_score(photons, rho):
        assert isinstance(photons["r9"], np.ndarray) and isinstance(rho, np.ndarray)
        return 2.0 * photons["r9"] - rho

    columns = TagAndProbeProcessor(fudge_bundle, photon_id=r9_score, photon_id_inputs=("r9",)).process(events)["unknown"]["probes"]
    np.testing.assert_array_equal(columns["fudge/mvaID"].value, 2.0 * columns["fudge/r9"].value - columns["rho"].value)
    assert not np.array_equal(columns["fudge/mvaID"].value, columns["raw/mvaID"].value)

    # The toy's own MVA on the file's fields is the file's score.
    photons = ak.flatten(events.Photon)
    rho = np.repeat(np.asarray(events.Rho.fixedGridRhoAll), ak.num(events.Photon))
    toy_score = TagAndProbeProcessor(fudge_bundle)._photon_id(photons, ak.Array(rho), dask_mode=False)
    np.testing.assert_allclose(toy_score, photons.mvaID, rtol=0, atol=1e-6)

    undeclared = TagAndProbeProcessor(fudge_bundle, photon_id=r9_score, photon_id_inputs=("sieie",))
    with pytest.raises(KeyError, match="photon_id read the photon field 'r9', which is not in photon_id_inputs"):
        undeclared.process(events)

    # Under dask the ID only ever sees NumPy columns too (r9_score asserts it): the tracing passes
    # take its fields from photon_id_inputs and its dtype from zero-length columns.
    import dask

    lazy = NanoEventsFactory.from_root({samples["mc"][0]: "Events"}, schemaclass=NanoAODSchema, mode="dask").events()
    (graph,) = dask.compute(
        TagAndProbeProcessor(fudge_bundle, photon_id=r9_score, photon_id_inputs=("r9",)).process(lazy)["unknown"]["probes"],
        scheduler=client,
    )
    np.testing.assert_array_equal(ak.to_numpy(graph["fudge/mvaID"]), columns["fudge/mvaID"].value)
    with pytest.raises(KeyError, match="photon_id read the photon field 'r9', which is not in photon_id_inputs"):
        undeclared.process(lazy)


def _loads_by_process(log: Path) -> Counter:
    lines = [line.split("\t") for line in log.read_text().splitlines()]
    return Counter((pid, path) for pid, _, path in lines)


@pytest.mark.parametrize("executor", ["dask", "futures"])
def test_models_are_loaded_once_per_worker_process(samples, tmp_path, executor, monkeypatch):
    log = tmp_path / "loads.tsv"
    monkeypatch.setenv(engine.LOAD_LOG_ENV, str(log))
    bundle = egproc.load(write_known_bundle(tmp_path / "known"), device="cpu")
    processor = TagAndProbeProcessor(bundle, variables=("r9", "sieie"))
    chunks = 10  # ≥ 8 chunks spread over 2 worker processes
    chunksize = N_EVENTS // chunks
    if executor == "dask":
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as c:
            output = pipeline.run_with_runner(processor, {"mc": samples["mc"]}, executor="dask", client=c, chunksize=chunksize)
    else:
        output = pipeline.run_with_runner(processor, {"mc": samples["mc"]}, executor="futures", workers=2, chunksize=chunksize)
    assert int(output["mc"]["counts"]["events"]) == N_EVENTS

    loads = _loads_by_process(log)
    workers = {pid for pid, _ in loads if pid != str(os.getpid())}
    assert len(workers) == 2, loads
    model = str((tmp_path / "known" / "known_shift.pt").resolve())
    for pid in workers:
        assert loads[(pid, model)] == 1, loads
    assert all(count == 1 for count in loads.values()), loads


def as_older_nanoaod(path: str, target: Path) -> Path:
    """Rewrite a toy file the way pre-v12 NanoAOD looks: no supercluster η, no s4, flat ρ branch."""
    import awkward as ak
    import uproot

    with uproot.open(path) as handle:
        arrays = handle["Events"].arrays(library="ak", how=dict)
    dropped = {"Photon_superclusterEta", "Photon_s4", "Photon_isScEtaEB", "Photon_isScEtaEE", "Rho_fixedGridRhoAll"}
    flat, collections = {}, {}
    for name, array in arrays.items():
        if name in dropped or name.startswith("n") and name[1:] in {"Electron", "Photon", "GenPart"}:
            continue
        head, _, field = name.partition("_")
        if head in {"Electron", "Photon", "GenPart"}:
            collections.setdefault(head, {})[field] = array
        else:
            flat[name.replace("Rho_fixedGridRhoFastjetAll", "fixedGridRhoFastjetAll")] = array
    with uproot.recreate(target) as handle:
        handle.mktree("Events", {**flat, **{k: ak.zip(v) for k, v in collections.items()}})
    return target


def test_older_nanoaod_falls_back_or_names_the_missing_branch(samples, tmp_path, fudge_bundle):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from egproc import nano

    old = as_older_nanoaod(samples["mc"][0], tmp_path / "old.root")
    events = NanoEventsFactory.from_root({str(old): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    with pytest.raises(nano.MissingBranchError, match="'Photon_s4' is missing from the Photon collection"):
        TagAndProbeProcessor(fudge_bundle).process(events)
    with pytest.raises(nano.MissingBranchError, match="Photon_s4"):
        fudge_bundle.check_file(old)

    without_s4 = egproc.load(
        fudge.train(samples["data"], samples["mc"], tmp_path / "no-s4", variables=["r9", "sieie"]), device="cpu"
    )
    resolved = without_s4.check_file(old)
    assert resolved["Photon_superclusterEta"] == "Photon_eta"
    assert resolved["Rho_fixedGridRhoAll"] == "fixedGridRhoFastjetAll"
    with pytest.warns(nano.FallbackWarning) as caught:
        # the toy ID needs s4, so the file's own score is kept (photon_id=None)
        output = TagAndProbeProcessor(without_s4, variables=("r9", "sieie"), photon_id=None).process(events)
    assert {str(w.message).split()[0] for w in caught} >= {"Photon_superclusterEta", "Rho_fixedGridRhoAll"}
    sieie = output["unknown"]["histograms"]["sieie"]
    assert sieie[{"stage": "fudge"}].sum().value == pytest.approx(sieie[{"stage": "raw"}].sum().value)
    assert sieie[{"stage": "fudge"}].sum().value > 100
