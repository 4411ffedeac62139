"""Z→ee tag and probe with the probe leg reconstructed as a photon.

The pair selection is :func:`egproc.probes.tag_probe_pairs`, shared with the training commands so
that corrections are derived and checked on the same probes.

The processor fills, per probe variable, weighted histograms in (stage, pT, |η_SC|, value) where
stage is ``raw`` (as read) or ``corrected`` (after the bundle, MC only), for pairs inside the
correction mass window; and the pair mass in a wider window for background studies. MC is weighted
by ``genWeight`` times the bundle's ρ reweighting. ``process`` is a pure function of the chunk: it
runs unchanged on eager, virtual (``processor.Runner``) and dask-awkward (``apply_to_fileset``)
events.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
import hist.dask
import numpy as np
from coffea import processor

from egproc import nano
from egproc.bundle import Bundle
from egproc.probes import MASS_WINDOW, TRIGGER, WIDE_MASS_WINDOW, tag_probe_pairs
from egproc.variables import ABS_ETA_EDGES, PHOTON_VARIABLES, PT_EDGES, variable

__all__ = ["TagAndProbeProcessor"]

class TagAndProbeProcessor(processor.ProcessorABC):
    """Probe-photon histograms before and after a correction bundle.

    Parameters
    ----------
    bundle:
        The correction applied to MC probes (``None``: raw histograms only).
    variables:
        Photon fields to histogram (default: every shower-shape, preshower and isolation variable,
        corrected or not, so what a correction leaves alone stays visible).
    mass_window:
        Pair mass range of the probes that enter the variable histograms.
    trigger:
        Single-electron trigger branch the tag's event must have fired.
    """

    def __init__(
        self,
        bundle: Bundle | None = None,
        variables: tuple[str, ...] | None = None,
        mass_window: tuple[float, float] = MASS_WINDOW,
        trigger: str = TRIGGER,
    ):
        self.bundle = bundle
        if variables is None:
            variables = tuple(v.field for v in PHOTON_VARIABLES)
        self.variables = tuple(dict.fromkeys(variables))
        self.mass_window = mass_window
        self.trigger = trigger

    def process(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata.get("dataset", "unknown")
        is_mc = "genWeight" in events.fields
        dask_mode = type(events).__module__.startswith("dask_awkward")

        pairs = tag_probe_pairs(events, trigger=self.trigger)
        # Every histogrammed branch must exist: fail on the first chunk, naming it, not mid-fill.
        nano.locate([f"Photon_{v}" for v in self.variables], "Photon", pairs.probe, events)
        event_weight = events.genWeight if is_mc else ak.ones_like(events.run, dtype=np.float64)
        if is_mc and self.bundle is not None and self.bundle.manifest.event_weights:
            event_weight = event_weight * self.bundle.event_weight("rho", events)
        pair_weight = ak.broadcast_arrays(event_weight, pairs.mass)[0]

        mass_hist = _new_hist(
            dask_mode,
            hist.axis.Regular(60, *WIDE_MASS_WINDOW, name="mass", label=r"$m_{ee}$ (GeV)"),
            hist.axis.Variable(PT_EDGES, name="pt", label=r"probe $p_T$ (GeV)"),
            hist.axis.Variable(ABS_ETA_EDGES, name="abseta", label=r"probe $|\eta_{SC}|$"),
        )
        mass_hist.fill(
            mass=ak.flatten(pairs.mass),
            pt=ak.flatten(pairs.probe.pt),
            abseta=ak.flatten(np.abs(pairs.probe.superclusterEta)),
            weight=ak.flatten(pair_weight),
        )

        in_window = (pairs.mass > self.mass_window[0]) & (pairs.mass < self.mass_window[1])
        probes = pairs.probe[in_window]
        weights = ak.flatten(pair_weight[in_window])
        stages = {"raw": probes}
        if is_mc and self.bundle is not None:
            stages["corrected"] = self.bundle.apply(probes, events)
        pt = ak.flatten(probes.pt)
        abseta = ak.flatten(np.abs(probes.superclusterEta))

        histograms = {"mass": mass_hist}
        for field in self.variables:
            spec = variable(field)
            h = _new_hist(
                dask_mode,
                hist.axis.StrCategory(["raw", "corrected"], name="stage"),
                hist.axis.Variable(PT_EDGES, name="pt", label=r"probe $p_T$ (GeV)"),
                hist.axis.Variable(ABS_ETA_EDGES, name="abseta", label=r"probe $|\eta_{SC}|$"),
                hist.axis.Regular(spec.bins, spec.low, spec.high, name="value", label=spec.label),
            )
            for stage, collection in stages.items():
                values = collection[f"raw_{field}"] if stage == "raw" and f"raw_{field}" in collection.fields else collection[field]
                h.fill(stage=stage, pt=pt, abseta=abseta, value=ak.flatten(values), weight=weights)
            histograms[field] = h

        counts = {
            "events": ak.num(events.run, axis=0),
            "pairs": ak.sum(ak.num(probes, axis=1)),
            "sumw": ak.sum(weights),
        }
        if "corrected" in stages:
            counts["not_corrected"] = ak.sum(~ak.flatten(stages["corrected"].egproc_ok))
        return {dataset: {"histograms": histograms, "counts": counts}}

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


def _new_hist(dask_mode: bool, *axes: Any) -> Any:
    if dask_mode:
        return hist.dask.Hist(*axes, storage=hist.storage.Weight())
    return hist.Hist(*axes, storage=hist.storage.Weight())
