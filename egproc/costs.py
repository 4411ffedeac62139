"""What a correction costs: its training time and how fast it applies.

The fidelity report compares methods on closure; an analyst choosing one also weighs what it costs
to derive and to run. Both figures are attached to a processor output as ``costs.json`` beside it
(:func:`write`, :func:`read`), one entry per correction stage:

* ``training_seconds`` — from the bundle's provenance: ``training_wall_seconds`` where the training
  command recorded it, else the sum of its per-model ``training_seconds`` (CQR trains its chains
  one after the other, so the sum is its wall time but for reading the samples). ``None`` for a
  bundle that records neither (e.g. one derived by hand).
* ``probes_per_second`` — :meth:`egproc.Bundle.apply` on the tag-and-probe probes of one MC file,
  eagerly, best of ``repeat`` timed calls after a warm-up, on the device the bundle was loaded for
  and, on a CPU, on one torch thread: a dask worker's share, the figure that scales with workers.

A training time measured while other jobs share the machine is longer than the method needs; the
provenance does not say, so read the figure with the training's record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import awkward as ak
import torch

from egproc import engine
from egproc.bundle import Bundle
from egproc.probes import tag_probe_pairs

__all__ = ["FILE", "training_seconds", "throughput", "measure", "write", "read"]

FILE = "costs.json"


def training_seconds(bundle: Bundle) -> float | None:
    """The bundle's training time from its provenance (module docstring), or ``None``."""
    provenance = bundle.manifest.provenance or {}
    if isinstance(provenance.get("training_wall_seconds"), (int, float)):
        return float(provenance["training_wall_seconds"])
    per_model = provenance.get("training_seconds")
    if isinstance(per_model, Mapping) and per_model:
        return float(sum(per_model.values()))
    if isinstance(per_model, (int, float)):
        return float(per_model)
    return None


def throughput(bundle: Bundle, mc_file: str | Path, repeat: int = 3) -> dict[str, Any]:
    """Probes per second of ``bundle.apply`` on the probes of ``mc_file`` (module docstring)."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    events = NanoEventsFactory.from_root({str(mc_file): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    probes = tag_probe_pairs(events).probe
    n_probes = int(ak.sum(ak.num(probes, axis=1)))
    if n_probes == 0:
        raise ValueError(f"{mc_file}: no tag-and-probe probes to time {bundle.name!r} on")
    device = engine.resolve_device(bundle.device)
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        bundle.apply(probes, events)  # loads the artefacts: not part of the per-chunk cost
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            bundle.apply(probes, events)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {"probes": n_probes, "seconds": best, "probes_per_second": n_probes / best, "device": device,
            "torch_threads": 1 if device == "cpu" else None}


def measure(stages: Mapping[str, Bundle], mc_file: str | Path, repeat: int = 3) -> dict[str, dict[str, Any]]:
    """Training time and throughput of each stage's bundle, timed on the probes of ``mc_file``."""
    return {
        name: {"training_seconds": training_seconds(bundle), **throughput(bundle, mc_file, repeat)}
        for name, bundle in stages.items()
    }


def write(costs: Mapping[str, Mapping[str, Any]], folder: str | Path) -> Path:
    """Write ``costs`` as ``costs.json`` into a processor output folder."""
    path = Path(folder) / FILE
    path.write_text(json.dumps(costs, indent=1, sort_keys=True))
    return path


def read(folder: str | Path) -> dict[str, dict[str, Any]] | None:
    """The costs beside a processor output, or ``None`` where none were measured."""
    path = Path(folder) / FILE
    return json.loads(path.read_text()) if path.is_file() else None
