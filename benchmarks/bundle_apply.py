"""``bundle.apply`` of one bundle alone, one thread, against another export of it.

Times the correction of the tag-and-probe probes of a toy MC sample, eagerly in this process with
``torch.set_num_threads(1)``, for ``--bundle`` (default: the shipped ``corrections/toy-cqr``) and,
with ``--baseline``, another bundle folder (e.g. the previous export of the same method:
``git archive 5c59341 corrections/toy-cqr | tar -x -C /tmp/before``). The bundles run in
alternating rounds, so that a machine shared with other jobs slows both alike; both wall time and
the thread's CPU time are reported (the CPU time is what to compare where other processes take
cores), best of ``--repeat`` and the median ratio of the rounds. Run it under
``egproc.pipeline.WORKER_ENVIRONMENT`` (``MALLOC_MMAP_THRESHOLD_``) and dask's
``MALLOC_TRIM_THRESHOLD_=65536`` to time what a dask worker sees.

    python benchmarks/bundle_apply.py --events 100000 --baseline /tmp/before/corrections/toy-cqr
    python benchmarks/bundle_apply.py --bundle corrections/toy-flow --baseline /tmp/before/corrections/toy-flow
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import awkward as ak
import torch

import egproc
from egproc import toy

SHIPPED_CQR = Path(__file__).resolve().parents[1] / "corrections" / "toy-cqr"


def main() -> None:
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from egproc.probes import WIDE_MASS_WINDOW, tag_probe_pairs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--variation", default="nominal")
    parser.add_argument("--bundle", type=Path, default=SHIPPED_CQR, help="the bundle folder to time (default: the shipped CQR)")
    parser.add_argument("--baseline", type=Path, help="another bundle folder to time in alternation")
    args = parser.parse_args()

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", module="coffea")
    bundles = {"bundle": egproc.load(args.bundle, device="cpu")}
    if args.baseline is not None:
        bundles["baseline"] = egproc.load(args.baseline, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = toy.generate_samples(Path(tmp), args.events, seed=5, samples=("mc",), workers=1)
        events = NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
        probes = tag_probe_pairs(events, WIDE_MASS_WINDOW).probe
        n_probes = int(ak.sum(ak.num(probes)))
        for bundle in bundles.values():  # loads the artefacts
            bundle.apply(probes, events, variation=args.variation)
        wall: dict[str, list[float]] = {name: [] for name in bundles}
        cpu: dict[str, list[float]] = {name: [] for name in bundles}
        for round_ in range(args.repeat):
            names = list(bundles) if round_ % 2 == 0 else list(reversed(bundles))
            for name in names:
                start_wall, start_cpu = time.perf_counter(), time.thread_time()
                bundles[name].apply(probes, events, variation=args.variation)
                cpu[name].append(time.thread_time() - start_cpu)
                wall[name].append(time.perf_counter() - start_wall)
    print(
        f"bundle.apply ({args.variation}) on the {n_probes:,} probes of {args.events:,} toy MC events "
        f"(eager, one thread, best of {args.repeat}):"
    )
    for name, bundle in bundles.items():
        print(
            f"  {name:<9} {bundle.path}: {min(wall[name]) * 1e3:7.1f} ms wall {n_probes / min(wall[name]):10,.0f} probes/s"
            f"   {min(cpu[name]) * 1e3:7.1f} ms CPU {n_probes / min(cpu[name]):10,.0f} probes/s"
        )
    if "baseline" in bundles:
        for clock, times in (("wall", wall), ("CPU", cpu)):
            ratios = [b / s for b, s in zip(times["baseline"], times["bundle"])]
            print(
                f"  bundle / baseline throughput, {clock}: best {min(times['baseline']) / min(times['bundle']):.2f}, "
                f"median of rounds {statistics.median(ratios):.2f}"
            )


if __name__ == "__main__":
    main()
