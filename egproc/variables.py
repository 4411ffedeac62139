"""The photon shower-shape and isolation variables egproc corrects, and the binnings it reports in.

One table, so that training commands, processors and reports agree on names (the NanoAOD field
names), histogram ranges and the detector regions where a variable is defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Variable",
    "SHOWER_SHAPES",
    "PRESHOWER",
    "HADRONIC",
    "ISOLATIONS",
    "PHOTON_VARIABLES",
    "PT_EDGES",
    "ABS_ETA_EDGES",
    "REGION_ETA_BINS",
    "variable",
]


@dataclass(frozen=True)
class Variable:
    """A photon variable: NanoAOD field, histogram range, and where it is defined.

    ``zero_peak`` marks variables with an exact-zero population (isolations; preshower variables
    outside the preshower): shift-and-stretch corrections must not move those zeros.
    """

    field: str
    label: str
    bins: int
    low: float
    high: float
    regions: tuple[Literal["EB", "EE"], ...] = ("EB", "EE")
    zero_peak: bool = False


SHOWER_SHAPES: tuple[Variable, ...] = (
    Variable("r9", r"$R_9$", 80, 0.5, 1.05),
    Variable("s4", r"$S_4$", 80, 0.4, 1.0),
    Variable("sieie", r"$\sigma_{i\eta i\eta}$", 100, 0.0, 0.04),
    Variable("sieip", r"$\sigma_{i\eta i\phi}$", 100, -0.0006, 0.0006),
    Variable("etaWidth", r"$\eta$ width", 80, 0.0, 0.05),
    Variable("phiWidth", r"$\phi$ width", 80, 0.0, 0.16),
)
PRESHOWER: tuple[Variable, ...] = (
    Variable("esEffSigmaRR", r"ES $\sigma_{RR}$", 80, 0.0, 12.0, regions=("EE",), zero_peak=True),
    Variable("esEnergyOverRawE", r"$E_{ES}/E_{raw}$", 80, 0.0, 0.3, regions=("EE",), zero_peak=True),
)
#: H/E is zero where no HCAL tower behind the supercluster has energy: a zero peak, like isolations.
HADRONIC: tuple[Variable, ...] = (
    Variable("hoe", r"$H/E$", 80, 0.0, 0.12, zero_peak=True),
)
ISOLATIONS: tuple[Variable, ...] = (
    Variable("pfPhoIso03", r"PF photon iso. (GeV)", 80, 0.0, 10.0, zero_peak=True),
    Variable("pfChargedIsoPFPV", r"PF charged iso. PV (GeV)", 80, 0.0, 10.0, zero_peak=True),
    Variable("pfChargedIsoWorstVtx", r"PF charged iso. worst vtx (GeV)", 80, 0.0, 20.0, zero_peak=True),
)
PHOTON_VARIABLES: tuple[Variable, ...] = SHOWER_SHAPES + PRESHOWER + HADRONIC + ISOLATIONS

#: Probe pT and |η_SC| categories of tag-and-probe histograms and reports. The 1.4442–1.566 bin is
#: the barrel/endcap transition, kept as its own category so it never mixes into EB or EE.
PT_EDGES: tuple[float, ...] = (20.0, 30.0, 37.0, 43.0, 50.0, 65.0, 200.0)
ABS_ETA_EDGES: tuple[float, ...] = (0.0, 0.8, 1.4442, 1.566, 2.0, 2.5)
#: The |η| bins (indices into ABS_ETA_EDGES) of each ECAL region; the transition bin is in neither.
REGION_ETA_BINS: dict[str, tuple[int, ...]] = {"EB": (0, 1), "EE": (3, 4)}


def variable(field: str) -> Variable:
    """Look a variable up by its NanoAOD field name."""
    for candidate in PHOTON_VARIABLES:
        if candidate.field == field:
            return candidate
    raise KeyError(f"{field!r} is not a known photon variable; known: {[v.field for v in PHOTON_VARIABLES]}")
