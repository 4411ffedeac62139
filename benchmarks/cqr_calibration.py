"""Calibration of the CQR networks against their training settings, on independent samples.

Trains the data-side networks of one region's chain as :func:`egproc.cqr.train_chain` does (on
the inputs of :func:`egproc.cqr.data_side_steps`; a zero-peak variable's tail network on ln y of
its non-zero probes and its peak classifier on all), once per ``--learning-rates`` value (every
network at that rate), and scores them on the probes of independent data samples. In
every bin with at least ``--min-probes`` probes:

* quantile networks: the fraction of probes below the predicted 1, 5, 10, 20, 50, 80, 90, 95 and
  99 % quantiles against the level, χ² = Σ (coverage − τ)² / (τ(1 − τ)/n);
* peak classifiers: χ² = Σ (zeros − Σ p)² / Σ p(1 − p).

Printed per degree of freedom, one column per rate and test sample: a network that has learned
the conditional distribution scores about 1. ``--regressor bdt`` scores the BDTs of the reference
implementation (``regressor="bdt"`` of :func:`egproc.cqr.train_chain`) instead, in one column.
Bins are (pT, |η_SC|) bins of the report, or with ``--binning supermodule`` (barrel) the distance
to the nearest super-module boundary in φ.

    python benchmarks/cqr_calibration.py --train TOY --test WORKDIR/samples --region EB

``--train``: toy files ``data[_*].root`` and ``mc[_*].root`` (the shipped bundle's: ``egproc generate
--events 1000000 --seed 2026 --files-per-sample 2``); ``--test``: ``data``, ``data2`` and ``mc`` files
of another toy seed (``egproc run`` writes them to WORKDIR/samples).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from egproc import cqr
from egproc.variables import ABS_ETA_EDGES, PT_EDGES

LEVELS_TESTED = (0.01, 0.05, 0.10, 0.20, 0.50, 0.80, 0.90, 0.95, 0.99)
SUPERMODULE_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.01)


def bins(sample: cqr.TrainingSample, binning: str) -> list[np.ndarray]:
    pt, abs_eta = sample.conditions[:, 0], np.abs(sample.conditions[:, 1])
    if binning == "supermodule":
        with torch.inference_mode():
            distance = cqr.ConditionFeatures()(torch.from_numpy(sample.conditions))[:, 4].numpy()
        return [(distance >= lo) & (distance < hi) for lo, hi in zip(SUPERMODULE_EDGES[:-1], SUPERMODULE_EDGES[1:])]
    return [
        (pt >= p0) & (pt < p1) & (abs_eta >= e0) & (abs_eta < e1)
        for p0, p1 in zip(PT_EDGES[:-1], PT_EDGES[1:]) for e0, e1 in zip(ABS_ETA_EDGES[:-1], ABS_ETA_EDGES[1:])
    ]


def quantile_chi2(network: torch.nn.Module, x: np.ndarray, target: np.ndarray, selections: list[np.ndarray], min_probes: int) -> float:
    levels = network.levels.numpy()
    columns = [int(np.argmin(np.abs(levels - level))) for level in LEVELS_TESTED]
    with torch.inference_mode():
        q = network(torch.from_numpy(x.astype(np.float32))).numpy()
    chi2, ndf = 0.0, 0
    for rows in selections:
        n = rows.sum()
        if n < min_probes:
            continue
        for k in columns:
            tau = levels[k]
            chi2 += ((target[rows] < q[rows, k]).mean() - tau) ** 2 / (tau * (1 - tau) / n)
            ndf += 1
    return chi2 / max(ndf, 1)


def classifier_chi2(classifier: torch.nn.Module, x: np.ndarray, is_zero: np.ndarray, selections: list[np.ndarray], min_probes: int) -> float:
    with torch.inference_mode():
        p = torch.sigmoid(classifier(torch.from_numpy(x.astype(np.float32)))).numpy().ravel()
    terms = [
        (is_zero[rows].sum() - p[rows].sum()) ** 2 / (p[rows] * (1 - p[rows])).sum()
        for rows in selections if rows.sum() >= min_probes
    ]
    return float(np.mean(terms)) if terms else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="folder of toy data_*.root and mc_*.root to train on")
    parser.add_argument("--test", type=Path, required=True, help="folder of independent data, data2 and mc toy files")
    parser.add_argument("--region", choices=tuple(cqr.CHAINS), default="EB")
    parser.add_argument("--variables", nargs="+", help="chain variables to score (default: all)")
    parser.add_argument("--regressor", choices=("nn", "bdt"), default="nn", help="bdt: the reference's BDTs (one column)")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[3e-3, 1e-2])
    parser.add_argument("--steps", type=int, default=cqr.Settings.steps)
    parser.add_argument("--hidden", type=int, nargs="+", default=list(cqr.Settings.hidden))
    parser.add_argument("--binning", choices=("kinematics", "supermodule"), default="kinematics")
    parser.add_argument("--min-probes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    # The toy has no jets or subjets, which NanoAODSchema cross-references.
    warnings.filterwarnings("ignore", "Missing cross-reference index", RuntimeWarning)

    def files(folder: Path, sample: str) -> list[Path]:
        # egproc generate writes <sample>.root with one file per sample, <sample>_<k>.root with more.
        found = sorted(folder.glob(f"{sample}_*.root")) or sorted(folder.glob(f"{sample}.root"))
        if not found:
            raise SystemExit(f"no {sample}.root or {sample}_*.root in {folder}")
        return found

    variables = list(cqr.CHAINS[args.region])
    scored = args.variables or variables
    unknown = set(scored) - set(variables)
    if unknown:
        raise SystemExit(f"not in the {args.region} chain: {sorted(unknown)}")
    train, _, _ = cqr.read_samples(files(args.train, "data"), files(args.train, "mc"))
    tests = {
        name: cqr.read_samples(files(args.test, name), files(args.test, "mc"))[0][args.region]
        for name in ("data", "data2")
    }
    sample = train[args.region]
    training_steps = list(cqr.data_side_steps(sample, variables))
    test_steps = {name: (list(cqr.data_side_steps(s, variables)), bins(s, args.binning)) for name, s in tests.items()}
    print(
        f"{args.region}: {len(sample):,} training probes; test {', '.join(f'{n} {len(s):,}' for n, s in tests.items())}; "
        f"{args.steps} steps, hidden {tuple(args.hidden)}; χ²/ndf per ({args.binning}) bin, test samples "
        + " / ".join(tests)
    )
    for i, name in enumerate(variables):
        if name not in scored:
            continue
        x, y = training_steps[i]
        zero_peak = name in cqr.ZERO_PEAK
        tail = y > 0 if zero_peak else np.ones(len(y), dtype=bool)
        line = f"{name:22s}"
        for rate in args.learning_rates if args.regressor == "nn" else [0.0]:
            settings = cqr.Settings(
                hidden=tuple(args.hidden), steps=args.steps, classifier_steps=args.steps,
                learning_rate=rate, tail_learning_rate=rate, classifier_learning_rate=rate,
            )
            fits = cqr._Regressors(args.regressor, settings, "cpu", lambda _: None)
            no_held_out = np.zeros(len(y), dtype=bool)
            start = time.perf_counter()
            network = fits.quantiles(
                x[tail], np.log(y[tail]) if zero_peak else y, sample.weight[tail], no_held_out[tail],
                args.seed, name, tail=zero_peak,
            )
            classifier = None
            if zero_peak and name not in cqr.FOLLOWS:
                classifier = fits.classifier(x, ~tail, sample.weight, no_held_out, args.seed, name)
            seconds = time.perf_counter() - start
            scores = []
            for steps, selections in test_steps.values():
                x_test, y_test = steps[i]
                in_tail = y_test > 0 if zero_peak else np.ones(len(y_test), dtype=bool)
                target = np.log(np.where(in_tail, y_test, 1.0)) if zero_peak else y_test
                in_tail_bins = [rows & in_tail for rows in selections]
                score = f"{quantile_chi2(network, x_test, target, in_tail_bins, args.min_probes):.2f}"
                if classifier is not None:
                    score += f" (peak {classifier_chi2(classifier, x_test, ~in_tail, selections, args.min_probes):.2f})"
                scores.append(score)
            setting = f"{rate:g}" if args.regressor == "nn" else "bdt"
            line += f" | {setting}: {' / '.join(scores)} [{seconds:.0f} s]"
        print(line, flush=True)
    print("done")


if __name__ == "__main__":
    main()
