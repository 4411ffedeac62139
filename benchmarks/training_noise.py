"""How much of a correction's correlation differences to data its finite training sample explains.

The correlation floor of the report compares two data samples; a corrected MC sample also carries
the error of a correction fitted on a finite training sample. A bundle trained with split samples
holds two corrections trained on independent halves of the events (``half_a``, ``half_b``):
applied to the same MC probes, their Spearman matrices differ by the training alone. Per pair, that
difference has √2 times one half-sample correction's error, which is about √2 times the nominal's.

Given the work folder of ``egproc run`` (its MC samples and probe columns), this prints per region
the rms and the largest |Δρ_S| over pairs of the corrected variables for half_a − half_b, and for
data2 − data and corrected MC − data (the stage ``--stage``), with the quadrature sum of the
data2 − data rms and the nominal's estimated training error, what a correction as good as the data
allow would reach:

    egproc run --workdir W --cqr none --flow corrections/toy-flow --bundle corrections/toy-fudge
    python benchmarks/training_noise.py --workdir W --bundle corrections/toy-flow --stage flow
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

import egproc
from egproc import metrics, nano
from egproc.processors import TagAndProbeProcessor


def region_rows(supercluster_eta: np.ndarray, region: str) -> np.ndarray:
    return nano.region_mask(supercluster_eta, region)


def spearman(columns: dict[str, np.ndarray], names: list[str], rows: np.ndarray) -> np.ndarray:
    values = np.stack([columns[name][rows] for name in names], axis=1).astype(np.float64)
    return metrics.spearman_matrix(values, columns["weight"][rows])


def spread(difference: np.ndarray) -> tuple[float, float]:
    upper = difference[np.triu_indices(len(difference), 1)]
    return float(np.sqrt(np.mean(upper**2))), float(np.abs(upper).max())


def main() -> None:
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="an `egproc run` work folder")
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle whose stage the run filled")
    parser.add_argument("--stage", default="flow", help="the stage name of the bundle in the run's probe columns")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="coffea")

    bundle = egproc.load(args.bundle, device="cpu")
    prefix = f"{bundle.manifest.collection}_"
    variables = {
        step.region: [output.removeprefix(prefix) for output in step.outputs]
        for step in bundle.steps("nominal")
        if step.kind == "torchscript" and step.region in ("EB", "EE")
    }
    processor = TagAndProbeProcessor({half: (bundle, half) for half in ("half_a", "half_b")})
    halves: dict[str, list[np.ndarray]] = {}
    for path in sorted((args.workdir / "samples").glob("mc*.root")):
        events = NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
        for name, column in next(iter(processor.process(events).values()))["probes"].items():
            halves.setdefault(name, []).append(column.value)
    half_columns = {name: np.concatenate(parts) for name, parts in halves.items()}
    probes = {
        name: pq.read_table(args.workdir / "output" / "probes" / f"{name}.parquet").to_pandas()
        for name in ("data", "data2", "mc")
    }

    print(f"Spearman Δρ per pair of corrected variables, rms (max): {args.bundle} on {args.workdir}")
    for region, names in variables.items():
        rows = region_rows(half_columns["superclusterEta"], region)
        half_rms, half_max = spread(
            spearman(half_columns, [f"half_a/{v}" for v in names], rows)
            - spearman(half_columns, [f"half_b/{v}" for v in names], rows)
        )
        matrices = {}
        for sample, frame in probes.items():
            columns = {name: frame[name].to_numpy() for name in frame.columns}
            prefix = f"{args.stage}/" if sample == "mc" else "raw/"
            if all(f"{prefix}{v}" in columns for v in names):
                matrices[sample] = spearman(
                    columns, [f"{prefix}{v}" for v in names], region_rows(columns["superclusterEta"], region)
                )
        floor_rms, floor_max = spread(matrices["data2"] - matrices["data"])
        # The nominal correction is fitted on twice the events of a half: its error is half the
        # rms of the difference of two halves (each of which has 1/√2 of it).
        expected = float(np.hypot(floor_rms, half_rms / 2.0))
        line = (
            f"  {region}: half_a − half_b {half_rms:.4f} ({half_max:.3f})   data2 − data {floor_rms:.4f} ({floor_max:.3f})"
            f"   with the nominal's training error {expected:.4f}"
        )
        if "mc" in matrices:
            corrected_rms, corrected_max = spread(matrices["mc"] - matrices["data"])
            line += f"   {args.stage} − data {corrected_rms:.4f} ({corrected_max:.3f})"
        else:
            line += f"   (the run has no {args.stage!r} stage)"
        print(line)


if __name__ == "__main__":
    main()
