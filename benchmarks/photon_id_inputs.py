"""How much of the photon ID score's data/MC distance after a correction comes from given ID inputs
(e.g. inputs the correction does not touch, or corrects least well).

Applies a bundle to the tag-and-probe probes of toy MC, evaluates the toy MVA ID
(:func:`egproc.toy.photon_id.toy_mva_id`) on data, data2 and the corrected MC, and prints per region
the L1 distance of the score histograms to data, and the L1 statistics alone give at data's and
MC's effective entries (:func:`egproc.metrics.expected_l1_distance`), as the report computes them (probes in the Z mass
window, MC weighted by genWeight, the bundle's ρ weight and data's probe (pT, |η_SC|)
distribution): once as is, and once with ``--zero`` fields (default ``hoe``) set to 0 in every
sample, i.e. with those inputs taken out of the ID.

    python benchmarks/photon_id_inputs.py --samples WORKDIR/samples --bundle corrections/toy-cqr

``--samples`` is a folder of toy files (``data_*.root``, ``data2_*.root``, ``mc_*.root``, as
``egproc run`` writes them); without it, toy samples of ``--events`` events (toy seed 7, the demo's)
are generated first.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import awkward as ak
import numpy as np
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

import egproc
from egproc import metrics, pipeline, reweight, toy
from egproc.nano import region_mask
from egproc.probes import MASS_WINDOW, tag_probe_pairs
from egproc.toy.photon_id import MVA_INPUTS, toy_mva_id
from egproc.variables import ABS_ETA_EDGES, PT_EDGES

SCORE_EDGES = np.linspace(-1.0, 1.0, 41)


def probes(files: list[str], bundle: egproc.Bundle | None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """ID input columns, ρ and weight of the probes in the Z window; corrected by ``bundle`` if given."""
    parts = []
    for path in files:
        events = NanoEventsFactory.from_root({path: "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
        pairs = tag_probe_pairs(events)
        in_window = (pairs.mass > MASS_WINDOW[0]) & (pairs.mass < MASS_WINDOW[1])
        weight = events.genWeight * bundle.event_weight("rho", events) if bundle is not None else ak.ones_like(events.run, dtype=np.float64)
        probe = bundle.apply(pairs.probe, events) if bundle is not None else pairs.probe
        per_pair = {f: probe[f] for f in (*MVA_INPUTS, "pt")}
        per_pair["rho"], per_pair["weight"], _ = ak.broadcast_arrays(events.Rho.fixedGridRhoAll, weight, pairs.mass)
        parts.append({k: ak.to_numpy(ak.flatten(v[in_window])).astype(np.float64) for k, v in per_pair.items()})
    columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return columns, columns.pop("rho"), columns.pop("weight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, help="folder of toy data_*, data2_*, mc_* files (default: generate)")
    parser.add_argument("--events", type=int, default=400_000, help="events per generated sample")
    parser.add_argument("--bundle", type=Path, default=pipeline.SHIPPED_BUNDLES["cqr"])
    parser.add_argument("--zero", nargs="+", default=["hoe"], help="ID inputs set to 0 in the second pass")
    args = parser.parse_args()
    unknown = set(args.zero) - set(MVA_INPUTS)
    if unknown:
        parser.error(f"--zero {sorted(unknown)}: not inputs of the toy ID, which reads {MVA_INPUTS}")
    warnings.filterwarnings("ignore", module="coffea")

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.samples
        if folder is None:
            folder = Path(tmp)
            toy.generate_samples(folder, args.events, seed=7, files_per_sample=2, workers=2)
        groups = pipeline.group_samples(sorted(str(p) for p in folder.glob("*.root")))
        missing = {"data", "data2", "mc"} - set(groups)
        if missing:
            raise SystemExit(f"{folder} has no {sorted(missing)} files")
        bundle = egproc.load(args.bundle, device="cpu")
        samples = {"data": probes(groups["data"], None), "data2": probes(groups["data2"], None), "mc": probes(groups["mc"], bundle)}

    def kinematics(columns: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [columns["pt"], np.abs(columns["superclusterEta"])]

    edges = (PT_EDGES, ABS_ETA_EDGES)
    (data, _, data_weight), (mc, mc_rho, mc_weight) = samples["data"], samples["mc"]
    table, _ = reweight.binned_ratio(kinematics(data), kinematics(mc), edges, data_weight, mc_weight)
    samples["mc"] = (mc, mc_rho, mc_weight * reweight.lookup(table, kinematics(mc), edges))

    print(f"{args.bundle.name}: probes data {len(data_weight):,}, MC {len(mc_weight):,}; ID score L1 to data")
    print(f"{'':28s} {'region':6s} {'data2':>7s} {'MC':>7s}   statistics alone at MC's entries")
    for label, zeroed in (("as is", ()), (f"{', '.join(args.zero)} := 0", tuple(args.zero))):
        histograms, entries = {}, {}
        for name, (columns, rho, weight) in samples.items():
            score = toy_mva_id({**columns, **{f: np.zeros_like(columns[f]) for f in zeroed}}, rho)
            for region in ("EB", "EE"):
                keep = region_mask(columns["superclusterEta"], region)
                histograms[name, region] = np.histogram(np.clip(score[keep], -1, 1), SCORE_EDGES, weights=weight[keep])[0]
                entries[name, region] = metrics.effective_entries(weight[keep], weight[keep] ** 2)
        for region in ("EB", "EE"):
            floor = metrics.l1_distance(histograms["data", region], histograms["data2", region])
            value = metrics.l1_distance(histograms["data", region], histograms["mc", region])
            expected, spread = metrics.expected_l1_distance(
                histograms["data", region] + histograms["data2", region], entries["data", region], entries["mc", region]
            )
            print(f"{label:28s} {region:6s} {floor:7.3f} {value:7.3f}   {expected:.3f} ± {spread:.3f}")


if __name__ == "__main__":
    main()
