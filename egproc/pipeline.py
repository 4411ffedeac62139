"""Running the tag-and-probe processor on a fileset, every way coffea offers, and the demo job.

* :func:`run_with_runner` — ``processor.Runner`` with the iterative, futures or dask executor
  (virtual NanoEvents, one chunk at a time);
* :func:`run_with_dask` — ``coffea.dataset_tools.apply_to_fileset`` + ``dask.compute`` (dask-awkward
  NanoEvents, ``hist.dask`` histograms).

Both return ``{dataset: {"histograms": {...}, "counts": {...}}}`` so they can be compared directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from egproc import metrics, report
from egproc.variables import REGION_ETA_BINS, variable

__all__ = [
    "group_samples",
    "fileset",
    "run_with_runner",
    "run_with_dask",
    "WORKER_ENVIRONMENT",
    "local_cluster",
    "agreement_rows",
    "format_agreement",
    "demo",
]


def group_samples(paths: Sequence[str | Path]) -> dict[str, list[str]]:
    """Group toy sample files by sample name: ``mc.root`` or ``mc_0.root, mc_1.root`` → ``mc``."""
    groups: dict[str, list[str]] = {}
    for path in map(Path, paths):
        stem = path.name.removesuffix(".root")
        name, _, index = stem.rpartition("_")
        groups.setdefault(name if index.isdigit() and name else stem, []).append(str(path))
    return groups


def fileset(files: Mapping[str, Sequence[str | Path]], tree: str = "Events") -> dict[str, Any]:
    """A coffea fileset ``{dataset: {"files": {path: tree}}}`` from lists of ROOT files."""
    return {name: {"files": {str(Path(f).resolve()): tree for f in paths}} for name, paths in files.items()}


def run_with_runner(
    processor_instance: Any,
    files: Mapping[str, Sequence[str | Path]],
    *,
    executor: str = "futures",
    workers: int = 2,
    chunksize: int = 100_000,
    client: Any = None,
) -> dict[str, Any]:
    """Run with ``processor.Runner``; ``executor`` is ``iterative``, ``futures`` or ``dask``."""
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    if executor == "iterative":
        chosen = processor.IterativeExecutor()
    elif executor == "futures":
        chosen = processor.FuturesExecutor(workers=workers)
    elif executor == "dask":
        if client is None:
            raise ValueError("the dask executor needs a distributed.Client")
        chosen = processor.DaskExecutor(client=client)
    else:
        raise ValueError(f"unknown executor {executor!r}; expected iterative, futures or dask")
    runner = processor.Runner(executor=chosen, schema=NanoAODSchema, chunksize=chunksize, savemetrics=False)
    datasets = {name: [str(Path(f).resolve()) for f in paths] for name, paths in files.items()}
    return _as_numpy(runner(datasets, processor_instance=processor_instance, treename="Events"))


#: Set in dask worker processes before they start (``distributed.nanny.pre-spawn-environ``).
#: dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` so that workers hand freed memory back to the OS;
#: setting any glibc malloc threshold also freezes the mmap threshold at 128 KiB, so every larger
#: array (each column of a chunk, each network activation) becomes a fresh mapping whose pages
#: fault in on first touch. That made the processor 2.5× slower (``benchmarks/processor.py``).
#: A 32 MiB mmap threshold restores glibc's own behaviour and keeps dask's trimming.
WORKER_ENVIRONMENT: dict[str, str] = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}


def local_cluster(workers: int, **options: Any) -> Any:
    """A ``LocalCluster`` of ``workers`` single-threaded processes with :data:`WORKER_ENVIRONMENT`
    (pass the same setting to other clusters through dask's config, see the README)."""
    import dask
    from dask.distributed import LocalCluster

    environment = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_ENVIRONMENT}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environment}):
        return LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", **options
        )


def run_with_dask(
    processor_instance: Any,
    files: Mapping[str, Sequence[str | Path]],
    *,
    step_size: int = 100_000,
    scheduler: Any = None,
) -> dict[str, Any]:
    """Run with ``apply_to_fileset`` and one ``dask.compute`` (on ``scheduler``, e.g. a Client)."""
    import dask
    from coffea.dataset_tools import DataGroupSpec, apply_to_fileset, preprocess
    from coffea.nanoevents import NanoAODSchema

    spec = DataGroupSpec.model_validate(fileset(files))
    available, _ = preprocess(spec, step_size=step_size, skip_bad_files=False)
    graphs = apply_to_fileset(processor_instance, available, schemaclass=NanoAODSchema)
    (computed,) = dask.compute(graphs, scheduler=scheduler)
    # apply_to_fileset keys by dataset and the processor keys its output by dataset again.
    return _as_numpy({name: output[name] for name, output in computed.items()})


def _as_numpy(output: Mapping[str, Any]) -> dict[str, Any]:
    """Probe columns as numpy arrays whichever way they were accumulated (Runner: coffea
    ``column_accumulator``; dask: awkward arrays)."""
    import awkward as ak

    def numpy(column: Any) -> np.ndarray:
        return np.asarray(column.value) if hasattr(column, "value") else ak.to_numpy(column)

    return {
        name: {**part, "probes": {k: numpy(v) for k, v in part.get("probes", {}).items()}}
        for name, part in output.items()
    }


def agreement_rows(
    output: Mapping[str, Any], data: str = "data", mc: str = "mc", reference: str | None = "data2"
) -> list[dict[str, Any]]:
    """Per variable and region: L1 and W₁ of data vs MC at every stage, and data vs data2.

    Distances are on the inclusive (pT-summed) histogram of each region (EB: |η| < 1.4442,
    EE: 1.566–2.5).
    """
    histograms = output[mc]["histograms"]
    rows = []
    for field in (f for f in histograms if f != "id"):
        spec = variable(field)
        stages = list(histograms[field].axes["stage"])
        edges = histograms[field].axes["value"].edges
        for region, eta_bins in REGION_ETA_BINS.items():
            if region not in spec.regions:
                continue

            def values(dataset: str, stage: str) -> np.ndarray:
                h = output[dataset]["histograms"][field][{"stage": stage}]
                return h.values()[:, list(eta_bins), :].sum(axis=(0, 1))

            target = values(data, "raw")
            row = {"variable": field, "region": region}
            candidates = {f"MC {stage}": values(mc, stage) for stage in stages}
            if reference is not None and reference in output:
                candidates["data2"] = values(reference, "raw")
            for name, counts in candidates.items():
                row[f"L1 {name}"] = float(metrics.l1_distance(target, counts))
            for name, counts in candidates.items():
                row[f"W1 {name}"] = float(metrics.wasserstein_distance(target, counts, edges))
            rows.append(row)
    return rows


def format_agreement(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of :func:`agreement_rows`."""
    if not rows:
        return "(no variables)"
    columns = list(rows[0].keys())
    header = f"{'variable':<22}{'region':<7}" + "".join(f"{c:>17}" for c in columns[2:])
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = "".join(f"{row[c]:>17.4g}" for c in columns[2:])
        lines.append(f"{row['variable']:<22}{row['region']:<7}{cells}")
    return "\n".join(lines)


#: The network bundles shipped with the repository, by stage name, when running from a checkout.
SHIPPED_BUNDLES: dict[str, Path] = {
    method: Path(__file__).resolve().parents[1] / "corrections" / f"toy-{method}" for method in ("cqr", "flow")
}


def demo(
    workdir: str | Path = "egproc-demo",
    *,
    n_events: int = 400_000,
    seed: int = 7,
    workers: int = 2,
    step_size: int = 100_000,
    bundle_path: str | Path | None = None,
    bundles: Mapping[str, str | Path | None] | None = None,
) -> dict[str, Any]:
    """Generate toy samples, derive fudge factors, run the processor on a local dask cluster with
    the fudge factors and the shipped CQR and flow bundles as stages, and write the fidelity report.

    Writes ``<workdir>/samples/*.root``, ``<workdir>/bundles/toy-fudge`` (unless ``bundle_path``
    is given), ``<workdir>/output`` (see :mod:`egproc.histio`) and ``<workdir>/report``; prints the
    agreement table and returns the output. ``bundles`` replaces shipped bundles by stage name
    (:data:`SHIPPED_BUNDLES`; ``None`` leaves the stage out). The shipped bundles were trained on
    toy seed 2026, so the default seed here gives samples they never saw.
    """
    from dask.distributed import Client

    import egproc
    from egproc import costs, fudge, histio, toy
    from egproc.processors import TagAndProbeProcessor

    workdir = Path(workdir)
    clock = time.perf_counter()
    print(f"[1/5] generating {n_events:,} events per sample (seed {seed}) in {workdir / 'samples'}")
    samples = toy.generate_samples(workdir / "samples", n_events, seed, files_per_sample=workers, workers=workers)
    files = group_samples(samples)
    print(f"      done in {time.perf_counter() - clock:.1f} s")

    if bundle_path is None:
        clock = time.perf_counter()
        bundle_path = workdir / "bundles" / "toy-fudge"
        print(f"[2/5] deriving fudge factors → {bundle_path}")
        fudge.train(files["data"], files["mc"], bundle_path)
        print(f"      done in {time.perf_counter() - clock:.1f} s")
    else:
        print(f"[2/5] using bundle {bundle_path}")
    stages = {"fudge": egproc.load(bundle_path)}
    for name, path in {**SHIPPED_BUNDLES, **(bundles or {})}.items():
        if path is None:
            continue
        if path == SHIPPED_BUNDLES.get(name) and not Path(path).is_dir():
            print(f"      no {path.name} beside this installation: the {name} stage is left out")
            continue
        stages[name] = egproc.load(path)
        print(f"      and the {name} bundle {path}")
    for bundle in stages.values():
        for paths in files.values():
            for path in paths:
                bundle.check_file(path)

    clock = time.perf_counter()
    print(f"[3/5] tag and probe on a local dask cluster ({workers} worker processes)")
    with local_cluster(workers) as cluster, Client(cluster) as client:
        output = run_with_dask(TagAndProbeProcessor(stages), files, step_size=step_size, scheduler=client)
    print(f"      done in {time.perf_counter() - clock:.1f} s")
    for name, dataset_output in output.items():
        counts = dataset_output["counts"]
        print(f"      {name}: {int(counts['events']):,} events, {int(counts['pairs']):,} probes in the mass window")

    output_path = histio.save(output, workdir / "output")
    # What each correction costs, for the report's comparison (on this process, one torch thread).
    measured = costs.measure(stages, files["mc"][0])
    costs.write(measured, output_path)
    print(f"[4/5] data/MC agreement of the probe distributions (inclusive in pT; outputs in {output_path})")
    print(format_agreement(agreement_rows(output)))

    clock = time.perf_counter()
    folder = report.write(output, workdir / "report", costs=measured)
    print(f"[5/5] fidelity report written in {time.perf_counter() - clock:.1f} s: open {folder / 'index.html'}")
    print(report.headline(json.loads((folder / "summary.json").read_text())))
    return output
