"""Processor outputs on disk: histograms as gzipped UHI JSON, probe columns as Parquet.

An output is ``{dataset: {"histograms": {name: hist.Hist}, "probes": {column: np.ndarray},
"counts": {name: number}}}``. It is written to a folder::

    histograms.json.gz          histograms and counts (UHI serialisation, https://uhi.readthedocs.io)
    probes/<dataset>.parquet    the probe columns of each dataset

Both formats are readable without egproc (``hist.serialization.from_uhi``, ``ak.from_parquet``,
pyarrow) and, unlike pickle, carry no code.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import awkward as ak
import hist
import numpy as np
from hist.serialization import from_uhi, to_uhi
from uhi.io import json as uhi_json

__all__ = ["save", "read"]

_HIST_KEY = "__uhi_histogram__"
HISTOGRAMS = "histograms.json.gz"
PROBES = "probes"


def _encode(value: Any) -> Any:
    if isinstance(value, hist.Hist):
        return {_HIST_KEY: to_uhi(value)}
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _HIST_KEY in value:
            return from_uhi(value[_HIST_KEY])
        return {k: _decode(v) for k, v in value.items()}
    return value


def save(output: Mapping[str, Any], folder: str | Path) -> Path:
    """Write a processor output (see the module docstring) to ``folder``."""
    folder = Path(folder)
    (folder / PROBES).mkdir(parents=True, exist_ok=True)
    summary = {name: {k: v for k, v in part.items() if k != "probes"} for name, part in output.items()}
    payload = json.dumps(_encode(summary), default=uhi_json.default).encode()
    (folder / HISTOGRAMS).write_bytes(gzip.compress(payload, mtime=0))
    for name, part in output.items():
        columns = part.get("probes") or {}
        if columns:
            ak.to_parquet(ak.Array({k: np.asarray(v) for k, v in columns.items()}), folder / PROBES / f"{name}.parquet")
    return folder


def read(folder: str | Path) -> dict[str, Any]:
    """Read what :func:`save` wrote."""
    folder = Path(folder)
    output = _decode(json.loads(gzip.decompress((folder / HISTOGRAMS).read_bytes()), object_hook=uhi_json.object_hook))
    for name, part in output.items():
        path = folder / PROBES / f"{name}.parquet"
        if path.is_file():
            table = ak.from_parquet(path)
            part["probes"] = {k: ak.to_numpy(table[k]) for k in table.fields}
    return output
