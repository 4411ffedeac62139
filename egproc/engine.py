"""Columnar inference: apply a correction to a jagged collection without a Python loop over objects.

The path of one chunk::

    collection (eager, virtual or dask-awkward) + event-level branches
      → one flat column per input branch                (ak.flatten + to_numpy; event-level: np.repeat)
      → rows with a non-finite input are set aside      (passed through, flagged)
      → the correction's ``evaluate`` on the rest       (models run in micro-batches on the device)
      → outputs written back with the original counts   (ak.unflatten + ak.with_field; raw_* kept)

Artefacts (TorchScript models, correctionlib JSON) are loaded through :func:`load_artefact`, which
verifies the file's sha256 against the one recorded at training time and keeps the loaded object in
a process-level cache keyed by (path, sha256, device). A correction therefore pickles to a path and a
checksum (that is all a dask graph or a coffea ``Runner`` chunk carries) and is loaded once per
worker process whatever the executor, chunk count or ``processor_compression``.

The engine is agnostic of the method: anything with ``collection``, ``inputs``, ``outputs`` and an
``evaluate(columns) -> (outputs, covered)`` that works on flat numpy columns can be applied (see
:class:`FlatCorrection`). Models with several outputs (class scores, likelihood parameters) map to
several output branches. Inputs that are themselves jagged (calorimeter hits per object) will enter
as a flat hit matrix plus per-object offsets built the same way, one level deeper.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import awkward as ak
import numpy as np

from egproc import nano

__all__ = [
    "STATUS_OK",
    "STATUS_INPUT_NOT_FINITE",
    "STATUS_NOT_COVERED",
    "STATUS_OUTPUT_NOT_FINITE",
    "ChecksumError",
    "ModelSignatureError",
    "InputTypeError",
    "FlatCorrection",
    "is_dask",
    "sha256_of",
    "resolve_device",
    "load_artefact",
    "cache_info",
    "clear_cache",
    "run_batched",
    "apply_columnar",
]

#: Bits of the per-object ``egproc_status`` field; ``egproc_ok`` is ``status == STATUS_OK``.
STATUS_OK = 0
STATUS_INPUT_NOT_FINITE = 1
STATUS_NOT_COVERED = 2
STATUS_OUTPUT_NOT_FINITE = 4

#: Environment variable naming a file to which every artefact load appends "pid<TAB>kind<TAB>path".
#: It audits the load-once-per-process guarantee across worker processes.
LOAD_LOG_ENV = "EGPROC_LOAD_LOG"


class ChecksumError(RuntimeError):
    """An artefact's content does not match the sha256 recorded when it was written."""


class ModelSignatureError(RuntimeError):
    """A model does not accept or return what its metadata declares."""


class InputTypeError(TypeError):
    """An input branch does not hold one number per object."""


class FlatCorrection(Protocol):
    """What :func:`apply_columnar` applies.

    ``evaluate`` receives one array per input branch in the branch's dtype (floating columns all
    finite) and returns one float32 array per output branch plus a boolean ``covered`` mask; rows
    not covered (outside every region or validity range of the correction) are passed through by
    the engine.
    """

    collection: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def evaluate(
        self, columns: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]: ...


# --------------------------------------------------------------------------------------------
# Artefacts: checksums, devices, the process-level cache
# --------------------------------------------------------------------------------------------


def sha256_of(data: bytes | Path | str) -> str:
    """Hex sha256 of bytes or of a file's content."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with open(data, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when this process sees a GPU, else ``cpu``; ``cpu`` and ``cuda:N`` as given.

    Resolved in the worker process, so a dask worker with a GPU uses it while one without does not.
    """
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device here")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA devices exist"
            )
        return f"cuda:{index}"
    raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda:N'")


_cache: dict[tuple[str, str, str], Any] = {}
_cache_lock = threading.Lock()
_loads: Counter[str] = Counter()


def _read_verified(path: Path, sha256: str) -> bytes:
    data = path.read_bytes()
    actual = sha256_of(data)
    if actual != sha256:
        raise ChecksumError(
            f"{path}: sha256 is {actual}, but the bundle records {sha256}; the file was modified or "
            "corrupted after it was written, refusing to load it"
        )
    return data


def _torchscript(data: bytes, path: Path, device: str) -> Any:
    import torch

    module = torch.jit.load(io.BytesIO(data), map_location=device)
    module.eval()
    # Frozen, weights and submodule attributes become constants of one inlined graph: 1.3× the
    # throughput of the shipped CQR chain on a CPU, same floats (tests/test_cqr.py).
    return torch.jit.freeze(module)


def _correction_set(data: bytes, path: Path, device: str) -> Any:
    import correctionlib

    text = gzip.decompress(data) if path.suffix == ".gz" else data
    return correctionlib.CorrectionSet.from_string(text.decode())


# One loader per artefact format, chosen by file suffix, so another model format can be added here.
_LOADERS = {
    ".pt": ("torchscript", _torchscript),
    ".json": ("correctionlib", _correction_set),
    ".gz": ("correctionlib", _correction_set),
}


def load_artefact(path: str | Path, sha256: str, device: str = "cpu") -> Any:
    """Load a verified artefact once per process and return the cached object afterwards.

    ``.pt`` files are TorchScript modules (put on ``device``); ``.json``/``.json.gz`` files are
    correctionlib CorrectionSets. The content is checked against ``sha256`` before it is parsed.
    """
    path = Path(path).resolve()
    try:
        kind, loader = _LOADERS[path.suffix]
    except KeyError:
        raise ValueError(f"{path}: no loader for files ending in {path.suffix!r}") from None
    key = (str(path), sha256, device if kind == "torchscript" else "")
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        loaded = loader(_read_verified(path, sha256), path, device)
        _cache[key] = loaded
        _loads[kind] += 1
        log = os.environ.get(LOAD_LOG_ENV)
        if log:
            # One short line per write with O_APPEND: lines from concurrent processes do not mix.
            with open(log, "a") as handle:
                handle.write(f"{os.getpid()}\t{kind}\t{path}\n")
        return loaded


def cache_info() -> dict[str, int]:
    """Loads performed by this process so far, per artefact kind."""
    return dict(_loads)


def clear_cache() -> None:
    """Forget every loaded artefact of this process (the next use reloads and re-verifies)."""
    with _cache_lock:
        _cache.clear()
        _loads.clear()


# --------------------------------------------------------------------------------------------
# Running a model
# --------------------------------------------------------------------------------------------


#: Default micro-batch rows. On a CPU, small batches keep a network's activations in cache (the
#: first, unfused CQR chain ran at 178 k rows/s in batches of 4096 and 114 k in batches of 65536,
#: one thread; README "Benchmarks"); a GPU wants large ones.
CPU_BATCH_SIZE = 4096
GPU_BATCH_SIZE = 65536


def run_batched(
    module: Any,
    features: np.ndarray,
    n_outputs: int,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
) -> np.ndarray:
    """Evaluate ``module`` on ``features`` [n, k] in micro-batches; return float32 [n, n_outputs].

    ``batch_size=None`` takes :data:`CPU_BATCH_SIZE` or :data:`GPU_BATCH_SIZE` by ``device``.

    On a CUDA out-of-memory error the batch is halved and the failed batch retried, down to one
    row; the smaller size is kept for the rest of the call.
    """
    import torch

    n_rows = features.shape[0]
    result = np.empty((n_rows, n_outputs), dtype=np.float32)
    if n_rows == 0:
        return result
    inputs = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    on_gpu = device.startswith("cuda")
    if batch_size is None:
        batch_size = GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE
    if on_gpu:
        inputs = inputs.pin_memory()
    start = 0
    with torch.inference_mode():
        while start < n_rows:
            stop = min(start + batch_size, n_rows)
            try:
                batch = inputs[start:stop].to(device, non_blocking=on_gpu)
                output = module(batch)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                continue
            if output.shape != (stop - start, n_outputs):
                raise ModelSignatureError(
                    f"model returned shape {tuple(output.shape)} for a batch of {stop - start} rows; "
                    f"its metadata declares {n_outputs} outputs per row"
                )
            result[start:stop] = output.to("cpu", torch.float32).numpy()
            start = stop
    return result


# --------------------------------------------------------------------------------------------
# The columnar transform
# --------------------------------------------------------------------------------------------


def is_dask(array: Any) -> bool:
    """Whether ``array`` is a dask-awkward collection (a graph) rather than an awkward array."""
    return type(array).__module__.startswith("dask_awkward")


def _is_typetracer(array: Any) -> bool:
    return ak.backend(array) == "typetracer"


def _object_depth(collection: Any) -> int:
    """1 for one object per event, 2 for a list of objects per event."""
    depth = collection.ndim
    if depth not in (1, 2):
        raise InputTypeError(
            f"expected a collection with one object or one list of objects per event, got type "
            f"{collection.type}"
        )
    return depth


def _flat_numbers(array: Any, depth: int, branch: str, collection_name: str) -> tuple[np.ndarray, bool]:
    """One flat numpy column per branch, in the branch's own dtype: integers (run, event numbers)
    stay exact; each step casts to what it consumes (float32 for models). The flag says whether
    the column is the array's values as they are (no missing value filled with NaN)."""
    flat = ak.flatten(array, axis=1) if depth == 2 else array
    if flat.ndim != 1 or flat.fields:
        raise InputTypeError(
            f"{branch}: expected one number per {collection_name} object, got type {array.type}"
        )
    values = ak.to_numpy(ak.fill_none(flat, np.nan) if flat.layout.is_option else flat)
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
        raise InputTypeError(f"{branch}: expected a numeric branch, got dtype {values.dtype}")
    return values, not flat.layout.is_option


def _apply_partition(
    collection: Any, *event_arrays: Any, correction: FlatCorrection, columns: tuple[nano.Column, ...]
) -> Any:
    """The work on one chunk (a concrete or typetracer awkward array)."""
    depth = _object_depth(collection)
    object_columns = [c for c in columns if c.level == "object"]
    event_columns = [c for c in columns if c.level == "event"]

    if _is_typetracer(collection):
        # dask-awkward traces the graph with typetracers to learn which columns to read: touch the
        # inputs and return arrays of the same form as the concrete path.
        for column in object_columns:
            ak.typetracer.touch_data(nano.fetch(column, collection, None))
        for array in event_arrays:
            ak.typetracer.touch_data(array)
        template = collection[collection.fields[0]]
        counts = ak.num(template, axis=1) if depth == 2 else None
        flat_template = ak.flatten(template, axis=1) if depth == 2 else template
        flat_float = ak.values_astype(flat_template, np.float32)
        flat_status = ak.values_astype(flat_template, np.uint8)
        return _assemble(collection, correction, dict.fromkeys(correction.outputs, flat_float), flat_status, counts, {})

    counts = ak.to_numpy(ak.num(collection, axis=1)) if depth == 2 else None
    flat: dict[str, np.ndarray] = {}
    # The flat inputs that are a field of the collection as it is: the raw_* fields written back.
    fields: dict[str, np.ndarray] = {}
    for column in object_columns:
        flat[column.branch], as_is = _flat_numbers(
            nano.fetch(column, collection, None), depth, column.branch, correction.collection
        )
        if as_is and len(column.paths) == 1 and len(column.paths[0]) == 1:
            fields[column.paths[0][0]] = flat[column.branch]
    for column, array in zip(event_columns, event_arrays):
        per_event = ak.to_numpy(array)
        if per_event.ndim != 1:
            raise InputTypeError(f"{column.branch}: expected one number per event, got {array.type}")
        flat[column.branch] = np.repeat(per_event, counts) if counts is not None else per_event

    n_objects = int(counts.sum()) if counts is not None else len(collection)
    status = np.zeros(n_objects, dtype=np.uint8)
    finite = np.ones(n_objects, dtype=bool)
    for values in flat.values():
        if np.issubdtype(values.dtype, np.floating):
            finite &= np.isfinite(values)
    status[~finite] |= STATUS_INPUT_NOT_FINITE

    outputs = {
        branch: (flat[branch].astype(np.float32) if branch in flat else np.full(n_objects, np.nan, np.float32))
        for branch in correction.outputs
    }
    if finite.any():
        rows = np.flatnonzero(finite)
        selected = {branch: values[rows] for branch, values in flat.items()}
        corrected, covered = correction.evaluate(selected)
        output_finite = np.ones(rows.size, dtype=bool)
        for branch in correction.outputs:
            output_finite &= np.isfinite(corrected[branch])
        status[rows[~covered]] |= STATUS_NOT_COVERED
        status[rows[covered & ~output_finite]] |= STATUS_OUTPUT_NOT_FINITE
        keep = covered & output_finite
        for branch in correction.outputs:
            outputs[branch][rows[keep]] = corrected[branch][keep]
    return _assemble(collection, correction, outputs, status, counts, fields)


def _with_fields(collection: Any, packed: Any) -> Any:
    """``collection`` with the fields of the record array ``packed`` (the collection's list
    structure) added or replaced, in one broadcast.

    Equivalent to chained ``ak.with_field`` calls (record name, behaviours, cross-references and
    attrs are kept) at the cost of one: the chain re-broadcasts the whole record per field.
    """
    names = list(packed.fields)

    def add_contents(layouts: list[Any], **kwargs: Any) -> Any:
        base, extra = layouts
        if not base.is_record:
            return None
        keys = list(base.fields)
        contents = [base.content(k) for k in keys]
        for name in names:
            if name in keys:
                contents[keys.index(name)] = extra.content(name)
            else:
                keys.append(name)
                contents.append(extra.content(name))
        return ak.contents.RecordArray(contents, keys, length=base.length, parameters=base.parameters)

    return ak.transform(add_contents, collection, packed, behavior=collection.behavior, attrs=collection.attrs)


def _assemble(
    collection: Any, correction: FlatCorrection, outputs, status, counts, flat_fields: Mapping[str, np.ndarray]
) -> Any:
    """Write flat outputs back as fields with the collection's structure (``counts`` per event).

    The new fields are zipped while flat and get the list structure once: one ``unflatten`` of
    one record, instead of one per field and a zip that broadcasts them all (6–9 ms of the
    ``Bundle.apply`` of a 100 k-event chunk on a CPU, whatever the correction). A raw value
    already read as an input (``flat_fields``, by field) is not flattened again."""
    prefix = correction.collection + "_"
    new_fields: dict[str, Any] = {}
    for branch in correction.outputs:
        field = branch[len(prefix) :] if branch.startswith(prefix) else branch
        # The first correction applied keeps the file's value; a second one does not overwrite it.
        if field in collection.fields and f"raw_{field}" not in collection.fields:
            if field in flat_fields:
                new_fields[f"raw_{field}"] = flat_fields[field]
            else:
                raw = collection[field]
                new_fields[f"raw_{field}"] = ak.flatten(raw, axis=1) if counts is not None else raw
        new_fields[field] = outputs[branch]
    new_fields["egproc_status"] = status
    new_fields["egproc_ok"] = status == STATUS_OK
    packed = ak.zip(new_fields, depth_limit=1)
    return _with_fields(collection, ak.unflatten(packed, counts) if counts is not None else packed)


def apply_columnar(
    correction: FlatCorrection, collection: Any, events: Any = None, *, label: str = "egproc"
) -> Any:
    """Return ``collection`` with the correction's outputs as fields (inputs kept as ``raw_*``).

    ``collection`` is a jagged collection (``events.Photon``) or one object per event, as an eager,
    virtual or dask-awkward array; ``events`` supplies event-level inputs (ρ). Missing branches are
    reported here, before anything is read. Every object comes back: objects with a non-finite input,
    outside the correction's regions, or with a non-finite output keep their raw values and get
    ``egproc_ok = False`` and a reason in ``egproc_status``.
    """
    columns = nano.locate(correction.inputs, correction.collection, collection, events)
    event_columns = [c for c in columns.values() if c.level == "event"]
    event_arrays = [nano.fetch(c, None, events) for c in event_columns]
    ordered = tuple(c for c in columns.values() if c.level == "object") + tuple(event_columns)
    if is_dask(collection):
        import dask_awkward as dak

        return dak.map_partitions(
            _apply_partition,
            collection,
            *event_arrays,
            correction=correction,
            columns=ordered,
            label=label,
        )
    return _apply_partition(collection, *event_arrays, correction=correction, columns=ordered)
