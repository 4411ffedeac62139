"""Training in turn against two trainings at a time (threads), on this machine's CPU threads.

A CQR chain with its data models trained in a second thread ahead of the MC chain
(``cqr.train_chain(concurrent=...)``), and two flows (EB, EE) trained one after the other or side by
side as ``egproc train flow`` does. Short schedules: what is compared is the time per step.

    python benchmarks/concurrent_training.py --events 500000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from egproc import cqr, flow, toy, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="events per toy sample")
    parser.add_argument("--cqr-steps", type=int, default=200, help="optimiser steps per CQR network")
    parser.add_argument("--flow-steps", type=int, default=300, help="optimiser steps per flow")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = toy.generate_samples(Path(tmp), args.events, seed=2026, samples=("data", "mc"), workers=2)
        data, mc, _ = cqr.read_samples([files[0]], [files[1]])
    print(f"torch CPU threads: {torch.get_num_threads()}; EB probes: {len(data['EB']):,} data, {len(mc['EB']):,} MC; "
          f"EE: {len(data['EE']):,} data, {len(mc['EE']):,} MC")

    settings = cqr.Settings(steps=args.cqr_steps, classifier_steps=args.cqr_steps)
    seconds = {}
    for concurrent in (False, True):
        start = time.perf_counter()
        cqr.train_chain(data["EB"], mc["EB"], cqr.CHAINS["EB"], settings=settings, seed=1, label="EB", concurrent=concurrent)
        seconds[concurrent] = time.perf_counter() - start
    print(f"CQR chain EB ({args.cqr_steps} steps per network): in turn {seconds[False]:.1f} s, "
          f"data side in a second thread {seconds[True]:.1f} s (×{seconds[False] / seconds[True]:.2f})")

    settings = flow.Settings(steps=args.flow_steps, patience=0)

    def train(region: str) -> None:
        flow.train_flow(data[region], mc[region], flow.VARIABLES[region], settings=settings, seed=1, label=region)

    start = time.perf_counter()
    for region in ("EB", "EE"):
        train(region)
    in_turn = time.perf_counter() - start
    start = time.perf_counter()
    with training.split_cpu_threads(2), ThreadPoolExecutor(2) as pool:
        list(pool.map(train, ("EB", "EE")))
    side_by_side = time.perf_counter() - start
    print(f"flows EB + EE ({args.flow_steps} steps each): in turn {in_turn:.1f} s, two at a time {side_by_side:.1f} s "
          f"(×{in_turn / side_by_side:.2f})")


if __name__ == "__main__":
    main()
