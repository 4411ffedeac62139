"""Columnar inference throughput: egproc's engine against coffea's ``torch_wrapper``.

Same TorchScript model (an MLP correcting 9 photon variables from 13 inputs), same photons (a toy
MC sample). Prints

1. steady state: rows/s with the model already loaded, best of ``--repeat`` runs;
2. the ``processor.Runner`` pattern: ``--chunks`` chunks, the processor object pickled and
   lz4-compressed per chunk as Runner does with its default ``processor_compression=1``; wall
   time and model loads of each approach.

    python benchmarks/engine.py --events 200000 --chunks 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import awkward as ak
import pickle
import correctionlib.schemav2 as cs
import lz4.frame
import numpy as np
import torch
from coffea.ml_tools.torch_wrapper import torch_wrapper
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

import egproc
from egproc import bundle as bundle_format
from egproc import engine, toy

VARIABLES = ("r9", "s4", "sieie", "sieip", "etaWidth", "phiWidth", "pfPhoIso03", "pfChargedIsoPFPV", "pfChargedIsoWorstVtx")
INPUTS = ("Photon_pt", "Photon_superclusterEta", "Photon_phi", "Rho_fixedGridRhoAll", *(f"Photon_{v}" for v in VARIABLES))
OUTPUTS = tuple(f"Photon_{v}" for v in VARIABLES)


class Corrector(torch.nn.Module):
    """Standardise, a 3-layer MLP, and a small residual shift of the 9 variables."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(len(INPUTS), 128), torch.nn.SiLU(),
            torch.nn.Linear(128, 128), torch.nn.SiLU(),
            torch.nn.Linear(128, len(OUTPUTS)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.scale
        return x[:, 4:] + 1e-3 * self.scale[4:] * self.net(z)


class Wrapper(torch_wrapper):
    """coffea's wrapper, with the input preparation the same model needs."""

    def prepare_awkward(self, photons, rho):
        columns = [ak.flatten(photons[b.removeprefix("Photon_")]) for b in INPUTS if b.startswith("Photon_")]
        columns.insert(3, ak.flatten(ak.broadcast_arrays(rho, photons.pt)[0]))
        matrix = ak.concatenate([c[:, np.newaxis] for c in columns], axis=1)
        return [ak.values_astype(matrix, np.float32)], {}


class CountingWrapper(Wrapper):
    loads = 0

    def _create_model(self):
        CountingWrapper.loads += 1
        return super()._create_model()


def build_bundle(folder: Path, photons, rho) -> Path:
    torch.manual_seed(0)
    columns = [ak.to_numpy(ak.flatten(photons[b.removeprefix("Photon_")])) for b in INPUTS if b.startswith("Photon_")]
    columns.insert(3, np.repeat(ak.to_numpy(rho), ak.to_numpy(ak.num(photons))))
    matrix = np.stack(columns, axis=1).astype(np.float32)
    module = torch.jit.script(Corrector(torch.from_numpy(matrix.mean(0)), torch.from_numpy(matrix.std(0) + 1e-6)).eval())
    return bundle_format.write(
        folder, name="bench-mlp", method="benchmark", collection="Photon", description="benchmark MLP",
        correction_set=cs.CorrectionSet(schema_version=2, corrections=[]), models={"mlp.pt": module},
        steps=[{"kind": "torchscript", "model": "mlp.pt", "inputs": INPUTS, "outputs": OUTPUTS}],
    )


def best_of(repeat: int, function) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as on a dask worker, where the nanny sets one thread

    with tempfile.TemporaryDirectory() as tmp:
        sample = toy.generate_sample(Path(tmp) / "mc.root", "mc", args.events, seed=11)
        events = NanoEventsFactory.from_root({str(sample): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
        photons, rho = events.Photon, events.Rho.fixedGridRhoAll
        n_rows = int(ak.sum(ak.num(photons)))
        folder = build_bundle(Path(tmp) / "bundle", photons, rho)
        bundle = egproc.load(folder, device="cpu")
        wrapper = Wrapper(str(folder / "mlp.pt"))

        ours = bundle.apply(photons, events)
        theirs = wrapper(photons, rho)
        agreement = np.abs(ak.to_numpy(ak.flatten(ours.r9)) - ak.to_numpy(theirs[:, 0])).max()

        t_ours = best_of(args.repeat, lambda: bundle.apply(photons, events))
        t_theirs = best_of(args.repeat, lambda: wrapper(photons, rho))
        print(f"photons: {n_rows:,} in {len(events):,} events; max |Δr9| egproc vs torch_wrapper: {agreement:.2g}")
        print("steady state (model loaded, 1 thread):")
        print(f"  egproc Bundle.apply        {n_rows / t_ours:12,.0f} rows/s  (inputs gathered, outputs written back as fields)")
        print(f"  coffea torch_wrapper       {n_rows / t_theirs:12,.0f} rows/s  (model output only)")

        boundaries = np.linspace(0, len(events), args.chunks + 1).astype(int)
        chunks = [events[a:b] for a, b in zip(boundaries[:-1], boundaries[1:])]

        def runner_pattern(payload, call):
            # Runner sends lz4(cloudpickle(processor)) per chunk; stdlib pickle is used here so that
            # the classes of this script travel by reference and the load counter stays shared.
            blob = lz4.frame.compress(pickle.dumps(payload), compression_level=1)
            start = time.perf_counter()
            for chunk in chunks:
                call(pickle.loads(lz4.frame.decompress(blob)), chunk)
            return time.perf_counter() - start

        engine.clear_cache()
        t_ours = runner_pattern(bundle, lambda b, chunk: b.apply(chunk.Photon, chunk))
        ours_loads = sum(engine.cache_info().values())
        CountingWrapper.loads = 0
        t_theirs = runner_pattern(CountingWrapper(str(folder / "mlp.pt")), lambda w, chunk: w(chunk.Photon, chunk.Rho.fixedGridRhoAll))
        print(f"processor.Runner pattern ({args.chunks} chunks, processor unpickled per chunk):")
        print(f"  egproc Bundle.apply        {t_ours:8.2f} s  artefact loads: {ours_loads}")
        print(f"  coffea torch_wrapper       {t_theirs:8.2f} s  model loads: {CountingWrapper.loads}")


if __name__ == "__main__":
    main()
