"""Processor outputs on disk: nested dicts of ``hist.Hist`` and counts, as gzipped UHI JSON.

The UHI serialisation (https://uhi.readthedocs.io) is readable by ``hist``/``boost-histogram``
without egproc, and — unlike pickle — carries no code.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hist
from hist.serialization import from_uhi, to_uhi
from uhi.io import json as uhi_json

__all__ = ["save", "read"]

_HIST_KEY = "__uhi_histogram__"


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


def save(output: Mapping[str, Any], path: str | Path) -> Path:
    """Write a (nested) processor output to ``path`` (``.json.gz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(_encode(output), default=uhi_json.default).encode(), mtime=0))
    return path


def read(path: str | Path) -> dict[str, Any]:
    """Read what :func:`save` wrote."""
    return _decode(json.loads(gzip.decompress(Path(path).read_bytes()), object_hook=uhi_json.object_hook))
