"""Z→ee tag and probe with the probe leg reconstructed as a photon.

The pair selection is :func:`egproc.probes.tag_probe_pairs`, shared with the training commands so
that corrections are derived and checked on the same probes.

Per dataset the processor returns

* ``histograms``: per photon variable, weighted histograms in (stage, pT, |η_SC|, value) for pairs
  inside the correction mass window; and ``id``, the probe's ID score in (stage, pair mass, pT,
  |η_SC|, mvaID) over the wide mass window, for sideband-subtracted efficiencies;
* ``probes``: per-probe columns inside the window (kinematics, ρ, weight, and each variable and the
  ID score per stage), for correlations, classifier tests and profiles;
* ``counts``: events, probes, sum of weights, probes a correction left uncorrected.

A *stage* is ``raw`` (as read from the file) or the name of a correction applied to MC probes; the
ID score of a correction's stage is the photon ID re-evaluated on its corrected fields, as in the
CMS workflow. MC is weighted by ``genWeight`` times the ρ reweighting the corrections were derived
with. ``process`` is a pure function of the chunk: it runs unchanged on eager, virtual
(``processor.Runner``) and dask-awkward (``apply_to_fileset``) events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import awkward as ak
import hist
import hist.dask
import numpy as np
from coffea import processor

from egproc import engine, nano
from egproc.bundle import Bundle
from egproc.probes import MASS_WINDOW, TRIGGER, WIDE_MASS_WINDOW, tag_probe_pairs
from egproc.toy import MVA_INPUTS, toy_mva_id
from egproc.variables import ABS_ETA_EDGES, PHOTON_VARIABLES, PT_EDGES, variable

__all__ = ["TagAndProbeProcessor"]

PhotonID = Callable[[Any, Any], Any]


class TagAndProbeProcessor(processor.ProcessorABC):
    """Probe-photon histograms and columns before and after correction bundles.

    Parameters
    ----------
    corrections:
        Bundles applied to MC probes, by stage name (a single bundle is named by its method). A
        stage is a bundle (its nominal variation) or a (bundle, variation) pair, e.g.
        ``{"cqr": b, "cqr_up": (b, "up"), "cqr_down": (b, "down")}``.
    variables:
        Photon fields to histogram (default: every shower-shape, preshower and isolation variable,
        corrected or not, so what a correction leaves alone stays visible).
    mass_window:
        Pair mass range of the probes that enter the variable histograms and columns.
    trigger:
        Single-electron trigger branch the tag's event must have fired.
    photon_id:
        ``photon_id(photons, rho)`` re-evaluates the ID score on corrected fields (default: the
        toy's documented MVA, :func:`egproc.toy.toy_mva_id`); ``None`` keeps the file's score.
        It is called with NumPy arrays, one entry per pair: ``photons`` maps each of
        ``photon_id_inputs`` to the probe's values, ``rho`` is its event's ρ. (Under dask it is
        also called on zero-length columns while the graph is traced, for its output dtype; the
        columns read are ``photon_id_inputs``.)
    photon_id_inputs:
        Photon fields ``photon_id`` reads (checked before the run like the variables).
    reweighting:
        The bundle whose ``rho`` event weight reweights MC (default: the first correction with one).
    raw_mc:
        Fill the ``raw`` stage for MC too (default). ``False`` fills MC only at its corrected stages,
        as an analysis that applies a correction would (the report needs ``raw``; the processor
        benchmark uses this to time the correction against the uncorrected processor).
    """

    def __init__(
        self,
        corrections: Bundle | Mapping[str, Bundle | tuple[Bundle, str]] | None = None,
        variables: tuple[str, ...] | None = None,
        mass_window: tuple[float, float] = MASS_WINDOW,
        trigger: str = TRIGGER,
        photon_id: PhotonID | None = toy_mva_id,
        photon_id_inputs: tuple[str, ...] = MVA_INPUTS,
        reweighting: Bundle | None = None,
        raw_mc: bool = True,
    ):
        if isinstance(corrections, Bundle):
            corrections = {corrections.manifest.method: corrections}
        self.corrections: dict[str, tuple[Bundle, str]] = {}
        for name, spec in (corrections or {}).items():
            bundle, variation = (spec, "nominal") if isinstance(spec, Bundle) else spec
            if variation not in bundle.variations:
                raise ValueError(f"stage {name!r}: bundle {bundle.name!r} has no variation {variation!r}; it has {list(bundle.variations)}")
            self.corrections[name] = (bundle, variation)
        if "raw" in self.corrections:
            raise ValueError("'raw' is the uncorrected stage; name the correction otherwise")
        self.variables = tuple(dict.fromkeys(variables or (v.field for v in PHOTON_VARIABLES)))
        self.mass_window = mass_window
        self.trigger = trigger
        self.photon_id = photon_id
        self.photon_id_inputs = photon_id_inputs if photon_id is not None else ()
        if reweighting is None:
            reweighting = next((b for b, _ in self.corrections.values() if b.manifest.event_weights), None)
        self.reweighting = reweighting
        self.raw_mc = raw_mc

    @property
    def stages(self) -> tuple[str, ...]:
        return ("raw", *self.corrections)

    def process(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata.get("dataset", "unknown")
        is_mc = "genWeight" in events.fields
        dask_mode = engine.is_dask(events)

        pairs = tag_probe_pairs(events, WIDE_MASS_WINDOW, trigger=self.trigger)
        # Every histogrammed branch must exist: fail on the first chunk, naming it, not mid-fill.
        needed = (*self.variables, *self.photon_id_inputs)
        nano.locate([f"Photon_{v}" for v in dict.fromkeys(needed)], "Photon", pairs.probe, events)
        rho = nano.column("Rho_fixedGridRhoAll", events)

        event_weight = events.genWeight if is_mc else ak.ones_like(rho, dtype=np.float64)
        if is_mc and self.reweighting is not None:
            event_weight = event_weight * self.reweighting.event_weight("rho", events)
        pair_weight = ak.broadcast_arrays(event_weight, pairs.mass)[0]
        pair_rho = ak.broadcast_arrays(rho, pairs.mass)[0]

        def flat(array: Any) -> Any:
            return ak.flatten(array, axis=1)

        # Everything below works on flat per-pair arrays: one flatten per stage instead of one
        # jagged broadcast per operation (the ID alone is ~60 array expressions).
        stages = {"raw": flat(pairs.probe)}
        if is_mc:
            stages.update({name: flat(b.apply(pairs.probe, events, variation=v)) for name, (b, v) in self.corrections.items()})
        rho_flat = flat(pair_rho)
        raw = stages["raw"]  # kinematics: no correction changes them
        if is_mc and self.corrections and not self.raw_mc:
            del stages["raw"]
        id_scores = {
            stage: probes.mvaID if stage == "raw" or self.photon_id is None else self._photon_id(probes, rho_flat, dask_mode)
            for stage, probes in stages.items()
        }

        pt_axis = hist.axis.Variable(PT_EDGES, name="pt", label=r"probe $p_T$ (GeV)")
        eta_axis = hist.axis.Variable(ABS_ETA_EDGES, name="abseta", label=r"probe $|\eta_{SC}|$")
        stage_axis = hist.axis.StrCategory(list(self.stages), name="stage")
        histograms = {}

        mass = flat(pairs.mass)
        weight_all = flat(pair_weight)
        abseta_all = np.abs(raw.superclusterEta)
        id_hist = _new_hist(
            dask_mode, stage_axis,
            hist.axis.Regular(30, *WIDE_MASS_WINDOW, name="mass", label=r"$m_{ee}$ (GeV)"),
            pt_axis, eta_axis,
            hist.axis.Regular(100, -1.0, 1.0, name="mvaID", label="photon ID score"),
        )
        for stage, score in id_scores.items():
            id_hist.fill(stage=stage, mass=mass, pt=raw.pt, abseta=abseta_all, mvaID=score, weight=weight_all)
        histograms["id"] = id_hist

        in_window = (mass > self.mass_window[0]) & (mass < self.mass_window[1])
        weight = weight_all[in_window]
        pt = raw.pt[in_window]
        abseta = abseta_all[in_window]
        columns = {
            "pt": pt,
            "superclusterEta": raw.superclusterEta[in_window],
            "phi": raw.phi[in_window],
            "rho": rho_flat[in_window],
            "weight": weight,
        }
        for field in self.variables:
            spec = variable(field)
            h = _new_hist(
                dask_mode, stage_axis, pt_axis, eta_axis,
                hist.axis.Regular(spec.bins, spec.low, spec.high, name="value", label=spec.label),
            )
            for stage, probes in stages.items():
                values = probes[field][in_window]
                h.fill(stage=stage, pt=pt, abseta=abseta, value=values, weight=weight)
                columns[f"{stage}/{field}"] = values
            histograms[field] = h
        for stage, score in id_scores.items():
            columns[f"{stage}/mvaID"] = score[in_window]

        counts = {"events": ak.num(rho, axis=0), "pairs": ak.num(weight, axis=0), "sumw": ak.sum(weight)}
        for name in self.corrections:
            if name in stages:
                counts[f"not_corrected/{name}"] = ak.sum(~stages[name].egproc_ok[in_window])
        probe_columns = {
            name: (column if dask_mode else processor.column_accumulator(ak.to_numpy(column)))
            for name, column in columns.items()
        }
        return {dataset: {"histograms": histograms, "probes": probe_columns, "counts": counts}}

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator

    def _photon_id(self, probes: Any, rho: Any, dask_mode: bool) -> Any:
        if dask_mode:
            # One task per partition instead of one graph layer per array expression of the ID.
            import dask_awkward as dak

            return dak.map_partitions(_score_partition, self.photon_id, self.photon_id_inputs, probes, rho, label="photon-id")
        return _score_partition(self.photon_id, self.photon_id_inputs, probes, rho)


def _score_partition(photon_id: PhotonID, fields: tuple[str, ...], probes: Any, rho: Any) -> Any:
    """``photon_id`` on the NumPy columns of flat probes: an ID is tens of array expressions, and
    each costs awkward's dispatch and broadcasting on top of the arithmetic (5–10× on the toy's
    MVA at 40 k probes)."""
    if ak.backend(probes) == "typetracer":
        return _traced_score(photon_id, fields, probes, rho)
    columns = {field: ak.to_numpy(probes[field]) for field in fields}
    return ak.Array(np.asarray(_call(photon_id, fields, columns, ak.to_numpy(rho))))


def _traced_score(photon_id: PhotonID, fields: tuple[str, ...], probes: Any, rho: Any) -> Any:
    """The score's form for dask-awkward's tracing passes (graph construction, then column
    projection at every optimisation), without tracing the ID itself: its tens of expressions on
    typetracers added 0.05 s to each pass on the client, twice per run, which at the processor
    benchmark's 400 k events was as much as applying the fudge factors (README, "Benchmarks").
    The fields it reads are the declared ``fields``, and its output
    dtype is what it returns on zero-length columns of their dtypes (a chunk without probes gives
    it those anyway)."""
    empty = {}
    for field in fields:
        column = probes[field]
        ak.typetracer.touch_data(column)
        empty[field] = ak.to_numpy(column.layout.form.length_zero_array())
    ak.typetracer.touch_data(rho)
    score = np.asarray(_call(photon_id, fields, empty, ak.to_numpy(rho.layout.form.length_zero_array())))
    return ak.Array(ak.to_layout(score).to_typetracer(forget_length=True))


def _call(photon_id: PhotonID, fields: tuple[str, ...], columns: dict[str, np.ndarray], rho: np.ndarray) -> Any:
    try:
        return photon_id(columns, rho)
    except KeyError as missing:
        raise KeyError(f"photon_id read the photon field {missing}, which is not in photon_id_inputs {fields}") from None


def _new_hist(dask_mode: bool, *axes: Any) -> Any:
    if dask_mode:
        return hist.dask.Hist(*axes, storage=hist.storage.Weight())
    return hist.Hist(*axes, storage=hist.storage.Weight())
