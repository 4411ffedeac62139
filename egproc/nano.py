"""NanoAOD access: where a branch lives, what it is called in older versions, and detector regions.

Corrections declare their inputs as NanoAOD branch names (``Photon_r9``, ``Rho_fixedGridRhoAll``),
exactly as they appear in the ROOT file. This module turns such a name into an awkward array aligned
with the collection being corrected, for NanoEvents collections in eager, virtual or dask mode:

* ``<Collection>_<field>`` is a field of the collection being corrected (which may be a selection
  of it, e.g. the probe photons of a tag-and-probe pair);
* any other branch is event-level (``Rho_fixedGridRhoAll`` → ``events.Rho.fixedGridRhoAll``, a flat
  branch such as ``fixedGridRhoFastjetAll`` → ``events.fixedGridRhoFastjetAll``) and is broadcast to
  the objects by the engine.

NanoAOD renamed and added branches over its versions. Where an older file lacks a branch, a
documented fallback is used with a warning (:data:`FALLBACKS`); where no sensible fallback exists
(``Photon_s4`` before v12, say), :class:`MissingBranchError` names the branch, the collection and
what the file has instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "ECAL_BARREL_MAX_ABS_ETA",
    "ECAL_ENDCAP_MIN_ABS_ETA",
    "ECAL_ENDCAP_MAX_ABS_ETA",
    "FALLBACKS",
    "Column",
    "MissingBranchError",
    "FallbackWarning",
    "Region",
    "locate",
    "fetch",
    "column",
    "region_mask",
    "check_tree",
]

#: Supercluster |η| boundaries of the ECAL barrel and endcaps used by CMS e/γ (the 1.4442–1.566
#: transition region, "the crack", belongs to neither).
ECAL_BARREL_MAX_ABS_ETA = 1.4442
ECAL_ENDCAP_MIN_ABS_ETA = 1.566
ECAL_ENDCAP_MAX_ABS_ETA = 2.5

Region = Literal["all", "EB", "EE"]


@dataclass(frozen=True)
class Fallback:
    """Another way to obtain a branch that an older NanoAOD does not have.

    ``formula`` combines the ``sources`` (all of which must exist) into the wanted branch.
    """

    sources: tuple[str, ...]
    formula: Literal["same", "sum"]
    why: str


#: Fallbacks in order of preference, tried when the wanted branch is absent.
FALLBACKS: Mapping[str, tuple[Fallback, ...]] = {
    # NanoAOD v12 moved ρ into the Rho_ collection and added fixedGridRhoAll; older versions only
    # have the flat fixedGridRhoFastjetAll. The two ρ definitions differ by a few per cent.
    "Rho_fixedGridRhoAll": (
        Fallback(("fixedGridRhoAll",), "same", "pre-v12 name of the same ρ"),
        Fallback(
            ("Rho_fixedGridRhoFastjetAll",),
            "same",
            "ρ from the FastJet all-PF definition instead of fixedGridRhoAll",
        ),
        Fallback(
            ("fixedGridRhoFastjetAll",),
            "same",
            "pre-v12 ρ from the FastJet all-PF definition instead of fixedGridRhoAll",
        ),
    ),
    "Rho_fixedGridRhoFastjetAll": (
        Fallback(("fixedGridRhoFastjetAll",), "same", "pre-v12 name of the same ρ"),
    ),
    # Before v12 photons carry no supercluster η. The photon η is measured from the primary vertex,
    # the supercluster η from the detector origin; they differ by the vertex displacement, which is
    # small against the barrel/endcap boundaries but not zero.
    "Photon_superclusterEta": (
        Fallback(("Photon_eta",), "same", "photon η (from the vertex) in place of supercluster η"),
    ),
    # Electrons store the supercluster η as an offset from the track η.
    "Electron_superclusterEta": (
        Fallback(
            ("Electron_eta", "Electron_deltaEtaSC"),
            "sum",
            "supercluster η = η + deltaEtaSC (exact)",
        ),
    ),
}


class MissingBranchError(KeyError):
    """A branch a correction needs is not in the input, and no fallback applies."""

    def __init__(self, branch: str, where: str, available: Iterable[str]):
        self.branch = branch
        self.where = where
        close = sorted(a for a in available if _similar(branch, a))
        hint = f" Similar names present: {', '.join(close)}." if close else ""
        fallbacks = FALLBACKS.get(branch, ())
        tried = (
            " Fallbacks tried: " + "; ".join("+".join(f.sources) for f in fallbacks) + "."
            if fallbacks
            else ""
        )
        super().__init__(f"branch {branch!r} is missing from {where}.{tried}{hint}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class FallbackWarning(UserWarning):
    """A branch was replaced by its documented fallback (see :data:`FALLBACKS`)."""


@dataclass(frozen=True)
class Column:
    """Where one requested branch is found.

    ``level`` says whether it is a per-object field (``paths`` are field names of the collection)
    or per-event (``paths`` are field paths in ``events``). ``formula`` tells how several sources
    combine (``"same"`` for one source).
    """

    branch: str
    level: Literal["object", "event"]
    paths: tuple[tuple[str, ...], ...]
    formula: Literal["same", "sum"] = "same"


def _similar(wanted: str, candidate: str) -> bool:
    wanted_field = wanted.split("_", 1)[-1].lower()
    return wanted_field in candidate.lower() and candidate != wanted


def _object_field(branch: str, collection_name: str) -> str | None:
    prefix = collection_name + "_"
    return branch[len(prefix) :] if branch.startswith(prefix) else None


def _event_path(branch: str, events: Any) -> tuple[str, ...] | None:
    fields = set(events.fields)
    if branch in fields:
        return (branch,)
    head, _, tail = branch.partition("_")
    if tail and head in fields:
        sub = events[head]
        if tail in (sub.fields or ()):
            return (head, tail)
    return None


def _find(branch: str, collection_name: str, object_fields: set[str], events: Any):
    field = _object_field(branch, collection_name)
    if field is not None:
        return ("object", ((field,),)) if field in object_fields else None
    if events is None:
        return None
    path = _event_path(branch, events)
    return ("event", (path,)) if path is not None else None


def locate(
    branches: Iterable[str],
    collection_name: str,
    collection: Any,
    events: Any = None,
) -> dict[str, Column]:
    """Find every branch, applying :data:`FALLBACKS`; raise for the first one that is missing.

    Only field names are inspected, so this is cheap for virtual and dask arrays and runs before
    any data are read.
    """
    object_fields = set(collection.fields)
    located: dict[str, Column] = {}
    for branch in dict.fromkeys(branches):
        found = _find(branch, collection_name, object_fields, events)
        if found is not None:
            level, paths = found
            located[branch] = Column(branch, level, paths)
            continue
        for fallback in FALLBACKS.get(branch, ()):
            parts = [_find(s, collection_name, object_fields, events) for s in fallback.sources]
            if all(p is not None for p in parts) and len({p[0] for p in parts}) == 1:
                warnings.warn(
                    f"{branch} is not in the input; using {' + '.join(fallback.sources)}: "
                    f"{fallback.why}.",
                    FallbackWarning,
                    stacklevel=2,
                )
                located[branch] = Column(
                    branch, parts[0][0], tuple(p[1][0] for p in parts), fallback.formula
                )
                break
        else:
            if _object_field(branch, collection_name) is not None:
                raise MissingBranchError(
                    branch, f"the {collection_name} collection", sorted(object_fields)
                )
            if events is None:
                raise MissingBranchError(
                    branch, "the inputs (an event-level branch needs `events`)", ()
                )
            raise MissingBranchError(branch, "the events", _flat_event_names(events))
    return located


def _flat_event_names(events: Any) -> list[str]:
    names = []
    for name in events.fields:
        sub_fields = getattr(events[name], "fields", None) or []
        names.extend(f"{name}_{f}" for f in sub_fields) if sub_fields else names.append(name)
    return names


def fetch(column: Column, collection: Any, events: Any) -> Any:
    """The awkward (or dask-awkward) array of a located column."""
    source = collection if column.level == "object" else events
    arrays = []
    for path in column.paths:
        array = source
        for name in path:
            array = array[name]
        arrays.append(array)
    if column.formula == "sum":
        total = arrays[0]
        for array in arrays[1:]:
            total = total + array
        return total
    return arrays[0]


def column(branch: str, events: Any, collection_name: str | None = None, collection: Any = None) -> Any:
    """One branch as an array, with fallbacks: a field of ``collection`` (named ``collection_name``)
    or, for any other branch, an event-level array of ``events``."""
    name = collection_name or "\0"  # no collection: every branch is event-level
    located = locate([branch], name, collection if collection is not None else events, events)
    return fetch(located[branch], collection, events)


def region_mask(supercluster_eta: np.ndarray, region: Region) -> np.ndarray:
    """Boolean mask of the objects whose supercluster lies in ``region``.

    EB: |η_SC| < 1.4442; EE: 1.566 < |η_SC| < 2.5; the crack and |η_SC| ≥ 2.5 are in neither.
    """
    abs_eta = np.abs(supercluster_eta)
    if region == "all":
        return np.ones(abs_eta.shape, dtype=bool)
    if region == "EB":
        return abs_eta < ECAL_BARREL_MAX_ABS_ETA
    if region == "EE":
        return (abs_eta > ECAL_ENDCAP_MIN_ABS_ETA) & (abs_eta < ECAL_ENDCAP_MAX_ABS_ETA)
    raise ValueError(f"unknown detector region {region!r}; expected 'all', 'EB' or 'EE'")


def check_tree(tree_branches: Iterable[str], branches: Iterable[str], where: str) -> dict[str, str]:
    """Check branch names against a ROOT tree's branch list before a run starts.

    Returns, for each wanted branch, the branch (or ``+``-joined branches) that will be read.
    Raises :class:`MissingBranchError` naming ``where`` (e.g. the file) for the first one missing.
    """
    available = set(tree_branches)
    resolved: dict[str, str] = {}
    for branch in dict.fromkeys(branches):
        if branch in available:
            resolved[branch] = branch
            continue
        for fallback in FALLBACKS.get(branch, ()):
            if all(source in available for source in fallback.sources):
                resolved[branch] = "+".join(fallback.sources)
                break
        else:
            raise MissingBranchError(branch, where, available)
    return resolved
