"""Z→ee tag-and-probe selection, and the probe table that training commands learn from.

Tag: an electron passing the tight cut-based ID, above the single-electron trigger threshold and
outside the barrel/endcap transition, in an event that fired ``HLT_Ele32_WPTight_Gsf``. Probe: a
photon reconstructed from another electron's supercluster (``Photon_electronIdx >= 0``), of opposite
charge through that electron. Every tag–probe combination counts, so an event where both legs pass
the tag selection gives two pairs: the standard choice, which leaves the probe distribution
unbiased by the tag requirement.

The processor (``egproc.processors.tag_and_probe``) and the training commands use the same
selection, so a correction is derived and checked on the same probes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from egproc import nano

__all__ = [
    "MASS_WINDOW",
    "WIDE_MASS_WINDOW",
    "tag_probe_pairs",
    "ProbeTable",
    "read_probes",
]

#: Pairs used for the shower-shape histograms (and for deriving corrections).
MASS_WINDOW = (80.0, 100.0)
#: Pairs kept for the mass spectrum, wide enough for sidebands.
WIDE_MASS_WINDOW = (60.0, 120.0)
TAG_MIN_PT = 35.0
TAG_MAX_ABS_ETA = 2.1
PROBE_MIN_PT = 20.0
TIGHT = 4
#: Single-electron trigger of 2017–2024 NanoAOD; pass another (e.g. HLT_Ele27_WPTight_Gsf for 2016).
TRIGGER = "HLT_Ele32_WPTight_Gsf"


def _massless_pair_mass(first: Any, second: Any) -> Any:
    # m² = 2 pT₁ pT₂ (cosh Δη − cos Δφ): exact for massless legs, and the electron mass is 0.5 MeV.
    return np.sqrt(
        2.0 * first.pt * second.pt * (np.cosh(first.eta - second.eta) - np.cos(first.phi - second.phi))
    )


def tag_probe_pairs(
    events: Any, mass_window: tuple[float, float] = WIDE_MASS_WINDOW, trigger: str = TRIGGER
) -> Any:
    """Tag–probe pairs per event (fields ``tag``, ``probe``, ``mass``) with ``mass`` in the window.

    The probe is the photon; the tag must be a different electron of opposite charge. Probes always
    carry ``superclusterEta`` (from the :mod:`egproc.nano` fallback on files that lack it).
    """
    electrons = events.Electron
    electron_index = ak.local_index(electrons, axis=1)
    supercluster_eta = electrons.eta + electrons.deltaEtaSC
    abs_sc_eta = np.abs(supercluster_eta)
    in_crack = (abs_sc_eta > nano.ECAL_BARREL_MAX_ABS_ETA) & (abs_sc_eta < nano.ECAL_ENDCAP_MIN_ABS_ETA)
    is_tag = (
        (electrons.cutBased >= TIGHT)
        & (electrons.pt > TAG_MIN_PT)
        & (abs_sc_eta < TAG_MAX_ABS_ETA)
        & ~in_crack
        & nano.column(trigger, events)
    )
    tags = ak.with_field(electrons[is_tag], electron_index[is_tag], "index")

    photons = events.Photon
    if "superclusterEta" not in photons.fields:
        photons = ak.with_field(photons, nano.column("Photon_superclusterEta", events, "Photon", photons), "superclusterEta")
    # Photon_electronIdx cross-reference (None where the photon has no electron).
    probe_charge = ak.fill_none(photons.matched_electron.charge, 0)
    is_probe = (
        (photons.electronIdx >= 0)
        & (photons.pt > PROBE_MIN_PT)
        & (np.abs(photons.superclusterEta) < nano.ECAL_ENDCAP_MAX_ABS_ETA)
    )
    probes = ak.with_field(photons[is_probe], probe_charge[is_probe], "electronCharge")

    pairs = ak.cartesian({"tag": tags, "probe": probes}, axis=1)
    mass = _massless_pair_mass(pairs.tag, pairs.probe)
    keep = (
        (pairs.probe.electronIdx != pairs.tag.index)
        & (pairs.tag.charge * pairs.probe.electronCharge < 0)
        & (mass > mass_window[0])
        & (mass < mass_window[1])
    )
    pairs = ak.with_field(pairs, mass, "mass")
    return pairs[keep]


@dataclass(frozen=True)
class ProbeTable:
    """Flat per-probe columns keyed by NanoAOD branch name, and the per-probe event weight.

    ``weight`` is ``genWeight`` for MC (1 for data); corrections multiply their own reweighting in.
    """

    columns: dict[str, np.ndarray]
    weight: np.ndarray
    is_mc: bool

    def __len__(self) -> int:
        return len(self.weight)

    def __getitem__(self, branch: str) -> np.ndarray:
        return self.columns[branch]


def read_probes(
    files: Iterable[str | Path],
    branches: Sequence[str],
    *,
    mass_window: tuple[float, float] = MASS_WINDOW,
    tree: str = "Events",
) -> ProbeTable:
    """Select tag–probe pairs in ``mass_window`` from NanoAOD files and flatten the probe columns.

    ``branches`` are ``Photon_*`` fields of the probe or event-level branches (ρ), with the
    fallbacks of :mod:`egproc.nano`. Files are read in virtual mode, so only the branches the
    selection and ``branches`` touch are read.
    """
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    columns: dict[str, list[np.ndarray]] = {b: [] for b in branches}
    weights: list[np.ndarray] = []
    is_mc = None
    for file in files:
        events = NanoEventsFactory.from_root(
            {str(file): tree}, schemaclass=NanoAODSchema, mode="virtual"
        ).events()
        file_is_mc = "genWeight" in events.fields
        if is_mc is not None and file_is_mc != is_mc:
            raise ValueError(f"{file}: mixes data and MC files in one probe table")
        is_mc = file_is_mc
        pairs = tag_probe_pairs(events, mass_window)
        probes = pairs.probe
        counts = ak.to_numpy(ak.num(probes, axis=1))
        located = nano.locate(branches, "Photon", probes, events)
        for branch, column in located.items():
            values = nano.fetch(column, probes, events)
            flat = ak.to_numpy(ak.flatten(values) if column.level == "object" else values)
            # Native dtypes: float32 shower shapes stay as written, event numbers stay exact.
            columns[branch].append(np.repeat(flat, counts) if column.level == "event" else flat)
        event_weight = ak.to_numpy(events.genWeight) if file_is_mc else np.ones(len(counts))
        weights.append(np.repeat(event_weight.astype(np.float64), counts))
    if is_mc is None:
        raise ValueError("read_probes needs at least one file")
    return ProbeTable(
        {b: np.concatenate(v) for b, v in columns.items()}, np.concatenate(weights), is_mc
    )
