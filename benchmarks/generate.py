"""Throughput of the toy NanoAOD generator (egproc.toy.generate_samples).

Writes ``data``, ``data2`` and ``mc`` with ``--events`` events each and reports
events per second and per minute over all samples (wall clock, all workers).
The target is at least 10⁶ events per minute on two cores.

    python benchmarks/generate.py --events 1000000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from egproc.toy import generate_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events per sample (default 1e6)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)"
    )
    parser.add_argument(
        "--files-per-sample",
        type=int,
        default=None,
        help="files per sample (default: --workers, so that every worker gets the same load)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--outdir", type=Path, default=None, help="keep the files here (default: a temporary directory)"
    )
    args = parser.parse_args()

    files_per_sample = args.files_per_sample or args.workers
    outdir = args.outdir or Path(tempfile.mkdtemp(prefix="egproc-toy-bench-"))
    try:
        start = time.perf_counter()
        paths = generate_samples(
            outdir, args.events, args.seed, files_per_sample=files_per_sample, workers=args.workers
        )
        elapsed = time.perf_counter() - start
        total = 3 * args.events
        size = sum(p.stat().st_size for p in paths)
        print(f"samples          : data, data2, mc × {args.events:,} events ({len(paths)} files)")
        print(f"workers          : {args.workers} (cpu_count = {os.cpu_count()})")
        print(f"wall time        : {elapsed:.2f} s")
        print(f"throughput       : {total / elapsed:,.0f} events/s = {60 * total / elapsed:,.0f} events/minute")
        print(f"per worker       : {total / elapsed / args.workers:,.0f} events/s")
        print(f"output size      : {size / 1e6:,.1f} MB ({size / total:,.0f} bytes/event)")
    finally:
        if args.outdir is None:
            shutil.rmtree(outdir, ignore_errors=True)


if __name__ == "__main__":
    main()
