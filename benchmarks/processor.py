"""Tag-and-probe processor wall time with and without a correction, on a local dask cluster.

Generates a toy MC sample, derives fudge factors, then times ``apply_to_fileset`` + ``dask.compute``
of the processor without a bundle, with the fudge factors, and with each network bundle shipped in
``corrections/`` (or given by ``--cqr``/``--flow``; ``toy-cqr``: every data and MC network of the
chain; ``toy-flow``: the flow, forward as MC and inverse as data), best of ``--repeat``, on
``--workers`` processes (rounds of every configuration in turn): wall time, and the CPU time of this process and the
workers together (on a machine shared with other jobs, compare the CPU column), and the median over
rounds of each configuration's ratio to the uncorrected run of the same round. Each corrected
configuration also fills the histograms of its stage and re-evaluates the photon ID on the
corrected fields; the "no raw MC stage" ones fill MC at the corrected stage only
(``raw_mc=False``), the histogram work of the uncorrected run. Workers get
``egproc.pipeline.WORKER_ENVIRONMENT`` unless ``--dask-malloc``.

It then times each bundle's ``apply`` alone on the probes of one 100 k-event chunk, eagerly in
this process on one thread: what the correction itself costs per probe.

    python benchmarks/processor.py --events 400000 --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import awkward as ak
from dask.distributed import Client, LocalCluster

import egproc
from egproc import fudge, pipeline, toy
from egproc.processors import TagAndProbeProcessor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--step-size", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    for name, path in pipeline.SHIPPED_BUNDLES.items():
        parser.add_argument(
            f"--{name}", type=Path, default=path,
            help=f"the {name} bundle to time (default: the shipped one), e.g. an earlier export of it",
        )
    parser.add_argument(
        "--dask-malloc", action="store_true",
        help="keep dask's default worker environment instead of egproc.pipeline.WORKER_ENVIRONMENT",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = toy.generate_samples(Path(tmp), args.events, seed=5, files_per_sample=args.workers, workers=args.workers)
        files = pipeline.group_samples(paths)
        bundles = {"fudge": egproc.load(fudge.train(files["data"], files["mc"], Path(tmp) / "fudge"))}
        bundles.update({name: egproc.load(getattr(args, name)) for name in pipeline.SHIPPED_BUNDLES})
        configurations = {"uncorrected": TagAndProbeProcessor(None)}
        configurations.update({name: TagAndProbeProcessor(bundle) for name, bundle in bundles.items()})
        # MC filled at its corrected stage only: the histogram work of the uncorrected run, plus
        # the correction and the ID re-evaluated on its fields.
        configurations.update(
            {f"{name}, no raw MC stage": TagAndProbeProcessor(bundle, raw_mc=False) for name, bundle in bundles.items()}
        )
        cluster = (
            LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0")
            if args.dask_malloc else pipeline.local_cluster(args.workers)
        )
        with cluster, Client(cluster) as client:
            pipeline.run_with_dask(configurations["uncorrected"], {"mc": files["mc"]}, step_size=args.step_size, scheduler=client)  # warm-up
            runs = {name: [] for name in configurations}
            cpu_runs = {name: [] for name in configurations}
            # Rounds of every configuration in turn: a machine that drifts (other jobs, thermal)
            # shifts all configurations alike instead of whichever ran during the slow spell.
            for _ in range(args.repeat):
                for name, processor in configurations.items():
                    start, start_cpu = time.perf_counter(), cpu_seconds(client)
                    pipeline.run_with_dask(processor, {"mc": files["mc"]}, step_size=args.step_size, scheduler=client)
                    runs[name].append(time.perf_counter() - start)
                    cpu_runs[name].append(cpu_seconds(client) - start_cpu)
            timings = {name: min(values) for name, values in runs.items()}
            cpu = {name: min(values) for name, values in cpu_runs.items()}
        environment = "dask's default worker environment" if args.dask_malloc else "egproc.pipeline.WORKER_ENVIRONMENT"
        print(
            f"tag and probe on {args.events:,} MC events, {args.workers} dask worker processes ({environment}), "
            f"best of {args.repeat} interleaved rounds:"
        )
        for name, seconds in timings.items():
            ratio = seconds / timings["uncorrected"]
            # On a machine whose speed drifts, the ratio within each round is the steadier figure.
            per_round = statistics.median(t / u for t, u in zip(runs[name], runs["uncorrected"]))
            print(
                f"  {name:<26} {seconds:7.2f} s   {args.events / seconds:10,.0f} events/s   ×{ratio:.2f}"
                f"   CPU {cpu[name]:6.2f} s ×{cpu[name] / cpu['uncorrected']:.2f}   median of rounds ×{per_round:.2f}"
            )
        correction_alone(files["mc"][0], bundles, args.repeat)


def cpu_seconds(client: Client) -> float:
    """CPU time used so far by this process (graph, scheduler) and every worker process: unlike
    the wall time, what a run costs whatever else the machine is doing."""
    return time.process_time() + sum(client.run(time.process_time).values())


def correction_alone(path: str, bundles: dict, repeat: int) -> None:
    import torch
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from egproc.probes import WIDE_MASS_WINDOW, tag_probe_pairs

    torch.set_num_threads(1)
    events = NanoEventsFactory.from_root({path: "Events"}, schemaclass=NanoAODSchema, mode="eager", entry_stop=100_000).events()
    probes = tag_probe_pairs(events, WIDE_MASS_WINDOW).probe
    n_probes = int(ak.sum(ak.num(probes)))
    print(f"bundle.apply alone on the {n_probes:,} probes of {len(events):,} events (eager, one thread, best of {repeat}):")
    for name, bundle in bundles.items():
        runs = []
        for _ in range(repeat + 1):  # the first call also loads the artefacts
            start = time.perf_counter()
            bundle.apply(probes, events)
            runs.append(time.perf_counter() - start)
        best = min(runs[1:])
        # Training time as the training command recorded it (all regions and split halves).
        provenance = bundle.manifest.provenance
        # Concurrent trainings overlap: their wall time, where recorded, is the time it took.
        seconds = provenance.get("training_wall_seconds", sum(provenance.get("training_seconds", {}).values()))
        training = f"trained in {seconds / 60:.1f} min" if seconds else ""
        print(f"  {name:<24} {best * 1e3:7.1f} ms   {n_probes / best:10,.0f} probes/s   {training}")


if __name__ == "__main__":
    main()
