"""CQR with quantile networks against the original one-BDT-per-quantile implementation.

Both chains are trained in one run on the same toy probes (one ECAL region), then applied to an
independent MC sample and compared with an independent data sample; the closure is the per-(pT,
|η|) bin Wasserstein distance of every variable divided by its expectation for two data samples of
the same statistics (worst bin), and the classifier two-sample AUC of corrected MC vs data over all variables.

    python benchmarks/cqr_reference.py --events 300000 --region EB

The worst bin is the maximum over about 20 bins, so it moves between trainings: ``--training-seeds``
trains each chain once per seed on the same toy (one column each), to read a difference between
the chains against the spread between trainings of one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from egproc import cqr, metrics, toy, twosample
from egproc.variables import ABS_ETA_EDGES, PT_EDGES, variable


def corrected(chain: torch.nn.Module, sample: cqr.TrainingSample, variables: list[str], seed: int) -> np.ndarray:
    zero_peak = [v for v in variables if v in cqr.ZERO_PEAK]
    uniforms = np.random.default_rng(seed).random((len(sample), len(zero_peak)), dtype=np.float32)
    inputs = np.concatenate([sample.conditions, np.stack([sample.values[v] for v in variables], 1), uniforms], 1)
    with torch.inference_mode():
        return chain(torch.from_numpy(inputs.astype(np.float32))).numpy()


def w1_ratios(data: cqr.TrainingSample, other: cqr.TrainingSample, values: np.ndarray, field: str) -> np.ndarray:
    """Per (pT, |η|) bin with ≥ 200 data probes: W₁(data, other) / E[W₁] of two data samples at
    their (effective) statistics (:func:`egproc.metrics.expected_wasserstein_distance`);
    ``values`` are ``other``'s (e.g. corrected) values of ``field``."""
    spec = variable(field)
    edges = np.linspace(spec.low, spec.high, spec.bins + 1)

    def histograms(sample: cqr.TrainingSample, column: np.ndarray, weight: np.ndarray) -> np.ndarray:
        counts, *_ = np.histogramdd(
            np.stack([sample.conditions[:, 0], np.abs(sample.conditions[:, 1]), np.clip(column, edges[0], edges[-1] - 1e-12)], 1),
            bins=[PT_EDGES, ABS_ETA_EDGES, edges], weights=weight,
        )
        return counts

    def entries(sample: cqr.TrainingSample, column: np.ndarray) -> np.ndarray:
        return metrics.effective_entries(histograms(sample, column, sample.weight), histograms(sample, column, sample.weight**2))

    target = histograms(data, data.values[field], data.weight)
    floor = metrics.expected_wasserstein_distance(target, edges, entries(data, data.values[field]), entries(other, values))
    distance = metrics.wasserstein_distance(target, histograms(other, values, other.weight), edges)
    usable = target.sum(axis=-1) >= 200
    return metrics.ratio_to_floor(distance, floor)[usable]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000, help="events per training sample")
    parser.add_argument("--region", choices=("EB", "EE"), default="EB")
    parser.add_argument("--bdt-iterations", type=int, default=100)
    parser.add_argument("--steps", type=int, default=cqr.Settings.steps, help="NN chain: optimiser steps per quantile network")
    parser.add_argument("--hidden", type=int, nargs="+", default=list(cqr.Settings.hidden), help="NN chain: hidden layer widths")
    parser.add_argument("--regressors", nargs="+", choices=("nn", "bdt"), default=["nn", "bdt"])
    parser.add_argument("--seed", type=int, default=3, help="toy seeds: training seed, test seed + 1, third data seed + 2")
    parser.add_argument("--training-seeds", type=int, nargs="+", help="train each chain once per seed (default: --seed)")
    args = parser.parse_args()
    training_seeds = args.training_seeds or [args.seed]
    # The toy has no jets or subjets, which NanoAODSchema cross-references.
    warnings.filterwarnings("ignore", "Missing cross-reference index", RuntimeWarning)
    variables = list(cqr.CHAINS[args.region])
    settings = cqr.Settings(bdt_iterations=args.bdt_iterations, steps=args.steps, hidden=tuple(args.hidden))

    with tempfile.TemporaryDirectory() as tmp:
        train_files = toy.generate_samples(Path(tmp) / "train", args.events, seed=args.seed, samples=("data", "mc"), workers=2)
        test_files = toy.generate_samples(Path(tmp) / "test", args.events, seed=args.seed + 1, workers=2)
        train_data, train_mc, _ = cqr.read_samples([train_files[0]], [train_files[1]])
        test_data, test_mc, _ = cqr.read_samples([test_files[0]], [test_files[2]])
        test_data2, _, _ = cqr.read_samples([test_files[1]], [test_files[2]])
        # A third independent data sample is what a perfect correction would give: its row is the
        # statistical expectation of the worst-bin ratio, against which the 1.5 target reads.
        third = toy.generate_samples(Path(tmp) / "third", args.events, seed=args.seed + 2, samples=("data",), workers=2)
        test_data3, _, _ = cqr.read_samples([third[0]], [test_files[2]])
    region = args.region
    print(f"{region}: {len(train_data[region]):,} data and {len(train_mc[region]):,} MC training probes; "
          f"{len(test_mc[region]):,} independent MC probes to correct; chain {' → '.join(variables)}")

    chains, seconds = {}, {}
    for regressor in args.regressors:
        for seed in training_seeds:
            key = regressor if len(training_seeds) == 1 else f"{regressor} s{seed}"
            start = time.perf_counter()
            chains[key] = cqr.train_chain(
                train_data[region], train_mc[region], variables, settings=settings, regressor=regressor, seed=seed, label=region
            )
            seconds[key] = time.perf_counter() - start
            print(f"  trained {key}: {seconds[key]:.1f} s", flush=True)

    data, data2, data3, mc = test_data[region], test_data2[region], test_data3[region], test_mc[region]
    raw = np.stack([mc.values[v] for v in variables], 1)
    results = {"raw": raw, **{k: corrected(c, mc, variables, args.seed) for k, c in chains.items()}}
    kinematics = lambda s: s.conditions  # noqa: E731 (pT, η_SC, φ, ρ) next to the variables
    data_matrix = np.concatenate([np.stack([data.values[v] for v in variables], 1), kinematics(data)], 1)
    headers = {"raw": "raw MC", "nn": "NN chain", "bdt": "BDT chain"}
    print(f"\n{'':<22}" + "".join(f"{headers.get(k, k):>10}" for k in results) + f"{'data3':>10}   worst-bin W1 / expected data-vs-data W1")
    above = dict.fromkeys([*results, "data3"], 0)
    for j, field in enumerate(variables):
        ratios = {k: w1_ratios(data, mc, values[:, j], field) for k, values in results.items()}
        ratios["data3"] = w1_ratios(data, data3, data3.values[field], field)
        for k, r in ratios.items():
            above[k] += int(np.sum(r > 1.5))
        print(f"{field:<22}" + "".join(f"{r.max():>10.2f}" for r in ratios.values()))
    print(f"{'bins above 1.5':<22}" + "".join(f"{n:>10d}" for n in above.values()))
    aucs = {}
    for name, values in {"data2": None, **results}.items():
        other = np.concatenate([np.stack([data2.values[v] for v in variables], 1), kinematics(data2)], 1) if values is None else np.concatenate([values, kinematics(mc)], 1)
        weight = data2.weight if values is None else mc.weight
        aucs[name] = twosample.classifier_auc(data_matrix, other, data.weight, weight, seeds=(0, 1, 2), max_rows_per_sample=30_000).auc
    print(f"{'classifier AUC vs data':<22}" + "".join(f"{aucs[k]:>10.3f}" for k in results) + f"   (data2: {aucs['data2']:.3f})")
    ratio = f"   BDT / NN = {seconds['bdt'] / seconds['nn']:.1f}" if set(seconds) == {"nn", "bdt"} else ""
    print(f"{'training time (s)':<22}{'':>10}" + "".join(f"{seconds[k]:>10.1f}" for k in chains) + ratio)


if __name__ == "__main__":
    main()
