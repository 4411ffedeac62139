"""NanoAOD branch names and types written by the toy, and the in-memory chunk container.

The types follow CMSSW's NanoAOD producers of the v12+ era (CMSSW 13/14):

* ``run``, ``luminosityBlock`` ``UInt_t``; ``event`` ``ULong64_t``
  (``NanoAODOutputModule``);
* collection counters ``nX`` are ``Int_t`` — CMSSW PR #40478 (CMSSW 13.0,
  NanoAOD v12) switched them from ``UInt_t`` to a *signed* integer because ROOT
  requires signed array-size leaves; this is also what uproot writes;
* ``Var(..., int)`` → ``Int_t``, ``"int16"`` → ``Short_t``, ``"uint8"`` →
  ``UChar_t``, ``"uint16"`` → ``UShort_t``, ``bool`` → ``Bool_t``, ``float`` →
  ``Float_t`` (``photons_cff.py``, ``electrons_cff.py``, ``genparticles_cff.py``,
  ``common_cff.py`` ``CandVars``);
* ``*_genPartIdx`` ``Short_t`` and ``*_genPartFlav`` ``UChar_t``
  (``CandMCMatchTableProducer``); ``PV_npvs``/``PV_npvsGood`` ``UChar_t``
  (``VertexTableProducer``); ``Rho_*`` ``Float_t`` (``GlobalVariablesTableProducer``
  stores the double :math:`\\rho` as float); ``Pileup_nTrueInt`` ``Float_t`` and
  ``Pileup_nPU`` ``Int_t`` (``NPUTablesProducer``); ``genWeight`` ``Float_t``;
  trigger bits ``Bool_t``.

No ``*_jetIdx`` branches are written because there is no ``Jet`` collection.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "COLLECTIONS",
    "ELECTRON_BRANCHES",
    "ELECTRON_MC_BRANCHES",
    "EVENT_BRANCHES",
    "GENPART_BRANCHES",
    "MC_EVENT_BRANCHES",
    "PHOTON_BRANCHES",
    "PHOTON_MC_BRANCHES",
    "Collection",
    "EventChunk",
    "branch_types",
]

_F = np.dtype(np.float32)
_I = np.dtype(np.int32)
_S = np.dtype(np.int16)
_US = np.dtype(np.uint16)
_B = np.dtype(np.uint8)
_O = np.dtype(np.bool_)

EVENT_BRANCHES: Final = MappingProxyType(
    {
        "run": np.dtype(np.uint32),
        "luminosityBlock": np.dtype(np.uint32),
        "event": np.dtype(np.uint64),
        "HLT_Ele32_WPTight_Gsf": _O,
        "PV_npvs": _B,
        "PV_npvsGood": _B,
        "PV_x": _F,
        "PV_y": _F,
        "PV_z": _F,
        "Rho_fixedGridRhoAll": _F,
        "Rho_fixedGridRhoFastjetAll": _F,
        "Rho_fixedGridRhoFastjetCentral": _F,
    }
)
"""Per-event branches present in data and MC."""

MC_EVENT_BRANCHES: Final = MappingProxyType(
    {"genWeight": _F, "Pileup_nTrueInt": _F, "Pileup_nPU": _I}
)
"""Per-event branches present in MC only."""

ELECTRON_BRANCHES: Final = MappingProxyType(
    {
        "pt": _F,
        "eta": _F,
        "phi": _F,
        "mass": _F,
        "charge": _I,
        "pdgId": _I,
        "cutBased": _B,
        "deltaEtaSC": _F,
        "photonIdx": _S,
        "r9": _F,
        "sieie": _F,
        "hoe": _F,
        "pfRelIso03_all": _F,
        "dxy": _F,
        "dz": _F,
        "convVeto": _O,
        "lostHits": _B,
        "mvaIso": _F,
        "mvaIso_WP80": _O,
        "mvaIso_WP90": _O,
        "energyErr": _F,
        "scEtOverPt": _F,
        "seedGain": _B,
    }
)
"""``Electron_*`` fields (data and MC)."""

ELECTRON_MC_BRANCHES: Final = MappingProxyType({"genPartIdx": _S, "genPartFlav": _B})
"""``Electron_*`` MC-truth matching fields (MC only)."""

PHOTON_BRANCHES: Final = MappingProxyType(
    {
        "pt": _F,
        "eta": _F,
        "phi": _F,
        "energyRaw": _F,
        "energyErr": _F,
        "superclusterEta": _F,
        "isScEtaEB": _O,
        "isScEtaEE": _O,
        "r9": _F,
        "s4": _F,
        "sieie": _F,
        "sieip": _F,
        "etaWidth": _F,
        "phiWidth": _F,
        "pfPhoIso03": _F,
        "pfChargedIsoPFPV": _F,
        "pfChargedIsoWorstVtx": _F,
        "esEffSigmaRR": _F,
        "esEnergyOverRawE": _F,
        "hoe": _F,
        "mvaID": _F,
        "mvaID_WP80": _O,
        "mvaID_WP90": _O,
        "cutBased": _B,
        "electronIdx": _S,
        "electronVeto": _O,
        "pixelSeed": _O,
        "seedGain": _B,
    }
)
"""``Photon_*`` fields (data and MC)."""

PHOTON_MC_BRANCHES: Final = MappingProxyType({"genPartIdx": _S, "genPartFlav": _B})
"""``Photon_*`` MC-truth matching fields (MC only)."""

GENPART_BRANCHES: Final = MappingProxyType(
    {
        "pt": _F,
        "eta": _F,
        "phi": _F,
        "mass": _F,
        "pdgId": _I,
        "status": _I,
        "statusFlags": _US,
        "genPartIdxMother": _S,
    }
)
"""``GenPart_*`` fields (MC only)."""

COLLECTIONS: Final = ("Electron", "Photon", "GenPart")


def branch_types(kind: str) -> dict[str, np.dtype]:
    """Flat ``{branch name: numpy dtype}`` of a file of the given kind, counters included.

    ``kind`` is ``"data"`` or ``"mc"``.  Counters ``nElectron`` … are ``int32``.
    """
    mc = kind == "mc"
    out: dict[str, np.dtype] = dict(EVENT_BRANCHES)
    if mc:
        out.update(MC_EVENT_BRANCHES)
    electron = dict(ELECTRON_BRANCHES) | (dict(ELECTRON_MC_BRANCHES) if mc else {})
    photon = dict(PHOTON_BRANCHES) | (dict(PHOTON_MC_BRANCHES) if mc else {})
    collections = {"Electron": electron, "Photon": photon}
    if mc:
        collections["GenPart"] = dict(GENPART_BRANCHES)
    for name, fields in collections.items():
        out["n" + name] = _I
        out.update({f"{name}_{field}": dtype for field, dtype in fields.items()})
    return out


@dataclass(frozen=True)
class Collection:
    """A jagged NanoAOD collection stored as per-event ``counts`` and flat ``fields``."""

    counts: NDArray[np.int64]
    fields: dict[str, np.ndarray]

    def offsets(self) -> NDArray[np.int64]:
        out = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=out[1:])
        return out


@dataclass(frozen=True)
class EventChunk:
    """A block of toy events: flat per-event ``branches`` and jagged ``collections``."""

    branches: dict[str, np.ndarray]
    collections: dict[str, Collection]

    def __len__(self) -> int:
        return len(self.branches["event"])
